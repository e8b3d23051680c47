package balancer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/balancer"
)

// TestBalancer_SpreadsAndSkipsDraining spreads unpinned RPCs over three
// servers and sends none to a server once its draining flag is resolved.
func TestBalancer_SpreadsAndSkipsDraining(t *testing.T) {
	a := startServer(t, "a", "127.0.0.1")
	b := startServer(t, "b", "127.0.0.2")
	c := startServer(t, "c", "127.0.0.3")
	cl := newTestClient(t, "", resolverState(a.instance(), b.instance(), c.instance()))
	members, cancel := cl.members.Subscribe()
	defer cancel()
	waitMembers(t, members, "a, b, c READY", func(ms []balancer.Member) bool { return allReady(ms, "a", "b", "c") })

	cl.checkN(t, 300)
	got := counts(a, b, c)
	if got[0]+got[1]+got[2] != 300 {
		t.Fatalf("counts(a, b, c) = %v, want a sum of 300", got)
	}
	for i, n := range got {
		if n < 50 {
			t.Errorf("counts(a, b, c)[%d] = %d, want >= 50 of 300", i, n)
		}
	}

	drainingB := b.instance()
	drainingB.Metadata.Draining = true
	cl.update(resolverState(a.instance(), drainingB, c.instance()))
	// The update is applied when UpdateState returns: no RPC may reach b.
	cl.checkN(t, 200)
	after := counts(a, b, c)
	if after[1] != got[1] {
		t.Errorf("Check count of draining b = %d, want %d (unchanged)", after[1], got[1])
	}
	if after[0]+after[2]-got[0]-got[2] != 200 {
		t.Errorf("counts(a, c) grew by %d, want 200", after[0]+after[2]-got[0]-got[2])
	}
	m := waitMembers(t, members, "b draining", func(ms []balancer.Member) bool {
		m, ok := member(ms, "b")
		return ok && m.Draining()
	})
	if len(m) != 3 {
		t.Errorf("len(members) = %d, want 3", len(m))
	}
}

// TestBalancer_OnlyDrainingLeft uses draining instances rather than fail
// when no other instance is READY.
func TestBalancer_OnlyDrainingLeft(t *testing.T) {
	a := startServer(t, "a", "127.0.0.1")
	inst := a.instance()
	inst.Metadata.Draining = true
	cl := newTestClient(t, "", resolverState(inst))
	cl.checkN(t, 10)
	if got := a.checks.Load(); got != 10 {
		t.Errorf("Check count of draining a = %d, want 10", got)
	}
}

// TestBalancer_PrefersLocalZone sends unpinned RPCs to the local zone while
// an eligible instance is there, and elsewhere once it drains.
func TestBalancer_PrefersLocalZone(t *testing.T) {
	a := startServer(t, "a", "127.0.0.1")
	b := startServer(t, "b", "127.0.0.2")
	c := startServer(t, "c", "127.0.0.3")
	ia, ib, ic := a.instance(), b.instance(), c.instance()
	ia.Metadata.Zone, ib.Metadata.Zone, ic.Metadata.Zone = "z1", "z2", "z2"
	cl := newTestClient(t, `{"localZone":"z1"}`, resolverState(ia, ib, ic))
	members, cancel := cl.members.Subscribe()
	defer cancel()
	waitMembers(t, members, "a, b, c READY", func(ms []balancer.Member) bool { return allReady(ms, "a", "b", "c") })

	cl.checkN(t, 50)
	if diff := cmp.Diff([]int64{50, 0, 0}, counts(a, b, c)); diff != "" {
		t.Errorf("counts(a, b, c) mismatch (-want +got):\n%s", diff)
	}
	ia.Metadata.Draining = true
	cl.update(resolverState(ia, ib, ic))
	cl.checkN(t, 100)
	got := counts(a, b, c)
	if got[0] != 50 || got[1] == 0 || got[2] == 0 || got[1]+got[2] != 100 {
		t.Errorf("counts(a, b, c) = %v, want [50 >0 >0] with b+c = 100", got)
	}
}

