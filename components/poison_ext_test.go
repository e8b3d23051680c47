package components_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/seqrange"
)

// idLedger counts the handling of every (producer, incarnation, seq).
type idLedger struct {
	mu     sync.Mutex
	counts map[string]int
}

func (l *idLedger) handler() components.Handler {
	return func(_ context.Context, d *components.Delivery) error {
		id := d.Message.GetId()
		l.mu.Lock()
		l.counts[fmt.Sprintf("%s/%d/%d", id.GetProducerId(), id.GetIncarnation(), id.GetSeq())]++
		l.mu.Unlock()
		return nil
	}
}

// rawPublisher is a hostile publish stream over plaintext, where no
// certificate binds the ids it puts on messages.
type rawPublisher struct {
	t      *testing.T
	stream deliveryv1.PublishService_PublishClient
	next   uint64
}

func newRawPublisher(t *testing.T, addr, producerID string) *rawPublisher {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	t.Cleanup(cancel)
	r, err := openRawPublisher(ctx, t, addr, insecure.NewCredentials(), producerID)
	if err != nil {
		t.Fatalf("%v, want a welcome", err)
	}
	return r
}

// openRawPublisher opens a publish stream as producerID over creds, which
// ends with ctx, and returns it once welcomed, or what refused it.
func openRawPublisher(ctx context.Context, t *testing.T, addr string, creds credentials.TransportCredentials, producerID string) (*rawPublisher, error) {
	t.Helper()
	stream, err := deliveryv1.NewPublishServiceClient(rawConn(t, addr, creds)).Publish(ctx)
	if err != nil {
		t.Fatalf("Publish() = %v", err)
	}
	hello := &deliveryv1.PublishHello{ProducerId: producerID, Incarnation: 1, HeartbeatIntervalMs: 60000}
	if err := stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: hello}}); err != nil {
		t.Fatalf("Send(hello) = %v", err)
	}
	if resp, err := stream.Recv(); err != nil || resp.GetWelcome() == nil {
		return nil, fmt.Errorf("hello: %v, %w", resp, err)
	}
	return &rawPublisher{t: t, stream: stream, next: 1}, nil
}

// send publishes msgs in batches of 200 and returns the nacks it got, once
// every message was answered.
func (r *rawPublisher) send(msgs ...*messagev1.Message) []*messagev1.Nack {
	r.t.Helper()
	for len(msgs) > 0 {
		n := min(len(msgs), 200)
		b := &deliveryv1.PublishBatch{FirstSeq: r.next, Messages: msgs[:n]}
		if err := r.stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: b}}); err != nil {
			r.t.Fatalf("Send(batch) = %v", err)
		}
		var nacks []*messagev1.Nack
		answered := 0
		for answered < n {
			resp, err := r.stream.Recv()
			if err != nil {
				r.t.Fatalf("Recv() with %d of %d answered = %v", answered, n, err)
			}
			a := resp.GetAck()
			seqrange.ForEach(a.GetAcked(), func(uint64) { answered++ })
			answered += len(a.GetNacked())
			nacks = append(nacks, a.GetNacked()...)
		}
		r.next += uint64(n)
		msgs = msgs[n:]
		if len(msgs) == 0 {
			return nacks
		}
		if len(nacks) > 0 {
			r.t.Fatalf("nacks %v before the last batch", nacks)
		}
	}
	return nil
}

