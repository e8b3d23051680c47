package vtcodec

import (
	"sync"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// released holds batches (*[]*messagev1.Message) of the messages of publish
// frames that their reader gave back (Releaser): the next publish frames are
// decoded into them, their ids and payload arrays included, instead of into
// new ones. An intermediate holds each message it admits until every group
// acknowledged it, and decodes a message of every producer's batch as its
// last one goes, so without this it allocates as many bytes a message as
// the message has. The messages go in and out a batch at a time: a
// sync.Pool operation and a cold message each for every message cost about
// as much as the allocation they spare.
var released sync.Pool

// releaseBatch is how many messages a Releaser gives back at a time.
const releaseBatch = 64

// maxSlack is how many bytes a payload array given back may have beyond
// the payload decoded into it: one that has more is not kept (see trim).
// A held message is charged its encoded size and the intermediate's
// MessageOverhead (640 bytes, of which a held message's decoded form and
// bookkeeping take about 560); the slack stays within what is left.
const maxSlack = 64

// maxPooledPayload is the largest payload array reused: a larger one is
// left to the collector, as a pool that kept every size would keep the
// largest.
const maxPooledPayload = 4 << 10

// Releaser gives messages decoded from publish frames back to the codec, for
// the next publish frames to be decoded into, a batch at a time. Its zero
// value is ready to use; it is not safe for concurrent use.
type Releaser struct {
	batch []*messagev1.Message
}

// Release gives m, decoded from a publish frame, back. Nothing may read or
// write m, its id or its payload after it, and nothing else may hold them:
// the caller gives up m, its id and its payload array. Its key, headers,
// trace context, routes and strings are not reused and stay valid wherever
// else they are held.
func (r *Releaser) Release(m *messagev1.Message) {
	if r.batch == nil {
		r.batch = make([]*messagev1.Message, 0, releaseBatch)
	}
	r.batch = append(r.batch, m)
	if len(r.batch) == releaseBatch {
		b := r.batch
		r.batch = nil
		released.Put(&b)
	}
}

// Pending returns the messages given back that wait for a batch to fill
// before they go to the codec.
func (r *Releaser) Pending() []*messagev1.Message { return r.batch }

// takeReleased fills ms with messages given back, as many as there are, and
// returns how many; each is emptied (renew).
func takeReleased(ms []*messagev1.Message) int {
	n := 0
	for n < len(ms) {
		p, _ := released.Get().(*[]*messagev1.Message)
		if p == nil {
			break
		}
		b := *p
		k := copy(ms[n:], b)
		if k < len(b) {
			*p = b[k:]
			released.Put(p)
		}
		n += k
	}
	for _, m := range ms[:n] {
		renew(m)
	}
	return n
}

// renew empties m, given back, for decoding into: it keeps its id, emptied,
// and its payload array when that is at most maxPooledPayload.
func renew(m *messagev1.Message) {
	id, payload := m.GetId(), m.GetPayload()
	*m = messagev1.Message{}
	if id != nil {
		*id = messagev1.MessageId{}
		m.Id = id
	} else {
		m.Id = new(messagev1.MessageId)
	}
	if cap(payload) <= maxPooledPayload {
		m.Payload = payload[:0]
	}
}

// trim gives each message ms, decoded into messages given back, a payload
// array of its own size when the one it was decoded into has more than
// maxSlack bytes to spare: a small payload decoded into a large array would
// hold the whole array for as long as the message is held, beyond what it
// is charged. Only such messages: an array the decoder allocated has what
// the allocator's size classes leave, which a copy would not shed.
func trim(ms []*messagev1.Message) {
	for _, m := range ms {
		if p := m.GetPayload(); cap(p)-len(p) > maxSlack {
			m.Payload = nil
			if len(p) > 0 {
				m.Payload = make([]byte, len(p))
				copy(m.Payload, p)
			}
		}
	}
}
