package components_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// TestProducer_BatchesDoNotSplitAcrossIntermediates checks that a producer
// sending one message at a time fills one batch before it starts the next,
// whatever the number of intermediates: 256 messages sent 100 µs apart to
// four intermediates arrive in about as many batches as through one
// intermediate, not in four times as many short ones. Every message is
// handled exactly once.
func TestProducer_BatchesDoNotSplitAcrossIntermediates(t *testing.T) {
	const (
		hubs  = 4
		total = 256
	)
	m := newMesh(t)
	var batches atomic.Int64
	count := countFrames(func(f any) {
		if r, ok := f.(*deliveryv1.PublishRequest); ok && r.GetBatch() != nil {
			batches.Add(1)
		}
	})
	var hs []*hub
	for i := range hubs {
		hs = append(hs, m.startHub(components.DefaultService, fmt.Sprintf("i%d", i+1), fmt.Sprintf("127.0.0.%d", i+1), count))
	}
	m.waitMembers(components.DefaultService, hubs)
	led := newLedger()
	m.consumer("c1", led.handler())
	waitConsumers(t, 1, hs...)
	p := m.producer("p1")
	for _, h := range hs {
		waitUntil(t, "p1's stream to every intermediate", func() bool {
			for _, ps := range h.status(t).GetProducers() {
				if ps.GetProducerId() == "p1" {
					return true
				}
			}
			return false
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	for i := range total {
		if _, err := p.Send(ctx, &messagev1.Message{Payload: fmt.Appendf(nil, "m%d", i)}); err != nil {
			t.Fatalf("Send(%d) = %v", i, err)
		}
		spin(100 * time.Microsecond)
	}
	closeProducers(t, p)
	led.checkExactlyOnce(t, map[string]int{"p1": total})
	got := batches.Load()
	// Measured: 12 or 13 batches; one message to each intermediate in
	// turn made 47 to 67.
	t.Logf("%d messages in %d batches through %d intermediates", total, got, hubs)
	if got > total/8 {
		t.Errorf("%d messages arrived in %d batches, want at most %d", total, got, total/8)
	}
}
