package components_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// cutter is a dialer whose connections can be cut, after which it refuses
// to connect: a component partitioned from the intermediates.
type cutter struct {
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func (c *cutter) dial(ctx context.Context, addr string) (net.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut {
		return nil, errors.New("cut")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.conns = append(c.conns, conn)
	}
	return conn, err
}

func (c *cutter) sever() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = true
	for _, conn := range c.conns {
		conn.Close()
	}
}

// heldHandler returns a handler that sends the seq of the first message it
// gets on entered, and records each message in all only once release is
// closed: the first message stays in the handler, the rest queue behind it.
func heldHandler(all *ledger, entered chan<- uint64, release <-chan struct{}) components.Handler {
	return func(ctx context.Context, d *components.Delivery) error {
		select {
		case entered <- d.Message.GetId().GetSeq():
		default:
		}
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		all.record(d)
		return nil
	}
}

// waitHeld waits for consumer a's first message in its handler, returning
// its seq, and for h to count more than one delivery in a's hands.
func waitHeld(t *testing.T, h *hub, entered <-chan uint64) uint64 {
	t.Helper()
	var first uint64
	select {
	case first = <-entered:
	case <-time.After(defaultTestTimeout):
		t.Fatal("a handled nothing")
	}
	waitUntil(t, "a to hold more than one message", func() bool {
		for _, cs := range h.status(t).GetConsumers() {
			if cs.GetConsumerId() == "a" {
				return cs.GetInFlight() > 1
			}
		}
		return false
	})
	return first
}

// closeAsync closes c in the background and returns its result.
func closeAsync(c *components.Consumer) <-chan error {
	closed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
		defer cancel()
		closed <- c.Close(ctx)
	}()
	return closed
}

// settle checks the result of a's Close, waits for the load to end and
// closes its producer p, and returns how many messages each producer sent.
func settle(t *testing.T, closed <-chan error, l *load, p *components.Producer) map[string]int {
	t.Helper()
	if err := <-closed; err != nil {
		t.Errorf("a.Close() = %v, want nil", err)
	}
	sent := l.wait(t)
	closeProducers(t, p)
	return sent
}

// TestConsumer_ClosingHandsNothingFromAnEndedStream checks that a consumer
// that drains does not handle the messages it received on a stream that
// has ended: the intermediate hands them to the group's other consumer once
// the drain marks the registration, and handling them as well would handle
// them twice. Consumer a is cut off from the intermediate while its handler
// holds one message and more are queued behind it; then a is closed and its
// handler let go. Only the message in the handler at the cut may be handled
// twice (the drain's documented limit: handled, not acknowledged); before,
// a handled every queued one too.
func TestConsumer_ClosingHandsNothingFromAnEndedStream(t *testing.T) {
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1", intermediate.WithOwnerWait(10*time.Second))
	all := newLedger()
	cut := &cutter{}
	entered := make(chan uint64, 1)
	gate := make(chan struct{})
	a := m.consumer("a", heldHandler(all, entered, gate), components.WithDialOptions(grpc.WithContextDialer(cut.dial)))
	m.consumer("b", all.handler())
	waitConsumers(t, 2, h1)
	p := m.producer("p")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	load := startLoad(ctx, 64, p) // 16 keys: some are a's

	// a holds its other messages queued behind the first.
	first := waitHeld(t, h1, entered)
	cut.sever()
	waitConsumers(t, 1, h1) // i1 saw a's stream end: its messages wait for a
	closed := closeAsync(a)
	waitUntil(t, "a's registration to drain", func() bool {
		_, draining := registration(m, components.DefaultService, components.DefaultGroup, "a")
		return draining
	})
	close(gate)
	sent := settle(t, closed, load, p)

	all.mu.Lock()
	defer all.mu.Unlock()
	for seq := uint64(1); seq <= uint64(sent["p"]); seq++ {
		switch n := all.counts["p"][seq]; {
		case n == 0:
			t.Errorf("message p/%d handled 0 times, want 1", seq)
		case n > 1 && seq != first:
			t.Errorf("message p/%d handled %d times, want 1 (only p/%d, in a's handler at the cut, may be handled twice)", seq, n, first)
		}
	}
	if st := a.Stats(); st.Delivered != 1 {
		t.Errorf("a handled %d messages, want 1: the one in its handler at the cut", st.Delivered)
	}
}

// txnGate holds one etcd client's Txn requests while set: a slow etcd as
// one consumer's writes see it, its watches and keep-alives flowing.
type txnGate struct {
	mu   sync.Mutex
	hold chan struct{}
	held atomic.Int32
}

func (g *txnGate) set() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hold = make(chan struct{})
}

func (g *txnGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.hold != nil {
		close(g.hold)
		g.hold = nil
	}
}

func (g *txnGate) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if method == "/etcdserverpb.KV/Txn" {
		if err := g.wait(ctx); err != nil {
			return err
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// wait holds a call while the gate is set, counting it, until the gate is
// released or ctx ends.
func (g *txnGate) wait(ctx context.Context) error {
	g.mu.Lock()
	h := g.hold
	g.mu.Unlock()
	if h == nil {
		return nil
	}
	g.held.Add(1)
	select {
	case <-h:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// blipper is a dialer whose connections can be broken while new ones are
// still allowed: a transient break, not a partition.
type blipper struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (b *blipper) dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		b.mu.Lock()
		b.conns = append(b.conns, conn)
		b.mu.Unlock()
	}
	return conn, err
}

func (b *blipper) blip() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		c.Close()
	}
	b.conns = nil
}

// TestConsumer_ClosingReopensABrokenStreamUntilItsMarkIsWritten checks
// that a consumer whose stream breaks for a moment while Close waits for
// etcd to take its drain mark opens another: until the mark it owns its
// messages, the intermediate sends what it did not answer again on the new
// stream, and they are answered there, each message handled once. Had the
// link stayed closed, the message in the handler at the break could not be
// acknowledged, and would go to b at the mark.
func TestConsumer_ClosingReopensABrokenStreamUntilItsMarkIsWritten(t *testing.T) {
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	gate := &txnGate{}
	acli, err := clientv3.New(clientv3.Config{
		Endpoints:   m.etc.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(gate.intercept)},
	})
	if err != nil {
		t.Fatalf("clientv3.New() = %v", err)
	}
	t.Cleanup(func() { gate.release(); acli.Close() })
	all := newLedger()
	bl := &blipper{}
	entered := make(chan uint64, 1)
	handlers := make(chan struct{})
	// a writes to etcd through acli; the mesh's other parts do not.
	a := (&mesh{t: t, etc: m.etc, cli: acli, log: m.log}).consumer("a", heldHandler(all, entered, handlers),
		components.WithDialOptions(grpc.WithContextDialer(bl.dial)))
	m.consumer("b", all.handler())
	waitConsumers(t, 2, h1)
	p := m.producer("p")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	load := startLoad(ctx, 64, p)

	waitHeld(t, h1, entered)
	gate.set() // the drain mark waits at a's etcd client
	closed := closeAsync(a)
	waitUntil(t, "Close's drain mark to wait", func() bool { return gate.held.Load() > 0 })
	bl.blip()
	waitConsumers(t, 1, h1)
	waitConsumers(t, 2, h1) // a opened another stream
	close(handlers)
	gate.release()
	sent := settle(t, closed, load, p)

	all.mu.Lock()
	defer all.mu.Unlock()
	for seq := uint64(1); seq <= uint64(sent["p"]); seq++ {
		if n := all.counts["p"][seq]; n != 1 {
			t.Errorf("message p/%d handled %d times, want 1", seq, n)
		}
	}
}
