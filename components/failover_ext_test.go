package components_test

import (
	"context"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// maxLoad caps the messages per producer of a load that runs until a test
// stops it.
const maxLoad = 1 << 20

// failoverRig is two intermediates, two consumers and two producers under
// load, for the failure tests.
type failoverRig struct {
	m      *mesh
	n      int
	i1, i2 *hub
	led    *ledger
	c1, c2 *components.Consumer
	p1, p2 *components.Producer
	load   *load
	cancel context.CancelFunc
}

// newFailoverRig starts the rig; i2, when set, starts the second
// intermediate.
func newFailoverRig(t *testing.T, i2 func(m *mesh) *hub) *failoverRig {
	t.Helper()
	m := newMesh(t)
	r := &failoverRig{m: m, n: maxLoad, led: newLedger()}
	r.i1 = m.startHub("intermediate", "i1", "127.0.0.1")
	if i2 != nil {
		r.i2 = i2(m)
	} else {
		r.i2 = m.startHub("intermediate", "i2", "127.0.0.2")
	}
	m.waitMembers("intermediate", 2)
	r.c1 = m.consumer("c1", r.led.handler(), components.WithConcurrency(4))
	r.c2 = m.consumer("c2", r.led.handler(), components.WithConcurrency(4))
	waitConsumers(t, 2, r.i1, r.i2)
	r.p1 = m.producer("p1", components.WithWindow(2000))
	r.p2 = m.producer("p2", components.WithWindow(2000))
	return r
}

// run starts the load and waits until some of it was handled, through both
// intermediates: a fault that comes before the producers reach the second
// one hits nothing in flight. The load runs until finishWhen stops it, or
// r.n messages per producer.
func (r *failoverRig) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	r.cancel = cancel
	t.Cleanup(cancel)
	r.load = startLoad(ctx, r.n, r.p1, r.p2)
	r.led.waitHandled(t, min(2*r.n/3, 2000))
	waitUntil(t, "both intermediates carrying the load", func() bool {
		return r.led.instance("i1") > 0 && r.led.instance("i2") > 0
	})
}

// finishWhen stops the load once cond holds, then finishes.
func (r *failoverRig) finishWhen(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitUntil(t, what, cond)
	sent := r.load.halt(t)
	closeProducers(t, r.p1, r.p2)
	r.led.checkExactlyOnce(t, sent)
}

// TestDelivery_Crash checks that an intermediate stopped hard mid-run loses
// nothing, lets no duplicate reach a handler, and that the survivor carries
// the rest.
func TestDelivery_Crash(t *testing.T) {
	r := newFailoverRig(t, nil)
	r.run(t)
	r.i2.srv.Stop()
	if err := r.i2.wait(t); err != nil {
		t.Errorf("Serve(i2) after Stop = %v, want nil", err)
	}
	before := r.led.instance("i1")
	r.finishWhen(t, "i1 carrying the load", func() bool { return r.led.instance("i1") > before+100 })
	resent := r.p1.Stats().Resent + r.p2.Stats().Resent
	if resent == 0 {
		t.Errorf("Resent(p1)+Resent(p2) = 0, want > 0: the crash hit no message in flight")
	}
	dups := r.c1.Stats().DuplicatesDropped + r.c2.Stats().DuplicatesDropped
	t.Logf("resent %d, duplicates dropped %d", resent, dups)
}

// TestDelivery_Freeze checks that an intermediate whose connections stay open
// but carry nothing is detected by heartbeats and its messages are sent again
// within about a second.
func TestDelivery_Freeze(t *testing.T) {
	var px *proxy
	r := newFailoverRig(t, func(m *mesh) *hub {
		lis := mustListen(t, "127.0.0.2")
		px = startProxy(t, "127.0.0.2", lis.Addr().String())
		return m.serveHub("intermediate", "i2", lis, intermediate.WithAdvertiseAddr(px.addr()))
	})
	r.run(t)
	resentBefore := r.p1.Stats().Resent + r.p2.Stats().Resent
	frozen := time.Now()
	px.freeze()
	waitUntil(t, "messages resent", func() bool {
		return r.p1.Stats().Resent+r.p2.Stats().Resent > resentBefore
	})
	if d := time.Since(frozen); d > 2500*time.Millisecond {
		t.Errorf("messages resent %v after the freeze, want within ~1s (limit 2.5s)", d)
	}
	before := r.led.instance("i1")
	r.finishWhen(t, "i1 carrying the load", func() bool { return r.led.instance("i1") > before+100 })
}

