package bench

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/registry"
)

// TestRegistrationsLapsed registers two real consumers on the embedded
// etcd, waits for both, revokes one's lease as an expiry would, and checks
// that the run's count names exactly that one once its keeper has put the
// key back.
func TestRegistrationsLapsed(t *testing.T) {
	ctx := t.Context()
	e, err := startEtcd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.close)
	quiet := slog.New(slog.DiscardHandler)
	noop := func(context.Context, *components.Delivery) error { return nil }
	for _, id := range []string{"c0", "c1"} {
		c, err := components.NewConsumer(e.cli, id, noop, components.WithService(service), components.WithLogger(quiet))
		if err != nil {
			t.Fatalf("NewConsumer(%s) = %v", id, err)
		}
		t.Cleanup(func() { _ = c.Close(context.WithoutCancel(ctx)) })
	}
	regs, err := consumerRegistrations(ctx, e.cli, 2)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := consumerRegistrations(short, e.cli, 3); err == nil || !strings.Contains(err.Error(), "2 of 3 consumers registered") {
		t.Errorf("consumerRegistrations(want 3) with 2 registered = %v, want an error naming 2 of 3", err)
	}
	if n, err := registrationsLapsed(ctx, e.cli, regs); err != nil || n != 0 {
		t.Fatalf("registrationsLapsed() with both registered since = %d, %v; want 0", n, err)
	}

	key := registry.ConsumerKey(registry.DefaultPrefix, service, components.DefaultGroup, "c0")
	resp, err := e.cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("Get(%s) = %v, %v; want the key", key, resp, err)
	}
	if _, err := e.cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatalf("Revoke() = %v", err)
	}
	// The keeper grants a new lease and puts the key back.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := e.cli.Get(ctx, key)
		if err == nil && len(resp.Kvs) == 1 && resp.Kvs[0].CreateRevision != regs[key] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("c0's key was not put back within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n, err := registrationsLapsed(ctx, e.cli, regs); err != nil || n != 1 {
		t.Errorf("registrationsLapsed() after c0's lease was revoked = %d, %v; want 1", n, err)
	}
}
