package components

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestSeqWindow_WithoutMark checks the window of a producer that carries no
// low-water mark: marked numbers are seen while within the window behind the
// highest, forgotten (not seen) once it moved a whole page past them.
func TestSeqWindow_WithoutMark(t *testing.T) {
	w := &seqWindow{window: 128}
	for _, seq := range []uint64{1, 2, 3, 5, 64, 65, 127} {
		w.mark(seq)
	}
	for seq, want := range map[uint64]bool{1: true, 2: true, 3: true, 4: false, 5: true, 6: false, 64: true, 65: true, 126: false, 127: true, 128: false} {
		if got := w.seen(seq); got != want {
			t.Errorf("seen(%d) = %v, want %v", seq, got, want)
		}
	}
	w.mark(300) // still in the first page: nothing is forgotten
	if !w.seen(5) || !w.seen(300) || w.seen(299) {
		t.Errorf("after mark(300): seen(5), seen(300), seen(299) = %v, %v, %v, want true, true, false", w.seen(5), w.seen(300), w.seen(299))
	}
	top := uint64(pageSeqs + 300) // the window now starts at the second page
	w.mark(top)
	for seq, want := range map[uint64]bool{5: false, 65: false, 127: false, 300: false, top - 1: false, top: true} {
		if got := w.seen(seq); got != want {
			t.Errorf("after mark(%d): seen(%d) = %v, want %v", top, seq, got, want)
		}
	}
	w.mark(10) // too old: not recorded
	if w.seen(10) {
		t.Errorf("seen(10) after marking it below the window = true, want false")
	}
}

// TestSeqWindow_TopOfTheRange checks a window whose base lies in the last
// page below 2^64 (a producer without a mark that sent a seq that high): a
// mark then given below the base does not wrap the slide and forget what
// was handled.
func TestSeqWindow_TopOfTheRange(t *testing.T) {
	w := &seqWindow{window: 128}
	top := ^uint64(0) - 100
	w.mark(top)
	w.advance(1)
	if !w.seen(top) || w.seen(top-1) {
		t.Errorf("after mark(%d) and a mark of 1: seen(%d), seen(%d) = %v, %v, want true, false", top, top, top-1, w.seen(top), w.seen(top-1))
	}
}

// TestSeqWindow_MatchesASet checks a window with a low-water mark against a
// set of handled seqs over random marks and rising marks: seen is exact
// below the span, however the seqs fall across pages.
func TestSeqWindow_MatchesASet(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 20 {
		w := &seqWindow{window: DefaultDedupWindow}
		marked := map[uint64]bool{}
		var list []uint64 // marked, to probe
		var acked uint64 = 1
		w.advance(acked)
		for step := range 4000 {
			switch r := rng.IntN(50); {
			case r < 35:
				// Mostly near the mark, sometimes far above it.
				seq := acked + rng.Uint64N(3*pageSeqs)
				if rng.IntN(20) == 0 {
					seq = acked + rng.Uint64N(maxTrackedSpan/4)
				}
				w.mark(seq)
				marked[seq] = true
				list = append(list, seq)
			case r < 49:
				acked += rng.Uint64N(64)
				w.advance(acked)
			default:
				acked += rng.Uint64N(2 * pageSeqs)
				w.advance(acked)
			}
			for i := range 8 {
				seq := acked - min(acked, 200) + rng.Uint64N(4*pageSeqs)
				if i%2 == 0 && len(list) > 0 {
					seq = list[rng.IntN(len(list))]
				}
				if want := seq < acked || marked[seq]; w.seen(seq) != want {
					t.Fatalf("round %d step %d: seen(%d) = %v, want %v (mark %d)", round, step, seq, !want, want, acked)
				}
			}
		}
		for seq := range marked {
			if seq >= acked && !w.seen(seq) {
				t.Fatalf("round %d: seen(%d) = false at the end, want true (mark %d)", round, seq, acked)
			}
		}
	}
}

// TestSeqWindow_FarSeqCostsAPage checks that one message far above the
// mark, just within the span, costs its page and the pointers before it,
// not a bitmap of the whole span: 1 024 incarnations with one such message
// each would otherwise take 2 GiB at a consumer.
func TestSeqWindow_FarSeqCostsAPage(t *testing.T) {
	w := &seqWindow{window: DefaultDedupWindow}
	w.advance(1)
	far := uint64(maxTrackedSpan - 1)
	w.mark(far)
	if !w.seen(far) || w.seen(far-1) || w.seen(2) {
		t.Fatalf("seen(far), seen(far-1), seen(2) = %v, %v, %v, want true, false, false", w.seen(far), w.seen(far-1), w.seen(2))
	}
	pages := 0
	for _, p := range w.pages {
		if p != nil {
			pages++
		}
	}
	if bytes := pages*pageWords*8 + cap(w.pages)*8; pages != 1 || bytes > 32<<10 {
		t.Errorf("one far seq holds %d pages and %d page pointers (%d bytes), want 1 page and at most 32 KiB", pages, cap(w.pages), bytes)
	}
}

