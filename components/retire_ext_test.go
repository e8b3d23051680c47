package components_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
)

// gate holds a consumer's handler until opened.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func newGate() *gate { return &gate{ch: make(chan struct{})} }

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

// handler records into led once the gate is open.
func (g *gate) handler(led *ledger) components.Handler {
	return func(ctx context.Context, d *components.Delivery) error {
		select {
		case <-g.ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		led.record(d)
		return nil
	}
}

// heldRig is an intermediate i1 holding n messages of producer p1, all in
// the hand of consumer c1, whose handler waits for the gate.
type heldRig struct {
	m    *mesh
	i1   *hub
	led  *ledger
	gate *gate
	p    *components.Producer
	n    int
}

func newHeldRig(t *testing.T, n int) *heldRig {
	t.Helper()
	m := newMesh(t)
	r := &heldRig{m: m, led: newLedger(), gate: newGate(), n: n}
	r.i1 = m.startHub("intermediate", "i1", "127.0.0.1")
	m.waitMembers("intermediate", 1)
	m.consumer("c1", r.gate.handler(r.led))
	t.Cleanup(r.gate.open)
	waitConsumers(t, 1, r.i1)
	r.p = m.producer("p1")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	for i := range n {
		if _, err := r.p.Send(ctx, &messagev1.Message{Payload: []byte(fmt.Sprintf("m%d", i+1))}); err != nil {
			t.Fatalf("Send(#%d) = %v", i+1, err)
		}
	}
	waitUntil(t, fmt.Sprintf("i1 holding %d messages", n), func() bool { return r.i1.status(t).GetInFlight() == uint64(n) })
	return r
}

// finish opens the gate and checks that every message was handled once and
// acknowledged through the stream it was first sent on: none sent again.
func (r *heldRig) finish(t *testing.T) {
	t.Helper()
	r.gate.open()
	r.led.waitHandled(t, r.n)
	if err := r.i1.wait(t); err != nil {
		t.Errorf("Serve(old i1) = %v, want nil", err)
	}
	closeProducers(t, r.p)
	if st := r.p.Stats(); st.Acked != uint64(r.n) || st.Resent != 0 {
		t.Errorf("Stats(p1) = %+v, want Acked=%d Resent=0", st, r.n)
	}
	r.led.checkExactlyOnce(t, map[string]int{"p1": r.n})
}

// TestProducer_DrainLetsIntermediateFinish checks that a producer keeps the
// stream of a draining intermediate open until the intermediate has
// finished what it holds, so that those messages are acknowledged through
// it rather than sent again.
func TestProducer_DrainLetsIntermediateFinish(t *testing.T) {
	r := newHeldRig(t, 20)
	r.m.startHub("intermediate", "i2", "127.0.0.2")
	r.m.waitMembers("intermediate", 2)
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
		defer cancel()
		drained <- r.i1.srv.Drain(ctx)
	}()
	r.m.waitMembers("intermediate", 1)
	r.finish(t)
	if err := <-drained; err != nil {
		t.Errorf("Drain(i1) = %v, want nil", err)
	}
}

// TestProducer_MoveKeepsOldAcks checks that when an intermediate moves, the
// acknowledgements its old process sends while it fences itself still
// count: nothing it held is sent again.
func TestProducer_MoveKeepsOldAcks(t *testing.T) {
	r := newHeldRig(t, 20)
	moved := r.m.startHub("intermediate", "i1", "127.0.0.3")
	waitUntil(t, "p1 and c1 on the moved i1", func() bool {
		st := moved.status(t)
		return len(st.GetProducers()) == 1 && len(st.GetConsumers()) == 1
	})
	r.finish(t)
}

// TestConsumer_RetiredStreamGrace checks that a consumer cancels its stream
// to the old process of a moved intermediate that never learns it was
// replaced (it cannot reach etcd) once the grace after the new stream's
// welcome ran out, and says why the stream was retired.
func TestConsumer_RetiredStreamGrace(t *testing.T) {
	m := newMesh(t)
	zcli, px := m.etc.ProxiedClient(t)
	old := (&mesh{t: t, etc: m.etc, cli: zcli, log: m.log}).startHub("intermediate", "i1", "127.0.0.1")
	// Let the old process reach etcd again before it stops, so that it
	// drains and leaves promptly.
	t.Cleanup(func() { px.Blackhole(false) })
	m.waitMembers("intermediate", 1)
	// A short heartbeat interval makes the grace short: 60 intervals.
	var logs logtest.Recorder
	m.consumer("c1", newLedger().handler(), components.WithHeartbeatInterval(40*time.Millisecond), components.WithLogger(logs.Logger()))
	waitConsumers(t, 1, old)

	px.Blackhole(true)
	moved := m.startHub("intermediate", "i1", "127.0.0.2")
	waitConsumers(t, 1, moved)
	waitUntil(t, "no consumer left on the old i1", func() bool { return len(old.status(t).GetConsumers()) == 0 })
	if old.srv.Draining() {
		t.Errorf("old i1 Draining() = true, want false: it must not have learned it was replaced")
	}
	const warning = "retired stream outlived its grace"
	got := logs.Attrs(warning)
	if len(got) != 1 || got[0]["instance"] != "i1" || got[0]["retired"] != "its instance moved, and the new incarnation welcomed this consumer" {
		t.Errorf("warnings %q = %v, want one for i1 saying it moved", warning, got)
	}
}