// TestBalancer_MovedInstance follows an instance to a new address: new
// pinned and unpinned RPCs reach only the new server, and the old connection
// closes once the component closes the stream still open on it.
func TestBalancer_MovedInstance(t *testing.T) {
	a := startServer(t, "a", "127.0.0.1")
	oldB := startServer(t, "b", "127.0.0.2")
	c := startServer(t, "c", "127.0.0.1")
	cl := newTestClient(t, "", resolverState(a.instance(), oldB.instance(), c.instance()))
	members, cancel := cl.members.Subscribe()
	defer cancel()
	waitMembers(t, members, "a, b, c READY", func(ms []balancer.Member) bool { return allReady(ms, "a", "b", "c") })

	ctx, cancelCtx := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancelCtx()
	oldCtx, closeOld := context.WithCancel(balancer.WithInstance(ctx, "b"))
	defer closeOld()
	oldStream, err := cl.health.Watch(oldCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("Watch(pinned b) = %v, want nil", err)
	}
	if _, err := oldStream.Recv(); err != nil {
		t.Fatalf("Recv() on pinned b = %v, want nil", err)
	}
	if got := oldB.watches.Load(); got != 1 {
		t.Fatalf("Watch count of old b = %d, want 1", got)
	}

	// b moves to 127.0.0.3 as a new incarnation.
	newB := startServer(t, "b", "127.0.0.3")
	movedB := newB.instance()
	movedB.Metadata.Epoch = 2
	cl.update(resolverState(a.instance(), movedB, c.instance()))

	// The component sees the move and opens the new stream first.
	ms := waitMembers(t, members, "b moved", func(ms []balancer.Member) bool {
		m, ok := member(ms, "b")
		return ok && m.Moves == 1
	})
	if m, _ := member(ms, "b"); m.Instance.Addr != newB.addr || m.Instance.Metadata.Epoch != 2 {
		t.Errorf("member b = %s epoch %d, want %s epoch 2", m.Instance.Addr, m.Instance.Metadata.Epoch, newB.addr)
	}
	newStream, err := cl.health.Watch(balancer.WithInstance(ctx, "b"), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("Watch(pinned b) after move = %v, want nil", err)
	}
	if _, err := newStream.Recv(); err != nil {
		t.Fatalf("Recv() on moved b = %v, want nil", err)
	}
	if got, want := []int64{oldB.watches.Load(), newB.watches.Load()}, []int64{1, 1}; !cmp.Equal(got, want) {
		t.Errorf("Watch counts (old b, new b) = %v, want %v", got, want)
	}
	if got := oldB.connsEnd.Load(); got != 0 {
		t.Errorf("closed connections of old b with a stream open = %d, want 0", got)
	}

	before := counts(a, oldB, newB, c)
	ctxB := balancer.WithInstance(ctx, "b")
	for i := range 20 {
		if err := cl.check(ctxB); err != nil {
			t.Fatalf("Check(pinned b) #%d = %v, want nil", i, err)
		}
	}
	cl.checkN(t, 90)
	after := counts(a, oldB, newB, c)
	if after[1] != before[1] {
		t.Errorf("Check count of old b = %d, want %d (unchanged)", after[1], before[1])
	}
	if after[2]-before[2] < 20 {
		t.Errorf("Check count of new b grew by %d, want >= 20", after[2]-before[2])
	}

	// The component closes the old stream: the old connection goes away.
	closeOld()
	waitFor(t, "old b connection closed", func() bool { return oldB.connsEnd.Load() == 1 })
	if got := oldB.connsOpen.Load(); got != 1 {
		t.Errorf("connections opened to old b = %d, want 1", got)
	}
}

