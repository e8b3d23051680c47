package components

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/registry"
)

// newTestStream returns a ready stream of a bare producer, for the batching
// tests.
func newTestStream(maxBatch, maxBytes, maxInFlight int) (*Producer, *pubStream) {
	p := &Producer{ctx: context.Background(), window: make(chan struct{}, 1000), settled: make(chan struct{}, 1)}
	st := &pubStream{
		streamLife:  streamLife{wake: make(chan struct{}, 1)},
		link:        &pubLink{p: p},
		ready:       true,
		maxBatch:    maxBatch,
		maxBytes:    maxBytes,
		maxMsg:      1 << 20,
		maxRoutes:   1 << 20,
		maxInFlight: maxInFlight,
	}
	p.addStreamLocked(st)
	return p, st
}

func queue(p *Producer, sizes ...int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, n := range sizes {
		msg := &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p", Seq: uint64(i + 1)}, Payload: make([]byte, n)}
		p.window <- struct{}{}
		p.outbox.pushBack(&outMsg{msg: msg, size: n})
		p.unsettled++
	}
	p.dispatchLocked()
}

// TestPubStream_TakeBatches checks that take packs queued messages up to the
// count and byte limits, with contiguous stream sequence numbers, and that a
// single message over the byte limit still goes alone.
func TestPubStream_TakeBatches(t *testing.T) {
	p, st := newTestStream(3, 100, 100)
	queue(p, 10, 10, 10, 10, 60, 60, 200, 5)
	var got [][2]uint64 // first seq, count
	for b := st.take(); b != nil; b = st.take() {
		got = append(got, [2]uint64{b.GetFirstSeq(), uint64(len(b.GetMessages()))})
	}
	want := [][2]uint64{{1, 3}, {4, 2}, {6, 1}, {7, 1}, {8, 1}}
	if len(got) != len(want) {
		t.Fatalf("take() batches = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("take() batch %d = %v, want %v", i, got[i], want[i])
		}
	}
	if n := st.unacked.Len(); n != 8 {
		t.Errorf("unacked after take = %d, want 8", n)
	}
}

