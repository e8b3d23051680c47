package resolver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	gbackoff "google.golang.org/grpc/backoff"
	gresolver "google.golang.org/grpc/resolver"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

const (
	defaultTestTimeout      = 10 * time.Second
	defaultTestShortTimeout = 50 * time.Millisecond
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), defaultTestTimeout)
	t.Cleanup(cancel)
	return ctx
}

// fakeClientConn records the resolver's states and errors onto channels.
type fakeClientConn struct {
	gresolver.ClientConn // nil: calls of other methods panic

	states chan gresolver.State
	errs   chan error
	done   chan struct{} // closed when the test ends, unblocks UpdateState

	mu   sync.Mutex
	gate chan struct{} // if set, the first UpdateState waits for it to close
}

func newFakeClientConn() *fakeClientConn {
	return &fakeClientConn{
		states: make(chan gresolver.State, 100),
		errs:   make(chan error, 100),
		done:   make(chan struct{}),
	}
}

func (f *fakeClientConn) UpdateState(s gresolver.State) error {
	select {
	case f.states <- s:
	case <-f.done:
		return nil
	}
	f.mu.Lock()
	gate := f.gate
	f.gate = nil
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-f.done:
		}
	}
	return nil
}

func (f *fakeClientConn) ReportError(err error) {
	select {
	case f.errs <- err:
	default:
	}
}

// build builds a resolver for butterfly:///<service> that is closed when the
// test ends.
func build(t *testing.T, cli *clientv3.Client, cc *fakeClientConn, service string, opts ...Option) gresolver.Resolver {
	t.Helper()
	u, err := url.Parse(Scheme + ":///" + service)
	if err != nil {
		t.Fatalf("url.Parse() = %v", err)
	}
	r, err := NewBuilder(cli, opts...).Build(gresolver.Target{URL: *u}, cc, gresolver.BuildOptions{})
	if err != nil {
		t.Fatalf("Build(%s) = %v", u, err)
	}
	t.Cleanup(func() {
		close(cc.done)
		r.Close()
	})
	return r
}

func register(t *testing.T, cli *clientv3.Client, service, instance, addr string, opts ...registry.Option) *registry.Registration {
	t.Helper()
	r, err := registry.Register(testContext(t), cli, service, instance, addr, opts...)
	if err != nil {
		t.Fatalf("Register(%q, %q, %q) = %v", service, instance, addr, err)
	}
	incarnations.add(t, instance, r.Epoch())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
		defer cancel()
		r.Close(ctx)
	})
	return r
}

// nextState returns the next state pushed.
func nextState(t *testing.T, cc *fakeClientConn) gresolver.State {
	t.Helper()
	select {
	case s := <-cc.states:
		return s
	case <-time.After(defaultTestTimeout):
		t.Fatalf("no state after %v", defaultTestTimeout)
		return gresolver.State{}
	}
}

// summary describes a state as "instance=addr/epoch" per endpoint, and
// checks that endpoints, their addresses and Addresses agree.
func summary(t *testing.T, s gresolver.State) []string {
	t.Helper()
	if len(s.Addresses) != len(s.Endpoints) {
		t.Errorf("state has %d addresses and %d endpoints, want as many", len(s.Addresses), len(s.Endpoints))
	}
	var out []string
	for i, ep := range s.Endpoints {
		inst, ok := registry.InstanceFromEndpoint(ep)
		if !ok {
			t.Fatalf("endpoint %d has no instance attribute", i)
		}
		if len(ep.Addresses) != 1 || ep.Addresses[0].Addr != inst.Addr {
			t.Errorf("endpoint %s addresses = %v, want [%s]", inst.Name, ep.Addresses, inst.Addr)
		}
		if ai, ok := registry.InstanceFromAddress(ep.Addresses[0]); !ok || !ai.Equal(inst) {
			t.Errorf("InstanceFromAddress(endpoint %s) = %+v, %v, want %+v", inst.Name, ai, ok, inst)
		}
		if i < len(s.Addresses) && !s.Addresses[i].Equal(ep.Addresses[0]) {
			t.Errorf("Addresses[%d] = %+v, want %+v", i, s.Addresses[i], ep.Addresses[0])
		}
		out = append(out, fmt.Sprintf("%s=%s/%s", inst.Name, inst.Addr, incarnations.of(t, inst.Name, inst.Metadata.Epoch)))
	}
	return out
}

func wantState(t *testing.T, s gresolver.State, want ...string) {
	t.Helper()
	if got := summary(t, s); !slices.Equal(got, want) {
		t.Fatalf("state = %v, want %v", got, want)
	}
}

// noState checks that nothing is pushed for a short while.
func noState(t *testing.T, cc *fakeClientConn) {
	t.Helper()
	select {
	case s := <-cc.states:
		t.Errorf("unexpected state %v", summary(t, s))
	case <-time.After(defaultTestShortTimeout):
	}
}

