package components

import (
	"container/list"
)

// producerKey names one producer incarnation.
type producerKey struct {
	producer    string
	incarnation uint64
}

// msgKey is the identity of one message.
type msgKey struct {
	producerKey
	seq uint64
}

// seqWindow remembers which of the last `size` sequence numbers of one
// producer incarnation were handled: a high-water mark and a ring bitmap.
type seqWindow struct {
	key  producerKey
	hwm  uint64   // highest sequence number marked
	bits []uint64 // bit seq%size is set when seq in (hwm-size, hwm] was handled
}

func (w *seqWindow) size() uint64 { return uint64(len(w.bits)) * 64 }

// inWindow reports whether seq is recent enough to be remembered.
func (w *seqWindow) inWindow(seq uint64) bool {
	return seq <= w.hwm && w.hwm-seq < w.size()
}

func (w *seqWindow) bit(seq uint64) (int, uint64) {
	i := seq % w.size()
	return int(i / 64), 1 << (i % 64)
}

// seen reports whether seq was marked and is still in the window.
func (w *seqWindow) seen(seq uint64) bool {
	if !w.inWindow(seq) {
		return false
	}
	word, mask := w.bit(seq)
	return w.bits[word]&mask != 0
}

// mark records seq as handled; a seq older than the window is not recorded.
func (w *seqWindow) mark(seq uint64) {
	if seq > w.hwm {
		if seq-w.hwm >= w.size() {
			clear(w.bits)
		} else {
			for s := w.hwm + 1; s < seq; s++ {
				word, mask := w.bit(s)
				w.bits[word] &^= mask
			}
		}
		w.hwm = seq
		word, mask := w.bit(seq)
		w.bits[word] |= mask
		return
	}
	if !w.inWindow(seq) {
		return
	}
	word, mask := w.bit(seq)
	w.bits[word] |= mask
}

// dedupSet is the bounded memory of handled messages: one seqWindow per
// producer incarnation, at most maxProducers of them, least recently used
// forgotten first. It is not safe for concurrent use.
type dedupSet struct {
	words        int
	maxProducers int
	lru          *list.List // of *seqWindow, most recent first
	index        map[producerKey]*list.Element
}

func newDedupSet(window, maxProducers int) *dedupSet {
	return &dedupSet{
		words:        max((window+63)/64, 1),
		maxProducers: max(maxProducers, 1),
		lru:          list.New(),
		index:        make(map[producerKey]*list.Element),
	}
}

// seen reports whether k was marked and is still remembered.
func (d *dedupSet) seen(k msgKey) bool {
	e := d.index[k.producerKey]
	if e == nil {
		return false
	}
	d.lru.MoveToFront(e)
	return e.Value.(*seqWindow).seen(k.seq)
}

// mark records k as handled.
func (d *dedupSet) mark(k msgKey) {
	e := d.index[k.producerKey]
	if e == nil {
		if d.lru.Len() >= d.maxProducers {
			old := d.lru.Back()
			d.lru.Remove(old)
			delete(d.index, old.Value.(*seqWindow).key)
		}
		e = d.lru.PushFront(&seqWindow{key: k.producerKey, bits: make([]uint64, d.words)})
		d.index[k.producerKey] = e
	} else {
		d.lru.MoveToFront(e)
	}
	e.Value.(*seqWindow).mark(k.seq)
}

// producers returns how many producer incarnations are tracked.
func (d *dedupSet) producers() int { return d.lru.Len() }
