package seqindex

// minRing is the number of slots a Ring starts with.
const minRing = 64

// keepRing is the most slots an empty Ring keeps for its next values; a
// larger array, grown for a burst, is let go.
const keepRing = 4096

// Ring holds values under sequence numbers that arrive in any order within
// a bounded span: a slot per seq between the lowest and the highest held,
// addressed by the seq's offset from the lowest. Lookups, adds and removals
// cost an offset computation, whatever the order; the array doubles when
// the span outgrows it, up to the span the caller allows. A removal leaves
// the ends of the span where they are: they move in to the values held only
// when an add needs the room, so a value held for long does not make every
// removal beside it walk the empty slots back to it. The zero value is an
// empty ring ready to use. A Ring is not safe for concurrent use.
type Ring[T any] struct {
	slots []*T   // len is a power of two; nil is an empty slot
	head  int    // slot of base
	base  uint64 // at or below the lowest seq held, while n > 0
	top   uint64 // at or above the highest seq held, while n > 0; top-base < len(slots)
	n     int
	steps int // slots walked over when the span shrinks (tests)
}

// Len returns the number of values held.
func (r *Ring[T]) Len() int { return r.n }

// slot returns the index in slots of seq, or -1 when seq is outside the
// span held.
func (r *Ring[T]) slot(seq uint64) int {
	if r.n == 0 || seq < r.base || seq > r.top {
		return -1
	}
	return (r.head + int(seq-r.base)) & (len(r.slots) - 1)
}

// Get returns the value under seq, or nil.
func (r *Ring[T]) Get(seq uint64) *T {
	if i := r.slot(seq); i >= 0 {
		return r.slots[i]
	}
	return nil
}

// Put adds v, which must not be nil, under seq, which must hold no value.
// It reports false, and holds nothing, when seq would take the span from
// the lowest seq held to the highest beyond maxSpan seqs: the caller keeps
// such a value elsewhere. maxSpan bounds the array: 8 bytes a seq.
func (r *Ring[T]) Put(seq uint64, v *T, maxSpan int) bool {
	if v == nil {
		panic("seqindex: Ring.Put of nil")
	}
	if maxSpan < 1 {
		return false
	}
	if r.n == 0 {
		if len(r.slots) == 0 {
			r.slots = make([]*T, minRing)
		}
		r.head, r.base, r.top = 0, seq, seq
	}
	lo, hi := min(r.base, seq), max(r.top, seq)
	if d := hi - lo; d >= uint64(len(r.slots)) || d >= uint64(maxSpan) {
		// d+1 seqs: more than the slots or the limit. The ends may have
		// been left behind by removals: move them in first.
		r.tighten()
		lo, hi = min(r.base, seq), max(r.top, seq)
		switch d = hi - lo; {
		case d >= uint64(maxSpan):
			return false
		case d >= uint64(len(r.slots)):
			r.grow(lo, d+1)
		}
	}
	if seq < r.base {
		r.head = (r.head - int(r.base-seq)) & (len(r.slots) - 1)
		r.base = seq
	}
	r.top = hi
	i := (r.head + int(seq-r.base)) & (len(r.slots) - 1)
	if r.slots[i] != nil {
		panic("seqindex: Ring.Put over a value")
	}
	r.slots[i] = v
	r.n++
	return true
}

// tighten moves base up to the lowest seq held and top down to the
// highest. Each slot it walks over was taken into the span by an add, so
// the walks cost no more than the adds did. The ring holds a value.
func (r *Ring[T]) tighten() {
	mask := len(r.slots) - 1
	for r.slots[r.head] == nil {
		r.head = (r.head + 1) & mask
		r.base++
		r.steps++
	}
	for r.slots[(r.head+int(r.top-r.base))&mask] == nil {
		r.top--
		r.steps++
	}
}

// grow moves the values into an array of at least span slots, the lowest
// seq lo (at or below base) in the first.
func (r *Ring[T]) grow(lo, span uint64) {
	size := 2 * len(r.slots)
	for uint64(size) < span {
		size *= 2
	}
	slots := make([]*T, size)
	if r.n > 0 {
		mask := len(r.slots) - 1
		shift := int(r.base - lo)
		for off := 0; off <= int(r.top-r.base); off++ {
			slots[shift+off] = r.slots[(r.head+off)&mask]
		}
	}
	r.slots, r.head, r.base = slots, 0, lo
}

// Remove removes and returns the value under seq, or nil.
func (r *Ring[T]) Remove(seq uint64) *T {
	i := r.slot(seq)
	if i < 0 || r.slots[i] == nil {
		return nil
	}
	v := r.slots[i]
	r.slots[i] = nil
	r.n--
	if r.n == 0 {
		r.head, r.base, r.top = 0, 0, 0
		if len(r.slots) > keepRing {
			r.slots = nil
		}
	}
	return v
}