// TestResolver_TwoInstancesSorted checks that registered instances appear
// sorted, with their metadata attached.
func TestResolver_TwoInstancesSorted(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	register(t, cli, "svc", "b", "127.0.0.1:7002", registry.WithZone("z2"))
	register(t, cli, "svc", "a", "127.0.0.1:7001", registry.WithWeight(3), registry.WithVersion("v9"))
	register(t, cli, "other", "c", "127.0.0.1:7003")
	cc := newFakeClientConn()
	build(t, cli, cc, "svc")

	s := nextState(t, cc)
	wantState(t, s, "a=127.0.0.1:7001/1", "b=127.0.0.1:7002/1")
	a, _ := registry.InstanceFromEndpoint(s.Endpoints[0])
	if a.Service != "svc" || a.Metadata.Weight != 3 || a.Metadata.Version != "v9" || a.Metadata.Draining || a.ModRevision == 0 {
		t.Errorf("instance a = %+v, want service svc, weight 3, version v9, not draining", a)
	}
	b, _ := registry.InstanceFromEndpoint(s.Endpoints[1])
	if b.Metadata.Zone != "z2" {
		t.Errorf("instance b zone = %q, want z2", b.Metadata.Zone)
	}
	noState(t, cc)
}

// TestResolver_EmptyThenRegistered checks that an empty service resolves to
// an empty state, and that a registration then appears.
func TestResolver_EmptyThenRegistered(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	cc := newFakeClientConn()
	build(t, cli, cc, "svc", WithPrefix("bf"))
	wantState(t, nextState(t, cc))
	register(t, cli, "svc", "a", "127.0.0.1:7001", registry.WithPrefix("bf"))
	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1")
}

// TestResolver_HostMoveIsOneUpdate checks that an instance that moves host
// is updated in place: no state lacks it.
func TestResolver_HostMoveIsOneUpdate(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	old := register(t, cli, "svc", "a", "127.0.0.1:7001")
	register(t, cli, "svc", "b", "127.0.0.1:7002")
	cc := newFakeClientConn()
	build(t, cli, cc, "svc")
	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1", "b=127.0.0.1:7002/1")

	register(t, cli, "svc", "a", "127.0.0.2:7001")
	wantState(t, nextState(t, cc), "a=127.0.0.2:7001/2", "b=127.0.0.1:7002/1")
	select {
	case <-old.Replaced():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("Replaced() of the old incarnation not closed")
	}
	if err := old.Close(testContext(t)); err != nil {
		t.Fatalf("Close() of the old incarnation = %v", err)
	}
	noState(t, cc)
}

// TestResolver_SurvivesEtcdOutage checks that after an etcd outage longer
// than the lease TTL the registration comes back by itself and the resolver
// never pushed a state without it.
func TestResolver_SurvivesEtcdOutage(t *testing.T) {
	srv := etcdtest.Start(t)
	regCli := newClient(t, srv)
	var logs logtest.Recorder
	// A restarted etcd renews the old lease for one TTL: 3s leaves the
	// registration time to reconnect and put the key back on a loaded
	// machine, so the key never expires and no empty state is due.
	reg := register(t, regCli, "svc", "a", "127.0.0.1:7001", registry.WithTTL(3*time.Second), registry.WithLogger(logs.Logger()))
	cc := newFakeClientConn()
	build(t, newClient(t, srv), cc, "svc")
	first := nextState(t, cc)
	wantState(t, first, "a=127.0.0.1:7001/1")
	before, _ := registry.InstanceFromEndpoint(first.Endpoints[0])

	srv.Stop(t)
	waitUntil(t, "the registration to lose its lease", func() bool {
		return logs.Has("registry: lease lost; granting a new one")
	})
	srv.Restart(t)
	// The key is put back on a new lease: a new revision of the same value.
	for {
		s := nextState(t, cc)
		wantState(t, s, "a=127.0.0.1:7001/1")
		if inst, _ := registry.InstanceFromEndpoint(s.Endpoints[0]); inst.ModRevision > before.ModRevision {
			break
		}
	}
	select {
	case <-reg.Replaced():
		t.Errorf("Replaced() closed after an outage, want open")
	default:
	}
	for len(cc.states) > 0 {
		wantState(t, <-cc.states, "a=127.0.0.1:7001/1")
	}
}

// TestResolver_CompactionSurvived checks that a watch that falls behind a
// compaction reports it, lists again and keeps following changes.
func TestResolver_CompactionSurvived(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	register(t, cli, "svc", "a", "127.0.0.1:7001")
	cc := newFakeClientConn()
	gate := make(chan struct{})
	cc.gate = gate
	build(t, cli, cc, "svc")

	// The resolver pushed its listed state and is held before it watches.
	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1")
	register(t, cli, "svc", "b", "127.0.0.1:7002")
	register(t, cli, "svc", "c", "127.0.0.1:7003")
	srv.Compact(t, cli)
	close(gate)

	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1", "b=127.0.0.1:7002/1", "c=127.0.0.1:7003/1")
	select {
	case err := <-cc.errs:
		if !errors.Is(err, rpctypes.ErrCompacted) {
			t.Errorf("ReportError(%v), want %v", err, rpctypes.ErrCompacted)
		}
	default:
		t.Errorf("ReportError not called, want %v", rpctypes.ErrCompacted)
	}
	register(t, cli, "svc", "d", "127.0.0.1:7004")
	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1", "b=127.0.0.1:7002/1", "c=127.0.0.1:7003/1", "d=127.0.0.1:7004/1")
}

