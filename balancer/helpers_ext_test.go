package balancer_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	gresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/balancer"
	"github.com/butterfly-mesh/butterfly/registry"
)

const (
	defaultTestTimeout = 10 * time.Second
	testService        = "intermediate"
)

// testServer is a gRPC health server on a loopback address that counts the
// RPCs and connections it sees.
type testServer struct {
	name      string
	addr      string
	srv       *grpc.Server
	checks    atomic.Int64 // Check calls
	lastCheck atomic.Int64 // UnixNano of the last Check
	fail      atomic.Bool  // Check fails with Unavailable
	// watches counts Watch streams; a Watch stream sends one response and
	// stays open until the client ends it.
	watches   atomic.Int64
	connsOpen atomic.Int64
	connsEnd  atomic.Int64
}

// startServer starts a testServer for instance name on host (127.0.0.x).
func startServer(t *testing.T, name, host string) *testServer {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("net.Listen(%s) = %v", host, err)
	}
	return serve(t, lis, name)
}

// serve runs a testServer for instance name on lis until the test ends.
func serve(t *testing.T, lis net.Listener, name string) *testServer {
	t.Helper()
	s := &testServer{name: name, addr: lis.Addr().String()}
	s.srv = grpc.NewServer(grpc.StatsHandler(connCounter{s}))
	healthpb.RegisterHealthServer(s.srv, healthService{s: s})
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.srv.Serve(lis)
	}()
	t.Cleanup(func() {
		s.srv.Stop()
		<-done
	})
	return s
}

type healthService struct {
	healthpb.UnimplementedHealthServer
	s *testServer
}

func (h healthService) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	h.s.checks.Add(1)
	h.s.lastCheck.Store(time.Now().UnixNano())
	if h.s.fail.Load() {
		return nil, status.Error(codes.Unavailable, "test server failing")
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (h healthService) Watch(_ *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	h.s.watches.Add(1)
	if err := stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

// connCounter is a stats handler counting transport connections.
type connCounter struct{ s *testServer }

func (c connCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (c connCounter) HandleRPC(context.Context, stats.RPCStats)                       {}
func (c connCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (c connCounter) HandleConn(_ context.Context, st stats.ConnStats) {
	switch st.(type) {
	case *stats.ConnBegin:
		c.s.connsOpen.Add(1)
	case *stats.ConnEnd:
		c.s.connsEnd.Add(1)
	}
}

// instance returns the registry instance of s.
func (s *testServer) instance() registry.Instance {
	return registry.Instance{
		Service:  testService,
		Name:     s.name,
		Addr:     s.addr,
		Metadata: registry.Metadata{Instance: s.name, Epoch: 1},
	}
}

// resolverState is a resolver state shaped as the butterfly resolver makes
// it: one endpoint per instance, sorted by name, the instance attached to
// the endpoint and to its address, and Addresses filled.
func resolverState(insts ...registry.Instance) gresolver.State {
	insts = slices.Clone(insts)
	slices.SortFunc(insts, func(a, b registry.Instance) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	var st gresolver.State
	for _, inst := range insts {
		//lint:ignore SA1019 built as the butterfly resolver builds it (resolver.go)
		addr := gresolver.Address{Addr: inst.Addr, BalancerAttributes: registry.WithInstance(nil, inst)}
		st.Endpoints = append(st.Endpoints, gresolver.Endpoint{
			Addresses:  []gresolver.Address{addr},
			Attributes: registry.WithInstance(nil, inst),
		})
		st.Addresses = append(st.Addresses, addr)
	}
	return st
}

// testClient is a client of the butterfly policy fed by a manual resolver,
// whose states carry the members its balancer publishes to.
type testClient struct {
	r       *manual.Resolver
	conn    *grpc.ClientConn
	health  healthpb.HealthClient
	members *balancer.Members
}

var schemeSeq atomic.Int64

// newTestClient dials testService through a manual resolver that starts
// with initial, with policy config cfg ("" for defaults), and connects.
func newTestClient(t *testing.T, cfg string, initial gresolver.State) *testClient {
	t.Helper()
	members := balancer.NewMembers()
	r := manual.NewBuilderWithScheme(fmt.Sprintf("bftest%d", schemeSeq.Add(1)))
	initial.Attributes = balancer.AttachMembers(initial.Attributes, members)
	r.InitialState(initial)
	target := r.Scheme() + ":///" + testService
	conn, err := grpc.NewClient(target,
		grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(balancer.ServiceConfig(cfg)),
	)
	if err != nil {
		t.Fatalf("grpc.NewClient(%q) = %v", target, err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.Connect()
	return &testClient{r: r, conn: conn, health: healthpb.NewHealthClient(conn), members: members}
}

// update hands the balancer st, with the client's members attached.
func (c *testClient) update(st gresolver.State) {
	st.Attributes = balancer.AttachMembers(st.Attributes, c.members)
	c.r.UpdateState(st)
}

// check runs one Check RPC.
func (c *testClient) check(ctx context.Context, opts ...grpc.CallOption) error {
	_, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{}, opts...)
	return err
}

// checkN runs n sequential wait-for-ready Check RPCs that must succeed.
func (c *testClient) checkN(t *testing.T, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	for i := range n {
		if err := c.check(ctx, grpc.WaitForReady(true)); err != nil {
			t.Fatalf("Check() #%d = %v, want nil", i, err)
		}
	}
}

// counts returns the Check counts of servers.
func counts(servers ...*testServer) []int64 {
	out := make([]int64, len(servers))
	for i, s := range servers {
		out[i] = s.checks.Load()
	}
	return out
}

// waitFor polls cond until it holds or the test timeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(defaultTestTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitMembers reads subscribed member lists until one satisfies cond.
func waitMembers(t *testing.T, ch <-chan []balancer.Member, what string, cond func([]balancer.Member) bool) []balancer.Member {
	t.Helper()
	timer := time.NewTimer(defaultTestTimeout)
	defer timer.Stop()
	for {
		select {
		case ms, ok := <-ch:
			if !ok {
				t.Fatalf("members channel closed while waiting for %s", what)
			}
			if cond(ms) {
				return ms
			}
		case <-timer.C:
			t.Fatalf("timed out waiting for members: %s", what)
		}
	}
}

// member returns the member named name.
func member(ms []balancer.Member, name string) (balancer.Member, bool) {
	for _, m := range ms {
		if m.Instance.Name == name {
			return m, true
		}
	}
	return balancer.Member{}, false
}

// allReady reports whether ms holds exactly names, all READY.
func allReady(ms []balancer.Member, names ...string) bool {
	if len(ms) != len(names) {
		return false
	}
	for _, n := range names {
		m, ok := member(ms, n)
		if !ok || !m.Ready() {
			return false
		}
	}
	return true
}
