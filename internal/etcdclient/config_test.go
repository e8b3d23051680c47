package etcdclient

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
)

// TestConfig_Validate checks that each inconsistent configuration is refused
// with the name of the flag to fix.
func TestConfig_Validate(t *testing.T) {
	ep := []string{"127.0.0.1:2379"}
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string // "" for valid
	}{
		{"plain", Config{Endpoints: ep}, ""},
		{"user:password", Config{Endpoints: ep, User: "butterfly:s3cr:et"}, ""},
		{"user and --etcd-password", Config{Endpoints: ep, User: "butterfly", Password: "pw"}, ""},
		{"mTLS", Config{Endpoints: ep, CACert: "ca", Cert: "c", Key: "k"}, ""},
		{"no endpoints", Config{}, "--etcd-endpoints is empty"},
		{"empty endpoint", Config{Endpoints: []string{"a:1", " "}}, "--etcd-endpoints"},
		{"URL endpoints", Config{Endpoints: []string{"http://10.0.0.1:2379", "https://etcd.example:2379/", "[::1]:2379", "unix://etcd.sock"}}, ""},
		{"schemes in upper case", Config{Endpoints: []string{"HTTP://10.0.0.1:2379", "Https://etcd.example:2379"}}, ""},
		{"unix in upper case", Config{Endpoints: []string{"UNIX://etcd.sock"}}, `scheme "UNIX" is not http or https`},
		{"no port", Config{Endpoints: []string{"198.18.0.11"}}, `--etcd-endpoints "198.18.0.11": missing port in address (want host:port or http(s)://host:port)`},
		{"a path", Config{Endpoints: []string{"198.18.0.11:2379/"}}, `--etcd-endpoints "198.18.0.11:2379/": port "2379/" is not a number in [1, 65535]`},
		{"port out of range", Config{Endpoints: []string{"a:99999"}}, `port "99999" is not a number`},
		{"other scheme", Config{Endpoints: []string{"grpc://a:2379"}}, `scheme "grpc" is not http or https`},
		{"no host", Config{Endpoints: []string{":2379"}}, `--etcd-endpoints ":2379": no host`},
		{"negative timeout", Config{Endpoints: ep, DialTimeout: -time.Second}, "--etcd-dial-timeout -1s is negative"},
		{"cert without key", Config{Endpoints: ep, Cert: "c"}, "--etcd-cert is set but --etcd-key is not"},
		{"key without cert", Config{Endpoints: ep, Key: "k"}, "--etcd-key is set but --etcd-cert is not"},
		{"password without user", Config{Endpoints: ep, Password: "pw"}, "--etcd-password is set but --etcd-user is not"},
		{"user without password", Config{Endpoints: ep, User: "butterfly"}, `--etcd-user "butterfly" has no password`},
		{"two passwords", Config{Endpoints: ep, User: "butterfly:a", Password: "b"}, "--etcd-password is set too"},
		{"empty user name", Config{Endpoints: ep, User: ":pw"}, "no user name"},
		{"empty password", Config{Endpoints: ep, User: "butterfly:"}, "empty password"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("Validate(%s) = %v, want nil", tc.name, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("Validate(%s) = %v, want an error containing %q", tc.name, err, tc.wantErr)
		}
	}
}

// TestConfig_TLSEnabled checks which endpoints make the client speak TLS
// without a TLS flag: https:// in any case, as etcd's client reads it, and
// unixs.
func TestConfig_TLSEnabled(t *testing.T) {
	for ep, want := range map[string]bool{
		"127.0.0.1:2379":         false,
		"http://127.0.0.1:2379":  false,
		"https://127.0.0.1:2379": true,
		"HTTPS://127.0.0.1:2379": true,
		"unix://etcd.sock":       false,
		"unixs://etcd.sock":      true,
	} {
		if got := (Config{Endpoints: []string{ep}}).tlsEnabled(); got != want {
			t.Errorf("tlsEnabled(%s) = %v, want %v", ep, got, want)
		}
	}
}

// TestConfig_Credentials checks how --etcd-user and --etcd-password combine.
func TestConfig_Credentials(t *testing.T) {
	for _, tc := range []struct {
		cfg            Config
		user, password string
	}{
		{Config{}, "", ""},
		{Config{User: "butterfly:s3cr:et"}, "butterfly", "s3cr:et"},
		{Config{User: "butterfly", Password: "pw"}, "butterfly", "pw"},
	} {
		user, password := tc.cfg.credentials()
		if user != tc.user || password != tc.password {
			t.Errorf("credentials(%q, %q) = %q, %q; want %q, %q", tc.cfg.User, tc.cfg.Password, user, password, tc.user, tc.password)
		}
	}
}

