package components

import (
	"context"
	"errors"
	"testing"
	"time"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// newSendProducer returns a producer with one ready stream and a window of
// window messages, which Send can be called on without an etcd or a server:
// its batches are taken from the stream and acknowledged by an acker.
func newSendProducer(t testing.TB, window int) (*Producer, *pubStream) {
	t.Helper()
	p, st := newTestStream(64, 1<<20, 1<<20)
	p.cfg = producerConfig{commonConfig: defaultCommon(), window: window}
	p.window = make(chan struct{}, window)
	p.msgLimit = p.cfg.maxMessageBytes()
	p.id, p.incarnation = "p", 1
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	p.ctx, p.cancel, p.done = ctx, cancel, make(chan struct{})
	return p, st
}

// acker acknowledges a stream's batches whole, with one ack frame it
// reuses.
type acker struct {
	rng *messagev1.SeqRange
	ack *deliveryv1.PublishAck
}

func newAcker() *acker {
	rng := &messagev1.SeqRange{}
	return &acker{rng: rng, ack: &deliveryv1.PublishAck{Acked: []*messagev1.SeqRange{rng}}}
}

// ackAll takes the stream's next batch and acknowledges all of it, and
// returns how many messages it held.
func (a *acker) ackAll(p *Producer, st *pubStream) int {
	batch := st.take()
	n := len(batch.GetMessages())
	if n == 0 {
		return 0
	}
	a.rng.First, a.rng.Last = batch.GetFirstSeq(), batch.GetFirstSeq()+uint64(n)-1
	p.handleAck(st, a.ack)
	return n
}

// TestProducer_SendDoneContext checks that Send with a context already done
// refuses the message even with window slots free, and takes nothing: no
// slot, no seq, no id on the message.
func TestProducer_SendDoneContext(t *testing.T) {
	p, _ := newSendProducer(t, 4)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	msg := &messagev1.Message{Payload: []byte("x")}
	for range 20 { // the outcome must not depend on a select's choice
		if _, err := p.Send(ctx, msg); !errors.Is(err, context.Canceled) {
			t.Fatalf("Send(done context) = %v, want %v", err, context.Canceled)
		}
	}
	if len(p.window) != 0 || p.nextSeq != 0 || p.outbox.len() != 0 || msg.Id != nil {
		t.Errorf("after refused sends: %d window slots taken, next seq %d, %d queued, id %v; want none", len(p.window), p.nextSeq, p.outbox.len(), msg.Id)
	}
}

// TestProducer_SendAfterClose checks that Send on a closed producer, or on
// one whose etcd client was closed, returns ErrClosed every time and takes
// no window slot, though slots are free.
func TestProducer_SendAfterClose(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(*Producer)
	}{
		{"closed", func(p *Producer) { p.closed.Store(true) }},
		{"client closed", func(p *Producer) { p.cancel() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := newSendProducer(t, 4)
			tc.close(p)
			for range 20 {
				if _, err := p.Send(context.Background(), &messagev1.Message{Payload: []byte("x")}); !errors.Is(err, ErrClosed) {
					t.Fatalf("Send() = %v, want %v", err, ErrClosed)
				}
			}
			if len(p.window) != 0 || p.outbox.len() != 0 {
				t.Errorf("%d window slots taken, %d queued; want none", len(p.window), p.outbox.len())
			}
		})
	}
}

// TestProducer_SendWaitsForTheWindow checks the slow path of Send: with
// the window full it waits, returns when an acknowledgement frees a slot,
// and returns the context's error when its context ends first.
func TestProducer_SendWaitsForTheWindow(t *testing.T) {
	p, st := newSendProducer(t, 2)
	for i := range 2 {
		if _, err := p.Send(context.Background(), &messagev1.Message{Payload: []byte{byte(i)}}); err != nil {
			t.Fatalf("Send(%d) = %v", i, err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte{2}}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send() with the window full = %v, want %v", err, context.DeadlineExceeded)
	}

	sent := make(chan *messagev1.MessageId, 1)
	go func() {
		id, err := p.Send(context.Background(), &messagev1.Message{Payload: []byte{3}})
		if err != nil {
			t.Errorf("Send() = %v", err)
		}
		sent <- id
	}()
	select {
	case id := <-sent:
		t.Fatalf("Send() returned %v with the window full", id)
	case <-time.After(20 * time.Millisecond):
	}
	if n := newAcker().ackAll(p, st); n != 2 {
		t.Fatalf("the first batch held %d messages, want 2", n)
	}
	if id := <-sent; id.GetSeq() != 3 {
		t.Errorf("the waiting Send got seq %d, want 3", id.GetSeq())
	}
}
