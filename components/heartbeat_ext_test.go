package components_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// TestHeartbeats_OnlyOnQuietStreams checks that heartbeats go only where
// nothing else does: while a producer publishes without pause, its stream
// and the consumer's carry next to no heartbeats (a heartbeat is due only
// after a tick with no other frame), and once the load stops both send
// them again at their interval. Every message is handled exactly once.
func TestHeartbeats_OnlyOnQuietStreams(t *testing.T) {
	const beat = 50 * time.Millisecond
	m := newMesh(t)
	var pubBeats, subBeats atomic.Int64
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1", intermediate.WithHeartbeatInterval(beat), countFrames(func(f any) {
		switch r := f.(type) {
		case *deliveryv1.PublishRequest:
			if r.GetHeartbeat() != nil {
				pubBeats.Add(1)
			}
		case *deliveryv1.SubscribeRequest:
			if r.GetHeartbeat() != nil {
				subBeats.Add(1)
			}
		}
	}))
	led := newLedger()
	m.consumer("c1", led.handler(), components.WithHeartbeatInterval(beat))
	waitConsumers(t, 1, h)
	p := m.producer("p1", components.WithHeartbeatInterval(beat))

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	l := startLoad(ctx, maxLoad, p)
	led.waitHandled(t, 200)
	pub0, sub0 := pubBeats.Load(), subBeats.Load()
	busy, handled0 := time.Now(), led.handled()
	time.Sleep(25 * beat)
	pubBusy, subBusy, busyFor := pubBeats.Load()-pub0, subBeats.Load()-sub0, time.Since(busy)
	if n := led.handled() - handled0; n < 1000 {
		t.Fatalf("handled %d messages in %v of load, want a busy stream", n, busyFor)
	}
	sent := l.halt(t)

	// Idle: both send heartbeats again.
	waitUntil(t, "heartbeats from the idle producer and consumer", func() bool {
		return pubBeats.Load()-pub0-pubBusy >= 5 && subBeats.Load()-sub0-subBusy >= 5
	})
	ticks := int64(busyFor / beat)
	t.Logf("while busy for %v (%d ticks): %d heartbeats from the producer, %d from the consumer", busyFor.Round(time.Millisecond), ticks, pubBusy, subBusy)
	if pubBusy > ticks/3 || subBusy > ticks/3 {
		t.Errorf("busy streams sent %d (producer) and %d (consumer) heartbeats in %d ticks, want at most %d each", pubBusy, subBusy, ticks, ticks/3)
	}
	closeProducers(t, p)
	led.checkExactlyOnce(t, sent)
}
