package resolver_test

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/registry"
	"github.com/butterfly-mesh/butterfly/resolver"
)

const defaultTestTimeout = 10 * time.Second

// startHealthServer starts a gRPC server with the standard health service on
// host:0 and returns its address.
func startHealthServer(t *testing.T, host string) string {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("net.Listen(%s:0) = %v", host, err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(lis)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return lis.Addr().String()
}

func register(t *testing.T, cli *clientv3.Client, instance, addr string) *registry.Registration {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), defaultTestTimeout)
	defer cancel()
	r, err := registry.Register(ctx, cli, "svc", instance, addr)
	if err != nil {
		t.Fatalf("Register(svc, %q, %q) = %v", instance, addr, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
		defer cancel()
		r.Close(ctx)
	})
	return r
}

// peersUntil calls Check until a window of 20 calls reaches exactly the
// addresses in want, and fails the test if that does not happen in time.
func peersUntil(t *testing.T, hc healthpb.HealthClient, want ...string) {
	t.Helper()
	slices.Sort(want)
	ctx, cancel := context.WithTimeout(t.Context(), defaultTestTimeout)
	defer cancel()
	var got []string
	for ctx.Err() == nil {
		seen := map[string]bool{}
		for range 20 {
			var p peer.Peer
			if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.WaitForReady(true)); err != nil {
				break
			}
			seen[p.Addr.String()] = true
		}
		got = got[:0]
		for a := range seen {
			got = append(got, a)
		}
		slices.Sort(got)
		if slices.Equal(got, want) {
			return
		}
	}
	t.Fatalf("peers reached = %v, want %v", got, want)
}

// TestResolver_RoundRobinThroughNewClient checks, through grpc.NewClient and
// round_robin, that RPCs reach every registered instance and follow a move
// and a departure.
func TestResolver_RoundRobinThroughNewClient(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	a1, b := startHealthServer(t, "127.0.0.1"), startHealthServer(t, "127.0.0.1")
	register(t, cli, "a", a1)
	regB := register(t, cli, "b", b)

	const target = "butterfly:///svc"
	cc, err := grpc.NewClient(target,
		grpc.WithResolvers(resolver.NewBuilder(cli)),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
	)
	if err != nil {
		t.Fatalf("grpc.NewClient(%q) = %v", target, err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	peersUntil(t, hc, a1, b)

	// Instance a moves to another host.
	a2 := startHealthServer(t, "127.0.0.2")
	register(t, cli, "a", a2)
	peersUntil(t, hc, a2, b)

	// Instance b leaves.
	if err := regB.Close(t.Context()); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	peersUntil(t, hc, a2)
}