// TestBalancer_PinnedGoneFailsFast fails a pinned pick of an unknown or
// removed instance at once, even when the RPC is wait-for-ready.
func TestBalancer_PinnedGoneFailsFast(t *testing.T) {
	a := startServer(t, "a", "127.0.0.1")
	b := startServer(t, "b", "127.0.0.2")
	cl := newTestClient(t, "", resolverState(a.instance(), b.instance()))
	members, cancel := cl.members.Subscribe()
	defer cancel()
	waitMembers(t, members, "a, b READY", func(ms []balancer.Member) bool { return allReady(ms, "a", "b") })

	ctx, cancelCtx := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancelCtx()
	if err := cl.check(balancer.WithInstance(ctx, "b")); err != nil {
		t.Fatalf("Check(pinned b) = %v, want nil", err)
	}
	cl.update(resolverState(a.instance()))
	for _, name := range []string{"b", "ghost"} {
		start := time.Now()
		err := cl.check(balancer.WithInstance(ctx, name), grpc.WaitForReady(true))
		if !balancer.IsInstanceUnavailable(err) || status.Code(err) != codes.Unavailable {
			t.Fatalf("Check(pinned %s) = %v, want an instance unavailable status", name, err)
		}
		if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, "butterfly: instance unavailable: "+name) {
			t.Errorf("Check(pinned %s) message = %q, want prefix %q", name, msg, "butterfly: instance unavailable: "+name)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("Check(pinned %s) took %v, want a fast failure", name, d)
		}
	}
	if got := b.checks.Load(); got != 1 {
		t.Errorf("Check count of removed b = %d, want 1", got)
	}
	if balancer.IsInstanceUnavailable(status.Error(codes.Unavailable, "other")) {
		t.Errorf("IsInstanceUnavailable(other Unavailable) = true, want false")
	}
	if !balancer.IsInstanceUnavailable(balancer.ErrInstanceUnavailable) {
		t.Errorf("IsInstanceUnavailable(ErrInstanceUnavailable) = false, want true")
	}
}

// TestBalancer_EjectsFailingServer ejects a server failing every RPC after
// three failures and takes it back after its ejection time.
func TestBalancer_EjectsFailingServer(t *testing.T) {
	a := startServer(t, "a", "127.0.0.1")
	b := startServer(t, "b", "127.0.0.2")
	c := startServer(t, "c", "127.0.0.3")
	c.fail.Store(true)
	cfg := `{"ejection":{"consecutiveFailures":3,"baseEjectionTime":"300ms","maxEjectionTime":"1s"}}`
	cl := newTestClient(t, cfg, resolverState(a.instance(), b.instance(), c.instance()))
	members, cancel := cl.members.Subscribe()
	defer cancel()
	waitMembers(t, members, "a, b, c READY", func(ms []balancer.Member) bool { return allReady(ms, "a", "b", "c") })

	ctx, cancelCtx := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancelCtx()
	failures := 0
	for c.checks.Load() < 3 {
		if err := cl.check(ctx); err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("Check() = %v, want nil or Unavailable", err)
			}
			failures++
		}
	}
	if failures != 3 {
		t.Fatalf("failed Checks = %d, want 3", failures)
	}
	waitMembers(t, members, "c ejected", func(ms []balancer.Member) bool {
		m, ok := member(ms, "c")
		return ok && m.Ejected
	})
	ejectedAt := time.Now()
	c.fail.Store(false)
	cl.checkN(t, 60)
	if got := c.checks.Load(); got != 3 {
		t.Errorf("Check count of ejected c = %d, want 3", got)
	}

	waitMembers(t, members, "c back", func(ms []balancer.Member) bool {
		m, ok := member(ms, "c")
		return ok && !m.Ejected
	})
	if d := time.Since(ejectedAt); d < 200*time.Millisecond {
		t.Errorf("c came back after %v, want about 300ms", d)
	}
	cl.checkN(t, 90)
	if got := c.checks.Load(); got <= 3 {
		t.Errorf("Check count of c after its ejection = %d, want > 3", got)
	}
}

