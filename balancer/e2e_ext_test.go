package balancer_test

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/butterfly-mesh/butterfly"
	"github.com/butterfly-mesh/butterfly/balancer"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

// TestEndToEnd_DrainThroughEtcd spreads RPCs over three instances registered
// in a real etcd and dialed with butterfly.DialOptions, and sends none to an
// instance later than 100ms after its SetDraining returned.
func TestEndToEnd_DrainThroughEtcd(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()

	servers := []*testServer{
		startServer(t, "a", "127.0.0.1"),
		startServer(t, "b", "127.0.0.2"),
		startServer(t, "c", "127.0.0.3"),
	}
	regs := make([]*registry.Registration, len(servers))
	for i, s := range servers {
		reg, err := registry.Register(ctx, cli, testService, s.name, s.addr)
		if err != nil {
			t.Fatalf("registry.Register(%s, %s) = %v", s.name, s.addr, err)
		}
		t.Cleanup(func() {
			cctx, ccancel := context.WithTimeout(context.Background(), defaultTestTimeout)
			defer ccancel()
			reg.Close(cctx)
		})
		regs[i] = reg
	}

	target := "butterfly:///" + testService
	logs := &recordHandler{}
	m := balancer.NewMembers()
	conn, err := grpc.NewClient(target, butterfly.DialOptions(cli,
		butterfly.WithLogger(slog.New(logs)),
		butterfly.WithMembers(m))...)
	if err != nil {
		t.Fatalf("grpc.NewClient(%q) = %v", target, err)
	}
	defer conn.Close()
	members, cancelSub := m.Subscribe()
	defer cancelSub()
	conn.Connect()
	waitMembers(t, members, "a, b, c READY", func(ms []balancer.Member) bool { return allReady(ms, "a", "b", "c") })

	if !logs.has("balancer: instance added", "instance", "b") {
		t.Errorf("balancer log has no %q for b, want the DialOptions logger to reach the balancer", "balancer: instance added")
	}

	health := healthpb.NewHealthClient(conn)
	check := func() {
		t.Helper()
		if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
			t.Fatalf("Check() = %v, want nil", err)
		}
	}
	for range 300 {
		check()
	}
	got := counts(servers...)
	for i, n := range got {
		if n < 50 {
			t.Errorf("counts(a, b, c)[%d] = %d, want >= 50 of 300", i, n)
		}
	}

	// Keep RPCs flowing while b drains.
	var completed atomic.Int64
	loadDone := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(loadDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
				t.Errorf("Check() during drain = %v, want nil", err)
				return
			}
			completed.Add(1)
		}
	}()
	if err := regs[1].SetDraining(ctx); err != nil {
		t.Fatalf("SetDraining(b) = %v", err)
	}
	drained := time.Now()
	waitMembers(t, members, "b draining", func(ms []balancer.Member) bool {
		m, ok := member(ms, "b")
		return ok && m.Draining()
	})
	// An RPC picked just before the update may still be on its way to b:
	// count from the second RPC completed after it.
	seen := completed.Load()
	waitFor(t, "two more RPCs", func() bool { return completed.Load() >= seen+2 })
	bAfter := servers[1].checks.Load()
	waitFor(t, "300ms of RPCs after the drain", func() bool { return time.Since(drained) > 300*time.Millisecond })
	close(stop)
	<-loadDone

	if last := time.Unix(0, servers[1].lastCheck.Load()); last.Sub(drained) > 100*time.Millisecond {
		t.Errorf("last Check on b came %v after SetDraining returned, want <= 100ms", last.Sub(drained))
	}
	if got := servers[1].checks.Load(); got != bAfter {
		t.Errorf("Check count of b = %d once its drain was seen, want %d", got, bAfter)
	}
	if servers[0].checks.Load()+servers[2].checks.Load() <= got[0]+got[2] {
		t.Errorf("counts(a, c) did not grow while b drained")
	}
}

// recordHandler is a slog handler that keeps every record.
type recordHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recordHandler) WithGroup(string) slog.Handler            { return h }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

// has reports whether a record with message msg has attribute key=value.
func (h *recordHandler) has(msg, key, value string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.records {
		found := false
		r.Attrs(func(a slog.Attr) bool {
			found = found || (a.Key == key && a.Value.String() == value)
			return !found
		})
		if r.Message == msg && found {
			return true
		}
	}
	return false
}

