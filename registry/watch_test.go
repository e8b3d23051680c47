package registry

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
)

// startWatch runs Watch until the test ends and returns its views.
func startWatch(t *testing.T, cli *clientv3.Client, service string, opts ...Option) <-chan View {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	views := make(chan View, 100)
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, cli, service, func(v View) {
			select {
			case views <- v:
			case <-ctx.Done():
			}
		}, opts...)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch() = %v, want %v", err, context.Canceled)
		}
	})
	return views
}

// nextView returns the next view.
func nextView(t *testing.T, views <-chan View) View {
	t.Helper()
	select {
	case v := <-views:
		return v
	case <-time.After(defaultTestTimeout):
		t.Fatalf("no view after %v", defaultTestTimeout)
		return View{}
	}
}

// names returns the instance names of v, and their addresses.
func names(v View) []string {
	var ns []string
	for _, inst := range v.Instances {
		ns = append(ns, inst.Name+"="+inst.Addr)
	}
	return ns
}

func putValue(t *testing.T, cli *clientv3.Client, service, instance, addr string) {
	t.Helper()
	b, err := Value{Addr: addr, Metadata: Metadata{Instance: instance, Epoch: 1}}.Marshal()
	if err != nil {
		t.Fatalf("Marshal() = %v", err)
	}
	key := ServiceKey(DefaultPrefix, service, instance)
	if _, err := cli.Put(testContext(t), key, string(b)); err != nil {
		t.Fatalf("Put(%q) = %v", key, err)
	}
}

func wantNames(t *testing.T, v View, want ...string) {
	t.Helper()
	if got := names(v); !slices.Equal(got, want) {
		t.Fatalf("view = %v, want %v", got, want)
	}
}

// TestWatch_InitialViewAndChanges checks the listed view and one full, sorted
// view per change.
func TestWatch_InitialViewAndChanges(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	putValue(t, cli, "svc", "b", "127.0.0.1:2")
	putValue(t, cli, "svc", "a", "127.0.0.1:1")
	putValue(t, cli, "other", "x", "127.0.0.1:9")
	views := startWatch(t, cli, "svc")

	v := nextView(t, views)
	wantNames(t, v, "a=127.0.0.1:1", "b=127.0.0.1:2")
	if v.Service != "svc" || v.Instances[0].Service != "svc" || v.Instances[0].Metadata.Instance != "a" || v.Revision == 0 {
		t.Errorf("view = %+v, want service svc, instance a first, a revision", v)
	}
	putValue(t, cli, "svc", "c", "127.0.0.1:3")
	wantNames(t, nextView(t, views), "a=127.0.0.1:1", "b=127.0.0.1:2", "c=127.0.0.1:3")
	putValue(t, cli, "svc", "a", "127.0.0.2:1")
	wantNames(t, nextView(t, views), "a=127.0.0.2:1", "b=127.0.0.1:2", "c=127.0.0.1:3")
	if _, err := cli.Delete(testContext(t), ServiceKey(DefaultPrefix, "svc", "b")); err != nil {
		t.Fatalf("Delete(b) = %v", err)
	}
	wantNames(t, nextView(t, views), "a=127.0.0.2:1", "c=127.0.0.1:3")
	putValue(t, cli, "other", "y", "127.0.0.1:8")
	select {
	case v := <-views:
		t.Errorf("view after a change of another service = %v, want none", names(v))
	case <-time.After(defaultTestShortTimeout):
	}
}

