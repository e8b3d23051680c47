package components_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
)

// TestConsumer_LimitHandsTheRestOn checks WithLimit: a consumer that holds
// far more deliveries than its limit when it starts handling hands exactly
// the limit to its handler and stops with ErrLimitReached; the group's
// other consumer then handles the rest, before the limited one is closed,
// and every message is handled exactly once.
func TestConsumer_LimitHandsTheRestOn(t *testing.T) {
	const total, limit = 4000, 300
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	h2 := m.startHub(components.DefaultService, "i2", "127.0.0.1")
	all := newLedger()
	var mine atomic.Int64
	gate := make(chan struct{})
	a := m.consumer("a", func(ctx context.Context, d *components.Delivery) error {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		mine.Add(1)
		all.record(d)
		return nil
	}, components.WithLimit(limit), components.WithConcurrency(4))
	m.consumer("b", all.handler())
	waitConsumers(t, 2, h1, h2)
	p := m.producer("p")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	load := startLoad(ctx, total, p)

	// a holds many more deliveries than it will handle before it handles one.
	waitUntil(t, "a to hold more than its limit", func() bool {
		var held uint64
		for _, h := range []*hub{h1, h2} {
			for _, cs := range h.status(t).GetConsumers() {
				if cs.GetConsumerId() == "a" {
					held += cs.GetInFlight()
				}
			}
		}
		return held >= limit+200
	})
	close(gate)
	select {
	case <-a.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("consumer a did not stop; handled %d", mine.Load())
	}
	if err := a.Err(); !errors.Is(err, components.ErrLimitReached) {
		t.Errorf("a.Err() = %v, want ErrLimitReached", err)
	}
	// Everything is acknowledged while a, stopped, is not closed yet.
	sent := load.wait(t)
	closeProducers(t, p)
	all.checkExactlyOnce(t, sent)
	cctx, ccancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer ccancel()
	if err := a.Close(cctx); err != nil {
		t.Errorf("a.Close() = %v, want nil", err)
	}
	if got := mine.Load(); got != limit {
		t.Errorf("a handled %d messages, want exactly %d", got, limit)
	}
	if st := a.Stats(); st.Delivered != limit || st.Nacked != 0 {
		t.Errorf("a.Stats() = %+v, want Delivered=%d Nacked=0", st, limit)
	}
}

// TestConsumer_AtItsLimitOpensNoStream checks that a consumer stopped at
// its limit opens no stream to an intermediate that joins afterwards: it
// takes nothing more, and should its registration's draining flag not have
// reached etcd, that intermediate would route to it what it will not take.
func TestConsumer_AtItsLimitOpensNoStream(t *testing.T) {
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	all := newLedger()
	a := m.consumer("a", all.handler(), components.WithLimit(1))
	m.consumer("b", all.handler())
	waitConsumers(t, 2, h1)
	p := m.producer("p")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	sent := startLoad(ctx, 64, p).wait(t)
	select {
	case <-a.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("consumer a did not stop at its limit")
	}
	h2 := m.startHub(components.DefaultService, "i2", "127.0.0.1")
	waitConsumers(t, 1, h2) // b's stream: the consumers know of i2
	// A beat more for a's stream, had it started one.
	time.Sleep(300 * time.Millisecond)
	for _, cs := range h2.status(t).GetConsumers() {
		if cs.GetConsumerId() == "a" {
			t.Errorf("i2 has a stream of consumer a, stopped at its limit before i2 joined")
		}
	}
	closeProducers(t, p)
	all.checkExactlyOnce(t, sent)
}
