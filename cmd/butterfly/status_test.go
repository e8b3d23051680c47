package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/registry"
)

const statusPrefix = "st"

// statusMesh is an etcd with a live intermediate i1 that carried 5 messages
// (its producer and consumer still connected) and a registration i2 whose
// address answers nothing.
func statusMesh(t *testing.T) (endpoint string) {
	t.Helper()
	etc := etcdtest.Start(t)
	cli := etc.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)

	srv, err := intermediate.New(cli, "intermediate", "i1", intermediate.WithPrefix(statusPrefix),
		intermediate.WithStopTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatalf("intermediate.New() = %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, lis) }()
	t.Cleanup(func() {
		stop()
		<-served
	})
	select {
	case <-srv.Ready():
	case <-ctx.Done():
		t.Fatalf("intermediate not ready: %v", ctx.Err())
	}

	dead, err := registry.Register(ctx, cli, "intermediate", "i2", "127.0.0.1:1", registry.WithPrefix(statusPrefix))
	if err != nil {
		t.Fatalf("registry.Register(i2) = %v", err)
	}
	t.Cleanup(func() { _ = dead.Close(context.Background()) })

	handled := make(chan struct{}, 5)
	c, err := components.NewConsumer(cli, "c1", func(context.Context, *components.Delivery) error {
		handled <- struct{}{}
		return nil
	}, components.WithPrefix(statusPrefix))
	if err != nil {
		t.Fatalf("NewConsumer() = %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	p, err := components.NewProducer(cli, "p1", components.WithPrefix(statusPrefix))
	if err != nil {
		t.Fatalf("NewProducer() = %v", err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	for range 5 {
		if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("x")}); err != nil {
			t.Fatalf("SendWait() = %v", err)
		}
	}
	return etc.Endpoint()
}

// TestStatusCommand_JoinsRegistryWithLiveStatus checks `butterfly status
// --json`: the live instance with its exact counters and peers, the dead
// one as unreachable.
func TestStatusCommand_JoinsRegistryWithLiveStatus(t *testing.T) {
	ep := statusMesh(t)
	got, out, err := statusJSON(t, ep, "--timeout", "500ms")
	if want := "1 of 2 registered instances unreachable or replaced: intermediate/i2"; err == nil || err.Error() != want {
		t.Fatalf("butterfly status --json = %v, want %q; output:\n%s", err, want, out)
	}
	if len(got) != 2 {
		t.Fatalf("butterfly status --json = %d entries, want 2: %s", len(got), out)
	}
	i1, i2 := got[0], got[1]
	if i1.Instance != "i1" || i1.State != stateServing || i1.Received != 5 || i1.Acked != 5 || i1.Delivered != 5 ||
		i1.InFlight != 0 || i1.Producers != 1 || i1.Consumers != 1 || i1.Processor != "passthrough" || i1.RecvRate <= 0 {
		t.Errorf("status of i1 = %+v, want serving, 5 received/acked/delivered, 0 in flight, 1 producer, 1 consumer, a positive rate", i1)
	}
	const refused = "nothing listens at 127.0.0.1:1 (connection refused)"
	if i2.Instance != "i2" || i2.State != stateUnreachable || i2.Error != refused || i2.Addr != "127.0.0.1:1" {
		t.Errorf("status of i2 = %+v, want unreachable at 127.0.0.1:1: %s", i2, refused)
	}
	table, err := executeCommand(t, "status", "--etcd-endpoints", ep, "--prefix", statusPrefix, "--timeout", "500ms")
	if err == nil {
		t.Fatalf("butterfly status = nil error with i2 unreachable; output:\n%s", table)
	}
	if want := "butterfly: " + i2.Service + "/i2 at 127.0.0.1:1 is unreachable: "; !strings.Contains(table, want) {
		t.Errorf("butterfly status =\n%s\nwant a line saying why i2 is unreachable, starting %q", table, want)
	}

	// A registration whose address another instance answers at shows
	// none of that instance's figures as its own.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("clientv3.New() = %v", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ghost, err := registry.Register(ctx, cli, i1.Service, "ghost", i1.Addr, registry.WithPrefix(statusPrefix))
	if err != nil {
		t.Fatalf("registry.Register(ghost) = %v", err)
	}
	defer ghost.Close(context.Background())
	got, out, err = statusJSON(t, ep, "--timeout", "500ms")
	if want := "2 of 3 registered instances unreachable or replaced: intermediate/ghost, intermediate/i2"; err == nil || err.Error() != want {
		t.Fatalf("butterfly status --json = %v, want %q; output:\n%s", err, want, out)
	}
	var g *statusEntry
	for i := range got {
		if got[i].Instance == "ghost" {
			g = &got[i]
		}
	}
	if g == nil || g.State != stateReplaced || g.Received != 0 || g.Producers != 0 || g.Consumers != 0 || !g.StatusTime.IsZero() ||
		g.Error != fmt.Sprintf("%s answers as %s/i1 epoch %d", i1.Addr, i1.Service, i1.Epoch) {
		t.Errorf("status of ghost = %+v, want replaced, saying i1 answers, with none of i1's figures", g)
	}

	// With only the serving instance left, status exits 0.
	if err := ghost.Close(ctx); err != nil {
		t.Fatalf("Close(ghost) = %v", err)
	}
	if _, err := cli.Delete(ctx, registry.ServiceKey(statusPrefix, i1.Service, "i2")); err != nil {
		t.Fatalf("Delete(i2) = %v", err)
	}
	if out, err := executeCommand(t, "status", "--etcd-endpoints", ep, "--prefix", statusPrefix, "--timeout", "500ms"); err != nil {
		t.Errorf("butterfly status with i1 serving alone = %v, want nil; output:\n%s", err, out)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once; it
// signals every write.
type syncBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	wrote chan struct{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case b.wrote <- struct{}{}:
	default:
	}
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestStatusCommand_WatchRefreshes checks that `butterfly status --watch`
// prints the table again every interval, with the unreachable instance
// marked, until its context ends.
func TestStatusCommand_WatchRefreshes(t *testing.T) {
	ep := statusMesh(t)
	out := &syncBuffer{wrote: make(chan struct{}, 1)}
	root := newRootCommand()
	root.SetOut(out)
	root.SetErr(out)
	root.SetArgs([]string{"status", "--etcd-endpoints", ep, "--prefix", statusPrefix, "--watch", "--interval", "50ms", "--timeout", "500ms"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for strings.Count(out.String(), "SERVICE") < 3 {
		select {
		case <-out.wrote:
		case err := <-done:
			t.Fatalf("butterfly status --watch = %v before three tables; output:\n%s", err, out.String())
		case <-deadline.C:
			t.Fatalf("butterfly status --watch printed %d tables, want 3; output:\n%s", strings.Count(out.String(), "SERVICE"), out.String())
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("butterfly status --watch after cancel = %v, want nil", err)
	}
	text := out.String()
	for _, want := range []string{"STATE", "IN-FLIGHT", "RECV/S", "serving", "unreachable", "127.0.0.1:1"} {
		if !strings.Contains(text, want) {
			t.Errorf("butterfly status --watch output lacks %q:\n%s", want, text)
		}
	}
}

// TestStatusCommand_SaysTLSMismatch checks that an instance that speaks TLS
// to a plaintext `butterfly status` is reported as a TLS mismatch naming the
// flags that mend it, not as the connection error it looks like.
func TestStatusCommand_SaysTLSMismatch(t *testing.T) {
	etc := etcdtest.Start(t)
	cli := etc.Client(t)
	tlsSrv := httptest.NewTLSServer(http.NotFoundHandler())
	defer tlsSrv.Close()
	addr := tlsSrv.Listener.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	reg, err := registry.Register(ctx, cli, "intermediate", "i1", addr, registry.WithPrefix(statusPrefix))
	if err != nil {
		t.Fatalf("registry.Register(i1) = %v", err)
	}
	defer reg.Close(context.Background())

	got, out, err := statusJSON(t, etc.Endpoint(), "--timeout", "500ms")
	if err == nil {
		t.Fatalf("butterfly status --json = nil error with i1 unreachable; output:\n%s", out)
	}
	const want = "TLS mismatch: the instance speaks TLS and this client plaintext gRPC (pass --tls-ca"
	if len(got) != 1 || got[0].State != stateUnreachable || !strings.HasPrefix(got[0].Error, want) {
		t.Errorf("butterfly status --json = %s, want i1 unreachable with an error starting %q", out, want)
	}
}

// TestStatusCommand_SaysMutualTLSWantsACertificate checks that status, a TLS
// client without a certificate, says why an instance that requires one
// refuses it rather than how the refused connection broke: the server's
// alert can come after the client's side of the handshake is done, and
// gRPC then sees the connection reset or closed.
func TestStatusCommand_SaysMutualTLSWantsACertificate(t *testing.T) {
	dir := t.TempDir()
	if err := tlsutil.GenerateDev(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg, err := tlsutil.ServerConfig(ctx, tlsutil.Files{
		Cert: filepath.Join(dir, tlsutil.ServerFile), Key: filepath.Join(dir, tlsutil.ServerKeyFile),
		CA: filepath.Join(dir, tlsutil.CAFile), ClientAuth: "require",
	}, nil)
	if err != nil {
		t.Fatalf("ServerConfig() = %v", err)
	}
	addr := serveOnLoopback(t, grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg))))

	etc := etcdtest.Start(t)
	reg, err := registry.Register(ctx, etc.Client(t), "intermediate", "i1", addr, registry.WithPrefix(statusPrefix))
	if err != nil {
		t.Fatalf("registry.Register(i1) = %v", err)
	}
	defer reg.Close(context.Background())

	got, out, err := statusJSON(t, etc.Endpoint(), "--timeout", "1s", "--tls-ca", filepath.Join(dir, tlsutil.CAFile))
	if err == nil {
		t.Fatalf("butterfly status --json = nil error with i1 unreachable; output:\n%s", out)
	}
	const want = "TLS mismatch: the instance refused this client's TLS handshake: remote error: tls: certificate required (mutual TLS: --tls-cert and --tls-key"
	if len(got) != 1 || got[0].State != stateUnreachable || !strings.HasPrefix(got[0].Error, want) {
		t.Errorf("butterfly status --json = %s, want i1 unreachable with an error starting %q", out, want)
	}
}

// TestStatusCommand_WatchRidesOutAnEtcdOutage checks that status --watch
// says an etcd outage that starts while it watches, naming the endpoints,
// and goes on once etcd is back, where it used to exit 1 with a bare
// "context deadline exceeded".
func TestStatusCommand_WatchRidesOutAnEtcdOutage(t *testing.T) {
	etc := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	reg, err := registry.Register(ctx, etc.Client(t), "intermediate", "i1", "127.0.0.1:1", registry.WithPrefix(statusPrefix))
	if err != nil {
		t.Fatalf("Register() = %v", err)
	}
	defer func() { _ = reg.Close(context.Background()) }()
	out := &syncBuffer{wrote: make(chan struct{}, 1)}
	root := newRootCommand()
	root.SetOut(out)
	root.SetErr(out)
	root.SetArgs([]string{"status", "--etcd-endpoints", etc.Endpoint(), "--prefix", statusPrefix, "--watch", "--interval", "100ms", "--timeout", "300ms"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	waitOutput := func(what string, cond func(string) bool) {
		t.Helper()
		for !cond(out.String()) {
			select {
			case <-out.wrote:
			case err := <-done:
				t.Fatalf("butterfly status --watch = %v while waiting for %s; output:\n%s", err, what, out.String())
			case <-ctx.Done():
				t.Fatalf("no %s; output:\n%s", what, out.String())
			}
		}
	}
	waitOutput("a first table", func(s string) bool { return strings.Contains(s, "SERVICE") })
	etc.Stop(t)
	waitOutput("the outage said", func(s string) bool {
		return strings.Contains(s, "butterfly: etcd ["+etc.Endpoint()+"]: ") && strings.Contains(s, "(trying again every --interval 100ms)")
	})
	tables := strings.Count(out.String(), "SERVICE")
	etc.Restart(t)
	waitOutput("a table after the outage", func(s string) bool { return strings.Count(s, "SERVICE") > tables })
	cancel()
	if err := <-done; err != nil {
		t.Errorf("butterfly status --watch after cancel = %v, want nil", err)
	}
}

// TestStatusCommand_SaysWhyAnInstanceIsUnreadable checks what status says
// of an address that takes the connection and never answers (dropped
// packets, a frozen process), and of one that answers gRPC without
// AdminService (a registration naming another server).
func TestStatusCommand_SaysWhyAnInstanceIsUnreadable(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	defer silent.Close()
	go func() {
		var held []net.Conn // accepted and never answered
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	other := serveOnLoopback(t, grpc.NewServer())

	etc := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for name, addr := range map[string]string{"silent": silent.Addr().String(), "other": other} {
		reg, err := registry.Register(ctx, etc.Client(t), "intermediate", name, addr, registry.WithPrefix(statusPrefix))
		if err != nil {
			t.Fatalf("registry.Register(%s) = %v", name, err)
		}
		defer reg.Close(context.Background())
	}
	got, out, err := statusJSON(t, etc.Endpoint(), "--timeout", "500ms")
	if err == nil {
		t.Fatalf("butterfly status = nil error with both instances unreadable; output:\n%s", out)
	}
	want := map[string]string{
		"silent": "no answer from " + silent.Addr().String() + " within --timeout 500ms (packets dropped on the way, or a stopped or frozen process or host)",
		"other":  other + " answers gRPC but is not a Butterfly intermediate (unknown service butterfly.admin.v1.AdminService)",
	}
	if len(got) != 2 {
		t.Fatalf("butterfly status --json = %s, want 2 entries", out)
	}
	for _, e := range got {
		if e.State != stateUnreachable || e.Error != want[e.Instance] {
			t.Errorf("status of %s = %s: %q, want unreachable: %q", e.Instance, e.State, e.Error, want[e.Instance])
		}
	}
}

// statusJSON runs `butterfly status --json` against the etcd at ep under
// statusPrefix, with args, and returns its entries, its output and its
// error: the rows are printed whatever the error.
func statusJSON(t *testing.T, ep string, args ...string) ([]statusEntry, string, error) {
	t.Helper()
	out, err := executeCommand(t, append([]string{"status", "--etcd-endpoints", ep, "--prefix", statusPrefix, "--json"}, args...)...)
	var got []statusEntry
	if jerr := json.Unmarshal([]byte(out), &got); jerr != nil {
		t.Fatalf("butterfly status --json output %q: %v (its error: %v)", out, jerr, err)
	}
	return got, out, err
}

// serveOnLoopback serves gs on a loopback port until the test ends, and
// returns its address.
func serveOnLoopback(t *testing.T, gs *grpc.Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}