// TestWatch_MalformedValuesSkipped checks that malformed values are left out
// with one warning each, without disturbing the other instances.
func TestWatch_MalformedValuesSkipped(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	putValue(t, cli, "svc", "a", "127.0.0.1:1")
	for key, val := range map[string]string{
		"butterfly/services/svc/bad":    "garbage",
		"butterfly/services/svc/noaddr": `{"Metadata":{"epoch":1}}`,
		"butterfly/services/svc/other":  `{"Addr":"127.0.0.1:5","Metadata":{"instance":"not-other"}}`,
		"butterfly/services/svc/n/m":    `{"Addr":"127.0.0.1:6"}`,
	} {
		if _, err := cli.Put(testContext(t), key, val); err != nil {
			t.Fatalf("Put(%q) = %v", key, err)
		}
	}
	var logs logtest.Recorder
	resync := make(chan struct{})
	views := startWatch(t, cli, "svc", WithLogger(logs.Logger()), WithResync(resync))
	wantNames(t, nextView(t, views), "a=127.0.0.1:1")
	const warning = "registry: skipping malformed instance"
	if got := logs.Count(warning); got != 4 {
		t.Errorf("warnings after the first list = %d, want 4", got)
	}

	// A re-list finds the same values: no new warning, no new view.
	resync <- struct{}{}
	if _, err := cli.Put(testContext(t), "butterfly/services/svc/bad", "still garbage"); err != nil {
		t.Fatalf("Put(bad) = %v", err)
	}
	putValue(t, cli, "svc", "b", "127.0.0.1:2")
	wantNames(t, nextView(t, views), "a=127.0.0.1:1", "b=127.0.0.1:2")
	if got := logs.Count(warning); got != 5 {
		t.Errorf("warnings after a re-list and one new malformed value = %d, want 5", got)
	}
	// A good value replaces a malformed one.
	putValue(t, cli, "svc", "bad", "127.0.0.1:3")
	wantNames(t, nextView(t, views), "a=127.0.0.1:1", "b=127.0.0.1:2", "bad=127.0.0.1:3")
	// And a malformed value replaces a good one: the instance leaves.
	if _, err := cli.Put(testContext(t), "butterfly/services/svc/a", "{"); err != nil {
		t.Fatalf("Put(a) = %v", err)
	}
	wantNames(t, nextView(t, views), "b=127.0.0.1:2", "bad=127.0.0.1:3")
}

// TestWatch_CompactionRelists checks that a watch that starts behind a
// compaction reports the error and lists again, missing no change.
func TestWatch_CompactionRelists(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	putValue(t, cli, "svc", "a", "127.0.0.1:1")

	// Watch calls update with the listed view before it starts to watch:
	// while update holds the first view, the watch is behind.
	ctx, cancel := context.WithCancel(t.Context())
	listed := make(chan View, 1)
	release := make(chan struct{})
	views := make(chan View, 10)
	errs := make(chan error, 10)
	done := make(chan error, 1)
	first := true
	go func() {
		done <- Watch(ctx, cli, "svc", func(v View) {
			if first {
				first = false
				listed <- v
				select {
				case <-release:
				case <-ctx.Done():
				}
				return
			}
			views <- v
		}, WithErrorHandler(func(err error) { errs <- err }))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch() = %v, want %v", err, context.Canceled)
		}
	})

	wantNames(t, nextView(t, listed), "a=127.0.0.1:1")
	putValue(t, cli, "svc", "b", "127.0.0.1:2")
	if _, err := cli.Delete(testContext(t), ServiceKey(DefaultPrefix, "svc", "a")); err != nil {
		t.Fatalf("Delete(a) = %v", err)
	}
	putValue(t, cli, "svc", "c", "127.0.0.1:3")
	srv.Compact(t, cli)
	close(release)

	wantNames(t, nextView(t, views), "b=127.0.0.1:2", "c=127.0.0.1:3")
	select {
	case err := <-errs:
		if !errors.Is(err, rpctypes.ErrCompacted) {
			t.Errorf("error handler got %v, want %v", err, rpctypes.ErrCompacted)
		}
	default:
		t.Errorf("error handler not called, want %v", rpctypes.ErrCompacted)
	}
	putValue(t, cli, "svc", "d", "127.0.0.1:4")
	wantNames(t, nextView(t, views), "b=127.0.0.1:2", "c=127.0.0.1:3", "d=127.0.0.1:4")
	if len(errs) != 0 {
		t.Errorf("error handler called %d more times, want 0", len(errs))
	}
}

