package components

import (
	"container/list"
	"slices"

	"github.com/butterfly-mesh/butterfly"
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

// maxTrackedSpan bounds the seqs one producer incarnation's bitmap covers
// above its low-water mark: the producer window, which producers keep to
// and intermediates enforce.
const maxTrackedSpan = butterfly.MaxSeqSpan

// pageSeqs is how many seqs one page of a window's bitmap covers (1 KiB of
// bits). A page is made when a seq in it is marked, so a window's memory
// follows what was handled: a seq far above the others costs its page and
// a pointer for each page between, not the bits between (2 MiB for one seq
// near the span's end as one bitmap, 17 KiB as pages).
const (
	pageWords = 128
	pageSeqs  = pageWords * 64
)

// seqPage is the bits of pageSeqs consecutive seqs.
type seqPage [pageWords]uint64

// seqWindow remembers which seqs of one producer incarnation were handled.
// Every seq below acked was acknowledged end to end (the producer's
// low-water mark, carried by its messages), so a copy of one arriving late
// is a duplicate. Above it, a paged bitmap from base holds exactly what was
// handled. For producers that send no mark, base trails the highest seq by
// the configured window (in whole pages) and what falls below it is
// forgotten.
type seqWindow struct {
	key     producerKey
	acked   uint64     // the highest low-water mark seen
	base    uint64     // the first seq pages[0] covers; a multiple of pageSeqs
	pages   []*seqPage // pages[k] covers the pageSeqs seqs from base+k*pageSeqs; nil while none was marked
	hwm     uint64     // the highest seq marked
	window  uint64     // how far base trails hwm for producers without a mark
	handled uint64     // how many seqs were marked
}

// pending reports whether a seq this window marked may still come again: it
// is not below the low-water mark, so its producer may not have heard that it
// was handled. A window with nothing pending is the cheapest to forget: its
// producer settled everything it handled and never sends it again (only a
// stale copy held by a frozen intermediate could still come).
func (w *seqWindow) pending() bool { return w.handled > 0 && w.hwm >= w.acked }

// advance raises the low-water mark: seqs below lwm were acknowledged.
func (w *seqWindow) advance(lwm uint64) {
	if lwm > w.acked {
		w.acked = lwm
		w.slide(lwm)
	}
}

// slide forgets the pages wholly below seq.
func (w *seqWindow) slide(seq uint64) {
	if seq < w.base || seq-w.base < pageSeqs { // not base+pageSeqs: it may wrap
		return
	}
	drop := (seq - w.base) / pageSeqs
	if drop >= uint64(len(w.pages)) {
		clear(w.pages)
		w.pages = w.pages[:0]
	} else {
		n := copy(w.pages, w.pages[drop:])
		clear(w.pages[n:])
		w.pages = w.pages[:n]
	}
	w.base += drop * pageSeqs
}

// seen reports whether seq was handled (or acknowledged below the mark).
func (w *seqWindow) seen(seq uint64) bool {
	if seq < w.acked {
		return true
	}
	if seq < w.base {
		return false // forgotten
	}
	i := seq - w.base
	if i/pageSeqs >= uint64(len(w.pages)) {
		return false
	}
	page := w.pages[i/pageSeqs]
	if page == nil {
		return false
	}
	j := i % pageSeqs
	return page[j/64]&(1<<(j%64)) != 0
}

// mark records seq as handled.
func (w *seqWindow) mark(seq uint64) {
	if seq < w.acked || seq < w.base {
		return
	}
	w.hwm = max(w.hwm, seq)
	w.handled++
	span := uint64(maxTrackedSpan)
	if w.acked == 0 {
		span = w.window
	}
	if w.hwm-w.base >= span {
		w.slide(w.hwm - span + 1)
		if seq < w.base {
			return
		}
	}
	i := seq - w.base
	k := i / pageSeqs
	if k >= uint64(len(w.pages)) {
		w.pages = slices.Grow(w.pages, int(k)+1-len(w.pages))
		w.pages = w.pages[:k+1]
	}
	page := w.pages[k]
	if page == nil {
		page = new(seqPage)
		w.pages[k] = page
	}
	j := i % pageSeqs
	page[j/64] |= 1 << (j % 64)
}

// dedupSet is the bounded memory of handled messages: one seqWindow per
// producer incarnation, at most maxProducers of them. It is not safe for
// concurrent use.
//
// When it is full, a new incarnation replaces the one that is cheapest to
// forget: first one with nothing pending (every seq it handled is below its
// mark, so none can come again), then, among the less recently used half,
// the one that handled the fewest messages, the least recently used among
// equals. A producer that keeps sending stays in the recent half, so
// short-lived producers that each handled more than it did cannot displace
// it; and a flood of incarnations nobody heard of, each with a message or a
// few, replaces its own kind: to displace a live producer's window that
// fell into the older half, each stranger would have to be handled more
// often than that producer was.
type dedupSet struct {
	window       uint64
	maxProducers int
	lru          *list.List // of *seqWindow, most recent first
	index        map[producerKey]*list.Element
	// front is the window get returned last, which is the front of lru:
	// the messages of a batch mostly come from one producer, and it spares
	// them the map.
	front *seqWindow
}

func newDedupSet(window, maxProducers int) *dedupSet {
	return &dedupSet{
		window:       uint64(max((window+63)/64, 1) * 64),
		maxProducers: max(maxProducers, 1),
		lru:          list.New(),
		index:        make(map[producerKey]*list.Element),
	}
}

// get returns the window of p, adding one when add is set.
func (d *dedupSet) get(p producerKey, add bool) *seqWindow {
	if d.front != nil && d.front.key == p {
		return d.front
	}
	e := d.index[p]
	if e != nil {
		d.lru.MoveToFront(e)
		d.front = e.Value.(*seqWindow)
		return d.front
	}
	if !add {
		return nil
	}
	if d.lru.Len() >= d.maxProducers {
		old := d.victim()
		d.lru.Remove(old)
		delete(d.index, old.Value.(*seqWindow).key)
	}
	w := &seqWindow{key: p, window: d.window}
	d.index[p] = d.lru.PushFront(w)
	d.front = w
	return w
}

// observe applies the low-water mark a message of p carries.
func (d *dedupSet) observe(p producerKey, lwm uint64) {
	if lwm > 0 {
		d.get(p, true).advance(lwm)
	}
}

// seen reports whether k was handled (or acknowledged) and is remembered.
func (d *dedupSet) seen(k msgKey) bool {
	w := d.get(k.producerKey, false)
	return w != nil && w.seen(k.seq)
}

// mark records k as handled.
func (d *dedupSet) mark(k msgKey) {
	d.get(k.producerKey, true).mark(k.seq)
}

// producers returns how many producer incarnations are tracked.
func (d *dedupSet) producers() int { return d.lru.Len() }

// victim returns the window to forget when the set is full: the first, from
// the least recently used, with nothing pending, else the one that handled
// the fewest messages among the less recently used half.
func (d *dedupSet) victim() *list.Element {
	var best *list.Element
	older := (d.lru.Len() + 1) / 2
	i := 0
	for e := d.lru.Back(); e != nil; e = e.Prev() {
		w := e.Value.(*seqWindow)
		if !w.pending() {
			return e
		}
		if i < older && (best == nil || w.handled < best.Value.(*seqWindow).handled) {
			best = e
		}
		i++
	}
	return best
}
