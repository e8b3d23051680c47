package embedetcd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
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
