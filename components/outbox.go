package components

import messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"

// outMsg is one message accepted by Send. Its fields other than msg and
// done are guarded by Producer.mu.
type outMsg struct {
	msg    *messagev1.Message
	size   int
	done   chan error // SendWait's; nil for Send
	stream *pubStream // the stream it is assigned to, nil in the outbox
	seq    uint64     // its stream sequence number on stream
	ownSeq uint64     // the seq the producer gave it, kept apart from msg's id (a caller may send msg again); 0 when it came with its id
	sent   bool       // handed to gRPC on stream
	back   bool       // handed back at least once (a transient nack)
	avoid  *pubLink   // the link whose intermediate could not reach its owner or had no room; nil for none
}

// compactAfter is how many popped slots an outQueue leaves before its head
// before it copies its live messages down.
const compactAfter = 1024

// outQueue is a FIFO of messages that also takes messages back at its head.
type outQueue struct {
	items []*outMsg
	head  int
}

func (q *outQueue) len() int { return len(q.items) - q.head }

func (q *outQueue) pushBack(m *outMsg) { q.items = append(q.items, m) }

func (q *outQueue) front() *outMsg { return q.items[q.head] }

// popFront removes the first message. The dead space before head is
// reclaimed when the queue empties, and, under a standing backlog, once it
// is over compactAfter slots and more than half of the backing array, by
// copying the live messages down: the array stays within about twice the
// largest backlog.
func (q *outQueue) popFront() *outMsg {
	m := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	switch {
	case q.head == len(q.items):
		q.items, q.head = q.items[:0], 0
	case q.head > compactAfter && q.head*2 > len(q.items):
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	return m
}

// pushFront puts ms, in their order, before everything queued.
func (q *outQueue) pushFront(ms []*outMsg) {
	if len(ms) <= q.head {
		q.head -= len(ms)
		copy(q.items[q.head:], ms)
		return
	}
	items := make([]*outMsg, 0, len(ms)+q.len())
	items = append(items, ms...)
	items = append(items, q.items[q.head:]...)
	q.items, q.head = items, 0
}

// slabSize is how many outMsgs and message ids one allocation of a
// sendSlab holds: a batch's worth.
const slabSize = 64

// sendSlab hands out the outMsgs and message ids of Send a batch's worth
// at a time, one allocation each instead of one per message. A chunk lives
// while any outMsg in it does (or an id, which Send returns); a settled
// outMsg lets go of its message (settleLocked), so what a chunk keeps beyond
// the window is outMsgs and ids, never payloads. It is guarded by
// Producer.mu.
type sendSlab struct {
	msgs []outMsg
	ids  []messagev1.MessageId
}

func (s *sendSlab) newOutMsg() *outMsg {
	if len(s.msgs) == cap(s.msgs) {
		s.msgs = make([]outMsg, 0, slabSize)
	}
	s.msgs = s.msgs[:len(s.msgs)+1]
	return &s.msgs[len(s.msgs)-1]
}

func (s *sendSlab) newID() *messagev1.MessageId {
	if len(s.ids) == cap(s.ids) {
		s.ids = make([]messagev1.MessageId, 0, slabSize)
	}
	s.ids = s.ids[:len(s.ids)+1]
	return &s.ids[len(s.ids)-1]
}
