package intermediate_test

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// Exit codes of grpc-health-probe.
const (
	probeServing   = 0
	probeUnhealthy = 4
)

// goTool runs a tool pinned in tools/go.mod and returns its output and exit
// code.
func goTool(t *testing.T, tool string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	modfile, err := filepath.Abs("../tools/go.mod")
	if err != nil {
		t.Fatalf("filepath.Abs() = %v", err)
	}
	cmd := exec.Command("go", append([]string{"tool", "-modfile=" + modfile, tool}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("go tool %s %v = %v", tool, args, err)
	}
	return out.String(), errOut.String(), code
}

// probe runs grpc-health-probe against addr and returns its exit code.
func probe(t *testing.T, addr string) (string, int) {
	t.Helper()
	stdout, stderr, code := goTool(t, "grpc-health-probe", "-addr", addr, "-connect-timeout", "5s", "-rpc-timeout", "5s")
	return strings.TrimSpace(stdout + stderr), code
}

// TestHealth_ServingThenNotServingWhileDraining probes the server with
// grpc-health-probe: SERVING once registered, NOT_SERVING while a drain is
// held open by a delivery its consumer has not acknowledged.
func TestHealth_ServingThenNotServingWhileDraining(t *testing.T) {
	r := newRig(t, intermediate.WithDrainTimeout(time.Minute))
	if out, code := probe(t, r.srv.Addr()); code != probeServing || !strings.Contains(out, "SERVING") {
		t.Fatalf("grpc-health-probe -addr %s = %d %q, want %d SERVING", r.srv.Addr(), code, out, probeServing)
	}

	// One message held: delivered, not acknowledged.
	pub := r.producer("p1")
	sub := r.subscribe("c1", 10)
	sendBatch(t, pub, 1, msg("p1", 1, "held"))
	ds := nextDeliveries(t, sub)
	if len(ds) != 1 {
		t.Fatalf("deliveries = %d, want 1", len(ds))
	}

	drained := make(chan error, 1)
	go func() { drained <- r.srv.Drain(r.ctx()) }()
	waitFor(t, "the drain to start", r.srv.Draining)
	if out, code := probe(t, r.srv.Addr()); code != probeUnhealthy || !strings.Contains(out, "NOT_SERVING") {
		t.Fatalf("grpc-health-probe -addr %s during the drain = %d %q, want %d NOT_SERVING", r.srv.Addr(), code, out, probeUnhealthy)
	}
	// Health answers from the server itself; the drain is still held open.
	select {
	case err := <-drained:
		t.Fatalf("Drain() = %v before the delivery was acknowledged", err)
	default:
	}

	ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: ds[0].GetDeliveryId(), Last: ds[0].GetDeliveryId()}}})
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 {
		t.Errorf("PublishAck = %v, want seq 1 acknowledged", a)
	}
	if err := <-drained; err != nil {
		t.Errorf("Drain() = %v, want nil", err)
	}
}

// TestHealth_ClientSeesServing checks the health service through a plain
// gRPC health client, per Butterfly service.
func TestHealth_ClientSeesServing(t *testing.T) {
	r := newRig(t)
	hc := grpc_health_v1.NewHealthClient(r.conn)
	for _, svc := range []string{"", "butterfly.delivery.v1.PublishService", "butterfly.admin.v1.AdminService"} {
		resp, err := hc.Check(r.ctx(), &grpc_health_v1.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q) = %v, %v, want SERVING", svc, resp.GetStatus(), err)
		}
	}
}

var wantServices = []string{
	"butterfly.admin.v1.AdminService",
	"butterfly.delivery.v1.ProcessService",
	"butterfly.delivery.v1.PublishService",
	"butterfly.delivery.v1.SubscribeService",
	"grpc.health.v1.Health",
	"grpc.reflection.v1.ServerReflection",
	"grpc.reflection.v1alpha.ServerReflection",
}

// TestReflection_ListsServices lists the services through a reflection v1
// client and resolves the admin service's file descriptor.
func TestReflection_ListsServices(t *testing.T) {
	r := newRig(t)
	stream, err := reflectionv1.NewServerReflectionClient(r.conn).ServerReflectionInfo(r.ctx())
	if err != nil {
		t.Fatalf("ServerReflectionInfo() = %v", err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatalf("Send(list services) = %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("Recv() = %v", err)
	}
	var got []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		got = append(got, s.GetName())
	}
	slices.Sort(got)
	if diff := cmp.Diff(wantServices, got); diff != "" {
		t.Errorf("ListServices() mismatch (-want +got):\n%s", diff)
	}

	if err := stream.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "butterfly.admin.v1.AdminService"}}); err != nil {
		t.Fatalf("Send(file containing symbol) = %v", err)
	}
	resp, err = stream.Recv()
	if err != nil {
		t.Fatalf("Recv() = %v", err)
	}
	if n := len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()); n == 0 {
		t.Errorf("FileContainingSymbol(AdminService) = %v, want its file descriptor", resp)
	}
}

// TestReflection_Grpcurl lists the services and calls GetStatus with the
// pinned grpcurl, which knows nothing but what reflection tells it.
func TestReflection_Grpcurl(t *testing.T) {
	r := newRig(t)
	stdout, stderr, code := goTool(t, "grpcurl", "-plaintext", r.srv.Addr(), "list")
	if code != 0 {
		t.Fatalf("grpcurl list = exit %d: %s", code, stderr)
	}
	got := strings.Fields(stdout)
	slices.Sort(got)
	if diff := cmp.Diff(wantServices, got); diff != "" {
		t.Errorf("grpcurl list mismatch (-want +got):\n%s", diff)
	}

	stdout, stderr, code = goTool(t, "grpcurl", "-plaintext", "-d", "{}", r.srv.Addr(), "butterfly.admin.v1.AdminService/GetStatus")
	if code != 0 {
		t.Fatalf("grpcurl GetStatus = exit %d: %s", code, stderr)
	}
	for _, want := range []string{`"instance": "i1"`, `"service": "intermediate"`, `"version": "v-test"`} {
		if !strings.Contains(stdout, want) {
			t.Errorf("grpcurl GetStatus = %s, want it to contain %s", stdout, want)
		}
	}
}

// waitFor polls cond until it holds or defaultTestTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(defaultTestTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestServer_DrainEndsHealthWatches checks that a drain ends the health
// Watch streams open on the server with UNAVAILABLE, so that its graceful
// stop does not wait for them until the stop timeout.
func TestServer_DrainEndsHealthWatches(t *testing.T) {
	const stopTimeout = 10 * time.Second
	r := newRig(t, intermediate.WithStopTimeout(stopTimeout))
	watch, err := grpc_health_v1.NewHealthClient(r.conn).Watch(r.ctx(), &grpc_health_v1.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("Watch() = %v", err)
	}
	if resp, err := watch.Recv(); err != nil || resp.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
		t.Fatalf("Watch().Recv() = %v, %v; want SERVING", resp, err)
	}
	start := time.Now()
	if err := r.srv.Drain(r.ctx()); err != nil {
		t.Fatalf("Drain() = %v", err)
	}
	if took := time.Since(start); took > stopTimeout/2 {
		t.Errorf("Drain() with a health Watch open took %v, want well under the %v stop timeout", took, stopTimeout)
	}
	for {
		_, err := watch.Recv()
		if err == nil {
			continue // NOT_SERVING
		}
		if status.Code(err) != codes.Unavailable {
			t.Errorf("Watch().Recv() after the drain = %v, want UNAVAILABLE", err)
		}
		break
	}
}
