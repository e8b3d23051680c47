package butterfly_test

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

const defaultTestTimeout = 10 * time.Second

// healthServer answers Check, failing with Unavailable while fail is set,
// and counts the calls.
type healthServer struct {
	healthpb.UnimplementedHealthServer
	checks atomic.Int64
	fail   atomic.Bool
}

func (h *healthServer) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	h.checks.Add(1)
	if h.fail.Load() {
		return nil, status.Error(codes.Unavailable, "test server failing")
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// startHealth serves a healthServer on loopback until the test ends and
// returns it with its address.
func startHealth(t *testing.T) (*healthServer, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	h := &healthServer{}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, h)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return h, lis.Addr().String()
}

// pollGauge waits until the gauge name{service} of reg reads want.
func pollGauge(t *testing.T, reg *prometheus.Registry, name, service string, want float64) {
	t.Helper()
	deadline := time.Now().Add(defaultTestTimeout)
	for {
		got, ok := gathered(t, reg, name, service)
		if ok && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s{service=%q} = %v (present %v), want %v", name, service, got, ok, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gathered returns the value of the counter or gauge name{service} on reg.
func gathered(t *testing.T, reg *prometheus.Registry, name, service string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather() = %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "service" && lp.GetValue() == service {
					if c := m.GetCounter(); c != nil {
						return c.GetValue(), true
					}
					return m.GetGauge().GetValue(), true
				}
			}
		}
	}
	return 0, false
}

// TestWithMetrics_ResolverUpdateAndEjection dials a service of three
// registered instances with WithMetrics, makes one fail until it is ejected,
// and finds exactly one resolver update, no resolver error and one ejection
// on the registry; closing the client ends the ejection it counted.
func TestWithMetrics_ResolverUpdateAndEjection(t *testing.T) {
	const service = "metered"
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), defaultTestTimeout)
	defer cancel()
	servers := make(map[string]*healthServer)
	for _, name := range []string{"a", "b", "c"} {
		h, addr := startHealth(t)
		servers[name] = h
		r, err := registry.Register(ctx, cli, service, name, addr)
		if err != nil {
			t.Fatalf("Register(%q, %q) = %v", service, name, err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
			defer cancel()
			r.Close(ctx)
		})
	}
	failing := servers["c"]
	failing.fail.Store(true)

	reg := prometheus.NewRegistry()
	conn, err := grpc.NewClient("butterfly:///"+service, butterfly.DialOptions(cli,
		butterfly.WithMetrics(reg),
		butterfly.WithBalancerConfig(`{"ejection":{"consecutiveFailures":3,"baseEjectionTime":"1h","maxEjectionTime":"1h"}}`),
	)...)
	if err != nil {
		t.Fatalf("grpc.NewClient() = %v", err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)

	failures := 0
	for failing.checks.Load() < 3 {
		_, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		switch {
		case err == nil:
		case status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "test server failing"):
			failures++
		default:
			t.Fatalf("Check() = %v, want nil or the server's Unavailable", err)
		}
	}
	if failures != 3 {
		t.Fatalf("failed Checks = %d, want 3", failures)
	}
	pollGauge(t, reg, "butterfly_balancer_ejected", service, 1)

	const want = `
# HELP butterfly_balancer_ejected Instances ejected from picks now, summed over the client connections.
# TYPE butterfly_balancer_ejected gauge
butterfly_balancer_ejected{service="metered"} 1
# HELP butterfly_balancer_ejections_total Instances ejected from picks after consecutive RPC failures.
# TYPE butterfly_balancer_ejections_total counter
butterfly_balancer_ejections_total{service="metered"} 1
# HELP butterfly_resolver_errors_total Registry watch errors reported to gRPC (halted watch, failed re-list); each is followed by a re-list.
# TYPE butterfly_resolver_errors_total counter
butterfly_resolver_errors_total{service="metered"} 0
# HELP butterfly_resolver_updates_total Resolver states (full instance lists) pushed to gRPC.
# TYPE butterfly_resolver_updates_total counter
butterfly_resolver_updates_total{service="metered"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Errorf("GatherAndCompare() = %v, want nil", err)
	}

	// Ejected instances leave the gauge with the client that ejected them.
	conn.Close()
	pollGauge(t, reg, "butterfly_balancer_ejected", service, 0)
	if got, _ := gathered(t, reg, "butterfly_balancer_ejections_total", service); got != 1 {
		t.Errorf("butterfly_balancer_ejections_total after Close = %v, want 1", got)
	}
}

// TestWithMetrics_NoRegistry dials without WithMetrics: RPCs work and
// nothing needs a registry.
func TestWithMetrics_NoRegistry(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), defaultTestTimeout)
	defer cancel()
	h, addr := startHealth(t)
	r, err := registry.Register(ctx, cli, "plain", "a", addr)
	if err != nil {
		t.Fatalf("Register(plain, a) = %v", err)
	}
	defer r.Close(ctx)
	conn, err := grpc.NewClient("butterfly:///plain", butterfly.DialOptions(cli, butterfly.WithMetrics(nil))...)
	if err != nil {
		t.Fatalf("grpc.NewClient() = %v", err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("Check() = %v, want nil", err)
	}
	if got := h.checks.Load(); got != 1 {
		t.Errorf("Check count = %d, want 1", got)
	}
}
