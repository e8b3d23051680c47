package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
)

// TestRegister_PutsValue checks the key, value and lease of a new registration.
func TestRegister_PutsValue(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	before := time.Now()
	r := register(t, cli, "svc", "i1", "127.0.0.1:7001",
		WithTTL(3*time.Second), WithWeight(7), WithZone("z1"), WithVersion("v1.2"))

	if got, want := r.Key(), "butterfly/services/svc/i1"; got != want {
		t.Errorf("Key() = %q, want %q", got, want)
	}
	// A new key's epoch is the store's revision its put was written at:
	// above every incarnation's before it, whatever became of their key.
	created := createRevision(t, cli, r.Key())
	if got := r.Epoch(); got != created {
		t.Errorf("Epoch() = %d, want the key's create revision %d", got, created)
	}
	v, lease, ok := getValue(t, cli, r.Key())
	if !ok {
		t.Fatalf("Get(%q) found nothing, want the registration", r.Key())
	}
	want := Value{Addr: "127.0.0.1:7001", Metadata: Metadata{
		Instance: "i1", Epoch: created, Weight: 7, Zone: "z1", Version: "v1.2",
	}}
	if diff := cmp.Diff(want, v, cmpopts.IgnoreFields(Metadata{}, "Started")); diff != "" {
		t.Errorf("value of %s (-want +got):\n%s", r.Key(), diff)
	}
	if v.Metadata.Started.Before(before.Add(-time.Second)) || v.Metadata.Started.After(time.Now()) {
		t.Errorf("Metadata.Started = %v, want about %v", v.Metadata.Started, before)
	}
	ttl, err := cli.TimeToLive(testContext(t), clientv3.LeaseID(lease))
	if err != nil {
		t.Fatalf("TimeToLive(%x) = %v", lease, err)
	}
	if ttl.GrantedTTL != 3 {
		t.Errorf("TimeToLive(%x).GrantedTTL = %d, want 3", lease, ttl.GrantedTTL)
	}
}

// TestRegister_InvalidArguments checks that bad names and addresses are
// refused before anything is written.
func TestRegister_InvalidArguments(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	tests := []struct {
		name, service, instance, addr string
		opts                          []Option
	}{
		{name: "service with slash", service: "a/b", instance: "i", addr: "127.0.0.1:1"},
		{name: "empty instance", service: "svc", instance: "", addr: "127.0.0.1:1"},
		{name: "instance with space", service: "svc", instance: "a b", addr: "127.0.0.1:1"},
		{name: "no port", service: "svc", instance: "i", addr: "127.0.0.1"},
		{name: "port zero", service: "svc", instance: "i", addr: "127.0.0.1:0"},
		{name: "bad prefix", service: "svc", instance: "i", addr: "127.0.0.1:1", opts: []Option{WithPrefix("a/b")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Register(testContext(t), cli, tc.service, tc.instance, tc.addr, tc.opts...)
			if err == nil {
				r.Close(testContext(t))
				t.Fatalf("Register(%q, %q, %q) = nil error, want an error", tc.service, tc.instance, tc.addr)
			}
		})
	}
	resp, err := cli.Get(testContext(t), "", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("Get(all) = %v", err)
	}
	if resp.Count != 0 {
		t.Errorf("Get(all).Count = %d, want 0", resp.Count)
	}
}

