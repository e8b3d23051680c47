package seqindex

import (
	"fmt"
	"iter"
)

// compactMin is the number of dead slots below which an Index never copies
// its live slots down: small indexes are not worth the copy.
const compactMin = 64

type slot[V any] struct {
	seq  uint64
	live bool
	v    V
}

// Index holds values under strictly increasing sequence numbers. The zero
// value is an empty index ready to use.
type Index[V any] struct {
	slots []slot[V] // increasing seq; slots[:head] are all dead
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
	x.slots = append(x.slots, slot[V]{seq: seq, live: true, v: v})
	x.live++
	x.last, x.any = seq, true
}

// find returns the index in slots of seq, or -1.
func (x *Index[V]) find(seq uint64) int {
	s := x.slots[x.head:]
	if len(s) == 0 || seq < s[0].seq || seq > s[len(s)-1].seq {
		return -1
	}
	// Contiguous seqs put seq at its offset from the head.
	if off := seq - s[0].seq; off < uint64(len(s)) && s[off].seq == seq {
		return x.head + int(off)
	}
	i := x.search(seq)
	if i < len(x.slots) && x.slots[i].seq == seq {
		return i
	}
	return -1
}

// search returns the index of the first slot at or after head whose seq is
// not below seq.
func (x *Index[V]) search(seq uint64) int {
	lo, hi := x.head, len(x.slots)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if x.slots[m].seq < seq {
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
	if last < first || x.live == 0 {
		return 0
	}
	n := 0
	for i := x.search(first); i < len(x.slots) && x.slots[i].seq <= last; i++ {
		if !x.slots[i].live {
			continue
		}
		seq, v := x.slots[i].seq, x.slots[i].v
		x.kill(i)
		n++
		if f != nil {
			f(seq, v)
		}
	}
	if n > 0 {
		x.tidy()
	}
	return n
}

// Min returns the lowest seq held and whether the index holds any.
func (x *Index[V]) Min() (uint64, bool) {
	if x.live == 0 {
		return 0, false
	}
	return x.slots[x.head].seq, true
}

// All iterates over the values held, in sequence order. The index must not
// be changed during the iteration.
func (x *Index[V]) All() iter.Seq2[uint64, V] {
	return func(yield func(uint64, V) bool) {
		for i := x.head; i < len(x.slots); i++ {
			if x.slots[i].live && !yield(x.slots[i].seq, x.slots[i].v) {
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
	x.slots, x.head, x.live = x.slots[:0], 0, 0
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
		x.slots, x.head = x.slots[:0], 0
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
			x.slots[n] = x.slots[i]
			n++
		}
	}
	clear(x.slots[n:])
	x.slots, x.head = x.slots[:n], 0
}
