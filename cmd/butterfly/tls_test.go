package main

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/internal/etcdclient"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

// TestIsLoopback_Addresses checks which etcd endpoints and listen addresses
// count as loopback.
func TestIsLoopback_Addresses(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:2379":         true,
		"127.0.0.2:0":            true,
		"localhost:2379":         true,
		"[::1]:2379":             true,
		"http://127.0.0.1:2379":  true,
		"https://localhost:2379": true,
		"10.0.0.5:2379":          false,
		":7001":                  false,
		"0.0.0.0:7001":           false,
		"etcd.example:2379":      false,
		"https://10.0.0.5:2379":  false,
	} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestTLSFlags_Plaintext checks when gRPC may run without TLS: with
// --insecure, or on loopback only, and never with TLS flags set too.
func TestTLSFlags_Plaintext(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name      string
		endpoints []string
		flags     tlsFlags
		listen    []string
		wantPlain bool
		wantErr   string
	}{
		{name: "loopback", endpoints: []string{"127.0.0.1:2379"}, listen: []string{"127.0.0.2:0"}, wantPlain: true},
		{name: "remote etcd", endpoints: []string{"127.0.0.1:2379", "10.0.0.5:2379"}, wantErr: `and --etcd-endpoints "10.0.0.5:2379" is not a loopback address`},
		{name: "public listener", endpoints: []string{"127.0.0.1:2379"}, listen: []string{"0.0.0.0:7001"}, wantErr: `and --listen "0.0.0.0:7001" is not a loopback address: pass the TLS flags (see ` + "`butterfly certs`" + `), or --insecure to accept plaintext`},
		{name: "insecure", endpoints: []string{"10.0.0.5:2379"}, flags: tlsFlags{insecure: true}, wantPlain: true},
		{name: "insecure and TLS", endpoints: []string{"127.0.0.1:2379"}, flags: tlsFlags{insecure: true, files: tlsutil.Files{CA: "ca.pem"}}, wantErr: "--insecure and --tls-* are both set"},
		{name: "TLS client", endpoints: []string{"10.0.0.5:2379"}, flags: tlsFlags{files: tlsutil.Files{CA: "ca.pem"}}},
		{name: "key without cert", endpoints: []string{"127.0.0.1:2379"}, flags: tlsFlags{files: tlsutil.Files{Key: "k.pem"}}, wantErr: "--tls-key is set but --tls-cert is not"},
		{name: "server without cert", endpoints: []string{"127.0.0.1:2379"}, flags: tlsFlags{server: true, files: tlsutil.Files{CA: "ca.pem"}}, wantErr: "needs its certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.flags
			f.root = &rootCommand{etcdEndpoints: tc.endpoints}
			plain, err := f.plaintext(logger, tc.listen...)
			if tc.wantErr != "" {
				var ue *usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("plaintext() = %v, want a usage error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || plain != tc.wantPlain {
				t.Fatalf("plaintext() = %v, %v, want %v, nil", plain, err, tc.wantPlain)
			}
		})
	}
}

// TestTLSFlags_Creds checks that the flags build working credentials from a
// development PKI, and fail clearly on a missing file.
func TestTLSFlags_Creds(t *testing.T) {
	dir := t.TempDir()
	if err := tlsutil.GenerateDev(dir, []string{"127.0.0.1"}, tlsutil.WithClientID("p1")); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logger := slog.New(slog.DiscardHandler)
	root := &rootCommand{etcdEndpoints: []string{"10.0.0.5:2379"}}
	client := &tlsFlags{root: root, files: tlsutil.Files{
		Cert: filepath.Join(dir, tlsutil.ClientFile), Key: filepath.Join(dir, tlsutil.ClientKeyFile), CA: filepath.Join(dir, tlsutil.CAFile),
	}}
	creds, err := client.clientCreds(ctx, logger)
	if err != nil || creds.Info().SecurityProtocol != "tls" {
		t.Fatalf("clientCreds() = %v, %v, want TLS credentials", creds, err)
	}
	server := &tlsFlags{root: root, server: true, files: tlsutil.Files{
		Cert: filepath.Join(dir, tlsutil.ServerFile), Key: filepath.Join(dir, tlsutil.ServerKeyFile), CA: filepath.Join(dir, tlsutil.CAFile),
	}}
	if opt, err := server.serverOption(ctx, logger, "10.0.0.5:7001"); err != nil || opt == nil {
		t.Fatalf("serverOption() = %v, %v, want a TLS option", opt, err)
	}
	server.files.Cert = filepath.Join(dir, "missing.pem")
	if _, err := server.serverOption(ctx, logger, "10.0.0.5:7001"); err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Fatalf("serverOption() with a missing certificate = %v, want an error naming the file", err)
	}
}

