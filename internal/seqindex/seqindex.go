package seqindex

import (
	"fmt"
	"iter"
)

// compactMin is the number of dead slots below which an Index never copies
// its live slots down: small indexes are not worth the copy.
const compactMin = 64

type slot[V any] struct {
	live bool
	v    V
}

// Index holds values under strictly increasing sequence numbers. The zero
// value is an empty index ready to use.
type Index[V any] struct {
	seqs  []uint64  // increasing; searched apart from the values, densely
	slots []slot[V] // slots[i] is under seqs[i]; slots[:head] are all dead
	head  int       // first slot that may be live
	live  int       // live slots
	last  uint64    // the highest seq pushed since the index was made or cleared
	any   bool      // a seq was pushed since then
}

// Len returns the number of values held.
func (x *Index[V]) Len() int { return x.live }

// Push appends v under seq, which must be above every seq pushed since the
// index was made or last cleared, removed or not; Push panics otherwise, as
// that would break the order every lookup relies on.
func (x *Index[V]) Push(seq uint64, v V) {
	if x.any && seq <= x.last {
		panic(fmt.Sprintf("seqindex: Push(%d) after %d", seq, x.last))
	}
	x.seqs = append(x.seqs, seq)
	x.slots = append(x.slots, slot[V]{live: true, v: v})
	x.live++
	x.last, x.any = seq, true
}

// Last returns the highest seq pushed since the index was made or last
// cleared, removed or not, and whether one was: a Push must be above it.
func (x *Index[V]) Last() (uint64, bool) { return x.last, x.any }

// find returns the index in slots of seq, or -1.
func (x *Index[V]) find(seq uint64) int {
	s := x.seqs[x.head:]
	if len(s) == 0 || seq < s[0] || seq > s[len(s)-1] {
		return -1
	}
	// Contiguous seqs put seq at its offset from the head.
	if off := seq - s[0]; off < uint64(len(s)) && s[off] == seq {
		return x.head + int(off)
	}
	i := x.search(x.head, seq)
	if i < len(x.seqs) && x.seqs[i] == seq {
		return i
	}
	return -1
}

// search returns the index of the first slot at or after from whose seq is
// not below seq.
func (x *Index[V]) search(from int, seq uint64) int {
	lo, hi := from, len(x.seqs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if x.seqs[m] < seq {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Get returns the value under seq and whether there is one.
func (x *Index[V]) Get(seq uint64) (V, bool) {
	if i := x.find(seq); i >= 0 && x.slots[i].live {
		return x.slots[i].v, true
	}
	var zero V
	return zero, false
}

// Remove removes and returns the value under seq, and whether there was one.
func (x *Index[V]) Remove(seq uint64) (V, bool) {
	var zero V
	i := x.find(seq)
	if i < 0 || !x.slots[i].live {
		return zero, false
	}
	v := x.slots[i].v
	x.kill(i)
	x.tidy()
	return v, true
}

// RemoveRange removes the values under first to last inclusive and calls f,
// when not nil, for each in sequence order. It costs a binary search plus
// the slots in the range, whatever the width of the range. It returns the
// number removed.
func (x *Index[V]) RemoveRange(first, last uint64, f func(seq uint64, v V)) int {
	n, _ := x.removeRange(x.head, first, last, f)
	if n > 0 {
		x.tidy()
	}
	return n
}

// Range is an inclusive range of sequence numbers.
type Range struct{ First, Last uint64 }

// RemoveRanges removes the values under every range, as RemoveRange does,
// in one pass when the ranges are in increasing order: each is searched for
// only past the one before, so many ranges cost no more than one walk of
// the index. Ranges out of order are still removed, at the cost of a search
// from the head. f must not change the index. It returns the number
// removed.
func (x *Index[V]) RemoveRanges(ranges []Range, f func(seq uint64, v V)) int {
	n, from := 0, x.head
	var prev uint64
	for _, r := range ranges {
		if x.live == 0 {
			break
		}
		if r.First < prev {
			from = x.head
		}
		k, end := x.removeRange(from, r.First, r.Last, f)
		n += k
		from, prev = end, r.First
	}
	if n > 0 {
		x.tidy()
	}
	return n
}

// removeRange kills the live slots under first to last, searching from
// slot from, and returns how many it killed and the slot past the range.
// The caller tidies.
func (x *Index[V]) removeRange(from int, first, last uint64, f func(seq uint64, v V)) (int, int) {
	if last < first || x.live == 0 {
		return 0, from
	}
	n := 0
	i := x.search(from, first)
	for ; i < len(x.seqs) && x.seqs[i] <= last; i++ {
		if !x.slots[i].live {
			continue
		}
		seq, v := x.seqs[i], x.slots[i].v
		x.kill(i)
		n++
		if f != nil {
			f(seq, v)
		}
	}
	return n, i
}

// Min returns the lowest seq held and whether the index holds any.
func (x *Index[V]) Min() (uint64, bool) {
	if x.live == 0 {
		return 0, false
	}
	return x.seqs[x.head], true
}

// All iterates over the values held, in sequence order. The index must not
// be changed during the iteration.
func (x *Index[V]) All() iter.Seq2[uint64, V] {
	return func(yield func(uint64, V) bool) {
		for i := x.head; i < len(x.slots); i++ {
			if x.slots[i].live && !yield(x.seqs[i], x.slots[i].v) {
				return
			}
		}
	}
}

// AppendTo appends the values held, in sequence order, to dst and returns
// the result.
func (x *Index[V]) AppendTo(dst []V) []V {
	for i := x.head; i < len(x.slots); i++ {
		if x.slots[i].live {
			dst = append(dst, x.slots[i].v)
		}
	}
	return dst
}

// Clear removes every value, keeping the backing array. Later pushes may
// start again from any seq.
func (x *Index[V]) Clear() {
	clear(x.slots)
	x.seqs, x.slots, x.head, x.live = x.seqs[:0], x.slots[:0], 0, 0
	x.last, x.any = 0, false
}

// kill turns slot i into a tombstone, dropping its value for the collector.
func (x *Index[V]) kill(i int) {
	var zero V
	x.slots[i].live, x.slots[i].v = false, zero
	x.live--
}

// tidy moves the head past dead slots and reclaims dead space: at once when
// the index empties, else by copying the live slots down once the dead ones
// are more than compactMin and outnumber the live ones. The copy is
// amortised over the removals that made the dead slots.
func (x *Index[V]) tidy() {
	if x.live == 0 {
		// Every slot is dead and holds no value.
		x.seqs, x.slots, x.head = x.seqs[:0], x.slots[:0], 0
		return
	}
	for !x.slots[x.head].live {
		x.head++
	}
	dead := len(x.slots) - x.live
	if dead <= compactMin || dead <= x.live {
		return
	}
	n := 0
	for i := x.head; i < len(x.slots); i++ {
		if x.slots[i].live {
			x.seqs[n], x.slots[n] = x.seqs[i], x.slots[i]
			n++
		}
	}
	clear(x.slots[n:])
	x.seqs, x.slots, x.head = x.seqs[:n], x.slots[:n], 0
}
