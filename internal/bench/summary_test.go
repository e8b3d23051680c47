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

func TestSummarize_OddRunsOnly(t *testing.T) {
	reps := []*ProcessReport{
		{Mode: "processes", PeakRSSBytes: 100, MeshFigures: MeshFigures{Butterfly: 1}},
		{Mode: "processes", PeakRSSBytes: 300, MeshFigures: MeshFigures{Butterfly: 4}},
		{Mode: "processes", PeakRSSBytes: 200, MeshFigures: MeshFigures{Butterfly: 2}, HandledTwice: 1},
	}
	got, err := Summarize(reps)
	if err != nil {
		t.Fatalf("Summarize() = %v", err)
	}
	if got.Mode != "processes" || got.PeakRSSBytes != 200 || got.Butterfly != 2 || got.HandledTwice != 1 {
		t.Errorf("Summarize() = mode %q, peak RSS %d, rate %v, handled twice %d; want processes, 200, 2, 1",
			got.Mode, got.PeakRSSBytes, got.Butterfly, got.HandledTwice)
	}
	for _, n := range []int{0, 2} {
		if _, err := Summarize(reps[:n]); err == nil {
			t.Errorf("Summarize(%d runs) = nil error, want one: no run's value is the median", n)
		}
	}
	one, err := Summarize(reps[:1])
	if err != nil {
		t.Fatalf("Summarize(one run) = %v", err)
	}
	if one.Runs != 1 || len(one.Ranges) != 0 || !reflect.DeepEqual(one.MeshFigures, reps[0].MeshFigures) {
		t.Errorf("Summarize(one run) = runs %d, ranges %v, figures %+v; want that run's", one.Runs, one.Ranges, one.MeshFigures)
	}
}

func TestSummarize_NotSeenIsTheWorst(t *testing.T) {
	reps := []*Report{{FailoverRecoverMS: -1}, {FailoverRecoverMS: 40}, {FailoverRecoverMS: 300}}
	got, err := Summarize(reps)
	if err != nil {
		t.Fatalf("Summarize() = %v", err)
	}
	if got.FailoverRecoverMS != 300 {
		t.Errorf("Summarize() recovery = %v ms, want 300: a run that never recovered ranks below the slowest", got.FailoverRecoverMS)
	}
	reps = []*Report{{FailoverRecoverMS: -1}, {FailoverRecoverMS: 40}, {FailoverRecoverMS: -1}}
	if got, _ := Summarize(reps); got.FailoverRecoverMS != -1 {
		t.Errorf("Summarize() recovery = %v ms, want -1: most runs did not see it", got.FailoverRecoverMS)
	}
}

func TestSummarize_RatiosFromTheMedians(t *testing.T) {
	run := func(rate, relay, oneHop float64) *Report {
		return &Report{MeshFigures: MeshFigures{Butterfly: rate}, BaselineRelay: relay, Baseline1Hop: oneHop,
			RatioVsRelay: rate / relay, RatioVs1Hop: rate / oneHop}
	}
	// Each run's ratios have medians 0.625 and 1/3; the median figures
	// give 400/800 and 400/1500.
	got, err := Summarize([]*Report{run(300, 1000, 2000), run(400, 600, 1000), run(500, 800, 1500)})
	if err != nil {
		t.Fatalf("Summarize() = %v", err)
	}
	if got.Butterfly != 400 || got.BaselineRelay != 800 || got.RatioVsRelay != 0.5 || got.RatioVs1Hop != 400.0/1500 {
		t.Errorf("Summarize() = rate %v, relay %v, ratios %v / %v; want 400, 800, 0.5, %v",
			got.Butterfly, got.BaselineRelay, got.RatioVsRelay, got.RatioVs1Hop, 400.0/1500)
	}
}
