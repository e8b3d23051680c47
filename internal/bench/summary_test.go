package bench

import (
	"reflect"
	"testing"
)

func TestSummarize_MedianWorstAndRanges(t *testing.T) {
	reps := []*Report{
		{Setup: Setup{Producers: 2}, MeshFigures: MeshFigures{Butterfly: 500, P99HalfLoadUS: 7000}, PeakHeapBytes: 40 << 20, FailoverLost: 0, Sent: 10},
		{Setup: Setup{Producers: 2}, MeshFigures: MeshFigures{Butterfly: 450, P99HalfLoadUS: 9000}, PeakHeapBytes: 43 << 20, FailoverLost: 3, Sent: 12},
		{Setup: Setup{Producers: 2}, MeshFigures: MeshFigures{Butterfly: 520, P99HalfLoadUS: 5000}, PeakHeapBytes: 41 << 20, FailoverLost: 0, Sent: 11},
	}
	got, err := Summarize(reps)
	if err != nil {
		t.Fatalf("Summarize() = %v", err)
	}
	if got.Butterfly != 500 || got.P99HalfLoadUS != 7000 || got.PeakHeapBytes != 41<<20 || got.Sent != 11 {
		t.Errorf("Summarize() rate %v, p99 %v, heap %v, sent %v; want the medians 500, 7000, %v, 11",
			got.Butterfly, got.P99HalfLoadUS, got.PeakHeapBytes, got.Sent, 41<<20)
	}
	if got.FailoverLost != 3 {
		t.Errorf("Summarize() lost = %d, want the worst run's 3", got.FailoverLost)
	}
	if got.Producers != 2 || got.Runs != 3 {
		t.Errorf("Summarize() producers %d, runs %d; want 2, 3", got.Producers, got.Runs)
	}
	wantRanges := map[string][2]float64{
		"butterfly_msgs_per_s": {450, 520},
		"p99_half_load_us":     {5000, 9000},
		"peak_heap_bytes":      {40 << 20, 43 << 20},
		"failover_lost":        {0, 3},
		"sent":                 {10, 12},
		"delivered":            {}, // 0 in every run: no range
	}
	for key, want := range wantRanges {
		r, ok := got.Ranges[key]
		switch {
		case key == "delivered" && ok:
			t.Errorf("Summarize() range of %q = %v, want none (the same in every run)", key, r)
		case key != "delivered" && (!ok || r != want):
			t.Errorf("Summarize() range of %q = %v, want %v", key, r, want)
		}
	}
}

func TestSummarize_EvenTakesARunsValue(t *testing.T) {
	reps := []*ProcessReport{
		{Mode: "processes", PeakRSSBytes: 100, MeshFigures: MeshFigures{Butterfly: 1}},
		{Mode: "processes", PeakRSSBytes: 301, MeshFigures: MeshFigures{Butterfly: 4}},
		{Mode: "processes", PeakRSSBytes: 200, MeshFigures: MeshFigures{Butterfly: 2}},
		{Mode: "processes", PeakRSSBytes: 250, MeshFigures: MeshFigures{Butterfly: 3}, HandledTwice: 1},
	}
	got, err := Summarize(reps)
	if err != nil {
		t.Fatalf("Summarize() = %v", err)
	}
	if got.Mode != "processes" || got.PeakRSSBytes != 200 || got.Butterfly != 2 || got.HandledTwice != 1 {
		t.Errorf("Summarize() = mode %q, peak RSS %d, rate %v, handled twice %d; want processes, 200, 2, 1",
			got.Mode, got.PeakRSSBytes, got.Butterfly, got.HandledTwice)
	}
	if _, err := Summarize([]*Report{}); err == nil {
		t.Errorf("Summarize(no runs) = nil error, want one")
	}
	one, err := Summarize(reps[:1])
	if err != nil {
		t.Fatalf("Summarize(one run) = %v", err)
	}
	if one.Runs != 1 || len(one.Ranges) != 0 || !reflect.DeepEqual(one.MeshFigures, reps[0].MeshFigures) {
		t.Errorf("Summarize(one run) = runs %d, ranges %v, figures %+v; want that run's", one.Runs, one.Ranges, one.MeshFigures)
	}
}