// TestEtcdFlags_Auth checks the --etcd-user and --etcd-password flags against
// an etcd with authentication enabled: the least-privilege user works, no
// user or a wrong password fails naming the flag.
func TestEtcdFlags_Auth(t *testing.T) {
	srv := etcdtest.StartAuth(t, "root-pw")
	etcdtest.AddPrefixUser(t, srv.ClientAs(t, etcdtest.RootUser, "root-pw"), "butterfly", "mesh-pw", "butterfly/")
	ep := srv.Endpoint()
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr error
		wantMsg string
	}{
		{name: "user:password", args: []string{"--etcd-user", "butterfly:mesh-pw"}},
		{name: "user and password", args: []string{"--etcd-user", "butterfly", "--etcd-password", "mesh-pw"}},
		{name: "no user", wantErr: etcdclient.ErrAuthRequired, wantMsg: "--etcd-user"},
		{name: "wrong password", args: []string{"--etcd-user", "butterfly:nope"}, wantErr: etcdclient.ErrAuthFailed, wantMsg: "--etcd-password"},
		{name: "password without user", args: []string{"--etcd-password", "x"}, wantMsg: "--etcd-password is set but --etcd-user is not"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"ls", "--etcd-endpoints", ep, "--etcd-dial-timeout", "5s"}, tc.args...)
			out, err := executeCommand(t, args...)
			if tc.wantMsg == "" {
				if err != nil || !strings.Contains(out, "SERVICE") {
					t.Fatalf("butterfly %v = %v, want the table; output:\n%s", args, err, out)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("butterfly %v = %v, want an error naming %s", args, err, tc.wantMsg)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("butterfly %v = %v, want %v", args, err, tc.wantErr)
			}
		})
	}
}

// TestEtcdFlags_PermissionStopsComponents checks that a component whose etcd
// user may not do what it needs exits at once naming the permission, as
// the intermediate and ls do: produce and consume whose user may not read
// their prefix stop before they start, and a consumer whose user may read
// but not write stops when etcd refuses its registration. They retried for
// ever before, saying only that no instance was registered, or that the
// registration failed.
func TestEtcdFlags_PermissionStopsComponents(t *testing.T) {
	srv := etcdtest.StartAuth(t, "root-pw")
	root := srv.ClientAs(t, etcdtest.RootUser, "root-pw")
	etcdtest.AddPrefixUser(t, root, "butterfly", "mesh-pw", "butterfly/")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, step := range []func() error{
		func() error { _, err := root.RoleAdd(ctx, "reader"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "reader", "butterfly/", clientv3.GetPrefixRangeEnd("butterfly/"), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := root.UserAdd(ctx, "reader", "reader-pw"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "reader", "reader"); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("setting up the read-only user: %v", err)
		}
	}
	ep := srv.Endpoint()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"produce, another prefix", []string{"produce", "--id", "p1", "--count", "1", "--prefix", "other", "--etcd-user", "butterfly:mesh-pw"}, `user "butterfly" may not read "other/"`},
		{"consume, another prefix", []string{"consume", "--id", "c1", "--prefix", "other", "--etcd-user", "butterfly:mesh-pw"}, `user "butterfly" may not read "other/"`},
		{"consume, read only", []string{"consume", "--id", "c1", "--etcd-user", "reader:reader-pw"}, `etcd refused its registration: registry: create group butterfly/groups/intermediate/default: etcd: permission denied: user "reader"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--etcd-endpoints", ep, "--etcd-dial-timeout", "5s"}, tc.args...)
			type result struct {
				out string
				err error
			}
			done := make(chan result, 1)
			go func() {
				out, err := executeCommand(t, args...)
				done <- result{out, err}
			}()
			select {
			case r := <-done:
				if r.err == nil || !strings.Contains(r.err.Error(), tc.want) || !errors.Is(r.err, etcdclient.ErrPermissionDenied) {
					t.Fatalf("butterfly %v = %v, want an etcd permission error containing %q; output:\n%s", args, r.err, tc.want, r.out)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("butterfly %v still runs after 20s, want it to stop on etcd's refusal", args)
			}
		})
	}
}