// TestResolver_SetDrainingInAttributes checks that draining reaches the
// endpoint's attributes.
func TestResolver_SetDrainingInAttributes(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	reg := register(t, cli, "svc", "a", "127.0.0.1:7001")
	register(t, cli, "svc", "b", "127.0.0.1:7002")
	cc := newFakeClientConn()
	build(t, cli, cc, "svc")
	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1", "b=127.0.0.1:7002/1")

	if err := reg.SetDraining(testContext(t)); err != nil {
		t.Fatalf("SetDraining() = %v", err)
	}
	s := nextState(t, cc)
	wantState(t, s, "a=127.0.0.1:7001/1", "b=127.0.0.1:7002/1")
	for i, want := range []bool{true, false} {
		inst, _ := registry.InstanceFromEndpoint(s.Endpoints[i])
		if inst.Metadata.Draining != want {
			t.Errorf("endpoint %s draining = %v, want %v", inst.Name, inst.Metadata.Draining, want)
		}
		if ai, _ := registry.InstanceFromAddress(s.Endpoints[i].Addresses[0]); ai.Metadata.Draining != want {
			t.Errorf("address of %s draining = %v, want %v", inst.Name, ai.Metadata.Draining, want)
		}
	}
}

// TestResolver_MalformedValueSkipped checks that a malformed value neither
// appears nor disturbs the other endpoints.
func TestResolver_MalformedValueSkipped(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	register(t, cli, "svc", "a", "127.0.0.1:7001")
	if _, err := cli.Put(testContext(t), "butterfly/services/svc/bad", "garbage"); err != nil {
		t.Fatalf("Put(bad) = %v", err)
	}
	cc := newFakeClientConn()
	build(t, cli, cc, "svc")
	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1")
	if _, err := cli.Put(testContext(t), "butterfly/services/svc/worse", `{"Addr":"no-port"}`); err != nil {
		t.Fatalf("Put(worse) = %v", err)
	}
	noState(t, cc)
	register(t, cli, "svc", "c", "127.0.0.1:7003")
	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1", "c=127.0.0.1:7003/1")
}

// TestResolver_ResolveNow checks that ResolveNow re-lists without pushing an
// unchanged state, and that changes still arrive afterwards.
func TestResolver_ResolveNow(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	var logs logtest.Recorder
	register(t, cli, "svc", "a", "127.0.0.1:7001")
	cc := newFakeClientConn()
	r := build(t, cli, cc, "svc", WithLogger(logs.Logger()))
	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1")
	for range 3 {
		r.ResolveNow(gresolver.ResolveNowOptions{})
	}
	noState(t, cc)
	waitUntil(t, "a re-list", func() bool { return logs.Has("registry: resync requested; listing again") })
	register(t, cli, "svc", "b", "127.0.0.1:7002")
	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1", "b=127.0.0.1:7002/1")
	if len(cc.errs) != 0 {
		t.Errorf("ReportError called %d times, want 0", len(cc.errs))
	}
}

// TestBuilder_BadTarget checks that targets without a valid service fail to
// build.
func TestBuilder_BadTarget(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	for _, target := range []string{"butterfly:///", "butterfly:///a/b", "butterfly://authority/svc", "butterfly:///a%20b"} {
		t.Run(target, func(t *testing.T) {
			u, err := url.Parse(target)
			if err != nil {
				t.Fatalf("url.Parse(%q) = %v", target, err)
			}
			r, err := NewBuilder(cli).Build(gresolver.Target{URL: *u}, newFakeClientConn(), gresolver.BuildOptions{})
			if err == nil {
				r.Close()
				t.Fatalf("Build(%q) = nil error, want an error", target)
			}
		})
	}
	if got := NewBuilder(cli).Scheme(); got != "butterfly" {
		t.Errorf("Scheme() = %q, want butterfly", got)
	}
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

// incarnations numbers each test's registrations of an instance 1, 2, … in
// the order they were made, for summaries that do not depend on the store's
// revisions, which a new key's epoch is.
var incarnations = incarnationLog{epochs: map[string][]uint64{}}

type incarnationLog struct {
	mu     sync.Mutex
	epochs map[string][]uint64 // by test and instance: the epochs registered
}

func (l *incarnationLog) add(t *testing.T, instance string, epoch uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := t.Name() + "\x00" + instance
	l.epochs[k] = append(l.epochs[k], epoch)
}

// of returns the incarnation that registered epoch, or the epoch itself,
// prefixed "epoch ", for a key no register call wrote.
func (l *incarnationLog) of(t *testing.T, instance string, epoch uint64) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i := slices.Index(l.epochs[t.Name()+"\x00"+instance], epoch); i >= 0 {
		return fmt.Sprint(i + 1)
	}
	return fmt.Sprintf("epoch %d", epoch)
}
