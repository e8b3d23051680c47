package registry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	etcdresolver "go.etcd.io/etcd/client/v3/naming/resolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

const defaultTestTimeout = 10 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), defaultTestTimeout)
	t.Cleanup(cancel)
	return ctx
}

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

func register(t *testing.T, cli *clientv3.Client, service, instance, addr string) *registry.Registration {
	t.Helper()
	r, err := registry.Register(testContext(t), cli, service, instance, addr)
	if err != nil {
		t.Fatalf("Register(%q, %q, %q) = %v", service, instance, addr, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
		defer cancel()
		r.Close(ctx)
	})
	return r
}

// TestRegister_EtcdctlReadsJSON checks that a stock etcdctl prints the
// registration as plain JSON.
func TestRegister_EtcdctlReadsJSON(t *testing.T) {
	etcdctl, err := exec.LookPath("etcdctl")
	if err != nil {
		t.Skip("etcdctl not found in PATH (Debian: apt-get install etcd-client); skipping")
	}
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	r1 := register(t, cli, "svc", "i1", "127.0.0.1:7001")
	r2 := register(t, cli, "svc", "i2", "127.0.0.2:7002")

	cmd := exec.CommandContext(testContext(t), etcdctl, "--endpoints="+srv.Endpoint(), "get", "--prefix", "butterfly/services/")
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl get --prefix butterfly/services/ = %v, output:\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 4 {
		t.Fatalf("etcdctl get printed %d lines, want 4 (two keys, two values):\n%s", len(lines), out)
	}
	for i, want := range []struct {
		key, instance, addr string
		epoch               uint64
	}{
		{"butterfly/services/svc/i1", "i1", "127.0.0.1:7001", r1.Epoch()},
		{"butterfly/services/svc/i2", "i2", "127.0.0.2:7002", r2.Epoch()},
	} {
		if got := lines[2*i]; got != want.key {
			t.Errorf("etcdctl key line %d = %q, want %q", 2*i, got, want.key)
		}
		var v struct {
			Addr     string
			Metadata map[string]any
		}
		if err := json.Unmarshal([]byte(lines[2*i+1]), &v); err != nil {
			t.Fatalf("json.Unmarshal(%s) = %v", lines[2*i+1], err)
		}
		if v.Addr != want.addr || v.Metadata["instance"] != want.instance || v.Metadata["epoch"] != float64(want.epoch) || v.Metadata["draining"] != false {
			t.Errorf("etcdctl value of %s = %s, want Addr %s, instance %s, epoch %d, draining false", want.key, lines[2*i+1], want.addr, want.instance, want.epoch)
		}
	}
}

// TestRegister_EtcdNamingResolver checks that etcd's own gRPC resolver, with
// round_robin, reaches servers registered by the registry.
func TestRegister_EtcdNamingResolver(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	addrs := []string{startHealthServer(t, "127.0.0.1"), startHealthServer(t, "127.0.0.1")}
	register(t, cli, "svc", "i1", addrs[0])
	register(t, cli, "svc", "i2", addrs[1])

	b, err := etcdresolver.NewBuilder(cli)
	if err != nil {
		t.Fatalf("etcdresolver.NewBuilder() = %v", err)
	}
	const target = "etcd:///butterfly/services/svc"
	cc, err := grpc.NewClient(target,
		grpc.WithResolvers(b),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
	)
	if err != nil {
		t.Fatalf("grpc.NewClient(%q) = %v", target, err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	seen := map[string]int{}
	ctx := testContext(t)
	for len(seen) < 2 || seen[addrs[0]]+seen[addrs[1]] < 10 {
		var p peer.Peer
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.WaitForReady(true)); err != nil {
			t.Fatalf("Check() = %v, peers so far %v", err, seen)
		}
		seen[p.Addr.String()]++
	}
	if len(seen) != 2 || seen[addrs[0]] == 0 || seen[addrs[1]] == 0 {
		t.Errorf("peers reached = %v, want both of %v", seen, addrs)
	}
}

// TestValidateName_Length checks that a name is at most MaxNameBytes long,
// and that declaring a group or registering a consumer under a longer name
// is refused before anything is written: routes name groups and consumers,
// and a group named in 150 KiB made a message handed back too large for
// any frame to carry it again.
func TestValidateName_Length(t *testing.T) {
	if err := registry.ValidateName("group", strings.Repeat("g", registry.MaxNameBytes)); err != nil {
		t.Errorf("ValidateName(%d bytes) = %v, want nil", registry.MaxNameBytes, err)
	}
	long := strings.Repeat("g", 150<<10)
	want := fmt.Sprintf("group of %d bytes is longer than %d", len(long), registry.MaxNameBytes)
	if err := registry.ValidateName("group", long); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("ValidateName(150 KiB) = %v, want %q", err, want)
	}
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := registry.CreateGroup(ctx, cli, "svc", long, "operator"); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("CreateGroup(150 KiB name) = %v, want %q", err, want)
	}
	if _, err := registry.RegisterConsumer(ctx, cli, "svc", "g", strings.Repeat("c", registry.MaxNameBytes+1)); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("RegisterConsumer(a consumer id of %d bytes) = %v, want it refused", registry.MaxNameBytes+1, err)
	}
	resp, err := cli.Get(ctx, "butterfly/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Errorf("keys under butterfly/ = %v (%v), want none written", resp, err)
	}
}
