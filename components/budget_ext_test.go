package components_test

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/credentials/insecure"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// TestMemoryBudget_StalledConsumer checks that 1 MB messages owned by a
// registered consumer that grants no credit hold at most the memory budget
// of the intermediate, not one message more, while their producer keeps the
// rest; and that once the stalled consumer's registration goes and another
// consumer takes over, every message is handled exactly once.
func TestMemoryBudget_StalledConsumer(t *testing.T) {
	const (
		mb       = 1 << 20
		budget   = 6 * mb
		perPeer  = 4 * mb
		messages = 12 // per producer
	)
	m := newMesh(t)
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1",
		intermediate.WithMaxBatch(64, 2*mb),
		intermediate.WithMaxInFlightBytes(perPeer),
		intermediate.WithMemoryBudget(budget, 100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*defaultTestTimeout)
	defer cancel()

	// The stalled consumer: registered, subscribed, no credit ever.
	reg := registerConsumer(t, m, "stalled")
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	stream, err := deliveryv1.NewSubscribeServiceClient(rawConn(t, h.addr, insecure.NewCredentials())).Subscribe(sctx)
	if err != nil {
		t.Fatalf("Subscribe() = %v", err)
	}
	hello := &deliveryv1.SubscribeHello{ConsumerId: "stalled", Group: components.DefaultGroup, RegistrationEpoch: reg.Epoch(), HeartbeatIntervalMs: 60000}
	if err := stream.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Hello{Hello: hello}}); err != nil {
		t.Fatalf("Send(hello) = %v", err)
	}
	if resp, err := stream.Recv(); err != nil || resp.GetWelcome() == nil {
		t.Fatalf("Recv() = %v, %v, want a welcome", resp, err)
	}

	// Two producers: each stream holds at most perPeer, both the budget.
	p1 := m.producer("p1", components.WithBatch(4, 2*mb, time.Millisecond))
	p2 := m.producer("p2", components.WithBatch(4, 2*mb, time.Millisecond))
	payload := bytes.Repeat([]byte("x"), mb-256)
	for range messages {
		for _, p := range []*components.Producer{p1, p2} {
			if _, err := p.Send(ctx, &messagev1.Message{Payload: payload}); err != nil {
				t.Fatalf("Send() = %v", err)
			}
		}
	}
	var peak atomic.Int64
	sample := func() int {
		n := h.srv.HeldBytes()
		if int64(n) > peak.Load() {
			peak.Store(int64(n))
		}
		return n
	}
	waitUntil(t, "the budget filled", func() bool { return sample() > budget-2*mb })
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
				sample()
			}
		}
	}()
	// The producer keeps what does not fit and sends it again.
	waitUntil(t, "messages handed back for lack of room", func() bool { return p1.Stats().Resent+p2.Stats().Resent >= messages })
	for _, p := range []*components.Producer{p1, p2} {
		if got := p.Stats().InFlight; got != messages {
			t.Fatalf("producer in flight = %d, want %d (nothing given up)", got, messages)
		}
	}

	led := newLedger()
	m.consumer("c2", led.handler())
	if err := reg.Close(ctx); err != nil {
		t.Fatalf("Close(registration stalled) = %v", err)
	}
	scancel()
	led.waitHandled(t, 2*messages)
	closeProducers(t, p1, p2)
	close(stop)
	<-sampled
	led.checkExactlyOnce(t, map[string]int{"p1": messages, "p2": messages})
	if got := peak.Load(); got > budget || got < budget-2*mb {
		t.Fatalf("peak held bytes = %d, want within (%d, %d]", got, budget-2*mb, budget)
	}
	t.Logf("peak held bytes %d of a budget of %d; producers resent %d times", peak.Load(), budget, p1.Stats().Resent+p2.Stats().Resent)
}