// TestRegister_SecondIncarnationFencesFirst checks that a host move fences
// the old incarnation, whose Close leaves the new key alone.
func TestRegister_SecondIncarnationFencesFirst(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	old := register(t, cli, "svc", "i1", "127.0.0.1:7001")
	moved := register(t, cli, "svc", "i1", "127.0.0.2:7002")

	if got := moved.Epoch(); got <= old.Epoch() {
		t.Errorf("Epoch() of the second incarnation = %d, want above the first's %d", got, old.Epoch())
	}
	waitClosed(t, "Replaced() of the first incarnation", old.Replaced())
	if isClosed(moved.Replaced()) {
		t.Errorf("Replaced() of the second incarnation is closed, want open")
	}
	if err := old.SetDraining(testContext(t)); !errors.Is(err, ErrReplaced) {
		t.Errorf("SetDraining() of the first incarnation = %v, want %v", err, ErrReplaced)
	}
	if err := old.Close(testContext(t)); err != nil {
		t.Errorf("Close() of the first incarnation = %v, want nil", err)
	}
	v, _, ok := getValue(t, cli, moved.Key())
	if !ok || v.Addr != "127.0.0.2:7002" || v.Metadata.Epoch != moved.Epoch() || v.Metadata.Draining {
		t.Fatalf("Get(%q) after the first Close = %+v (found %v), want Addr 127.0.0.2:7002 epoch %d", moved.Key(), v, ok, moved.Epoch())
	}
	if err := moved.Close(testContext(t)); err != nil {
		t.Fatalf("Close() of the second incarnation = %v", err)
	}
	if _, _, ok := getValue(t, cli, moved.Key()); ok {
		t.Errorf("Get(%q) after the second Close found the key, want it deleted", moved.Key())
	}
}

// TestRegister_RacingIncarnationsGetDistinctEpochs checks that concurrent
// registrations of one instance each win a different epoch and that all but
// the last are fenced.
func TestRegister_RacingIncarnationsGetDistinctEpochs(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	const n = 4
	regs := make(chan *Registration, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			r, err := Register(testContext(t), cli, "svc", "i1", "127.0.0.1:7001")
			if err != nil {
				errs <- err
				return
			}
			regs <- r
		}()
	}
	epochs := map[uint64]*Registration{}
	for range n {
		select {
		case err := <-errs:
			t.Fatalf("Register() = %v", err)
		case r := <-regs:
			t.Cleanup(func() { r.Close(context.Background()) })
			epochs[r.Epoch()] = r
		}
	}
	// The first put the key at its create revision, each after it above
	// the one it found.
	won := keys(epochs)
	slices.Sort(won)
	if len(won) != n {
		t.Fatalf("epochs won = %v, want %d distinct ones", won, n)
	}
	first, last := won[0], won[n-1]
	if created := createRevision(t, cli, epochs[last].Key()); first != created {
		t.Errorf("first epoch %d, want the key's create revision %d", first, created)
	}
	v, _, _ := getValue(t, cli, epochs[last].Key())
	if v.Metadata.Epoch != last {
		t.Errorf("epoch in etcd = %d, want %d", v.Metadata.Epoch, last)
	}
	for _, e := range won[:n-1] {
		waitClosed(t, "Replaced() of an older incarnation", epochs[e].Replaced())
	}
	if isClosed(epochs[last].Replaced()) {
		t.Errorf("Replaced() of epoch %d is closed, want open", last)
	}
}

func keys(m map[uint64]*Registration) []uint64 {
	var ks []uint64
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// TestRegistration_DeletedKeyIsPutBack checks that a deleted key comes back
// with the same epoch and lease.
func TestRegistration_DeletedKeyIsPutBack(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	r := register(t, cli, "svc", "i1", "127.0.0.1:7001")
	want, lease, _ := getValue(t, cli, r.Key())
	if _, err := cli.Delete(testContext(t), r.Key()); err != nil {
		t.Fatalf("Delete(%q) = %v", r.Key(), err)
	}
	var got Value
	var gotLease int64
	waitUntil(t, "the key to be put back", func() bool {
		var ok bool
		got, gotLease, ok = getValue(t, cli, r.Key())
		return ok
	})
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("value put back (-want +got):\n%s", diff)
	}
	if gotLease != lease {
		t.Errorf("lease of the key put back = %x, want %x", gotLease, lease)
	}
	if isClosed(r.Replaced()) {
		t.Errorf("Replaced() is closed after a delete, want open")
	}
}