// TestProducer_DispatchLeastLoaded checks that messages go to the stream with
// the fewest unacknowledged messages, within its in-flight limit, and that a
// dropped stream's messages return to the head of the outbox in order.
func TestProducer_DispatchLeastLoaded(t *testing.T) {
	p, a := newTestStream(2, 1000, 4)
	b := &pubStream{streamLife: streamLife{wake: make(chan struct{}, 1)}, link: &pubLink{p: p}, ready: true, maxBatch: 2, maxBytes: 1000, maxMsg: 1 << 20, maxRoutes: 1 << 20, maxInFlight: 4}
	p.addStreamLocked(b)
	queue(p, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if a.unacked.Len() != 4 || b.unacked.Len() != 4 || p.outbox.len() != 2 {
		t.Fatalf("after dispatch: unacked a=%d b=%d outbox=%d, want 4, 4, 2", a.unacked.Len(), b.unacked.Len(), p.outbox.len())
	}
	p.requeueLocked(a)
	// a's four messages are back at the head, but only b remains and it is full.
	if got := p.outbox.len(); got != 6 {
		t.Fatalf("outbox after dropping a = %d, want 6", got)
	}
	prev := uint64(0)
	for i := p.outbox.head; i < len(p.outbox.items) && i < p.outbox.head+4; i++ {
		seq := p.outbox.items[i].msg.GetId().GetSeq()
		if seq <= prev {
			t.Errorf("outbox head seqs not in order: %d after %d", seq, prev)
		}
		prev = seq
	}
}

// TestProducer_LeastLoadedTies checks that any of the streams with equally
// few unacknowledged messages may be picked, that the one with fewer always
// is, and that a dropped stream is never picked again.
func TestProducer_LeastLoadedTies(t *testing.T) {
	p, a := newTestStream(2, 1000, 100)
	b := &pubStream{streamLife: streamLife{wake: make(chan struct{}, 1)}, link: &pubLink{p: p}, ready: true, maxBatch: 2, maxBytes: 1000, maxMsg: 1 << 20, maxRoutes: 1 << 20, maxInFlight: 100}
	c := &pubStream{streamLife: streamLife{wake: make(chan struct{}, 1)}, link: &pubLink{p: p}, ready: true, maxBatch: 2, maxBytes: 1000, maxMsg: 1 << 20, maxRoutes: 1 << 20, maxInFlight: 100}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.addStreamLocked(b)
	p.addStreamLocked(c)
	picked := map[*pubStream]int{}
	for range 300 {
		picked[p.leastLoadedLocked(nil)]++
	}
	// Each has a third of the picks, 100 ± 8.2: 50 is six deviations off.
	if len(picked) != 3 || picked[a] < 50 || picked[b] < 50 || picked[c] < 50 {
		t.Errorf("picks of three idle streams = %d, %d, %d (of 300), want each near 100", picked[a], picked[b], picked[c])
	}
	for _, st := range []*pubStream{a, c} {
		st.nextSeq++
		st.unacked.Push(st.nextSeq, &outMsg{msg: &messagev1.Message{}, stream: st, seq: st.nextSeq})
	}
	for range 6 {
		if got := p.leastLoadedLocked(nil); got != b {
			t.Fatalf("leastLoadedLocked() with b the least loaded = %p, want b (%p)", got, b)
		}
	}
	if got := p.leastLoadedLocked(b.link); got != a && got != c {
		t.Errorf("leastLoadedLocked(avoid b) = %p, want a (%p) or c (%p)", got, a, c)
	}
	p.requeueLocked(b)
	for range 6 {
		if got := p.leastLoadedLocked(nil); got == b || got == nil {
			t.Fatalf("leastLoadedLocked() after b was dropped = %p, want a (%p) or c (%p)", got, a, c)
		}
	}
	p.requeueLocked(a)
	p.requeueLocked(c)
	if got := p.leastLoadedLocked(nil); got != nil {
		t.Errorf("leastLoadedLocked() with no stream = %p, want nil", got)
	}
}

// TestDispatch_RoutesOverTheInstanceLimitFail checks that a message sent
// again whose routes exceed the max-batch-bytes of the instance it would go
// to is handed back for good (NACK_REASON_INVALID, naming the routes'
// size), not sent: over twice that limit its frame would be refused by
// gRPC, which ends the stream without a word on the message, and it would
// be sent again on every new stream.
func TestDispatch_RoutesOverTheInstanceLimitFail(t *testing.T) {
	p, st := newTestStream(64, 1<<20, 100)
	p.log = slog.New(slog.DiscardHandler)
	st.link.inst = registry.Instance{Name: "i1"}
	st.maxRoutes = 300
	msg := &messagev1.Message{
		Id:      &messagev1.MessageId{ProducerId: "p", Seq: 1},
		Payload: []byte("x"),
		Routes: []*messagev1.Route{
			{Group: strings.Repeat("g", 200), Handled: true},
			{Group: strings.Repeat("h", 200), Handled: true},
		},
	}
	done := make(chan error, 1)
	p.mu.Lock()
	p.window <- struct{}{}
	p.outbox.pushBack(&outMsg{msg: msg, size: msg.SizeVT(), done: done})
	p.unsettled++
	p.dispatchLocked()
	p.mu.Unlock()
	var ne *NackError
	if err := <-done; !errors.As(err, &ne) || ne.Reason != messagev1.NackReason_NACK_REASON_INVALID ||
		!strings.Contains(ne.Detail, "the routes of a message sent again") || !strings.Contains(ne.Detail, "exceed the 300 bytes instance i1 takes") {
		t.Fatalf("the message's answer = %v, want a NackError with NACK_REASON_INVALID naming its routes and the limit", err)
	}
	if st.unacked.Len() != 0 || len(st.sendq) != 0 || p.unsettled != 0 {
		t.Errorf("after the refusal: %d unacknowledged, %d queued on the stream, %d unsettled; want none", st.unacked.Len(), len(st.sendq), p.unsettled)
	}
}