// TestRegistration_LeaseLostWhileResyncing checks that a lease is lost when
// etcd goes unanswered for its TTL after the keeper's session ended for
// another reason (here a draining flag whose write failed; in a cluster,
// the watch of the key canceled when its member lost the leader): the
// keeper retrying its resync must not hide the loss, and LeaseLost must
// close as it does in a session.
func TestRegistration_LeaseLostWhileResyncing(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := newClient(t, srv)
	var logs logtest.Recorder
	r := register(t, cli, "svc", "i1", "127.0.0.1:7001", WithTTL(2*time.Second), WithLogger(logs.Logger()))
	_, lease, _ := getValue(t, cli, r.Key())

	srv.Stop(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.SetDraining(ctx); err == nil {
		t.Fatalf("SetDraining(a done context) = nil, want its error")
	}
	waitClosed(t, "LeaseLost() with etcd down for the lease TTL", r.LeaseLost())
	// The session had ended before: on the failed write, or on its watch.
	if !logs.Has("registry: a write of the key did not finish; writing it again") && !logs.Has("registry: watch of own key halted") {
		t.Errorf("the session did not end before the lease was lost; logged: %q", logs.Messages())
	}
	lost := logs.Attrs("registry: lease lost; granting a new one")
	if len(lost) != 1 || lost[0]["why"] != "no answer from etcd for the lease TTL" && lost[0]["why"] != "the keep-alive stopped" {
		t.Errorf("lease lost %v, want once, for want of an answer from etcd", lost)
	}
	if isClosed(r.Replaced()) {
		t.Errorf("Replaced() is closed after an outage, want open")
	}
	srv.Restart(t)
	waitUntil(t, "the key to be put back draining on a new lease", func() bool {
		v, got, ok := getValue(t, cli, r.Key())
		return ok && got != lease && v.Metadata.Draining
	})
	if v, _, _ := getValue(t, cli, r.Key()); v.Metadata.Epoch != r.Epoch() || v.Addr != "127.0.0.1:7001" {
		t.Errorf("value put back = %+v, want epoch %d at 127.0.0.1:7001", v, r.Epoch())
	}
}

// TestRegistration_SurvivesEtcdOutage checks that a registration whose lease
// is lost while etcd is down comes back by itself, and that a watcher of the
// service never sees the instance leave.
func TestRegistration_SurvivesEtcdOutage(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := newClient(t, srv)
	var logs logtest.Recorder
	// A restarted etcd renews the old lease for one TTL: 3s leaves the
	// registration time to reconnect and put the key back on a loaded
	// machine, so the instance never leaves.
	r := register(t, cli, "svc", "i1", "127.0.0.1:7001", WithTTL(3*time.Second), WithLogger(logs.Logger()))
	_, lease, _ := getValue(t, cli, r.Key())
	views := startWatch(t, newClient(t, srv), "svc")
	wantNames(t, nextView(t, views), "i1=127.0.0.1:7001")

	if isClosed(r.LeaseLost()) {
		t.Errorf("LeaseLost() is closed while the lease is kept, want open")
	}
	srv.Stop(t)
	waitUntil(t, "the registration to lose its lease", func() bool {
		return logs.Has("registry: lease lost; granting a new one")
	})
	if !isClosed(r.LeaseLost()) {
		t.Errorf("LeaseLost() is open after the lease was lost, want closed")
	}
	srv.Restart(t)
	waitUntil(t, "the key to be put back on a new lease", func() bool {
		_, got, ok := getValue(t, cli, r.Key())
		return ok && got != lease
	})
	v, _, _ := getValue(t, cli, r.Key())
	if v.Metadata.Epoch != r.Epoch() || v.Addr != "127.0.0.1:7001" {
		t.Errorf("value put back = %+v, want epoch %d at 127.0.0.1:7001", v, r.Epoch())
	}
	if isClosed(r.Replaced()) {
		t.Errorf("Replaced() is closed after an outage, want open")
	}
	for len(views) > 0 {
		if v := <-views; len(v.Instances) != 1 {
			t.Errorf("view during the outage = %v, want i1 in every view", names(v))
		}
	}
}