// TestRegistration_RevokedLeaseIsRegranted checks that a lost lease is
// replaced by a new one and the key put back on it.
func TestRegistration_RevokedLeaseIsRegranted(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	r := register(t, cli, "svc", "i1", "127.0.0.1:7001", WithTTL(2*time.Second))
	want, lease, _ := getValue(t, cli, r.Key())
	if _, err := cli.Revoke(testContext(t), clientv3.LeaseID(lease)); err != nil {
		t.Fatalf("Revoke(%x) = %v", lease, err)
	}
	var got Value
	var gotLease int64
	waitUntil(t, "the key to be put back on a new lease", func() bool {
		var ok bool
		got, gotLease, ok = getValue(t, cli, r.Key())
		return ok
	})
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("value put back (-want +got):\n%s", diff)
	}
	if gotLease == lease || gotLease == 0 {
		t.Fatalf("lease of the key put back = %x, want a new lease (old %x)", gotLease, lease)
	}
	// etcd said the lease is gone: that is a lost lease, however the
	// keeper heard of it first (the key's deletion or the keep-alive).
	if !isClosed(r.LeaseLost()) {
		t.Errorf("LeaseLost() is open after the lease was revoked, want closed")
	}
	ttl, err := cli.TimeToLive(testContext(t), clientv3.LeaseID(gotLease))
	if err != nil || ttl.TTL <= 0 {
		t.Errorf("TimeToLive(%x) = %+v, %v, want a live lease", gotLease, ttl, err)
	}
}

// TestRegistration_OverwrittenKey checks which foreign values fence the
// registration and which are overwritten with ours.
func TestRegistration_OverwrittenKey(t *testing.T) {
	tests := []struct {
		name         string
		value        string
		wantReplaced bool
	}{
		{name: "not JSON", value: "garbage", wantReplaced: false},
		{name: "same address, older epoch", value: `{"Addr":"127.0.0.1:7001","Metadata":{"epoch":0}}`, wantReplaced: false},
		{name: "same address, newer epoch", value: `{"Addr":"127.0.0.1:7001","Metadata":{"epoch":100000}}`, wantReplaced: true},
		{name: "other address", value: `{"Addr":"127.0.0.9:7009"}`, wantReplaced: true},
	}
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			instance := string(rune('a' + i))
			r := register(t, cli, "svc", instance, "127.0.0.1:7001")
			want, _, _ := getValue(t, cli, r.Key())
			if _, err := cli.Put(testContext(t), r.Key(), tc.value); err != nil {
				t.Fatalf("Put(%q) = %v", r.Key(), err)
			}
			if tc.wantReplaced {
				waitClosed(t, "Replaced()", r.Replaced())
				resp, err := cli.Get(testContext(t), r.Key())
				if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != tc.value {
					t.Fatalf("Get(%q) = %v, %v, want the foreign value %s left alone", r.Key(), resp, err, tc.value)
				}
				if err := r.Close(testContext(t)); err != nil {
					t.Fatalf("Close() = %v", err)
				}
				resp, err = cli.Get(testContext(t), r.Key())
				if err != nil || len(resp.Kvs) != 1 {
					t.Errorf("Get(%q) after Close = %v, %v, want the foreign value kept", r.Key(), resp, err)
				}
				return
			}
			waitUntil(t, "our value to be put back", func() bool {
				resp, err := cli.Get(testContext(t), r.Key())
				if err != nil || len(resp.Kvs) != 1 {
					return false
				}
				got, err := ParseValue(instance, resp.Kvs[0].Value)
				return err == nil && cmp.Equal(want, got)
			})
			if isClosed(r.Replaced()) {
				t.Errorf("Replaced() is closed, want open")
			}
		})
	}
}

