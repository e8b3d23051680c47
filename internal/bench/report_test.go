package bench

import (
	"strings"
	"testing"
)

func TestReport_Targets(t *testing.T) {
	r := &Report{
		RatioVsRelay: 0.62, MeshFigures: MeshFigures{CPUPerMillion: 3.8, P99HalfLoadUS: 7300},
		BaselineRelayCPU: 2.2, AllocsPerMsg: 10.6, BaselineRelayAllocs: 9.0,
		AllocBytesPerMsg: 2043, BaselineRelayAllocB: 1090, PeakHeapBytes: 40 << 20,
		FailoverRecoverMS: 78, MoveRerouteMS: 20, FreezeDetectMS: 1140,
	}
	want := map[string]struct {
		met bool
		got string
	}{
		"throughput vs hand-rolled relay":     {true, "0.62x"},
		"p99 at half load":                    {false, "7.3 ms"},
		"CPU per message":                     {false, "1.73x"},
		"allocations per message":             {true, "1.18x"},
		"bytes allocated per message":         {true, "1.87x"},
		"peak heap in use":                    {false, "40.0 MiB"},
		"lost under faults":                   {true, "0"},
		"hard stop: back to 80%":              {true, "78.0 ms"},
		"move: first message via new address": {true, "20.0 ms"},
		"frozen intermediate detected":        {true, "1140.0 ms"},
	}
	got := r.Targets()
	if len(got) != len(want) {
		t.Errorf("Targets() = %d targets, want %d", len(got), len(want))
	}
	for _, tg := range got {
		w, ok := want[tg.Name]
		if !ok {
			t.Errorf("Targets() has %q, not expected", tg.Name)
			continue
		}
		if tg.Met != w.met || tg.Got != w.got {
			t.Errorf("target %q: got %q, met %v; want %q, met %v", tg.Name, tg.Got, tg.Met, w.got, w.met)
		}
	}
	r.BaselineRelayCPU = 0
	for _, tg := range r.Targets() {
		if tg.Name == "CPU per message" && (tg.Known || tg.Met) {
			t.Errorf("target %q without the relay's figure: known %v, met %v; want neither", tg.Name, tg.Known, tg.Met)
		}
	}
}

// TestReport_TargetsAtAGivenHalfLoadRate checks that a run whose half-load
// phase ran at a rate given (--half-load-rate) does not judge the p99
// target, which is set at half of saturation: a low rate would meet it.
func TestReport_TargetsAtAGivenHalfLoadRate(t *testing.T) {
	r := &Report{MeshFigures: MeshFigures{P99HalfLoadUS: 900, HalfLoadOffered: 1000, HalfLoadRateGiven: true}}
	var found bool
	for _, tg := range r.Targets() {
		if tg.Name != "p99 at half load" {
			continue
		}
		found = true
		if tg.Met || tg.Unjudged == "" || tg.Got != "0.9 ms" {
			t.Errorf("p99 target at a given rate: got %q, met %v, unjudged %q; want 0.9 ms, not met, and why it is not judged", tg.Got, tg.Met, tg.Unjudged)
		}
	}
	if !found {
		t.Fatalf("Targets() has no p99 at half load")
	}
	var b strings.Builder
	if err := r.WriteTable(&b); err != nil {
		t.Fatalf("WriteTable() = %v", err)
	}
	if want := "not judged: the half-load phase ran at --half-load-rate"; !strings.Contains(b.String(), want) {
		t.Errorf("WriteTable() =\n%s\nwant the p99 target %q", b.String(), want)
	}
}
