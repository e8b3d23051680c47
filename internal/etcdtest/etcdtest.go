// Package etcdtest runs a real embedded etcd server for tests.
//
//	srv := etcdtest.Start(t)
//	cli := srv.Client(t)
//	srv.Stop(t)    // etcd is gone; clients see errors
//	srv.Restart(t) // the same member on the same data dir and port
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/butterfly-mesh/butterfly/internal/freeport"
	"github.com/butterfly-mesh/butterfly/internal/tcpproxy"
)

const startTimeout = 30 * time.Second

// Server is one embedded etcd member listening on loopback.
type Server struct {
	dir        string
	clientURL  url.URL
	peerURL    url.URL
	bcryptCost uint // 0: etcd's default

	mu sync.Mutex
	e  *embed.Etcd // nil while stopped
}

// Start starts a single-member etcd with its data in a fresh temporary
// directory, and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := newServer(t)
	s.startOnFreeAddrs(t)
	t.Cleanup(func() { s.stop() })
	return s
}

// newServer picks the data dir of a server that is not started.
func newServer(t testing.TB) *Server {
	return &Server{
		dir:       t.TempDir(),
		clientURL: url.URL{Scheme: "http"},
		peerURL:   url.URL{Scheme: "http"},
	}
}

// startOnFreeAddrs starts s the first time, on ports it picks (see
// OnFreeAddrs).
func (s *Server) startOnFreeAddrs(t testing.TB) {
	t.Helper()
	if err := OnFreeAddrs(t, func(client, peer string) error {
		s.clientURL.Host, s.peerURL.Host = client, peer
		return s.tryStart()
	}); err != nil {
		t.Fatalf("%v", err)
	}
}

// Endpoints returns the client endpoints, for clientv3.Config.
func (s *Server) Endpoints() []string { return []string{s.clientURL.Host} }

// Endpoint returns the client endpoint as "host:port".
func (s *Server) Endpoint() string { return s.clientURL.Host }

// Client returns a client of the server that is closed when the test ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   s.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("clientv3.New(%v) = %v", s.Endpoints(), err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// ProxiedClient returns a client of the server through a proxy the test
// can cut (px.Blackhole(true): connections stay open, nothing gets through),
// as a process cut off from etcd alone is. Both are closed when the test
// ends, the cut healed first.
func (s *Server) ProxiedClient(t testing.TB) (*clientv3.Client, *tcpproxy.Proxy) {
	t.Helper()
	px, err := tcpproxy.Listen("127.0.0.1:0", s.Endpoint())
	if err != nil {
		t.Fatalf("tcpproxy.Listen() = %v", err)
	}
	t.Cleanup(func() { px.Close() })
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{px.Addr()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("clientv3.New(%s) = %v", px.Addr(), err)
	}
	t.Cleanup(func() { cli.Close() })
	t.Cleanup(func() { px.Blackhole(false) })
	return cli, px
}

// Stop stops the server; its data stays for Restart.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.stop()
}

// Restart starts the stopped server again on the same data dir and ports.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.start(t)
}

// Compact compacts the key space up to the current revision, so that a watch
// started at an older revision is canceled with ErrCompacted.
func (s *Server) Compact(t testing.TB, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "compact-probe")
	if err != nil {
		t.Fatalf("Get() = %v", err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("Compact(%d) = %v", rev, err)
	}
	return rev
}

func (s *Server) start(t testing.TB) {
	t.Helper()
	if err := s.tryStart(); err != nil {
		t.Fatalf("%v", err)
	}
}

func (s *Server) tryStart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.e != nil {
		return errors.New("etcdtest: server already running")
	}
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = s.dir
	cfg.ListenClientUrls = []url.URL{s.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{s.clientURL}
	cfg.ListenPeerUrls = []url.URL{s.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{s.peerURL}
	cfg.InitialCluster = fmt.Sprintf("%s=%s", cfg.Name, s.peerURL.String())
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	if s.bcryptCost != 0 {
		cfg.BcryptCost = s.bcryptCost
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("embed.StartEtcd() = %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(startTimeout):
		e.Close()
		return fmt.Errorf("etcdtest: server not ready after %v", startTimeout)
	}
	s.e = e
	return nil
}

func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.e == nil {
		return
	}
	s.e.Close()
	<-s.e.Server.StopNotify()
	s.e = nil
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago: nothing listens on it.
func FreeAddr(t testing.TB) string {
	t.Helper()
	addr, err := freeport.Loopback()
	if err != nil {
		t.Fatalf("%v", err)
	}
	return addr
}

// OnFreeAddrs calls start with a client and a peer address that were free
// when picked, and picks again while one is taken before etcd binds it
// (freeport.Pair). It returns start's last error.
func OnFreeAddrs(t testing.TB, start func(client, peer string) error) error {
	t.Helper()
	return freeport.Pair(start)
}

// LeakOptions are the goleak options for packages whose tests run an
// embedded etcd: goroutines that etcd and its libraries start once per
// process and never stop.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/pkg/v3/logutil.(*MergeLogger).outputLoop"),
		goleak.IgnoreAnyFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreAnyFunction("go.etcd.io/etcd/server/v3/etcdserver/api/v3compactor.(*Periodic).Run"),
	}
}
