package seqindex

import (
	"encoding/binary"
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

// TestRing_RefusesBeyondMaxSpanWithinItsSlots checks the span limit where
// the array is already wider than it: the slots a ring starts with, or an
// array grown to a power of two above a limit that is not one.
func TestRing_RefusesBeyondMaxSpanWithinItsSlots(t *testing.T) {
	var r Ring[int]
	if !r.Put(1, new(int), 10) {
		t.Fatal("Put(1) into an empty ring refused")
	}
	if r.Put(50, new(int), 10) {
		t.Errorf("Put(50) over {1} with a span of at most 10 accepted (%d slots)", len(r.slots))
	}
	if !r.Put(10, new(int), 10) {
		t.Errorf("Put(10) over {1} with a span of at most 10 refused")
	}
	if r.Len() != 2 || r.Get(50) != nil {
		t.Errorf("Len() = %d, Get(50) = %v; want 2 values, none under 50", r.Len(), r.Get(50))
	}
}

// TestRing_WorkStaysFlatBehindAHeldValue checks that one value held for
// long (a slow handler) does not make every later add and removal walk the
// slots between it and them: the producer's later seqs come and go one at
// a time, above it and then below another. The slots visited are counted,
// not timed.
func TestRing_WorkStaysFlatBehindAHeldValue(t *testing.T) {
	const span = 1 << 14
	for _, tc := range []struct {
		name      string
		held      uint64
		from, to  uint64 // the seqs added and removed one at a time
		downwards bool
	}{
		{"above a held value", 1, 2, span, false},
		{"below a held value", span, span - 1, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Ring[int]
			r.Put(tc.held, new(int), span)
			r.steps = 0
			n := 0
			for s := tc.from; ; {
				if !r.Put(s, new(int), span) {
					t.Fatalf("Put(%d) refused", s)
				}
				if r.Remove(s) == nil {
					t.Fatalf("Remove(%d) found nothing", s)
				}
				n++
				if s == tc.to {
					break
				}
				if tc.downwards {
					s--
				} else {
					s++
				}
			}
			if r.Len() != 1 || r.Get(tc.held) == nil {
				t.Fatalf("Len() = %d, Get(%d) = %v; want the held value alone", r.Len(), tc.held, r.Get(tc.held))
			}
			if per := float64(r.steps) / float64(n); per > 4 {
				t.Errorf("%d slots visited for %d adds and removals: %.1f each, want a few", r.steps, n, per)
			}
		})
	}
}

// checkRing checks r against model: the same values, every slot outside
// them empty, the span within the array.
func checkRing(t *testing.T, r *Ring[int], model map[uint64]*int) {
	t.Helper()
	if r.Len() != len(model) {
		t.Fatalf("Len() = %d, want %d", r.Len(), len(model))
	}
	if n := len(r.slots); n&(n-1) != 0 {
		t.Fatalf("%d slots, not a power of two", n)
	}
	if r.n > 0 && (r.top < r.base || r.top-r.base >= uint64(len(r.slots))) {
		t.Fatalf("span %d..%d over %d slots", r.base, r.top, len(r.slots))
	}
	filled := 0
	for _, s := range r.slots {
		if s != nil {
			filled++
		}
	}
	if filled != len(model) {
		t.Fatalf("%d slots filled, want %d", filled, len(model))
	}
	for seq, v := range model {
		if r.Get(seq) != v {
			t.Fatalf("Get(%d) = %p, want %p", seq, r.Get(seq), v)
		}
	}
}

// TestRing_MatchesAMapAtTheEndsOfTheRange drives a Ring and a map with
// seqs around 0, 2^63 and the top of the range, near the values held and
// at the ends of their span, with limits that are and are not powers of
// two; a Put must be refused exactly when the values' span would be wider
// than the limit.
func TestRing_MatchesAMapAtTheEndsOfTheRange(t *testing.T) {
	centers := []uint64{0, 1, 63, 64, 1 << 14, 1<<63 - 1, 1 << 63, math.MaxUint64 - 1<<15, math.MaxUint64 - 100, math.MaxUint64}
	spans := []int{1, 2, 3, 63, 64, 65, 100, 128, 1000, 1 << 14}
	for trial := range 1500 {
		rnd := rand.New(rand.NewPCG(uint64(trial), 11))
		maxSpan := spans[rnd.IntN(len(spans))]
		var r Ring[int]
		model := map[uint64]*int{}
		for step := range 400 {
			c := centers[rnd.IntN(len(centers))]
			var seq uint64
			switch rnd.IntN(4) {
			case 0:
				seq = c + uint64(rnd.IntN(2*maxSpan+3))
			case 1:
				seq = c - uint64(rnd.IntN(2*maxSpan+3))
			case 2:
				seq = c + uint64(rnd.IntN(130)) - 65
			default:
				for k := range model { // near a value held
					seq = k + uint64(rnd.IntN(2*maxSpan+3)) - uint64(maxSpan) - 1
					break
				}
			}
			lo, hi := uint64(math.MaxUint64), uint64(0)
			for k := range model {
				lo, hi = min(lo, k), max(hi, k)
			}
			if len(model) > 0 && rnd.IntN(3) == 0 {
				seq = []uint64{lo, hi, seq}[rnd.IntN(3)]
			}
			if rnd.IntN(2) == 0 {
				if got, want := r.Remove(seq), model[seq]; got != want {
					t.Fatalf("trial %d, step %d: Remove(%d) = %p, want %p", trial, step, seq, got, want)
				}
				delete(model, seq)
			} else if model[seq] == nil {
				v := new(int)
				lo, hi = min(lo, seq), max(hi, seq)
				want := hi-lo < uint64(maxSpan)
				if got := r.Put(seq, v, maxSpan); got != want {
					t.Fatalf("trial %d, step %d: Put(%d) over %d..%d with a span of at most %d = %v, want %v", trial, step, seq, lo, hi, maxSpan, got, want)
				}
				if want {
					model[seq] = v
				}
			}
			checkRing(t, &r, model)
		}
	}
}

// FuzzRing checks a Ring against a map under any sequence of adds and
// removals around any base.
func FuzzRing(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 255, 255, 255, 255, 255, 255, 255, 255}, uint16(64), uint64(0))
	f.Add([]byte{4, 0, 1, 5, 0, 1, 8, 255, 0, 9, 255, 0}, uint16(100), uint64(math.MaxUint64-10))
	f.Fuzz(func(t *testing.T, ops []byte, limit uint16, base uint64) {
		maxSpan := int(limit%20000) + 1
		var r Ring[int]
		model := map[uint64]*int{}
		for ; len(ops) >= 3; ops = ops[3:] {
			op, off := ops[0], uint64(binary.LittleEndian.Uint16(ops[1:3]))
			seq := base + off*uint64(op>>2) - 30000
			if op&1 == 1 {
				if r.Remove(seq) != model[seq] {
					t.Fatalf("Remove(%d) = %p, want %p", seq, r.Get(seq), model[seq])
				}
				delete(model, seq)
			} else if model[seq] == nil {
				v := new(int)
				if r.Put(seq, v, maxSpan) {
					model[seq] = v
				}
			}
			checkRing(t, &r, model)
		}
	})
}