// TestEndToEnd_MembersPerConnection dials the same target twice, over two
// meshes (etcd prefixes) with an instance each: each connection's Members
// and views list its own instance alone, never the other connection's.
func TestEndToEnd_MembersPerConnection(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()

	target := "butterfly:///" + testService
	type mesh struct {
		prefix  string
		server  *testServer
		members *balancer.Members
		mu      sync.Mutex
		views   []registry.View
	}
	meshes := []*mesh{
		{prefix: "mesh-a", server: startServer(t, "a", "127.0.0.1")},
		{prefix: "mesh-b", server: startServer(t, "b", "127.0.0.2")},
	}
	for _, m := range meshes {
		reg, err := registry.Register(ctx, cli, testService, m.server.name, m.server.addr, registry.WithPrefix(m.prefix))
		if err != nil {
			t.Fatalf("registry.Register(%s) = %v", m.server.name, err)
		}
		t.Cleanup(func() {
			cctx, ccancel := context.WithTimeout(context.Background(), defaultTestTimeout)
			defer ccancel()
			reg.Close(cctx)
		})
		m.members = balancer.NewMembers()
		conn, err := grpc.NewClient(target, butterfly.DialOptions(cli,
			butterfly.WithPrefix(m.prefix),
			butterfly.WithMembers(m.members),
			butterfly.WithViews(func(v registry.View) {
				m.mu.Lock()
				defer m.mu.Unlock()
				m.views = append(m.views, v)
			}))...)
		if err != nil {
			t.Fatalf("grpc.NewClient(%q) = %v", target, err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.Connect()
	}
	for _, m := range meshes {
		members, cancelSub := m.members.Subscribe()
		ms := waitMembers(t, members, m.server.name+" READY", func(ms []balancer.Member) bool { return allReady(ms, m.server.name) })
		cancelSub()
		if len(ms) != 1 {
			t.Errorf("members of the connection to %s = %v, want %s alone", m.prefix, ms, m.server.name)
		}
		// The resolver hands a view to the connection, then to the view
		// function: the members can be READY first.
		deadline := time.Now().Add(defaultTestTimeout)
		for {
			m.mu.Lock()
			n := len(m.views)
			m.mu.Unlock()
			if n > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
		m.mu.Lock()
		if len(m.views) == 0 {
			t.Errorf("views of the connection to %s: none after %v, want at least one", m.prefix, defaultTestTimeout)
		}
		for _, v := range m.views {
			if len(v.Instances) != 1 || v.Instances[0].Name != m.server.name || v.Service != testService {
				t.Errorf("view of the connection to %s = %+v, want service %s with %s alone", m.prefix, v, testService, m.server.name)
			}
		}
		m.mu.Unlock()
	}
}

// TestEndToEnd_ViewsAfterTheBalancer registers an instance while a
// connection follows the views (butterfly.WithViews): when the view that
// lists it arrives, the balancer knows it already, so an RPC pinned to it
// then, without wait-for-ready, reaches it (a pinned pick of an instance
// the balancer does not know fails at once).
func TestEndToEnd_ViewsAfterTheBalancer(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()

	var conn *grpc.ClientConn
	checked := make(chan error, 2)
	seen := make(map[string]bool)
	target := "butterfly:///" + testService
	conn, err := grpc.NewClient(target, butterfly.DialOptions(cli,
		butterfly.WithViews(func(v registry.View) {
			for _, inst := range v.Instances {
				if seen[inst.Name] {
					continue
				}
				seen[inst.Name] = true
				// Synchronous on purpose: the pick happens before the
				// resolver can tell the balancer anything newer.
				_, err := healthpb.NewHealthClient(conn).Check(balancer.WithInstance(ctx, inst.Name), &healthpb.HealthCheckRequest{})
				checked <- err
			}
		}))...)
	if err != nil {
		t.Fatalf("grpc.NewClient(%q) = %v", target, err)
	}
	defer conn.Close()
	conn.Connect()

	for _, s := range []*testServer{startServer(t, "a", "127.0.0.1"), startServer(t, "b", "127.0.0.2")} {
		reg, err := registry.Register(ctx, cli, testService, s.name, s.addr)
		if err != nil {
			t.Fatalf("registry.Register(%s) = %v", s.name, err)
		}
		t.Cleanup(func() {
			cctx, ccancel := context.WithTimeout(context.Background(), defaultTestTimeout)
			defer ccancel()
			reg.Close(cctx)
		})
		select {
		case err := <-checked:
			if err != nil {
				t.Errorf("Check() pinned to %s when its first view arrived = %v, want nil", s.name, err)
			}
		case <-ctx.Done():
			t.Fatalf("no view listed %s", s.name)
		}
		if got := s.checks.Load(); got != 1 {
			t.Errorf("checks served by %s = %d, want 1", s.name, got)
		}
	}
}