// TestNew_InvalidConfig checks that New refuses what Validate refuses, and
// TLS files it cannot load, before connecting.
func TestNew_InvalidConfig(t *testing.T) {
	ep := []string{"127.0.0.1:1"}
	for _, tc := range []struct {
		cfg     Config
		wantErr string
	}{
		{Config{Endpoints: ep, User: "butterfly"}, "has no password"},
		{Config{Endpoints: ep, CACert: "/nonexistent/ca.pem"}, "--etcd-cacert: open /nonexistent/ca.pem"},
		{Config{Endpoints: ep, Cert: "/nonexistent/c.pem", Key: "/nonexistent/k.pem"}, "--etcd-cert, --etcd-key: open /nonexistent/c.pem"},
	} {
		cli, err := New(tc.cfg, nil)
		if err == nil {
			cli.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("New(%+v) = %v, want an error containing %q", tc.cfg, err, tc.wantErr)
		}
	}
}

// TestNew_Unreachable checks that New fails after the dial timeout, not
// later, with ErrUnreachable naming the endpoints and the timeout, when no
// endpoint answers.
func TestNew_Unreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	ep := l.Addr().String()
	l.Close() // nothing listens there now: connections are refused
	start := time.Now()
	cli, err := New(Config{Endpoints: []string{ep}, DialTimeout: 300 * time.Millisecond}, nil)
	took := time.Since(start)
	if err == nil {
		cli.Close()
		t.Fatalf("New(%s) = nil error, want ErrUnreachable", ep)
	}
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), ep) || !strings.Contains(err.Error(), "300ms (--etcd-dial-timeout)") {
		t.Errorf("New(%s) = %v, want ErrUnreachable naming %s and 300ms (--etcd-dial-timeout)", ep, err, ep)
	}
	if took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("New(%s) took %v, want about the 300ms dial timeout", ep, took)
	}
}

// TestNew_UnreachableSaysAnUnresolvedName checks that an endpoint whose
// name does not resolve is said as such with the dial timeout's error.
func TestNew_UnreachableSaysAnUnresolvedName(t *testing.T) {
	cli, err := New(Config{Endpoints: []string{"butterfly-etcd.invalid:2379"}, DialTimeout: 300 * time.Millisecond}, nil)
	if err == nil {
		cli.Close()
		t.Fatalf("New() = nil error, want ErrUnreachable")
	}
	if want := "(butterfly-etcd.invalid does not resolve)"; !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), want) {
		t.Errorf("New() = %v, want ErrUnreachable saying %q", err, want)
	}
}

// TestNew_NotEtcd checks that New refuses, with ErrNotEtcd naming
// --etcd-endpoints and the address, a gRPC server that is not etcd (an
// intermediate's address given for etcd's), with and without a user, and
// beside an etcd that answers, every time: every request sent there would
// fail with Unimplemented, or wait on as for an etcd without a leader.
func TestNew_NotEtcd(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	ep := l.Addr().String()
	etcd := etcdtest.Start(t).Endpoint()
	for _, tc := range []struct {
		name string
		cfg  Config
		runs int
	}{
		{"alone", Config{Endpoints: []string{ep}}, 1},
		{"with a user", Config{Endpoints: []string{ep}, User: "butterfly:pw"}, 1},
		// The client sends its requests to one endpoint and the next in
		// turn: each run must find the one that is not etcd.
		{"beside etcd", Config{Endpoints: []string{etcd, ep}}, 5},
		{"beside etcd, first", Config{Endpoints: []string{ep, etcd}}, 5},
	} {
		for range tc.runs {
			tc.cfg.DialTimeout = 2 * time.Second
			cli, err := New(tc.cfg, nil)
			if err == nil {
				cli.Close()
				t.Fatalf("%s: New() = nil error, want ErrNotEtcd", tc.name)
			}
			want := "not etcd: --etcd-endpoints " + ep + " answers gRPC but is not etcd"
			if !errors.Is(err, ErrNotEtcd) || !strings.HasPrefix(err.Error(), want) || status.Code(err) != codes.Unimplemented {
				t.Fatalf("%s: New() = %v, want ErrNotEtcd starting %q", tc.name, err, want)
			}
		}
	}
	// An etcd whose user may not read the key read is etcd all the same:
	// TestNew_LeastPrivilegeUser.
	cli, err := New(Config{Endpoints: []string{etcd, etcdtest.FreeAddr(t)}, DialTimeout: 2 * time.Second}, nil)
	if err != nil {
		t.Fatalf("New(etcd and an address nothing listens at) = %v, want nil", err)
	}
	cli.Close()
}
