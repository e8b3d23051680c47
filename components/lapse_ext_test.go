package components_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/registry"
)

// handledLog records, per handling process, which seqs it handled.
type handledLog struct {
	mu sync.Mutex
	by map[string]map[uint64]int
}

func (h *handledLog) handler(who string, delay time.Duration) components.Handler {
	return func(ctx context.Context, d *components.Delivery) error {
		if delay > 0 {
			time.Sleep(delay)
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.by == nil {
			h.by = map[string]map[uint64]int{}
		}
		if h.by[who] == nil {
			h.by[who] = map[uint64]int{}
		}
		h.by[who][d.Message.GetId().GetSeq()]++
		return nil
	}
}

// TestConsumer_LapsedProcessGetsNothingOfItsSuccessor: consumer c1
// (process A) is cut from etcd only; its lease lapses and its key goes,
// while A runs on with its streams to i1 and i2 open. A second process B
// registers as c1 and cannot reach i1; c3 of group g2 cannot either. B's
// epoch is the store's revision, above A's: no intermediate takes A's
// streams for the registered c1, so i1 hands c1's messages back
// (OWNER_UNREACHABLE) and they reach B through i2. A handles none of the
// messages, all published after B registered; B handles each once, and so
// does c3. Before, B registered at epoch 1 again, as A had, and i1 gave
// c1's messages to A: each handled by A and by B.
func TestConsumer_LapsedProcessGetsNothingOfItsSuccessor(t *testing.T) {
	m := newMesh(t)
	short := []intermediate.Option{intermediate.WithOwnerWait(150 * time.Millisecond), intermediate.WithNoConsumerTimeout(300 * time.Millisecond)}
	i1 := m.startHub(components.DefaultService, "i1", "127.0.0.1", short...)
	i2 := m.startHub(components.DefaultService, "i2", "127.0.0.1", short...)
	m.waitMembers(components.DefaultService, 2)

	var log handledLog
	a, key := lapsedConsumer(t, m, log.handler("A", 600*time.Millisecond), i1, i2)
	t.Logf("c1's key (process A) lapsed; A still runs, its streams to i1 and i2 open")

	// Process B: c1 again, and c3 of group g2; neither reaches i1.
	noI1 := grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		if addr == i1.addr {
			return nil, errors.New("cut from i1")
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	})
	m.consumer("c1", log.handler("B", 0), components.WithDialOptions(noI1))
	m.consumer("c3", log.handler("c3", 0), components.WithGroup("g2"), components.WithDialOptions(noI1))
	waitConsumers(t, 3, i2) // A, B, c3
	waitConsumers(t, 1, i1) // A only
	const n = 40
	p := sendAfterSuccessor(t, m, key, n, 20*time.Millisecond, i1, i2)
	endLapsed(t, m, p, a, key, &log, n, i1, i2)
	log.mu.Lock()
	defer log.mu.Unlock()
	for seq := uint64(1); seq <= n; seq++ {
		if log.by["c3"][seq] != 1 {
			t.Errorf("group g2: p1/%d handled %d times, want once", seq, log.by["c3"][seq])
		}
	}
}

// TestConsumer_LapsedProcessTakesNothingOnItsSuccessorsBlip: as above (A,
// c1's first process, cut from etcd until its lease lapsed; B registered as
// c1), but B reaches every intermediate and no other group is involved. B's
// connections blip once while it has messages in hand: each intermediate
// keeps what B had not answered for B's next stream, never A's, whose
// epoch is not the registered one. Before, both had epoch 1, and A handled
// every message B had in hand too.
func TestConsumer_LapsedProcessTakesNothingOnItsSuccessorsBlip(t *testing.T) {
	m := newMesh(t)
	i1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	i2 := m.startHub(components.DefaultService, "i2", "127.0.0.1")
	m.waitMembers(components.DefaultService, 2)

	var log handledLog
	a, key := lapsedConsumer(t, m, log.handler("A", 0), i1, i2)

	bl := &blipper{}
	m.consumer("c1", log.handler("B", 200*time.Millisecond), components.WithConcurrency(4),
		components.WithDialOptions(grpc.WithContextDialer(bl.dial)))
	waitConsumers(t, 2, i1, i2) // A's stream and B's on each
	const n = 40
	p := sendAfterSuccessor(t, m, key, n, 0, i1, i2)
	time.Sleep(100 * time.Millisecond) // B has messages in hand
	bl.blip()
	t.Logf("B's connections blipped once")
	endLapsed(t, m, p, a, key, &log, n, i1, i2)
}

