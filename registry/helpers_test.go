package registry

import (
	"context"
	"log/slog"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	gbackoff "google.golang.org/grpc/backoff"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
)

const (
	defaultTestTimeout      = 10 * time.Second
	defaultTestShortTimeout = 50 * time.Millisecond
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}

// testContext returns a context that ends with the test or after
// defaultTestTimeout.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), defaultTestTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newClient returns an etcd client that reconnects quickly after an etcd
// restart (gRPC's default reconnect backoff grows to minutes).
func newClient(t *testing.T, srv *etcdtest.Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   srv.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           gbackoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		})},
	})
	if err != nil {
		t.Fatalf("clientv3.New(%v) = %v", srv.Endpoints(), err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// register registers an instance and closes it when the test ends.
func register(t *testing.T, cli *clientv3.Client, service, instance, addr string, opts ...Option) *Registration {
	t.Helper()
	r, err := Register(testContext(t), cli, service, instance, addr, opts...)
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

// getValue returns the parsed value and the raw key-value at key, or ok=false
// if the key does not exist.
func getValue(t *testing.T, cli *clientv3.Client, key string) (Value, int64, bool) {
	t.Helper()
	resp, err := cli.Get(testContext(t), key)
	if err != nil {
		t.Fatalf("Get(%q) = %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return Value{}, 0, false
	}
	v, err := ParseValue(lastElem(key), resp.Kvs[0].Value)
	if err != nil {
		t.Fatalf("ParseValue(%s) = %v", resp.Kvs[0].Value, err)
	}
	return v, resp.Kvs[0].Lease, true
}

func lastElem(key string) string {
	for i := len(key) - 1; i >= 0; i-- {
		if key[i] == '/' {
			return key[i+1:]
		}
	}
	return key
}

// waitUntil polls cond until it holds or defaultTestTimeout passes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(defaultTestTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", defaultTestTimeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitClosed waits until c is closed.
func waitClosed(t *testing.T, what string, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(defaultTestTimeout):
		t.Fatalf("%s not closed after %v", what, defaultTestTimeout)
	}
}

// tWriter writes to t.Logf.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", p)
	return len(p), nil
}

// testLogger logs to t, with times.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
