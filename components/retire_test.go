package components

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

// retireRig is a bare producer with streams that can be canceled, for the
// retirement tests.
type retireRig struct {
	p    *Producer
	ctxs map[*pubStream]context.Context
}

func newRetireRig() *retireRig {
	p := &Producer{
		ctx:      context.Background(),
		log:      slog.New(slog.DiscardHandler),
		window:   make(chan struct{}, 100),
		settled:  make(chan struct{}, 1),
		msgLimit: 1 << 20,
	}
	p.cfg.batchBytes = 1 << 20
	p.cfg.heartbeat = time.Second
	return &retireRig{p: p, ctxs: make(map[*pubStream]context.Context)}
}

// stream adds a welcomed stream to instance name.
func (r *retireRig) stream(name string, maxBatch int) *pubStream {
	ctx, cancel := context.WithCancelCause(context.Background())
	st := &pubStream{
		streamLife:  streamLife{cancel: cancel, wake: make(chan struct{}, 1)},
		link:        &pubLink{link: link{inst: registry.Instance{Name: name}}, p: r.p},
		ready:       true,
		maxBatch:    maxBatch,
		maxBytes:    1 << 20,
		maxMsg:      1 << 20,
		maxRoutes:   1 << 20,
		maxInFlight: 100,
	}
	r.ctxs[st] = ctx
	r.p.mu.Lock()
	r.p.addStreamLocked(st)
	r.p.mu.Unlock()
	return st
}

// assigned returns the producer seqs of the messages assigned to st, sorted.
func (r *retireRig) assigned(st *pubStream) []uint64 {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	var out []uint64
	for _, m := range st.unacked.All() {
		out = append(out, m.msg.GetId().GetSeq())
	}
	slices.Sort(out)
	return out
}

// TestProducer_DrainingNackRetiresStream checks that a DRAINING hand-back
// retires its stream: the message and the stream's unsent queue go to
// another stream, what was sent stays to be answered, and the stream ends
// once it is.
func TestProducer_DrainingNackRetiresStream(t *testing.T) {
	r := newRetireRig()
	a := r.stream("i1", 2)
	queue(r.p, 10, 10, 10, 10)
	if b := a.take(); len(b.GetMessages()) != 2 || b.GetFirstSeq() != 1 {
		t.Fatalf("take() = %d messages from seq %d, want 2 from 1", len(b.GetMessages()), b.GetFirstSeq())
	}
	b := r.stream("i2", 2)

	r.p.handleAck(a, &deliveryv1.PublishAck{Nacked: []*messagev1.Nack{{Seq: 1, Reason: messagev1.NackReason_NACK_REASON_DRAINING}}})

	r.p.mu.Lock()
	retired, cause, linkRetired, dead := a.retired, a.retireCause, a.link.retired, a.dead
	r.p.mu.Unlock()
	if !retired || !errors.Is(cause, errDrained) || !linkRetired || dead {
		t.Errorf("after a DRAINING nack: retired %v, cause %v, link retired %v, dead %v; want true, %v, true, false", retired, cause, linkRetired, dead, errDrained)
	}
	if got, want := r.assigned(a), []uint64{2}; !slices.Equal(got, want) {
		t.Errorf("messages on the draining stream = %v, want %v", got, want)
	}
	if got, want := r.assigned(b), []uint64{1, 3, 4}; !slices.Equal(got, want) {
		t.Errorf("messages on the other stream = %v, want %v", got, want)
	}
	if got := r.p.Stats().Resent; got != 1 {
		t.Errorf("resent = %d, want 1 (the nacked message; the others were never sent)", got)
	}

	r.p.handleAck(a, &deliveryv1.PublishAck{Acked: []*messagev1.SeqRange{{First: 2, Last: 2}}})
	r.p.mu.Lock()
	dead, unsettled := a.dead, r.p.unsettled
	r.p.mu.Unlock()
	if !dead || !errors.Is(context.Cause(r.ctxs[a]), errRetired) {
		t.Errorf("draining stream once answered: dead %v, cause %v; want true, %v", dead, context.Cause(r.ctxs[a]), errRetired)
	}
	if unsettled != 3 {
		t.Errorf("unsettled = %d, want 3", unsettled)
	}
}