// lapsedConsumer starts process A as consumer c1 of the default group, with
// handler h and a lease of 1 s, on an etcd client through a proxy; once A
// reaches hubs, it cuts A off from etcd (not from the intermediates) until
// c1's key lapses. A runs on, its streams open. It returns A and c1's key.
func lapsedConsumer(t *testing.T, m *mesh, h components.Handler, hubs ...*hub) (*components.Consumer, string) {
	t.Helper()
	acli, px := m.etc.ProxiedClient(t)
	a, err := components.NewConsumer(acli, "c1", h,
		components.WithPrefix(testPrefix), components.WithLogger(m.log.With("proc", "A")), components.WithLeaseTTL(time.Second))
	if err != nil {
		t.Fatalf("NewConsumer(A) = %v", err)
	}
	t.Cleanup(func() {
		px.Blackhole(false)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = a.Close(ctx)
	})
	waitConsumers(t, 1, hubs...)
	px.Blackhole(true)
	key := registry.ConsumerKey(testPrefix, components.DefaultService, components.DefaultGroup, "c1")
	waitUntil(t, "c1's key to lapse", func() bool {
		resp, err := m.cli.Get(context.Background(), key)
		return err == nil && len(resp.Kvs) == 0
	})
	return a, key
}

// sendAfterSuccessor checks that c1's key is there again, B's, then sends
// n messages from producer p1, once it reaches hubs, pause apart, and
// returns p1.
func sendAfterSuccessor(t *testing.T, m *mesh, key string, n int, pause time.Duration, hubs ...*hub) *components.Producer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	resp, err := m.cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("c1's key: %v %v", resp, err)
	}
	t.Logf("c1 registered by process B: %s", resp.Kvs[0].Value)
	p := m.producer("p1")
	waitProducer(t, "p1", hubs...)
	for i := range n {
		if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatalf("Send(%d) = %v", i, err)
		}
		time.Sleep(pause)
	}
	return p
}

// endLapsed closes p, gives A its handler's time to finish what it was
// given, and fails t unless A, lapsed, handled none of p's n messages and
// B, the registered c1, each exactly once.
func endLapsed(t *testing.T, m *mesh, p *components.Producer, a *components.Consumer, key string, log *handledLog, n uint64, hubs ...*hub) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatalf("producer Close = %v", err)
	}
	time.Sleep(time.Second)
	if rv, err := m.cli.Get(ctx, key); err == nil && len(rv.Kvs) == 1 {
		t.Logf("c1's key at the end (process B's): %s", rv.Kvs[0].Value)
	}
	t.Logf("A stats %+v", a.Stats())
	for _, h := range hubs {
		for _, c := range h.status(t).GetConsumers() {
			t.Logf("%s: consumer stream %v", h.srv.Instance(), c)
		}
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.by["A"]) != 0 {
		t.Errorf("the lapsed process A handled %d messages, want none: all were published after B registered as c1", len(log.by["A"]))
	}
	for seq := uint64(1); seq <= n; seq++ {
		if c := log.by["A"][seq] + log.by["B"][seq]; c != 1 {
			t.Errorf("group default: p1/%d handled %d times (A %d, B %d), want once", seq, c, log.by["A"][seq], log.by["B"][seq])
		}
	}
}
