package seqindex

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestRing_Table checks adds, lookups and removals in and out of order,
// growth, and the refusal of a span beyond the limit.
func TestRing_Table(t *testing.T) {
	var r Ring[uint64]
	held := map[uint64]*uint64{}
	put := func(seq uint64, maxSpan int, want bool) {
		t.Helper()
		v := new(uint64)
		*v = seq
		if got := r.Put(seq, v, maxSpan); got != want {
			t.Fatalf("Put(%d, maxSpan %d) = %v, want %v", seq, maxSpan, got, want)
		}
		if want {
			held[seq] = v
		}
	}
	check := func(when string) {
		t.Helper()
		if r.Len() != len(held) {
			t.Errorf("%s: Len() = %d, want %d", when, r.Len(), len(held))
		}
		for seq, v := range held {
			if got := r.Get(seq); got != v {
				t.Errorf("%s: Get(%d) = %v, want %d", when, seq, got, *v)
			}
		}
		for _, seq := range []uint64{0, 1, 99, 100, 1 << 40} {
			if _, ok := held[seq]; !ok && r.Get(seq) != nil {
				t.Errorf("%s: Get(%d) = a value, want nil", when, seq)
			}
		}
	}
	remove := func(seq uint64) {
		t.Helper()
		got, want := r.Remove(seq), held[seq]
		if got != want {
			t.Fatalf("Remove(%d) = %v, want %v", seq, got, want)
		}
		delete(held, seq)
	}

	check("empty")
	for seq := uint64(10); seq < 20; seq++ {
		put(seq, 1<<10, true)
	}
	check("in order")
	put(5, 1<<10, true) // below the lowest
	put(3, 1<<10, true)
	put(30, 1<<10, true)
	check("below and above")
	remove(3)
	remove(30)
	remove(12)
	remove(12) // again: nothing there
	check("removed the ends and the middle")
	for seq := uint64(200); seq > 100; seq-- { // a hundred below each other: grows
		put(seq, 1<<10, true)
	}
	check("grown downwards")
	put(5000, 1<<10, false) // the span would be above 1 024
	put(5000, 1<<13, true)
	check("grown upwards")
	for seq := range held {
		remove(seq)
	}
	check("emptied")
	put(1<<40, 64, true) // a new span anywhere once empty
	put(1<<40-63, 64, true)
	put(1<<40-64, 64, false)
	check("a new span")
	remove(1 << 40)
	remove(1<<40 - 63)
	put(0, 64, true) // the whole range of seqs: no span may wrap around
	put(math.MaxUint64, 64, false)
	put(math.MaxUint64, math.MaxInt, false)
	check("the ends of the range")
}

// TestRing_MatchesAMap drives a Ring and a map with the same random steps:
// seqs added around a moving front, in and out of order, some refused for
// the span, and values removed in any order.
func TestRing_MatchesAMap(t *testing.T) {
	for trial := range 50 {
		rnd := rand.New(rand.NewPCG(uint64(trial), 7))
		var r Ring[int]
		model := map[uint64]*int{}
		maxSpan := 1 << (6 + rnd.IntN(6))
		front := uint64(1 + rnd.IntN(1000))
		for step := range 20000 {
			switch op := rnd.IntN(10); {
			case op < 5:
				seq := front + uint64(rnd.IntN(2*maxSpan)) - uint64(min(front-1, uint64(maxSpan)))
				if rnd.IntN(4) == 0 {
					front += uint64(rnd.IntN(64))
				}
				if model[seq] != nil {
					continue
				}
				v := new(int)
				if r.Put(seq, v, maxSpan) {
					model[seq] = v
				} else if r.Get(seq) != nil {
					t.Fatalf("trial %d, step %d: Put(%d) refused but Get finds a value", trial, step, seq)
				}
			default:
				var seq uint64
				for s := range model { // any one
					seq = s
					break
				}
				if rnd.IntN(5) == 0 {
					seq = front + uint64(rnd.IntN(maxSpan)) // maybe absent
				}
				if got, want := r.Remove(seq), model[seq]; got != want {
					t.Fatalf("trial %d, step %d: Remove(%d) = %p, want %p", trial, step, seq, got, want)
				}
				delete(model, seq)
			}
			if r.Len() != len(model) {
				t.Fatalf("trial %d, step %d: Len() = %d, want %d", trial, step, r.Len(), len(model))
			}
			if len(r.slots) > 0 && r.n > 0 && int(r.top-r.base) >= len(r.slots) {
				t.Fatalf("trial %d, step %d: span %d..%d beyond %d slots", trial, step, r.base, r.top, len(r.slots))
			}
		}
		for seq, v := range model {
			if got := r.Get(seq); got != v {
				t.Fatalf("trial %d, at the end: Get(%d) = %p, want %p", trial, seq, got, v)
			}
		}
		if len(r.slots) > 2*maxSpan {
			t.Errorf("trial %d: %d slots for a span of at most %d", trial, len(r.slots), maxSpan)
		}
	}
}
