package intermediate_test

import (
	"context"
	"testing"

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