// TestProducer_RetireKeepsSent checks that a retired stream keeps what it
// sent until it is answered, hands its unsent queue over at once, gets
// nothing new, and that a retired stream with nothing sent ends at once.
func TestProducer_RetireKeepsSent(t *testing.T) {
	r := newRetireRig()
	a := r.stream("i1", 2)
	queue(r.p, 10, 10, 10, 10)
	a.take()
	b := r.stream("i2", 2)

	r.p.mu.Lock()
	r.p.retireLocked(a, errRetired, time.Now().Add(time.Minute))
	r.p.mu.Unlock()
	if got, want := r.assigned(a), []uint64{1, 2}; !slices.Equal(got, want) {
		t.Errorf("messages on the retired stream = %v, want %v", got, want)
	}
	if got, want := r.assigned(b), []uint64{3, 4}; !slices.Equal(got, want) {
		t.Errorf("messages on the other stream = %v, want %v", got, want)
	}
	if r.ctxs[a].Err() != nil {
		t.Errorf("retired stream with 2 sent messages canceled: %v, want open", context.Cause(r.ctxs[a]))
	}

	queue(r.p, 10)
	if got := len(r.assigned(a)); got != 2 {
		t.Errorf("messages on the retired stream after one more Send = %d, want 2", got)
	}

	r.p.handleAck(a, &deliveryv1.PublishAck{Acked: []*messagev1.SeqRange{{First: 1, Last: 2}}})
	if !errors.Is(context.Cause(r.ctxs[a]), errRetired) {
		t.Errorf("retired stream once answered: cause %v, want %v", context.Cause(r.ctxs[a]), errRetired)
	}

	c := r.stream("i3", 2)
	r.p.mu.Lock()
	r.p.retireLocked(c, errDrained, time.Now().Add(time.Minute))
	dead := c.dead
	r.p.mu.Unlock()
	if !dead || !errors.Is(context.Cause(r.ctxs[c]), errDrained) {
		t.Errorf("retired stream with nothing sent: dead %v, cause %v; want true, %v", dead, context.Cause(r.ctxs[c]), errDrained)
	}
}

// TestProducer_SendCountsSizeExactly checks that Send counts the size of a
// message with the id and creation time it adds exactly, refuses a message
// those push over the limit without using up a sequence number, and refuses
// a message over the limit at once, even with a full window.
func TestProducer_SendCountsSizeExactly(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	const limit = 1000
	p, err := NewProducer(cli, "p1", WithPrefix("bt"), WithWindow(4), WithBatch(64, limit, 0))
	if err != nil {
		t.Fatalf("NewProducer() = %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = p.Close(ctx)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	msgs := []*messagev1.Message{
		{Payload: []byte("plain")},
		{Id: &messagev1.MessageId{ProducerId: "upstream", Incarnation: 7, Seq: 1 << 40}, LowWaterSeq: 1 << 40, CreateTimeUnixNano: 12345, Payload: []byte("forwarded")},
		{Key: []byte("k"), Headers: map[string]string{"a": "b"}, Payload: make([]byte, 300)},
	}
	for i, m := range msgs {
		if _, err := p.Send(ctx, m); err != nil {
			t.Fatalf("Send(#%d) = %v", i+1, err)
		}
	}
	p.mu.Lock()
	for i := range p.outbox.len() {
		m := p.outbox.items[p.outbox.head+i]
		if want := proto.Size(m.msg); m.size != want {
			t.Errorf("size of message #%d = %d, want %d", i+1, m.size, want)
		}
	}
	p.mu.Unlock()

	// Without the id and time Send adds, 2 bytes under the limit.
	edge := &messagev1.Message{Payload: make([]byte, limit-5)}
	if n := proto.Size(edge); n != limit-2 {
		t.Fatalf("proto.Size(edge) = %d, want %d", n, limit-2)
	}
	if _, err := p.Send(ctx, edge); !errors.Is(err, ErrMessageTooLarge) {
		t.Errorf("Send(edge) = %v, want %v", err, ErrMessageTooLarge)
	}
	if edge.Id != nil || edge.CreateTimeUnixNano != 0 {
		t.Errorf("refused message kept id %v, create time %d; want nil, 0", edge.Id, edge.CreateTimeUnixNano)
	}
	id, err := p.Send(ctx, &messagev1.Message{Payload: []byte("next")})
	if err != nil || id.GetSeq() != 3 {
		t.Errorf("Send(next) = seq %d, %v; want seq 3, nil", id.GetSeq(), err)
	}

	// The window is full now: a message over the limit is refused at once.
	_, err = p.Send(ctx, &messagev1.Message{Payload: make([]byte, limit)})
	if !errors.Is(err, ErrMessageTooLarge) {
		t.Errorf("Send(%d bytes) with a full window = %v, want %v", limit, err, ErrMessageTooLarge)
	}
	if st := p.Stats(); st.Sent != 4 || st.InFlight != 4 {
		t.Errorf("Stats() = %+v, want Sent=4 InFlight=4", st)
	}
}
