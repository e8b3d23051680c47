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
	all := newLedger()
	var mine atomic.Int64
	gate := make(chan struct{})
	a := stopsMidLoad(t, total, all, func(ctx context.Context, d *components.Delivery) error {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		mine.Add(1)
		all.record(d)
		return nil
	}, []components.ConsumerOption{components.WithLimit(limit), components.WithConcurrency(4)}, func(hubs []*hub) {
		// a holds many more deliveries than it will handle before it
		// handles one.
		waitUntil(t, "a to hold more than its limit", func() bool {
			var held uint64
			for _, h := range hubs {
				for _, cs := range h.status(t).GetConsumers() {
					if cs.GetConsumerId() == "a" {
						held += cs.GetInFlight()
					}
				}
			}
			return held >= limit+200
		})
		close(gate)
	}, components.ErrLimitReached)
	if got := mine.Load(); got != limit {
		t.Errorf("a handled %d messages, want exactly %d", got, limit)
	}
	if st := a.Stats(); st.Delivered != limit || st.Nacked != 0 {
		t.Errorf("a.Stats() = %+v, want Delivered=%d Nacked=0", st, limit)
	}
}

// stopsMidLoad runs total messages from producer p through two
// intermediates to consumer a (handler h, opts) and consumer b, which
// records into all; it calls mid (when not nil) once the load started,
// waits until a stops on its own with an error that is each of want, then
// checks, before closing a, that p's messages were all acknowledged, none
// handed back, and handled exactly once (a's handler records what it
// handles into all). It returns a, closed.
func stopsMidLoad(t *testing.T, total int, all *ledger, h components.Handler, opts []components.ConsumerOption, mid func([]*hub), want ...error) *components.Consumer {
	t.Helper()
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	h2 := m.startHub(components.DefaultService, "i2", "127.0.0.1")
	a := m.consumer("a", h, opts...)
	m.consumer("b", all.handler())
	waitConsumers(t, 2, h1, h2)
	p := m.producer("p")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	load := startLoad(ctx, total, p)
	if mid != nil {
		mid([]*hub{h1, h2})
	}
	select {
	case <-a.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("consumer a did not stop; stats %+v", a.Stats())
	}
	for _, w := range want {
		if err := a.Err(); !errors.Is(err, w) {
			t.Errorf("a.Err() = %v, want %v", err, w)
		}
	}
	// Everything is acknowledged while a, stopped, is not closed yet.
	sent := load.wait(t)
	closeProducers(t, p)
	all.checkExactlyOnce(t, sent)
	if st := p.Stats(); st.Nacked != 0 || st.Acked != uint64(total) {
		t.Errorf("producer stats = %+v, want Acked=%d Nacked=0", st, total)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer ccancel()
	if err := a.Close(cctx); err != nil {
		t.Errorf("a.Close() = %v, want nil", err)
	}
	return a
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
