package components

import (
	"testing"
)

// TestSeqWindow_MarkAndSeen checks the high-water mark and bitmap: marked
// numbers are seen while in the window, forgotten once the window moved past
// them, and numbers skipped when the mark jumps are not seen.
func TestSeqWindow_MarkAndSeen(t *testing.T) {
	w := &seqWindow{bits: make([]uint64, 2)} // 128 numbers
	for _, seq := range []uint64{1, 2, 3, 5, 64, 65, 128} {
		w.mark(seq)
	}
	for _, tc := range []struct {
		seq  uint64
		want bool
	}{
		{1, true}, {2, true}, {3, true}, {4, false}, {5, true}, {6, false},
		{64, true}, {65, true}, {127, false}, {128, true}, {129, false},
	} {
		if got := w.seen(tc.seq); got != tc.want {
			t.Errorf("seen(%d) = %v, want %v", tc.seq, got, tc.want)
		}
	}
	w.mark(200) // window is now (72, 200]
	for _, tc := range []struct {
		seq  uint64
		want bool
	}{
		{5, false}, {65, false}, {72, false}, {128, true}, {129, false}, {199, false}, {200, true},
	} {
		if got := w.seen(tc.seq); got != tc.want {
			t.Errorf("after mark(200): seen(%d) = %v, want %v", tc.seq, got, tc.want)
		}
	}
	w.mark(10) // too old: not recorded
	if w.seen(10) {
		t.Errorf("seen(10) after marking it below the window = true, want false")
	}
	w.mark(1000) // jump past the whole window clears it
	if w.seen(128) || w.seen(200) || !w.seen(1000) {
		t.Errorf("after mark(1000): seen(128), seen(200), seen(1000) = %v, %v, %v, want false, false, true", w.seen(128), w.seen(200), w.seen(1000))
	}
}

// TestDedupSet_ProducersAndLRU checks that producer incarnations are tracked
// apart and that the least recently used one is forgotten past the bound.
func TestDedupSet_ProducersAndLRU(t *testing.T) {
	d := newDedupSet(100, 2)
	if got := d.words; got != 2 {
		t.Fatalf("newDedupSet(100, 2).words = %d, want 2 (window rounded up to 128)", got)
	}
	a1 := msgKey{producerKey{"a", 1}, 7}
	a2 := msgKey{producerKey{"a", 2}, 7}
	b1 := msgKey{producerKey{"b", 1}, 7}
	d.mark(a1)
	if !d.seen(a1) || d.seen(a2) {
		t.Errorf("seen(a/1/7), seen(a/2/7) = %v, %v, want true, false", d.seen(a1), d.seen(a2))
	}
	d.mark(a2)
	d.seen(a1) // a/1 is now the most recent
	d.mark(b1) // evicts a/2
	if got := d.producers(); got != 2 {
		t.Errorf("producers() = %d, want 2", got)
	}
	if !d.seen(a1) || d.seen(a2) || !d.seen(b1) {
		t.Errorf("seen(a/1), seen(a/2), seen(b/1) = %v, %v, %v, want true, false, true", d.seen(a1), d.seen(a2), d.seen(b1))
	}
}