// TestBalancer_NeverEjectsAll keeps the last instance even when it fails
// every RPC.
func TestBalancer_NeverEjectsAll(t *testing.T) {
	a := startServer(t, "a", "127.0.0.1")
	a.fail.Store(true)
	cl := newTestClient(t, `{"ejection":{"consecutiveFailures":2}}`, resolverState(a.instance()))
	ctx, cancelCtx := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancelCtx()
	for i := range 10 {
		if err := cl.check(ctx, grpc.WaitForReady(true)); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "test server failing") {
			t.Fatalf("Check() #%d = %v, want the server's Unavailable", i, err)
		}
	}
	if got := a.checks.Load(); got != 10 {
		t.Errorf("Check count of a = %d, want 10", got)
	}
}

// TestBalancer_NoInstances fails RPCs with an Unavailable naming the service
// while there is no instance, and lets wait-for-ready RPCs wait for one.
func TestBalancer_NoInstances(t *testing.T) {
	cl := newTestClient(t, "", resolverState())
	ctx, cancelCtx := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancelCtx()

	err := cl.check(ctx)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `no instances of service "intermediate"`) {
		t.Fatalf("Check() = %v, want Unavailable naming service \"intermediate\"", err)
	}
	if err := cl.check(balancer.WithInstance(ctx, "a")); !balancer.IsInstanceUnavailable(err) {
		t.Fatalf("Check(pinned a) = %v, want instance unavailable", err)
	}

	waited := make(chan error, 1)
	go func() { waited <- cl.check(ctx, grpc.WaitForReady(true)) }()
	select {
	case err := <-waited:
		t.Fatalf("wait-for-ready Check() = %v before any instance, want it to wait", err)
	case <-time.After(50 * time.Millisecond):
	}
	a := startServer(t, "a", "127.0.0.1")
	cl.update(resolverState(a.instance()))
	if err := <-waited; err != nil {
		t.Fatalf("wait-for-ready Check() = %v, want nil once a appears", err)
	}
	if got := a.checks.Load(); got != 1 {
		t.Errorf("Check count of a = %d, want 1", got)
	}
}

// TestBalancer_ConfigErrors rejects a bad policy config when the client is
// created.
func TestBalancer_ConfigErrors(t *testing.T) {
	_, err := grpc.NewClient("passthrough:///x",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(balancer.ServiceConfig(`{"backoff":{"baseDelay":"fast"}}`)))
	if err == nil || !strings.Contains(err.Error(), "fast") {
		t.Errorf("grpc.NewClient(bad config) = %v, want an error naming the bad duration", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Errorf("grpc.NewClient(bad config) = %v, want a config error", err)
	}
}

// TestSubscribe_Cancel closes the channel and is safe twice.
func TestSubscribe_Cancel(t *testing.T) {
	ch, cancel := balancer.NewMembers().Subscribe()
	cancel()
	cancel()
	if _, ok := <-ch; ok {
		t.Errorf("<-Subscribe() after cancel = open, want closed")
	}
}

// TestMembers_ForgottenAtClose closes a connection whose members are
// followed: the subscriber gets an empty list, and a later Subscribe gets
// nothing of the closed balancer.
func TestMembers_ForgottenAtClose(t *testing.T) {
	a := startServer(t, "a", "127.0.0.1")
	cl := newTestClient(t, "", resolverState(a.instance()))
	members, cancel := cl.members.Subscribe()
	defer cancel()
	waitMembers(t, members, "a READY", func(ms []balancer.Member) bool { return allReady(ms, "a") })
	cl.conn.Close()
	waitMembers(t, members, "no members", func(ms []balancer.Member) bool { return len(ms) == 0 })

	later, cancelLater := cl.members.Subscribe()
	defer cancelLater()
	select {
	case ms := <-later:
		t.Errorf("Subscribe() after the connection closed = %+v at once, want nothing", ms)
	case <-time.After(50 * time.Millisecond): // nothing happens
	}
}
