package intermediate_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/registry"
)

// TestSubscribe_RefusesStrangers checks that only a consumer registered in
// etcd, with the epoch it names, in a declared group, may subscribe: a made-up
// id, a wrong epoch and a taken-over incarnation are refused with
// FAILED_PRECONDITION and a reason.
func TestSubscribe_RefusesStrangers(t *testing.T) {
	r := newRig(t)
	epoch := r.register(intermediate.DefaultGroup, "c1")
	reg2, err := registry.RegisterConsumer(r.ctx(), r.cli, service, intermediate.DefaultGroup, "c2", registry.WithPrefix(prefix))
	if err != nil {
		t.Fatalf("RegisterConsumer(c2) = %v", err)
	}
	defer reg2.Close(context.Background())
	reg2b, err := registry.RegisterConsumer(r.ctx(), r.cli, service, intermediate.DefaultGroup, "c2", registry.WithPrefix(prefix))
	if err != nil {
		t.Fatalf("RegisterConsumer(c2) again = %v", err)
	}
	defer reg2b.Close(context.Background())
	for _, tc := range []struct {
		name   string
		hello  *deliveryv1.SubscribeHello
		reason string
	}{
		{"made-up id", &deliveryv1.SubscribeHello{ConsumerId: "thief", RegistrationEpoch: 1}, butterfly.ReasonNotRegistered},
		{"no epoch", &deliveryv1.SubscribeHello{ConsumerId: "c1"}, butterfly.ReasonNotRegistered},
		{"future epoch", &deliveryv1.SubscribeHello{ConsumerId: "c1", RegistrationEpoch: epoch + 1}, butterfly.ReasonNotRegistered},
		{"taken over", &deliveryv1.SubscribeHello{ConsumerId: "c2", RegistrationEpoch: reg2.Epoch()}, butterfly.ReasonConsumerReplaced},
		{"undeclared group", &deliveryv1.SubscribeHello{ConsumerId: "c1", Group: "nobody", RegistrationEpoch: epoch}, butterfly.ReasonNotRegistered},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.hello.HeartbeatIntervalMs, tc.hello.InitialCredit = quietHeartbeatMs, 10
			_, _, err := r.trySubscribe(r.ctx(), tc.hello)
			if status.Code(err) != codes.FailedPrecondition || butterfly.RefusalReason(err) != tc.reason {
				t.Errorf("Subscribe(%v) = %v (reason %q), want FAILED_PRECONDITION with reason %s", tc.hello, err, butterfly.RefusalReason(err), tc.reason)
			}
		})
	}
	// The registered consumer is welcome, and gets what is published.
	sub := r.subscribe("c1", 10)
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "x"))
	if d := nextDeliveries(t, sub); len(d) != 1 || d[0].GetMessage().GetId().GetSeq() != 1 {
		t.Fatalf("deliveries to c1 = %v, want seq 1", d)
	}
}

// TestServer_GroupDeletedReleasesItsMessages checks that deleting a group
// while a message waits for its consumer acknowledges the message (the
// group no longer exists, the other group handled it) and ends the group's
// streams with GROUP_DELETED.
func TestServer_GroupDeletedReleasesItsMessages(t *testing.T) {
	r := newRig(t)
	subA := r.subscribeGroup(r.ctx(), "a", "audit", 10)
	subB := r.subscribeGroup(r.ctx(), "b", "billing", 10)
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "x"))
	da := nextDeliveries(t, subA)
	if db := nextDeliveries(t, subB); len(da) != 1 || len(db) != 1 {
		t.Fatalf("deliveries = %v and %v, want one each", da, db)
	}
	ackDeliveries(t, subA, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: da[0].GetDeliveryId(), Last: da[0].GetDeliveryId()}}})
	// billing never acknowledges; its group is deleted.
	if existed, err := registry.DeleteGroup(r.ctx(), r.cli, service, "billing", registry.WithPrefix(prefix)); err != nil || !existed {
		t.Fatalf("DeleteGroup(billing) = %v, %v", existed, err)
	}
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 || a.GetAcked()[0].GetFirst() != 1 {
		t.Errorf("PublishAck after billing was deleted = %v, want seq 1 acknowledged", a)
	}
	for {
		_, err := subB.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.FailedPrecondition || butterfly.RefusalReason(err) != butterfly.ReasonGroupDeleted {
			t.Errorf("billing's stream ended with %v, want FAILED_PRECONDITION %s", err, butterfly.ReasonGroupDeleted)
		}
		break
	}
}

