package components_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/tcpproxy"
	"github.com/butterfly-mesh/butterfly/registry"
)

// laggingHubs starts i1 on the mesh's etcd client and i2 on one through a
// proxy the test can blackhole: i2 then keeps serving the components on a
// view of the subscriptions that no longer follows etcd, as an intermediate
// cut off from etcd does within its lease TTL.
func laggingHubs(t *testing.T, m *mesh, opts ...intermediate.Option) (i1, i2 *hub, px *tcpproxy.Proxy) {
	t.Helper()
	cli, px := m.etc.ProxiedClient(t)
	t.Cleanup(func() { px.Blackhole(false) })
	i1 = m.startHub(components.DefaultService, "i1", "127.0.0.1", opts...)
	i2 = (&mesh{t: t, etc: m.etc, cli: cli, log: m.log}).startHub(components.DefaultService, "i2", "127.0.0.1",
		append(opts, intermediate.WithLeaseTTL(10*time.Second))...)
	return i1, i2, px
}

// TestRoutes_JoinSeenByOneIntermediateHandledOnce checks that a consumer
// that joined its group keeps the messages it was sent while an
// intermediate whose view lags does not know it yet: group b's owner is
// registered but not connected, so i1 hands every message back once (its
// route: a's copy sent to c_new); the producer sends it through i2, cut off
// from etcd since before c_new joined. Before routes were checked against
// the view's reach, i2 gave those messages to c_old as well: handled twice
// in group a while c_old and c_new both stayed registered.
func TestRoutes_JoinSeenByOneIntermediateHandledOnce(t *testing.T) {
	m := newMesh(t)
	short := []intermediate.Option{intermediate.WithNoConsumerTimeout(150 * time.Millisecond), intermediate.WithOwnerWait(150 * time.Millisecond)}
	i1, i2, px := laggingHubs(t, m, short...)
	m.waitMembers(components.DefaultService, 2)

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if _, err := registry.CreateGroup(ctx, m.cli, components.DefaultService, "b", "ops", registry.WithPrefix(testPrefix)); err != nil {
		t.Fatalf("CreateGroup(b) = %v", err)
	}
	ghost, err := registry.RegisterConsumer(ctx, m.cli, components.DefaultService, "b", "ghost", registry.WithPrefix(testPrefix), registry.WithTTL(30*time.Second))
	if err != nil {
		t.Fatalf("RegisterConsumer(ghost) = %v", err)
	}
	defer ghost.Close(context.Background())

	led := newLedger()
	m.consumer("c_old", led.handler(), components.WithGroup("a"))
	waitConsumers(t, 1, i1, i2)
	p := m.producer("p1")
	waitProducer(t, "p1", i1, i2)

	px.Blackhole(true)
	slow := func(ctx context.Context, d *components.Delivery) error {
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return ctx.Err()
		}
		led.record(d)
		return nil
	}
	m.consumer("c_new", slow, components.WithGroup("a"))
	waitConsumers(t, 2, i1)

	const n = 64
	for i := range n {
		if _, err := p.Send(ctx, &messagev1.Message{Key: []byte(fmt.Sprint("k", i)), Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatalf("Send(%d) = %v", i, err)
		}
	}
	time.Sleep(3 * time.Second)
	led.mu.Lock()
	defer led.mu.Unlock()
	var twice []uint64
	for seq, c := range led.counts["p1"] {
		if c > 1 {
			twice = append(twice, seq)
		}
	}
	slices.Sort(twice)
	if len(twice) > 0 {
		t.Errorf("messages %v handled more than once in group a while c_old and c_new stayed registered (handled %d; producer %+v)", twice, led.total, p.Stats())
	}
	if led.total == 0 {
		t.Errorf("group a handled nothing in 3s (producer %+v)", p.Stats())
	}
}

