package bench

import (
	"testing"
	"time"
)

// TestHistogram_Quantiles checks that quantiles land in the right bucket,
// within the histogram's precision, and that an empty histogram says 0.
func TestHistogram_Quantiles(t *testing.T) {
	h := &histogram{}
	if got := h.quantile(0.5); got != 0 {
		t.Errorf("empty quantile(0.5) = %v, want 0", got)
	}
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	h.record(-time.Second) // clamped to 0
	if got := h.count(); got != 1001 {
		t.Errorf("count() = %d, want 1001", got)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Microsecond}, {0.99, 990 * time.Microsecond}, {0.999, 999 * time.Microsecond}, {1, 1000 * time.Microsecond}} {
		got := h.quantile(tc.q)
		if got < tc.want || float64(got) > float64(tc.want)*1.02 {
			t.Errorf("quantile(%v) = %v, want within 2%% above %v", tc.q, got, tc.want)
		}
	}
	for _, d := range []time.Duration{0, 1, 63, 64, 65, 127, 128, 1000, time.Millisecond, time.Second, 10 * time.Minute} {
		i := histIndex(d)
		if hi := histValue(i); hi < d || (i > 0 && histValue(i-1) >= d) {
			t.Errorf("histIndex(%v) = %d with bounds (%v, %v], want d inside", d, i, histValue(i-1), hi)
		}
	}
	if got := histIndex(time.Hour); got != histBuckets-1 {
		t.Errorf("histIndex(1h) = %d, want the last bucket %d", got, histBuckets-1)
	}
}

// TestHistogram_ShareOver checks the share of values above a bound: 1 000
// values of 1 to 1 000 µs have 500 above 500 µs, within the bucket that
// holds the bound (1.6 %), and none above the largest; an empty histogram
// says 0.
func TestHistogram_ShareOver(t *testing.T) {
	h := &histogram{}
	if got := h.shareOver(time.Millisecond); got != 0 {
		t.Errorf("empty shareOver(1ms) = %v, want 0", got)
	}
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for _, tc := range []struct {
		bound    time.Duration
		min, max float64
	}{
		{0, 1, 1},
		{500 * time.Microsecond, 0.49, 0.5},
		{900 * time.Microsecond, 0.09, 0.1},
		{time.Millisecond, 0, 0},
		{2 * time.Millisecond, 0, 0},
	} {
		if got := h.shareOver(tc.bound); got < tc.min || got > tc.max {
			t.Errorf("shareOver(%v) = %v, want in [%v, %v]", tc.bound, got, tc.min, tc.max)
		}
	}
}

// TestIDSet_LostAndContiguous checks the exact accounting of delivered ids:
// repeats are reported, the contiguous prefix grows only without holes, and
// missing counts the holes.
func TestIDSet_LostAndContiguous(t *testing.T) {
	s := &idSet{}
	for _, seq := range []uint64{1, 2, 3, 5, chunkBits + 7} {
		if !s.add(seq) {
			t.Fatalf("add(%d) = false on first add, want true", seq)
		}
	}
	if s.add(3) {
		t.Errorf("add(3) again = true, want false")
	}
	if got := s.contiguous(); got != 3 {
		t.Errorf("contiguous() = %d, want 3", got)
	}
	if got := s.missing(6); got != 2 {
		t.Errorf("missing(6) = %d, want 2 (4 and 6)", got)
	}
	s.add(4)
	if got := s.contiguous(); got != 5 {
		t.Errorf("contiguous() after add(4) = %d, want 5", got)
	}
	if got := s.missing(chunkBits + 7); got != chunkBits+7-6 {
		t.Errorf("missing(%d) = %d, want %d", chunkBits+7, got, chunkBits+7-6)
	}
}

// TestRecoveryMS_Series checks the "back to 80%" rule on a series: the mean
// before the fault, three good samples in a row, counted to the end of the
// first.
func TestRecoveryMS_Series(t *testing.T) {
	var samples []Sample
	rates := []float64{100, 100, 100, 100, 10, 0, 50, 90, 30, 85, 90, 95, 100}
	for i, r := range rates {
		samples = append(samples, Sample{Start: time.Duration(i) * 10 * time.Millisecond, End: time.Duration(i+1) * 10 * time.Millisecond, Rate: r})
	}
	// Fault at 40ms: samples 4.. are after it; 9, 10, 11 are the first three
	// in a row at or over 80; sample 9 ends at 100ms.
	if got := recoveryMS(samples, 40*time.Millisecond, 40*time.Millisecond); got != 60 {
		t.Errorf("recoveryMS(fault at 40ms) = %v, want 60", got)
	}
	if got := recoveryMS(samples[:9], 40*time.Millisecond, 40*time.Millisecond); got != -1 {
		t.Errorf("recoveryMS(no recovery) = %v, want -1", got)
	}
	if got := recoveryMS(samples, 0, 40*time.Millisecond); got != -1 {
		t.Errorf("recoveryMS(no samples before) = %v, want -1", got)
	}
}

// TestIDSet_BitmapMerge checks that a worker's bitmap carries its set
// exactly and that merging two sets counts the seqs both hold.
func TestIDSet_BitmapMerge(t *testing.T) {
	a, b := &idSet{}, &idSet{}
	for _, seq := range []uint64{1, 2, 64, chunkBits + 3} {
		a.add(seq)
	}
	for _, seq := range []uint64{2, 3, chunkBits + 3, 3*chunkBits + 1} {
		b.add(seq)
	}
	merged := &idSet{}
	if got := merged.merge(a.bitmap()); got != 0 {
		t.Errorf("merge(a) into an empty set = %d overlaps, want 0", got)
	}
	if got := merged.merge(b.bitmap()); got != 2 {
		t.Errorf("merge(b) = %d overlaps, want 2 (2 and %d)", got, chunkBits+3)
	}
	if got, want := merged.missing(3*chunkBits+1), uint64(3*chunkBits+1-6); got != want { // the union holds 6
		t.Errorf("missing(%d) after merges = %d, want %d", 3*chunkBits+1, got, want)
	}
	if got := (&idSet{}).bitmap(); len(got) != 0 {
		t.Errorf("empty bitmap() = %d bytes, want 0", len(got))
	}
}

// TestHistogram_BucketsAdd checks that a worker's buckets carry its
// latencies into another histogram.
func TestHistogram_BucketsAdd(t *testing.T) {
	h := &histogram{}
	for i := 1; i <= 100; i++ {
		h.record(time.Duration(i) * time.Millisecond)
	}
	sum := &histogram{}
	sum.add(h.buckets())
	sum.add(h.buckets())
	if got := sum.count(); got != 200 {
		t.Errorf("count() after adding twice = %d, want 200", got)
	}
	if got, want := sum.quantile(0.99), h.quantile(0.99); got != want {
		t.Errorf("quantile(0.99) = %v, want %v", got, want)
	}
}
