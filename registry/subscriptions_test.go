package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
)

// startSubWatch runs WatchSubscriptions until the test ends and returns its
// views.
func startSubWatch(t *testing.T, cli *clientv3.Client, service string) <-chan Subscriptions {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	views := make(chan Subscriptions, 100)
	done := make(chan error, 1)
	go func() {
		done <- WatchSubscriptions(ctx, cli, service, func(s Subscriptions) {
			select {
			case views <- s:
			case <-ctx.Done():
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("WatchSubscriptions() = %v, want %v", err, context.Canceled)
		}
	})
	return views
}

// summary renders a view as "group[+declared]: consumer@epoch(d) ..." lines.
func summary(s Subscriptions) string {
	var b strings.Builder
	for _, g := range s.Groups {
		fmt.Fprintf(&b, "%s declared=%v:", g.Name, g.Declared)
		for _, c := range g.Consumers {
			fmt.Fprintf(&b, " %s@%d", c.ID, c.Value.Epoch)
			if c.Value.Draining {
				b.WriteString("(d)")
			}
		}
		b.WriteString(";")
	}
	return b.String()
}

// waitSummary waits for a view whose summary is want.
func waitSummary(t *testing.T, views <-chan Subscriptions, want string) Subscriptions {
	t.Helper()
	deadline := time.After(defaultTestTimeout)
	var last string
	for {
		select {
		case s := <-views:
			if last = summary(s); last == want {
				return s
			}
		case <-deadline:
			t.Fatalf("no view %q after %v; last %q", want, defaultTestTimeout, last)
		}
	}
}

// TestSubscriptions_GroupsConsumersTakeover declares groups, registers and
// takes over consumers, and deletes a group, checking each view and the
// fencing of the replaced consumer.
func TestSubscriptions_GroupsConsumersTakeover(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := newClient(t, srv)
	ctx := testContext(t)
	views := startSubWatch(t, cli, "svc")
	waitSummary(t, views, "")

	created, err := CreateGroup(ctx, cli, "svc", "a", "c1")
	if err != nil || !created {
		t.Fatalf("CreateGroup(a) = %v, %v, want true, nil", created, err)
	}
	if created, err := CreateGroup(ctx, cli, "svc", "a", "c2"); err != nil || created {
		t.Fatalf("CreateGroup(a) again = %v, %v, want false, nil", created, err)
	}
	c1, err := RegisterConsumer(ctx, cli, "svc", "a", "c1", WithTTL(time.Second))
	if err != nil {
		t.Fatalf("RegisterConsumer(c1) = %v", err)
	}
	defer c1.Close(context.Background())
	waitSummary(t, views, fmt.Sprintf("a declared=true: c1@%d;", c1.Epoch()))

	// A consumer of a group nobody declared is listed, undeclared.
	b1, err := RegisterConsumer(ctx, cli, "svc", "b", "b1")
	if err != nil {
		t.Fatalf("RegisterConsumer(b1) = %v", err)
	}
	defer b1.Close(context.Background())
	waitSummary(t, views, fmt.Sprintf("a declared=true: c1@%d;b declared=false: b1@%d;", c1.Epoch(), b1.Epoch()))

	// A second process with the same id takes over: the epoch above the
	// first's, which is fenced and leaves the key alone.
	c1b, err := RegisterConsumer(ctx, cli, "svc", "a", "c1")
	if err != nil {
		t.Fatalf("RegisterConsumer(c1) again = %v", err)
	}
	defer c1b.Close(context.Background())
	waitClosed(t, "c1.Replaced()", c1.Replaced())
	if c1b.Epoch() <= c1.Epoch() {
		t.Errorf("epoch of the second c1 = %d, want above the first's %d", c1b.Epoch(), c1.Epoch())
	}
	b := fmt.Sprintf("b declared=false: b1@%d;", b1.Epoch())
	waitSummary(t, views, fmt.Sprintf("a declared=true: c1@%d;", c1b.Epoch())+b)
	if err := c1.Close(ctx); err != nil {
		t.Fatalf("Close(replaced c1) = %v", err)
	}
	if err := c1b.SetDraining(ctx); err != nil {
		t.Fatalf("SetDraining(c1) = %v", err)
	}
	s := waitSummary(t, views, fmt.Sprintf("a declared=true: c1@%d(d);", c1b.Epoch())+b)
	g, ok := s.Group("a")
	if c, found := g.Consumer("c1"); !ok || !found || c.Value.Group != "a" || c.Value.Consumer != "c1" {
		t.Fatalf("Group(a).Consumer(c1) = %+v, %v, %v", c, ok, found)
	}

	if existed, err := DeleteGroup(ctx, cli, "svc", "a"); err != nil || !existed {
		t.Fatalf("DeleteGroup(a) = %v, %v, want true, nil", existed, err)
	}
	waitSummary(t, views, fmt.Sprintf("a declared=false: c1@%d(d);", c1b.Epoch())+b)
	if err := c1b.Close(ctx); err != nil {
		t.Fatalf("Close(c1) = %v", err)
	}
	waitSummary(t, views, b)
}

// TestParseConsumerValue_Rejects refuses values that disagree with their
// key or carry an absurd epoch.
func TestParseConsumerValue_Rejects(t *testing.T) {
	for _, tc := range []struct{ name, group, consumer, data string }{
		{"not json", "g", "c1", "x"},
		{"other id", "g", "c1", `{"consumer":"c2","group":"g","epoch":1}`},
		{"other group", "g", "c1", `{"consumer":"c1","group":"h","epoch":1}`},
		{"epoch over the limit", "g", "c1", fmt.Sprintf(`{"consumer":"c1","group":"g","epoch":%d}`, uint64(MaxEpoch)+1)},
		{"consumer name with a space", "g", "a b", `{"consumer":"a b","group":"g","epoch":1}`},
		{"empty group name", "", "c1", `{"consumer":"c1","group":"","epoch":1}`},
		{"unknown role", "g", "c1", `{"consumer":"c1","group":"g","epoch":1,"role":"admin"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseConsumerValue(tc.group, tc.consumer, []byte(tc.data)); !errors.Is(err, ErrInvalidValue) {
				t.Errorf("ParseConsumerValue(%q, %q, %s) = %v, want ErrInvalidValue", tc.group, tc.consumer, tc.data, err)
			}
		})
	}
}

// TestRegister_EpochAtLimitRefused does not wrap an epoch at the limit.
func TestRegister_EpochAtLimitRefused(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := newClient(t, srv)
	ctx := testContext(t)
	key := ServiceKey(DefaultPrefix, "svc", "i1")
	if _, err := cli.Put(ctx, key, fmt.Sprintf(`{"Addr":"127.0.0.1:1","Metadata":{"epoch":%d}}`, uint64(MaxEpoch))); err != nil {
		t.Fatal(err)
	}
	if r, err := Register(ctx, cli, "svc", "i1", "127.0.0.1:2"); err == nil || !strings.Contains(err.Error(), "limit") {
		if r != nil {
			r.Close(ctx)
		}
		t.Fatalf("Register() over an epoch at the limit = %v, want an error naming the limit", err)
	}
}

// TestRegisterConsumer_OverwrittenKey checks who a consumer's key belongs
// to once another value is put there: its own value at an older epoch is
// put back; another incarnation's (another host or start) replaces it at
// any epoch, since a key that was gone (a lapsed lease) starts again at 1,
// and the process that comes back must not take the id from the one that
// registered since.
func TestRegisterConsumer_OverwrittenKey(t *testing.T) {
	other := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	tests := []struct {
		name         string
		value        func(own ConsumerValue) ConsumerValue
		wantReplaced bool
	}{
		{name: "same incarnation, older epoch", value: func(own ConsumerValue) ConsumerValue {
			own.Epoch = 0
			return own
		}},
		{name: "another start, same epoch", value: func(own ConsumerValue) ConsumerValue {
			own.Started = other
			return own
		}, wantReplaced: true},
		{name: "another host, older epoch", value: func(own ConsumerValue) ConsumerValue {
			own.Host, own.Epoch = own.Host+"-b", 0
			return own
		}, wantReplaced: true},
		{name: "another start, newer epoch", value: func(own ConsumerValue) ConsumerValue {
			own.Started, own.Epoch = other, own.Epoch+1
			return own
		}, wantReplaced: true},
	}
	srv := etcdtest.Start(t)
	cli := newClient(t, srv)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			id := fmt.Sprintf("c%d", i)
			r, err := RegisterConsumer(ctx, cli, "svc", "g", id)
			if err != nil {
				t.Fatalf("RegisterConsumer(%s) = %v", id, err)
			}
			t.Cleanup(func() { _ = r.Close(context.Background()) })
			resp, err := cli.Get(ctx, r.Key())
			if err != nil || len(resp.Kvs) != 1 {
				t.Fatalf("Get(%q) = %v, %v", r.Key(), resp, err)
			}
			own, err := ParseConsumerValue("g", id, resp.Kvs[0].Value)
			if err != nil {
				t.Fatalf("ParseConsumerValue(%s) = %v", resp.Kvs[0].Value, err)
			}
			foreign, err := json.Marshal(tc.value(own))
			if err != nil {
				t.Fatalf("json.Marshal() = %v", err)
			}
			if _, err := cli.Put(ctx, r.Key(), string(foreign)); err != nil {
				t.Fatalf("Put(%q) = %v", r.Key(), err)
			}
			if tc.wantReplaced {
				waitClosed(t, "Replaced()", r.Replaced())
				resp, err := cli.Get(ctx, r.Key())
				if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != string(foreign) {
					t.Fatalf("Get(%q) = %v, %v, want the other incarnation's value %s left alone", r.Key(), resp, err, foreign)
				}
				return
			}
			waitUntil(t, "our value to be put back", func() bool {
				resp, err := cli.Get(ctx, r.Key())
				if err != nil || len(resp.Kvs) != 1 {
					return false
				}
				got, err := ParseConsumerValue("g", id, resp.Kvs[0].Value)
				return err == nil && got.Epoch == own.Epoch && got.Started.Equal(own.Started) && got.Host == own.Host
			})
			if isClosed(r.Replaced()) {
				t.Errorf("Replaced() is closed, want open")
			}
		})
	}
}

// TestConsumerClaim_HostNotUTF8 checks that a consumer whose host name is
// not UTF-8 (Linux takes any bytes) still reads its own value as its own:
// JSON would coerce the name, so the record makes it valid first.
func TestConsumerClaim_HostNotUTF8(t *testing.T) {
	rec := newConsumerRecord(ConsumerValue{Consumer: "c1", Group: "g", Started: time.Now().UTC(), Host: "node-\xff\xfe"})
	r := &Registration{rec: rec, epoch: 3}
	own, err := rec.encode(3, false)
	if err != nil {
		t.Fatalf("encode() = %v", err)
	}
	if got := r.classify(own); got != keyOurs {
		t.Errorf("classify(own value) = %v, want keyOurs (%v)", got, keyOurs)
	}
	older, err := rec.encode(2, true)
	if err != nil {
		t.Fatalf("encode() = %v", err)
	}
	if got := r.classify(older); got != keyStale {
		t.Errorf("classify(own value at an older epoch) = %v, want keyStale (%v)", got, keyStale)
	}
}

// TestSubscriptions_MalformedGroupValueDeclares checks that a group key
// whose value does not parse still declares the group, as the key is the
// declaration, with one warning that says so; and that a consumer key
// written without a lease is in the view with its lease 0, and one on its
// registration's lease with that lease.
func TestSubscriptions_MalformedGroupValueDeclares(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := newClient(t, srv)
	ctx := testContext(t)
	var logs logtest.Recorder
	wctx, cancel := context.WithCancel(ctx)
	views := make(chan Subscriptions, 100)
	done := make(chan error, 1)
	go func() {
		done <- WatchSubscriptions(wctx, cli, "svc", func(s Subscriptions) {
			select {
			case views <- s:
			case <-wctx.Done():
			}
		}, WithLogger(logs.Logger()))
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitSummary(t, views, "")
	if _, err := cli.Put(ctx, GroupKey(DefaultPrefix, "svc", "g"), "garbage"); err != nil {
		t.Fatalf("Put() = %v", err)
	}
	waitSummary(t, views, "g declared=true:;")
	const warning = "registry: malformed group value; the key declares the group all the same"
	if got := logs.Count(warning); got != 1 {
		t.Errorf("warnings %q = %d, want 1", warning, got)
	}

	ghost := ConsumerKey(DefaultPrefix, "svc", "g", "ghost")
	if _, err := cli.Put(ctx, ghost, `{"consumer":"ghost","group":"g","epoch":1}`); err != nil {
		t.Fatalf("Put(%s) = %v", ghost, err)
	}
	c1, err := RegisterConsumer(ctx, cli, "svc", "g", "c1")
	if err != nil {
		t.Fatalf("RegisterConsumer(c1) = %v", err)
	}
	defer c1.Close(context.Background())
	v := waitSummary(t, views, fmt.Sprintf("g declared=true: c1@%d ghost@1;", c1.Epoch()))
	resp, err := cli.Get(ctx, c1.Key())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("Get(%s) = %v, %v", c1.Key(), resp, err)
	}
	leases := map[string]int64{}
	for _, c := range v.Groups[0].Consumers {
		leases[c.ID] = c.Lease
	}
	if want := map[string]int64{"c1": resp.Kvs[0].Lease, "ghost": 0}; !maps.Equal(leases, want) || want["c1"] == 0 {
		t.Errorf("consumers' leases in the view = %v, want %v (c1's registration on a lease)", leases, want)
	}
}
