package balancer_test

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/butterfly-mesh/butterfly/balancer"
)

// TestBalancer_ReconnectsWithoutRPCs reconnects an instance whose
// connection dropped (a restart on the same address) without waiting for an
// RPC to ask for it.
func TestBalancer_ReconnectsWithoutRPCs(t *testing.T) {
	a := startServer(t, "a", "127.0.0.1")
	cl := newTestClient(t, "", resolverState(a.instance()))
	members, cancel := cl.members.Subscribe()
	defer cancel()
	waitMembers(t, members, "a READY", func(ms []balancer.Member) bool { return allReady(ms, "a") })

	a.srv.Stop()
	waitMembers(t, members, "a not READY", func(ms []balancer.Member) bool { return !allReady(ms, "a") })
	restarted := restartServer(t, a)
	waitFor(t, "a reconnected", func() bool { return restarted.connsOpen.Load() == 1 })
	waitMembers(t, members, "a READY again", func(ms []balancer.Member) bool { return allReady(ms, "a") })
	cl.checkN(t, 5)
	if got := restarted.checks.Load(); got != 5 {
		t.Errorf("Check count of restarted a = %d, want 5", got)
	}
}

// TestBalancer_ResolverErrorKeepsInstances keeps serving the last good
// instances when the resolver reports an error.
func TestBalancer_ResolverErrorKeepsInstances(t *testing.T) {
	a := startServer(t, "a", "127.0.0.1")
	cl := newTestClient(t, "", resolverState(a.instance()))
	cl.checkN(t, 1)
	cl.r.CC().ReportError(errors.New("etcd unreachable"))
	ctx, cancelCtx := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancelCtx()
	for i := range 5 {
		if err := cl.check(balancer.WithInstance(ctx, "a")); err != nil {
			t.Fatalf("Check(pinned a) #%d after a resolver error = %v, want nil", i, err)
		}
	}
	if got := a.checks.Load(); got != 6 {
		t.Errorf("Check count of a = %d, want 6", got)
	}
}

// restartServer starts a new server for old's instance on old's address.
func restartServer(t *testing.T, old *testServer) *testServer {
	t.Helper()
	lis, err := net.Listen("tcp", old.addr)
	if err != nil {
		t.Fatalf("net.Listen(%s) = %v", old.addr, err)
	}
	return serve(t, lis, old.name)
}