// TestDelivery_Move checks that intermediate i2 restarted on another host
// under the same instance name, while producers and consumers keep running,
// loses nothing and gets traffic at its new address.
func TestDelivery_Move(t *testing.T) {
	r := newFailoverRig(t, nil)
	r.run(t)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if err := r.i2.srv.Drain(ctx); err != nil {
		t.Fatalf("Drain(i2) = %v, want nil", err)
	}
	moved := r.m.startHub("intermediate", "i2", "127.0.0.3")
	if got := moved.addr; got == r.i2.addr {
		t.Fatalf("moved i2 address = %s, want a new one", got)
	}
	r.finishWhen(t, "traffic through the moved i2", func() bool {
		st := moved.status(t)
		return st.GetReceived() > 0 && st.GetAddr() == moved.addr
	})
}

// TestDelivery_Zombie checks that the old i2, still alive when a new i2
// registers elsewhere, fences itself, drains and exits without touching the
// new registration, and that nothing is lost.
func TestDelivery_Zombie(t *testing.T) {
	r := newFailoverRig(t, nil)
	r.run(t)
	moved := r.m.startHub("intermediate", "i2", "127.0.0.3")
	if err := r.i2.wait(t); err != nil {
		t.Errorf("Serve(old i2) = %v, want nil", err)
	}
	r.finishWhen(t, "traffic through the new i2", func() bool {
		return moved.status(t).GetReceived() > 0
	})
	if got, old := moved.srv.Epoch(), r.i2.srv.Epoch(); got <= old {
		t.Errorf("Epoch(new i2) = %d, want above the old one's %d", got, old)
	}
	r.m.waitMembers("intermediate", 2)
}

// TestDelivery_DrainIntermediate checks that an intermediate drained under
// load loses nothing and lets no duplicate reach a handler.
func TestDelivery_DrainIntermediate(t *testing.T) {
	r := newFailoverRig(t, nil)
	r.run(t)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if err := r.i1.srv.Drain(ctx); err != nil {
		t.Fatalf("Drain(i1) = %v, want nil", err)
	}
	if err := r.i1.wait(t); err != nil {
		t.Errorf("Serve(i1) after Drain = %v, want nil", err)
	}
	r.m.waitMembers("intermediate", 1)
	before := r.led.instance("i2")
	r.finishWhen(t, "i2 carrying the load", func() bool { return r.led.instance("i2") > before+100 })
}

// TestDelivery_DrainProducer checks that a producer closed under load returns
// only once all its messages were handled, each exactly once, while another
// producer keeps sending.
func TestDelivery_DrainProducer(t *testing.T) {
	r := newFailoverRig(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	n := messageCount(t, 20000)
	half := n / 2
	l1 := startLoad(ctx, half, r.p1)
	l2 := startLoad(ctx, n, r.p2)
	l1.wait(t)
	closeCtx, closeCancel := context.WithTimeout(ctx, defaultTestTimeout)
	defer closeCancel()
	if err := r.p1.Close(closeCtx); err != nil {
		t.Fatalf("Close(p1) under load = %v, want nil", err)
	}
	if st := r.p1.Stats(); st.Acked != uint64(half) || st.InFlight != 0 {
		t.Errorf("Stats(p1) after Close = %+v, want Acked=%d InFlight=0", st, half)
	}
	if _, err := r.p1.Send(ctx, nil); err == nil {
		t.Errorf("Send(nil) after Close = nil, want an error")
	}
	sent := l2.wait(t)
	closeProducers(t, r.p2)
	sent["p1"] = half
	r.led.checkExactlyOnce(t, sent)
}

// TestDelivery_DrainConsumer checks that a consumer closed under load
// finishes what it holds and the other consumer takes the rest: nothing lost,
// no duplicates.
func TestDelivery_DrainConsumer(t *testing.T) {
	r := newFailoverRig(t, nil)
	r.run(t)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if err := r.c1.Close(ctx); err != nil {
		t.Fatalf("Close(c1) under load = %v, want nil", err)
	}
	before := r.c2.Stats().Delivered
	r.finishWhen(t, "c2 taking over", func() bool { return r.c2.Stats().Delivered > before+100 })
}