// TestRegistration_SetDraining checks that draining is set in place and
// kept by a later re-put.
func TestRegistration_SetDraining(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	r := register(t, cli, "svc", "i1", "127.0.0.1:7001")
	_, lease, _ := getValue(t, cli, r.Key())
	if err := r.SetDraining(testContext(t)); err != nil {
		t.Fatalf("SetDraining() = %v", err)
	}
	v, gotLease, ok := getValue(t, cli, r.Key())
	if !ok || !v.Metadata.Draining || v.Metadata.Epoch != r.Epoch() || gotLease != lease {
		t.Fatalf("Get(%q) after SetDraining = %+v lease %x (found %v), want draining, epoch %d, lease %x", r.Key(), v, gotLease, ok, r.Epoch(), lease)
	}
	if _, err := cli.Delete(testContext(t), r.Key()); err != nil {
		t.Fatalf("Delete(%q) = %v", r.Key(), err)
	}
	waitUntil(t, "the draining key to be put back", func() bool {
		v, _, ok := getValue(t, cli, r.Key())
		return ok && v.Metadata.Draining
	})
}

// TestRegistration_SetDrainingThatFailedIsWritten checks that a draining
// flag whose write failed (here its context was done; in a process, etcd
// did not answer in time) reaches etcd all the same: the keeper writes it
// again, though nothing else happened to the key or the lease.
func TestRegistration_SetDrainingThatFailedIsWritten(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	r := register(t, cli, "svc", "i1", "127.0.0.1:7001")
	_, lease, _ := getValue(t, cli, r.Key())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.SetDraining(ctx); err == nil {
		t.Fatalf("SetDraining(a done context) = nil, want its error")
	}
	waitUntil(t, "the draining flag in etcd", func() bool {
		v, _, ok := getValue(t, cli, r.Key())
		return ok && v.Metadata.Draining
	})
	if v, gotLease, _ := getValue(t, cli, r.Key()); v.Metadata.Epoch != r.Epoch() || gotLease != lease {
		t.Errorf("Get(%q) = %+v lease %x, want epoch %d on lease %x", r.Key(), v, gotLease, r.Epoch(), lease)
	}
}

// TestRequestDrain_ClosesDrainRequested checks the control key round trip.
func TestRequestDrain_ClosesDrainRequested(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	r := register(t, cli, "svc", "i1", "127.0.0.1:7001", WithPrefix("bf"))
	other := register(t, cli, "svc", "i2", "127.0.0.1:7002", WithPrefix("bf"))
	if err := RequestDrain(testContext(t), cli, "svc", "i1", WithPrefix("bf")); err != nil {
		t.Fatalf("RequestDrain(svc, i1) = %v", err)
	}
	waitClosed(t, "DrainRequested()", r.DrainRequested())
	select {
	case <-other.DrainRequested():
		t.Errorf("DrainRequested() of i2 is closed, want open")
	case <-time.After(defaultTestShortTimeout):
	}
	if err := r.Close(testContext(t)); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	resp, err := cli.Get(testContext(t), ControlKey("bf", "svc", "i1"))
	if err != nil || len(resp.Kvs) != 0 {
		t.Errorf("Get(control key) after Close = %v, %v, want no key", resp.Kvs, err)
	}
}

// TestRegister_StaleDrainRequestIgnored checks that a drain requested of an
// earlier incarnation does not drain a new one.
func TestRegister_StaleDrainRequestIgnored(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	if err := RequestDrain(testContext(t), cli, "svc", "i1"); err != nil {
		t.Fatalf("RequestDrain(svc, i1) = %v", err)
	}
	r := register(t, cli, "svc", "i1", "127.0.0.1:7001")
	resp, err := cli.Get(testContext(t), ControlKey(DefaultPrefix, "svc", "i1"))
	if err != nil || len(resp.Kvs) != 0 {
		t.Errorf("Get(control key) after Register = %v, %v, want no key", resp.Kvs, err)
	}
	select {
	case <-r.DrainRequested():
		t.Errorf("DrainRequested() is closed by a stale request, want open")
	case <-time.After(defaultTestShortTimeout):
	}
	if err := RequestDrain(testContext(t), cli, "svc", "i1"); err != nil {
		t.Fatalf("RequestDrain(svc, i1) = %v", err)
	}
	waitClosed(t, "DrainRequested()", r.DrainRequested())
}

