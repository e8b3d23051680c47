package vtcodec

import (
	"sync"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// released holds the messages of publish batches that their reader gave
// back (Release): the next publish frames are decoded into them, their ids
// and payload arrays included, instead of into new ones. An intermediate
// holds each message it admits until every group acknowledged it, and
// decodes a message of every producer's batch as its last one goes, so
// without this it allocates as many bytes a message as the message has.
var released sync.Pool

// maxSlack is how many bytes a payload array given back may have beyond
// the payload decoded into it: one that has more is not kept (see trim).
// A held message is charged its encoded size and the intermediate's
// MessageOverhead; the slack stays well within that overhead.
const maxSlack = 256

// publishMessage returns a message for a publish batch: one given back if
// there is one, else a new one (newMessage). Either is empty but for its
// empty id, and perhaps an empty payload with room to decode into.
func publishMessage() *messagev1.Message {
	if m, ok := released.Get().(*messagev1.Message); ok {
		return m
	}
	return newMessage()
}

// Release gives m, decoded from a publish frame, back for the next frames
// to be decoded into. Nothing may read or write m, its id or its payload
// after it, and nothing else may hold them: the caller gives up m, its id
// and its payload array; its key, headers, trace context, routes and
// strings are not reused and stay valid wherever else they are held.
func Release(m *messagev1.Message) {
	id, payload := m.GetId(), m.GetPayload()
	reset(m)
	if id != nil {
		*id = messagev1.MessageId{}
		m.Id = id
	} else {
		m.Id = new(messagev1.MessageId)
	}
	if cap(payload) <= maxPooledPayload {
		m.Payload = payload[:0]
	}
	released.Put(m)
}

// maxPooledPayload is the largest payload array Release keeps: a larger
// one is left to the collector, as a pool that kept every size would keep
// the largest.
const maxPooledPayload = 4 << 10

// reset empties m as protobuf-go's Reset does.
func reset(m *messagev1.Message) {
	*m = messagev1.Message{}
}

// trim gives each message of a publish batch decoded into the messages
// publishMessage returned a payload array of its own size when the one it
// was decoded into has more than maxSlack bytes to spare: a small payload
// decoded into a large array would hold the whole array for as long as
// the message is held, beyond what it is charged.
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