// TestRoutes_WhatAViewDoesNotKnowWaits sends, as a producer sends back
// what intermediates learned, messages whose routes name what a view does
// not know. To i2, cut off from etcd as group b was declared: a route
// naming b (not handled) is not acknowledged without b but handed back, so
// that another intermediate routes it. To i1, which reaches etcd: a route
// naming a consumer that never registered and a group that does not exist is
// routed as the view says, once etcd says so: handled once in a, by its one
// consumer. And i1 hands back a message for b's registered, unconnected
// consumer with a route naming b, so that the next intermediate knows b
// exists even before its view does.
func TestRoutes_WhatAViewDoesNotKnowWaits(t *testing.T) {
	m := newMesh(t)
	const ownerWait = 300 * time.Millisecond
	i1, i2, px := laggingHubs(t, m, intermediate.WithOwnerWait(ownerWait))
	m.waitMembers(components.DefaultService, 2)
	led := newLedger()
	m.consumer("ca", led.handler(), components.WithGroup("a"))
	waitConsumers(t, 1, i1, i2)

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	msg := func(seq uint64, routes ...*messagev1.Route) *messagev1.Message {
		return &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p9", Incarnation: 1, Seq: seq}, LowWaterSeq: seq, Payload: []byte("x"), Routes: routes}
	}
	routeNames := func(n *messagev1.Nack) []string {
		var names []string
		for _, r := range n.GetRoutes() {
			names = append(names, fmt.Sprintf("%s/%s/%v", r.GetGroup(), r.GetConsumer(), r.GetHandled()))
		}
		slices.Sort(names)
		return names
	}

	toI1 := newRawPublisher(t, i1.addr, "p8")
	msg8 := msg(1, &messagev1.Route{Group: "a", Consumer: "never-registered"}, &messagev1.Route{Group: "never-declared"})
	msg8.Id.ProducerId = "p8"
	if nacks := toI1.send(msg8); len(nacks) != 0 {
		t.Errorf("i1 answered a message whose routes name a consumer and a group etcd does not have with nacks %v, want it acknowledged", nacks)
	}
	led.mu.Lock()
	handled := led.counts["p8"][1]
	led.mu.Unlock()
	if handled != 1 {
		t.Errorf("group a handled p8/1 %d times, want once", handled)
	}

	px.Blackhole(true)
	if _, err := registry.CreateGroup(ctx, m.cli, components.DefaultService, "b", "ops", registry.WithPrefix(testPrefix)); err != nil {
		t.Fatalf("CreateGroup(b) = %v", err)
	}
	toI2 := newRawPublisher(t, i2.addr, "p9")
	nacks := toI2.send(msg(1, &messagev1.Route{Group: "a", Consumer: "ca", Handled: true}, &messagev1.Route{Group: "b"}))
	if len(nacks) != 1 || nacks[0].GetReason() != messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE ||
		!slices.Equal(routeNames(nacks[0]), []string{"a/ca/true", "b//false"}) {
		t.Errorf("i2, cut off as b was declared, answered a message routed to b with nacks %v, want it handed back OWNER_UNREACHABLE with its routes", nacks)
	} else if key := registry.GroupKey(testPrefix, components.DefaultService, "b"); !strings.HasSuffix(nacks[0].GetDetail(), ": "+key) {
		t.Errorf("i2's nack says %q, want it to name %s, the key its view does not know", nacks[0].GetDetail(), key)
	}

	ghost, err := registry.RegisterConsumer(ctx, m.cli, components.DefaultService, "b", "ghost", registry.WithPrefix(testPrefix), registry.WithTTL(30*time.Second))
	if err != nil {
		t.Fatalf("RegisterConsumer(ghost) = %v", err)
	}
	defer ghost.Close(context.Background())
	time.Sleep(500 * time.Millisecond) // i1 sees b and ghost
	msg8 = msg(2)
	msg8.Id.ProducerId = "p8"
	nacks = toI1.send(msg8)
	if len(nacks) != 1 || nacks[0].GetReason() != messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE ||
		!slices.Contains(routeNames(nacks[0]), "b//false") {
		t.Errorf("i1 answered a message for b's unconnected consumer with nacks %v, want it handed back OWNER_UNREACHABLE with a route naming b", nacks)
	}
}
