package embedetcd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}

// levels is a slog.Handler that keeps the level and message of every record.
type levels struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *levels) Enabled(context.Context, slog.Level) bool { return true }
func (h *levels) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r)
	return nil
}
func (h *levels) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *levels) WithGroup(string) slog.Handler      { return h }

// TestStart_LogsThroughSlog checks that the member's logs reach the logger,
// prefixed with "etcd: ", and that a start and a normal stop log nothing at
// WARN or above.
func TestStart_LogsThroughSlog(t *testing.T) {
	h := &levels{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv, err := startOnFreeAddrs(t, ctx, func(client, peer string) Config {
		return Config{DataDir: t.TempDir(), ListenClient: "http://" + client, ListenPeer: "http://" + peer, LogLevel: "info", Logger: slog.New(h)}
	})
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	srv.Close()
	h.mu.Lock()
	defer h.mu.Unlock()
	info := 0
	for _, r := range h.recs {
		if !strings.HasPrefix(r.Message, "etcd: ") {
			t.Errorf("record %q, want it prefixed with \"etcd: \"", r.Message)
		}
		if r.Level >= slog.LevelWarn {
			t.Errorf("record %s %q during a normal start and stop, want none at WARN or above", r.Level, r.Message)
		}
		if r.Level == slog.LevelInfo {
			info++
		}
	}
	if info == 0 {
		t.Errorf("%d records, none at INFO; want etcd's info logs", len(h.recs))
	}
}

// TestStart_PortTaken checks that a client port that is taken fails Start at
// once with an error that says so.
func TestStart_PortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The peer port, free when picked, may be taken as well; pick it
	// again then.
	var srv *Server
	for attempt := 1; attempt <= 3; attempt++ {
		peer := etcdtest.FreeAddr(t)
		srv, err = Start(ctx, Config{DataDir: t.TempDir(), ListenClient: "http://" + l.Addr().String(), ListenPeer: "http://" + peer})
		if err == nil || !strings.Contains(err.Error(), peer) {
			break
		}
	}
	if err == nil {
		srv.Close()
		t.Fatalf("Start() on a taken port = nil error")
	}
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "an address is taken") || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Errorf("Start() on a taken port = %v, want EADDRINUSE naming %s", err, l.Addr())
	}
}

// TestStart_DataDirInUse checks that a second member on the data directory
// of a running one fails at once, naming --data-dir, where etcd alone waits
// for its database's lock without end.
func TestStart_DataDirInUse(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, err := startOnFreeAddrs(t, ctx, func(client, peer string) Config {
		return Config{DataDir: dir, ListenClient: "http://" + client, ListenPeer: "http://" + peer}
	})
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	defer first.Close()
	srv, err := startOnFreeAddrs(t, ctx, func(client, peer string) Config {
		return Config{DataDir: dir, ListenClient: "http://" + client, ListenPeer: "http://" + peer}
	})
	if err == nil {
		srv.Close()
		t.Fatalf("Start() on a data directory in use = nil error")
	}
	if want := "--data-dir " + dir + " is in use by another etcd"; !strings.Contains(err.Error(), want) {
		t.Errorf("Start() on a data directory in use = %v, want it to say %q", err, want)
	}
}

// TestStart_URLWithoutScheme checks that a peer URL given as host:port is
// http's everywhere it goes, the initial cluster included, and that a
// scheme other than http or https is refused naming its flag.
func TestStart_URLWithoutScheme(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv, err := startOnFreeAddrs(t, ctx, func(client, peer string) Config {
		return Config{DataDir: t.TempDir(), ListenClient: client, ListenPeer: peer}
	})
	if err != nil {
		t.Fatalf("Start() with host:port URLs = %v", err)
	}
	srv.Close()
	// An --initial-cluster whose peer URL has no scheme, as the operator
	// writes the other URL flags.
	srv, err = startOnFreeAddrs(t, ctx, func(client, peer string) Config {
		return Config{Name: "x1", DataDir: t.TempDir(), ListenClient: client, ListenPeer: peer, InitialCluster: "x1=" + peer}
	})
	if err != nil {
		t.Fatalf("Start() with --initial-cluster x1=<peer> = %v", err)
	}
	srv.Close()
	for _, tc := range []struct{ cluster, want string }{
		{"x1", `--initial-cluster: "x1" is not name=peerURL`},
		{"x1=ftp://127.0.0.1:1", "--initial-cluster: member x1: \"ftp://127.0.0.1:1\": the scheme is neither http nor https"},
	} {
		if err := (Config{DataDir: "d", InitialCluster: tc.cluster}).Validate(); err == nil || err.Error() != tc.want {
			t.Errorf("Validate() of --initial-cluster %q = %v, want %q", tc.cluster, err, tc.want)
		}
	}
	err = Config{DataDir: "d", ListenClient: "ftp://127.0.0.1:1"}.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "--listen-client: ") || !strings.Contains(err.Error(), "neither http nor https") {
		t.Errorf("Validate() of an ftp:// client URL = %v, want an error naming --listen-client and the schemes", err)
	}
}

// startOnFreeAddrs starts a member with the Config that config makes of a
// client and a peer address, picking them again while a port is taken (see
// etcdtest.OnFreeAddrs).
func startOnFreeAddrs(t *testing.T, ctx context.Context, config func(client, peer string) Config) (*Server, error) {
	t.Helper()
	var srv *Server
	err := etcdtest.OnFreeAddrs(t, func(client, peer string) error {
		var err error
		srv, err = Start(ctx, config(client, peer))
		return err
	})
	return srv, err
}

