package bench

import (
	"math"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

func TestHistQuantile(t *testing.T) {
	h := &metrics.Float64Histogram{
		Buckets: []float64{0, 0.001, 0.002, 0.010, math.Inf(1)},
		Counts:  []uint64{90, 8, 1, 1},
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{
		{0.5, time.Millisecond},
		{0.9, time.Millisecond},
		{0.95, 2 * time.Millisecond},
		{0.99, 10 * time.Millisecond},
		{1, 10 * time.Millisecond}, // unbounded last bucket: its lower bound
	} {
		if got := histQuantile(h, tc.q); got != tc.want {
			t.Errorf("histQuantile(q=%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	if got := histQuantile(&metrics.Float64Histogram{Buckets: h.Buckets, Counts: make([]uint64, 4)}, 0.99); got != 0 {
		t.Errorf("histQuantile(empty) = %v, want 0", got)
	}
}

func TestRuntimeCountersSince(t *testing.T) {
	b := readRuntimeCounters()
	for range 3 {
		runtime.GC()
	}
	f := readRuntimeCounters().since(b)
	if f.GCCycles < 3 {
		t.Errorf("GCCycles = %d after 3 forced collections, want at least 3", f.GCCycles)
	}
	if f.GCPauseMax <= 0 || f.GCPauseP99 <= 0 || f.GCPauseP99 > f.GCPauseMax {
		t.Errorf("GC pause p99, max = %v, %v: want 0 < p99 <= max", f.GCPauseP99, f.GCPauseMax)
	}
}