// TestRegistration_Close checks that Close deletes the key, revokes the lease
// and is safe to call twice.
func TestRegistration_Close(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	r := register(t, cli, "svc", "i1", "127.0.0.1:7001")
	_, lease, _ := getValue(t, cli, r.Key())
	if err := r.Close(testContext(t)); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if _, _, ok := getValue(t, cli, r.Key()); ok {
		t.Errorf("Get(%q) after Close found the key, want it deleted", r.Key())
	}
	ttl, err := cli.TimeToLive(testContext(t), clientv3.LeaseID(lease))
	if err != nil || ttl.TTL != -1 {
		t.Errorf("TimeToLive(%x) after Close = %+v, %v, want TTL -1", lease, ttl, err)
	}
	if err := r.Close(testContext(t)); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	if err := r.SetDraining(testContext(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("SetDraining() after Close = %v, want %v", err, ErrClosed)
	}
}

// TestRegistration_RewrittenOffItsLease checks that a registration puts its
// value back on its lease when its own claim and epoch are written over
// without it, as `etcdctl put` without --lease does: the key would
// otherwise outlive the process, and could say what it does not (a
// draining flag, which stalls a consumer's share of its group).
func TestRegistration_RewrittenOffItsLease(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := newClient(t, srv)
	tests := []struct {
		name     string
		register func(t *testing.T, name string) *Registration
		rewrite  func(own []byte) []byte
	}{
		{name: "instance, same value", register: func(t *testing.T, name string) *Registration {
			return register(t, cli, "svc", name, "127.0.0.1:7001")
		}, rewrite: func(own []byte) []byte { return own }},
		{name: "instance, marked draining", register: func(t *testing.T, name string) *Registration {
			return register(t, cli, "svc", name, "127.0.0.1:7001")
		}, rewrite: func(own []byte) []byte {
			return bytes.Replace(own, []byte(`"draining":false`), []byte(`"draining":true`), 1)
		}},
		{name: "consumer, marked draining", register: func(t *testing.T, name string) *Registration {
			r, err := RegisterConsumer(testContext(t), cli, "svc", "g", name)
			if err != nil {
				t.Fatalf("RegisterConsumer(%s) = %v", name, err)
			}
			t.Cleanup(func() { _ = r.Close(context.Background()) })
			return r
		}, rewrite: func(own []byte) []byte {
			return bytes.Replace(own, []byte(`"draining":false`), []byte(`"draining":true`), 1)
		}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.register(t, fmt.Sprintf("r%d", i))
			resp, err := cli.Get(testContext(t), r.Key())
			if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
				t.Fatalf("Get(%q) = %v, %v, want one value on a lease", r.Key(), resp, err)
			}
			own, lease := resp.Kvs[0].Value, resp.Kvs[0].Lease
			foreign := tc.rewrite(own)
			if _, err := cli.Put(testContext(t), r.Key(), string(foreign)); err != nil {
				t.Fatalf("Put(%q) = %v", r.Key(), err)
			}
			waitUntil(t, "our value back on our lease", func() bool {
				resp, err := cli.Get(testContext(t), r.Key())
				return err == nil && len(resp.Kvs) == 1 && resp.Kvs[0].Lease == lease && bytes.Equal(resp.Kvs[0].Value, own)
			})
			if isClosed(r.Replaced()) {
				t.Errorf("Replaced() is closed, want open")
			}
		})
	}
}