// TestDedup_PoisoningRefused checks, beside a live producer whose messages
// must each be handled once, that a forged message of that producer with a
// seq far beyond its window is refused (INVALID), that 1 100 fake
// incarnations of it do not make the consumer forget it, and that a replay
// of one of its messages after the flood is dropped as a duplicate.
func TestDedup_PoisoningRefused(t *testing.T) {
	m := newMesh(t)
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	led := &idLedger{counts: map[string]int{}}
	c := m.consumer("c1", led.handler())
	waitConsumers(t, 1, h)
	p := m.producer("p1")
	const n = 100
	var last *messagev1.Message
	for i := range n {
		last = &messagev1.Message{Payload: []byte(fmt.Sprint(i))}
		if _, err := p.Send(context.Background(), last); err != nil {
			t.Fatalf("Send(#%d) = %v", i+1, err)
		}
	}
	closeProducers(t, p)
	inc := p.Incarnation()
	replay := proto.Clone(last).(*messagev1.Message)

	hostile := newRawPublisher(t, h.addr, "mallory")
	huge := &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p1", Incarnation: inc, Seq: 1 << 40}, LowWaterSeq: 1, Payload: []byte("poison")}
	if nacks := hostile.send(huge); len(nacks) != 1 || nacks[0].GetReason() != messagev1.NackReason_NACK_REASON_INVALID {
		t.Fatalf("nacks of a seq far beyond the window = %v, want one INVALID", nacks)
	}
	var fakes []*messagev1.Message
	for i := range 1100 {
		fakes = append(fakes, &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p1", Incarnation: inc + 1 + uint64(i), Seq: 1}, LowWaterSeq: 1, Payload: []byte("fake")})
	}
	if nacks := hostile.send(fakes...); len(nacks) != 0 {
		t.Fatalf("nacks of the fake incarnations = %v, want none", nacks)
	}
	if nacks := hostile.send(replay); len(nacks) != 0 {
		t.Fatalf("nacks of the replay = %v, want none (dropped as a duplicate and acknowledged)", nacks)
	}

	led.mu.Lock()
	defer led.mu.Unlock()
	for seq := 1; seq <= n; seq++ {
		if got := led.counts[fmt.Sprintf("p1/%d/%d", inc, seq)]; got != 1 {
			t.Errorf("p1/%d/%d handled %d times, want 1", inc, seq, got)
		}
	}
	if got := led.counts[fmt.Sprintf("p1/%d/%d", inc, uint64(1)<<40)]; got != 0 {
		t.Errorf("the poisoned seq was handled %d times, want 0", got)
	}
	if got, want := len(led.counts), n+1100; got != want {
		t.Errorf("%d distinct messages handled, want %d", got, want)
	}
	if got := c.Stats().DuplicatesDropped; got != 1 {
		t.Errorf("DuplicatesDropped = %d, want 1 (the replay)", got)
	}
}

// TestDedup_ProducerChurnKeepsLiveProducer checks that short-lived
// producers coming and going, each handled more often than a live producer
// that joined after them, do not make a consumer with room for 8 producers
// forget the live one while it keeps sending: a resend of every one of its
// messages, still unacknowledged at its producer, is dropped.
func TestDedup_ProducerChurnKeepsLiveProducer(t *testing.T) {
	const (
		tracked = 8
		rounds  = 20
		each    = 3 // messages of a short-lived producer
	)
	m := newMesh(t)
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	led := &idLedger{counts: map[string]int{}}
	c := m.consumer("c1", led.handler(), components.WithDedupProducers(tracked), components.WithConcurrency(1))
	waitConsumers(t, 1, h)
	pub := newRawPublisher(t, h.addr, "churn")
	// Every message carries low_water_seq 1: its producer heard of no
	// acknowledgement yet, so what it sent may come again.
	message := func(producer string, seq uint64) *messagev1.Message {
		return &messagev1.Message{Id: &messagev1.MessageId{ProducerId: producer, Incarnation: 1, Seq: seq}, LowWaterSeq: 1, Payload: []byte(producer)}
	}
	churner := 0
	churn := func() {
		churner++
		id := fmt.Sprintf("short%d", churner)
		var msgs []*messagev1.Message
		for seq := uint64(1); seq <= each; seq++ {
			msgs = append(msgs, message(id, seq))
		}
		if nacks := pub.send(msgs...); len(nacks) != 0 {
			t.Fatalf("nacks of %s = %v, want none", id, nacks)
		}
	}
	for range tracked - 1 {
		churn()
	}
	var live []*messagev1.Message
	for seq := uint64(1); seq <= rounds; seq++ {
		live = append(live, message("live", seq))
		if nacks := pub.send(live[len(live)-1]); len(nacks) != 0 {
			t.Fatalf("nacks of live/%d = %v, want none", seq, nacks)
		}
		churn()
	}
	if nacks := pub.send(live...); len(nacks) != 0 {
		t.Fatalf("nacks of the resent live messages = %v, want none", nacks)
	}

	led.mu.Lock()
	defer led.mu.Unlock()
	for seq := 1; seq <= rounds; seq++ {
		if got := led.counts[fmt.Sprintf("live/1/%d", seq)]; got != 1 {
			t.Errorf("live/1/%d handled %d times, want 1", seq, got)
		}
	}
	if got := c.Stats().DuplicatesDropped; got != rounds {
		t.Errorf("DuplicatesDropped = %d, want %d (the resent live messages)", got, rounds)
	}
	if got, want := len(led.counts), rounds+each*churner; got != want {
		t.Errorf("%d distinct messages handled, want %d", got, want)
	}
}