// TestServer_JoinDoesNotTakeALiveOwnersMessages checks that messages a
// consumer was sent stay with it while it is registered, even when a
// consumer that joined since owns their keys: they go back to the producer
// naming that consumer, and the newcomer gets none of them.
func TestServer_JoinDoesNotTakeALiveOwnersMessages(t *testing.T) {
	r := newRig(t, intermediate.WithOwnerWait(300*time.Millisecond))
	ctxA, cancelA := context.WithCancel(r.ctx())
	subA := r.subscribeCtx(ctxA, "a", 100)
	pub := r.producer("p1")
	var ms []*messagev1.Message
	for i := range 8 {
		m := msg("p1", uint64(i+1), "x")
		m.Key = []byte(fmt.Sprint("k", i))
		ms = append(ms, m)
	}
	sendBatch(t, pub, 1, ms...)
	for n := 0; n < 8; {
		n += len(nextDeliveries(t, subA)) // a handles them; its acks never arrive
	}
	subB := r.subscribe("b", 100)
	got := make(chan int, 1)
	go func() {
		for {
			resp, err := subB.Recv()
			if err != nil {
				return
			}
			if b := resp.GetBatch(); b != nil {
				got <- len(b.GetDeliveries())
				return
			}
		}
	}()
	cancelA() // a's stream breaks; a stays registered
	nacked := 0
	for nacked < 8 {
		for _, n := range nextAck(t, pub).GetNacked() {
			if n.GetReason() != messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE ||
				len(n.GetRoutes()) != 1 || n.GetRoutes()[0].GetConsumer() != "a" || n.GetRoutes()[0].GetHandled() {
				t.Fatalf("nack = %v, want OWNER_UNREACHABLE routed to a, not handled", n)
			}
			nacked++
		}
	}
	select {
	case n := <-got:
		t.Fatalf("b got %d deliveries that live consumer a was sent", n)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestServer_RoutesFromEarlierAttempts checks that a message sent again
// with the routes of an earlier attempt gets no copy for a group that
// handled it, and goes to the consumer it went to in the others.
func TestServer_RoutesFromEarlierAttempts(t *testing.T) {
	r := newRig(t)
	audit := map[string]deliveryv1.SubscribeService_SubscribeClient{}
	for _, id := range []string{"a1", "a2"} {
		audit[id] = r.subscribeGroup(r.ctx(), id, "audit", 10)
	}
	billing := r.subscribeGroup(r.ctx(), "b1", "billing", 10)
	pub := r.producer("p1")
	// Find the consumer the key does not go to, and route the message there.
	m := msg("p1", 1, "x")
	sendBatch(t, pub, 1, m)
	recv := map[string]chan *deliveryv1.Delivery{}
	for id, s := range audit {
		ch := make(chan *deliveryv1.Delivery, 4)
		recv[id] = ch
		go func() {
			for {
				resp, err := s.Recv()
				if err != nil {
					return
				}
				for _, d := range resp.GetBatch().GetDeliveries() {
					ch <- d
				}
			}
		}()
	}
	if d := nextDeliveries(t, billing); len(d) != 1 {
		t.Fatalf("billing deliveries = %v, want 1", d)
	}
	var owner string
	select {
	case <-recv["a1"]:
		owner = "a1"
	case <-recv["a2"]:
		owner = "a2"
	case <-time.After(defaultTestTimeout):
		t.Fatalf("no audit consumer got the message")
	}
	other := map[string]string{"a1": "a2", "a2": "a1"}[owner]
	again := msg("p1", 1, "x")
	again.Routes = []*messagev1.Route{{Group: "billing", Consumer: "b1", Handled: true}, {Group: "audit", Consumer: other}}
	sendBatch(t, pub, 2, again)
	var d *deliveryv1.Delivery
	select {
	case d = <-recv[other]:
	case <-recv[owner]:
		t.Fatalf("the message went to %s, want %s, where its routes sent it", owner, other)
	case <-time.After(defaultTestTimeout):
		t.Fatalf("no delivery of the message sent again")
	}
	if d.GetMessage().GetId().GetSeq() != 1 || len(d.GetMessage().GetRoutes()) != 0 {
		t.Fatalf("delivery to %s = %v, want seq 1 without routes", other, d)
	}
	ackDeliveries(t, audit[other], &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: d.GetDeliveryId(), Last: d.GetDeliveryId()}}})
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 || a.GetAcked()[0].GetFirst() != 2 {
		t.Fatalf("PublishAck = %v, want stream seq 2 acknowledged without billing", a)
	}
}
