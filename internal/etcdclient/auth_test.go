package etcdclient

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

const (
	rootPassword = "root-pw"
	meshUser     = "butterfly"
	meshPassword = "mesh-pw"
	meshPrefix   = registry.DefaultPrefix + "/"
)

// startAuthEtcd starts etcd with authentication enabled and a least-privilege
// user limited to the butterfly/ prefix.
func startAuthEtcd(t *testing.T) *etcdtest.Server {
	t.Helper()
	srv := etcdtest.StartAuth(t, rootPassword)
	etcdtest.AddPrefixUser(t, srv.ClientAs(t, etcdtest.RootUser, rootPassword), meshUser, meshPassword, meshPrefix)
	return srv
}

// TestNew_LeastPrivilegeUser checks that the user of the documented role
// reads and writes under butterfly/, and nowhere else.
func TestNew_LeastPrivilegeUser(t *testing.T) {
	srv := startAuthEtcd(t)
	ctx := testContext(t)
	for _, cfg := range []Config{
		{Endpoints: srv.Endpoints(), User: meshUser + ":" + meshPassword},
		{Endpoints: srv.Endpoints(), User: meshUser, Password: meshPassword},
	} {
		cli := newClient(t, cfg)
		if _, err := cli.Put(ctx, "butterfly/services/x/i1", "v1"); err != nil {
			t.Fatalf("Put(butterfly/services/x/i1) = %v, want nil", err)
		}
		resp, err := cli.Get(ctx, "butterfly/services/x/i1")
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v1" {
			t.Fatalf("Get(butterfly/services/x/i1) = %v, %v; want v1", resp, err)
		}
	}

	cli := newClient(t, Config{Endpoints: srv.Endpoints(), User: meshUser + ":" + meshPassword})
	_, err := cli.Put(ctx, "other/k", "v")
	if !errors.Is(err, ErrPermissionDenied) || !errors.Is(err, rpctypes.ErrPermissionDenied) || status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Put(other/k) = %v, want ErrPermissionDenied, rpctypes.ErrPermissionDenied, code PermissionDenied", err)
	}
	if want := `etcd: permission denied: user "butterfly" may not write "other/k"`; !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Put(other/k) = %q, want it to start with %q", err, want)
	}
	// "butterfly" without the slash is outside the role's range too.
	if _, err := cli.Get(ctx, "butterfly"); !errors.Is(err, ErrPermissionDenied) || !Refused(fmt.Errorf("wrapped: %w", err)) {
		t.Fatalf("Get(butterfly) = %v, want ErrPermissionDenied, Refused through a wrapping", err)
	}
	if Refused(context.DeadlineExceeded) {
		t.Fatal("Refused(context.DeadlineExceeded) = true, want false: an outage mends")
	}
	root := srv.ClientAs(t, etcdtest.RootUser, rootPassword)
	if resp, err := root.Get(ctx, "other/k"); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("root Get(other/k) = %v, %v; want no key", resp, err)
	}
}

// TestNew_LeastPrivilegeUserRunsRegistry checks that the documented role is
// enough for the mesh: a registration (lease, transaction, control watch,
// lease revocation) and a membership watch.
func TestNew_LeastPrivilegeUserRunsRegistry(t *testing.T) {
	srv := startAuthEtcd(t)
	ctx := testContext(t)
	cli := newClient(t, Config{Endpoints: srv.Endpoints(), User: meshUser + ":" + meshPassword})
	reg, err := registry.Register(ctx, cli, "intermediate", "im-1", "127.0.0.2:7400", registry.WithTTL(2*time.Second))
	if err != nil {
		t.Fatalf("Register(intermediate, im-1) = %v", err)
	}
	views := make(chan registry.View, 16)
	watchCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- registry.Watch(watchCtx, cli, "intermediate", func(v registry.View) { views <- v }) }()
	defer func() {
		cancel()
		<-done
	}()
	waitView(t, ctx, views, 1)
	// Close revokes the lease, which needs write access to its keys.
	if err := reg.Close(ctx); err != nil {
		t.Fatalf("Registration.Close() = %v, want nil", err)
	}
	waitView(t, ctx, views, 0)
}

// waitView waits for a view of n instances, each im-1 at 127.0.0.2:7400.
func waitView(t *testing.T, ctx context.Context, views <-chan registry.View, n int) {
	t.Helper()
	var last registry.View
	for {
		select {
		case v := <-views:
			last = v
			if len(v.Instances) == n && (n == 0 || v.Instances[0].Name == "im-1" && v.Instances[0].Addr == "127.0.0.2:7400") {
				return
			}
		case <-ctx.Done():
			t.Fatalf("Watch(intermediate) = %+v, want %d instance(s) im-1 at 127.0.0.2:7400", last.Instances, n)
		}
	}
}

// TestNew_AuthRequired checks that a client without a user is told which
// flag it lacks when the cluster has authentication enabled.
func TestNew_AuthRequired(t *testing.T) {
	srv := startAuthEtcd(t)
	cli := newClient(t, Config{Endpoints: srv.Endpoints()})
	_, err := cli.Put(testContext(t), "butterfly/k", "v")
	if !errors.Is(err, ErrAuthRequired) || !errors.Is(err, rpctypes.ErrUserEmpty) || status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Put() without a user = %v, want ErrAuthRequired, rpctypes.ErrUserEmpty, code InvalidArgument", err)
	}
	if want := "etcd: authentication required (--etcd-user): "; !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("Put() without a user = %q, want it to start with %q", err, want)
	}
}

// TestNew_WrongPassword checks that New fails with ErrAuthFailed.
func TestNew_WrongPassword(t *testing.T) {
	srv := startAuthEtcd(t)
	cli, err := New(Config{Endpoints: srv.Endpoints(), User: meshUser + ":wrong"}, nil)
	if err == nil {
		cli.Close()
	}
	if !errors.Is(err, ErrAuthFailed) || !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Fatalf("New(wrong password) = %v, want ErrAuthFailed, rpctypes.ErrAuthFailed", err)
	}
	if !strings.Contains(err.Error(), `user "butterfly"`) {
		t.Fatalf("New(wrong password) = %q, want it to name user \"butterfly\"", err)
	}
}

// TestNew_ReconnectsAfterRestart checks that an authenticated client works
// again soon after etcd restarts, with a new token, without being rebuilt.
func TestNew_ReconnectsAfterRestart(t *testing.T) {
	srv := startAuthEtcd(t)
	ctx := testContext(t)
	cli := newClient(t, Config{Endpoints: srv.Endpoints(), User: meshUser + ":" + meshPassword})
	if _, err := cli.Put(ctx, "butterfly/k", "before"); err != nil {
		t.Fatalf("Put(before) = %v", err)
	}
	srv.Stop(t)
	srv.Restart(t)
	restarted := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for ; ; <-tick.C {
		putCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.Put(putCtx, "butterfly/k", "after")
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("Put(after) %v after restart = %v, want nil", time.Since(restarted), err)
		}
	}
	resp, err := cli.Get(ctx, "butterfly/k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "after" {
		t.Fatalf("Get(butterfly/k) = %v, %v; want after", resp, err)
	}
	if d := time.Since(restarted); d > 3*time.Second {
		t.Fatalf("reconnect after restart took %v, want under 3s (backoff max %v)", d, reconnectMaxDelay)
	}
}