// TestSeqWindow_LowWaterMarkIsExact checks dedup with a low-water mark: a
// message held back while more than the old 131 072-seq window passed it is
// still known as handled when its resend arrives, a seq below the mark is a
// duplicate, and memory stays bounded by what lies above the mark.
func TestSeqWindow_LowWaterMarkIsExact(t *testing.T) {
	d := newDedupSet(DefaultDedupWindow, 4)
	p := producerKey{"p1", 7}
	const late = 5
	d.observe(p, 1)
	d.mark(msgKey{p, late}) // handled, but its ack is lost: the producer keeps it
	for seq := uint64(6); seq <= 300_000; seq++ {
		d.observe(p, late) // seq 5 holds the mark down
		if d.seen(msgKey{p, seq}) {
			t.Fatalf("seen(%d) before it was handled = true", seq)
		}
		d.mark(msgKey{p, seq})
	}
	if !d.seen(msgKey{p, late}) {
		t.Fatalf("seen(%d) after 300 000 later seqs = false: its resend would be handled twice", late)
	}
	if !d.seen(msgKey{p, 4}) {
		t.Errorf("seen(4), below the low-water mark 5 = false, want true: it was acknowledged")
	}
	// The resend is acknowledged: the mark moves to 300 001 and the bitmap
	// shrinks to what lies above it.
	d.observe(p, 300_001)
	w := d.get(p, false)
	if !d.seen(msgKey{p, late}) || !d.seen(msgKey{p, 299_999}) || d.seen(msgKey{p, 300_001}) {
		t.Errorf("after the mark moved: seen(5), seen(299999), seen(300001) = %v, %v, %v, want true, true, false",
			d.seen(msgKey{p, late}), d.seen(msgKey{p, 299_999}), d.seen(msgKey{p, 300_001}))
	}
	if len(w.pages) > 1 {
		t.Errorf("bitmap pages after the mark moved to the top = %d, want at most 1", len(w.pages))
	}
}

// TestDedupSet_ProducersAndLRU checks that producer incarnations are tracked
// apart and that the least recently used one is forgotten past the bound.
func TestDedupSet_ProducersAndLRU(t *testing.T) {
	d := newDedupSet(100, 2)
	if got := d.window; got != 128 {
		t.Fatalf("newDedupSet(100, 2).window = %d, want 128 (rounded up to whole words)", got)
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

// TestDedupSet_IncarnationFlood checks that 1 100 incarnations nobody heard
// of, one message each, do not make the set forget a live producer that
// handled more, while a producer whose messages were all acknowledged is
// forgotten first.
func TestDedupSet_IncarnationFlood(t *testing.T) {
	d := newDedupSet(DefaultDedupWindow, DefaultDedupProducers)
	live := producerKey{"p1", 42}
	for seq := uint64(1); seq <= 20; seq++ {
		d.observe(live, 1) // seq 1 is still unacknowledged: 1..20 are pending
		d.mark(msgKey{live, seq})
	}
	settled := producerKey{"p2", 7}
	d.observe(settled, 1)
	d.mark(msgKey{settled, 1})
	d.observe(settled, 2) // seq 1 acknowledged end to end
	for i := range 1100 {
		fake := producerKey{"p1", uint64(1000 + i)}
		d.observe(fake, 1)
		d.mark(msgKey{fake, 1})
	}
	if got := d.producers(); got != DefaultDedupProducers {
		t.Fatalf("producers() = %d, want %d", got, DefaultDedupProducers)
	}
	for seq := uint64(1); seq <= 20; seq++ {
		if !d.seen(msgKey{live, seq}) {
			t.Fatalf("seen(p1/42/%d) after the flood = false, want true: the live producer was forgotten", seq)
		}
	}
	if d.get(settled, false) != nil {
		t.Errorf("the settled incarnation p2/7 is still tracked, want it forgotten first")
	}
}

// TestDedupSet_FrontIsMostRecent checks, over random traffic from more
// producers than the set holds, that the window get skips the map for is
// always the most recently used one and still in the set, and that a
// message marked is seen until its window is evicted.
func TestDedupSet_FrontIsMostRecent(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	d := newDedupSet(256, 4)
	marked := map[msgKey]bool{}
	for i := range 5000 {
		p := producerKey{fmt.Sprintf("p%d", rng.IntN(7)), 1}
		k := msgKey{p, uint64(1 + rng.IntN(200))}
		switch rng.IntN(3) {
		case 0:
			d.mark(k)
			marked[k] = true
		case 1:
			if got := d.seen(k); got != (marked[k] && d.index[p] != nil) {
				t.Fatalf("step %d: seen(%v) = %v, want %v", i, k, got, !got)
			}
		case 2:
			d.get(p, rng.IntN(2) == 0)
		}
		for k := range marked {
			if d.index[k.producerKey] == nil {
				delete(marked, k)
			}
		}
		if d.front != nil {
			if f := d.lru.Front(); f == nil || f.Value.(*seqWindow) != d.front || d.index[d.front.key] != f {
				t.Fatalf("step %d: front %v is not the most recent window in the set", i, d.front.key)
			}
		}
	}
}