// TestRegistration_ReplacementAfterALapseFencesTheFirst checks an instance
// whose lease lapsed while it still runs and a replacement at the same
// advertised address that found the key empty: the replacement's epoch is
// above the first's (the store's revision, not 1 again), so the first, when
// it notices its lease gone, finds its key taken and stops touching it,
// rather than put its value back and fight the replacement over the key
// for as long as both live.
func TestRegistration_ReplacementAfterALapseFencesTheFirst(t *testing.T) {
	srv := etcdtest.Start(t)
	cliA, cliB, obs := newClient(t, srv), newClient(t, srv), newClient(t, srv)
	const addr = "host2.example:7001"
	a := register(t, cliA, "svc", "i1", addr)
	_, lease, _ := getValue(t, obs, a.Key())
	if _, err := obs.Revoke(testContext(t), clientv3.LeaseID(lease)); err != nil {
		t.Fatalf("Revoke(%x) = %v", lease, err)
	}
	b := register(t, cliB, "svc", "i1", addr) // the key is gone with a's lease
	if b.Epoch() <= a.Epoch() {
		t.Fatalf("epochs %d and %d, want the replacement's above the first's", a.Epoch(), b.Epoch())
	}
	waitClosed(t, "Replaced() of the first incarnation", a.Replaced())
	bv, bLease, _ := getValue(t, obs, b.Key())
	resp, err := obs.Get(testContext(t), a.Key())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("Get(%q) = %v, %v", a.Key(), resp, err)
	}
	ctx, cancel := context.WithTimeout(testContext(t), 3*time.Second)
	defer cancel()
	puts := 0
	for wr := range obs.Watch(ctx, a.Key(), clientv3.WithRev(resp.Header.Revision+1)) {
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypePut {
				puts++
			}
		}
	}
	if puts != 0 {
		t.Errorf("the key was rewritten %d times in 3s after the first was replaced, want 0", puts)
	}
	if v, l, ok := getValue(t, obs, b.Key()); !ok || l != bLease || !cmp.Equal(v, bv) {
		t.Errorf("Get(%q) = %+v on lease %x, want the replacement's %+v on %x", b.Key(), v, l, bv, bLease)
	}
	if isClosed(b.Replaced()) {
		t.Errorf("Replaced() of the replacement is closed, want open")
	}
}

// TestRegister_LogsLeaseAsEtcdctlTakesIt checks that the lease a
// registration logs is written as etcdctl prints and takes lease ids (hex),
// so that `etcdctl lease timetolive <lease>` works on it as logged.
func TestRegister_LogsLeaseAsEtcdctlTakesIt(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	var buf logtest.Buffer
	r := register(t, cli, "svc", "i1", "127.0.0.1:7001", WithLogger(slog.New(slog.NewTextHandler(&buf, nil))))
	_, lease, ok := getValue(t, cli, r.Key())
	if !ok {
		t.Fatalf("Get(%q) found nothing, want the registration", r.Key())
	}
	if want := "lease=" + strconv.FormatInt(lease, 16); !strings.Contains(buf.String(), want) {
		t.Errorf("log %q, want it to name the lease as %s", buf.String(), want)
	}
}

// createRevision returns the create revision of key, which must exist.
func createRevision(t *testing.T, cli *clientv3.Client, key string) uint64 {
	t.Helper()
	resp, err := cli.Get(testContext(t), key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("Get(%q) = %v, %v, want one key", key, resp, err)
	}
	return uint64(resp.Kvs[0].CreateRevision)
}

// TestRegister_ReplacedSaysByWhom checks that a fenced registration says who
// took its key (the value there: an address, or a host and start time), so
// that a name reused by mistake shows as such and not as a host move.
func TestRegister_ReplacedSaysByWhom(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	var logs logtest.Recorder
	old := register(t, cli, "svc", "i1", "127.0.0.1:7001", WithLogger(logs.Logger()))
	register(t, cli, "svc", "i1", "127.0.0.2:7002")
	waitClosed(t, "Replaced() of the first incarnation", old.Replaced())
	attrs := logs.Attrs("registry: replaced by another incarnation; no longer touching the key")
	if len(attrs) != 1 || !strings.Contains(fmt.Sprint(attrs[0]["by"]), `"Addr":"127.0.0.2:7002"`) {
		t.Errorf("replaced warnings %v, want one whose by names the new address 127.0.0.2:7002", attrs)
	}
}