// TestValidate_TLS checks that TLS files and the listen URL's scheme must
// agree, each error naming the flags, as etcd itself would only warn that
// it ignores the files of an http:// URL.
func TestValidate_TLS(t *testing.T) {
	files := TLSFiles{Cert: "s.pem", Key: "s-key.pem"}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "" for valid
	}{
		{"https clients", Config{DataDir: "d", ListenClient: "https://127.0.0.1:1", ClientTLS: files}, ""},
		{"HTTPS in upper case", Config{DataDir: "d", ListenClient: "HTTPS://127.0.0.1:1", ClientTLS: files}, ""},
		{"HTTPS in upper case without files", Config{DataDir: "d", ListenClient: "HTTPS://127.0.0.1:1"},
			"--listen-client HTTPS://127.0.0.1:1 is https: it needs --cert-file and --key-file"},
		{"https clients, mutual", Config{DataDir: "d", ListenClient: "https://127.0.0.1:1", ClientTLS: TLSFiles{Cert: "s.pem", Key: "k.pem", TrustedCA: "ca.pem", ClientCertAuth: true}}, ""},
		{"https without files", Config{DataDir: "d", ListenClient: "https://127.0.0.1:1"},
			"--listen-client https://127.0.0.1:1 is https: it needs --cert-file and --key-file"},
		{"files without https", Config{DataDir: "d", ClientTLS: files},
			"--cert-file, --key-file, --trusted-ca-file and --client-cert-auth need an https:// --listen-client, not http://127.0.0.1:2379"},
		{"client auth without a CA", Config{DataDir: "d", ListenClient: "https://127.0.0.1:1", ClientTLS: TLSFiles{Cert: "s.pem", Key: "k.pem", ClientCertAuth: true}},
			"--client-cert-auth needs --trusted-ca-file, the CA the certificates it requires are checked against"},
		{"peer files without https", Config{DataDir: "d", ListenPeer: "127.0.0.1:2", PeerTLS: files},
			"--peer-cert-file, --peer-key-file, --peer-trusted-ca-file and --peer-client-cert-auth need an https:// --listen-peer, not http://127.0.0.1:2"},
		{"https peers without files", Config{DataDir: "d", ListenPeer: "https://127.0.0.1:2"},
			"--listen-peer https://127.0.0.1:2 is https: it needs --peer-cert-file and --peer-key-file"},
	} {
		err := tc.cfg.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || err.Error() != tc.want) {
			t.Errorf("%s: Validate() = %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestStart_ClientsOverMutualTLS checks a member serving clients over
// mutual TLS: a client with a certificate of the CA reads and writes, one
// without is refused, and a missing certificate file fails Start naming
// its flag.
func TestStart_ClientsOverMutualTLS(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.GenerateDev(pki, []string{"127.0.0.1"}); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	serverTLS := TLSFiles{
		Cert: filepath.Join(pki, tlsutil.ServerFile), Key: filepath.Join(pki, tlsutil.ServerKeyFile),
		TrustedCA: filepath.Join(pki, tlsutil.CAFile), ClientCertAuth: true,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, err := startOnFreeAddrs(t, ctx, func(client, peer string) Config {
		return Config{DataDir: t.TempDir(), ListenClient: "https://" + client, ListenPeer: "http://" + peer, ClientTLS: serverTLS}
	})
	if err != nil {
		t.Fatalf("Start() over TLS = %v", err)
	}
	defer srv.Close()

	dial := func(cert bool) (*clientv3.Client, error) {
		info := transport.TLSInfo{TrustedCAFile: filepath.Join(pki, tlsutil.CAFile)}
		if cert {
			info.CertFile, info.KeyFile = filepath.Join(pki, tlsutil.ClientFile), filepath.Join(pki, tlsutil.ClientKeyFile)
		}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, err
		}
		return clientv3.New(clientv3.Config{Endpoints: srv.ClientEndpoints(), TLS: tc, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	}
	cli, err := dial(true)
	if err != nil {
		t.Fatalf("clientv3.New() with a client certificate = %v", err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("Put() over mutual TLS = %v", err)
	}
	anon, err := dial(false)
	if err == nil {
		defer anon.Close()
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		defer acancel()
		if _, err := anon.Get(actx, "k"); err == nil {
			t.Errorf("Get() without a client certificate = nil error, want it refused")
		}
	}

	missing := serverTLS
	missing.Cert = filepath.Join(pki, "nope.pem")
	_, err = Start(ctx, Config{DataDir: t.TempDir(), ListenClient: "https://" + etcdtest.FreeAddr(t), ListenPeer: "http://" + etcdtest.FreeAddr(t), ClientTLS: missing})
	if err == nil || !strings.Contains(err.Error(), "--cert-file "+missing.Cert) {
		t.Errorf("Start() with a missing --cert-file = %v, want an error naming it", err)
	}
}

// TestStartOnLoopback checks that a member started on loopback ports of
// its own picking serves, on the endpoint it reports.
func TestStartOnLoopback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv, err := StartOnLoopback(ctx, Config{DataDir: t.TempDir(), ListenClient: "http://10.0.0.1:1"})
	if err != nil {
		t.Fatalf("StartOnLoopback() = %v", err)
	}
	defer srv.Close()
	eps := srv.ClientEndpoints()
	if len(eps) != 1 || !strings.HasPrefix(eps[0], "127.0.0.1:") {
		t.Fatalf("ClientEndpoints() = %v, want one loopback endpoint", eps)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("clientv3.New() = %v", err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Errorf("Put() = %v", err)
	}
}
