package intermediate_test

import (
	"testing"
	"time"

	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// TestSubscribe_AckCreditBoundaries checks credit in ack frames at its edges:
// a grant that brings the unspent credit exactly to max-credit, a grant in
// a frame of nacks only, and a grant in a frame naming ids already settled
// are all taken, each lets the next deliveries go, and the unspent credit
// ends where the grants put it.
func TestSubscribe_AckCreditBoundaries(t *testing.T) {
	r := newRig(t, intermediate.WithMaxCredit(4))
	stream, w := r.subscribeWelcome(r.ctx(), "c", intermediate.DefaultGroup, 4)
	if !w.GetAckCredit() {
		t.Fatalf("welcome = %v, want ack_credit set", w)
	}
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msgs("p1", 1, 13)...)
	take := func(want int) []uint64 {
		t.Helper()
		var ids []uint64
		for len(ids) < want {
			for _, d := range nextDeliveries(t, stream) {
				ids = append(ids, d.GetDeliveryId())
			}
		}
		if len(ids) != want {
			t.Fatalf("deliveries %v, want %d", ids, want)
		}
		return ids
	}
	take(4) // ids 1-4, credit 0
	// Exactly to max-credit: 0 + 4.
	sendSub(t, stream, ackCredit(4, 1, 4))
	take(4) // ids 5-8
	// Nacks only, with the credit.
	nacks := &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Ack{Ack: &deliveryv1.DeliveryAck{
		Nacked: []*messagev1.Nack{{Seq: 5}, {Seq: 6}}, Credit: 2}}}
	sendSub(t, stream, nacks)
	take(2) // ids 9-10
	// Ids already settled (1-6) with ids 7-10, and the credit of 7-8 only.
	sendSub(t, stream, ackCredit(2, 1, 10))
	take(2) // ids 11-12
	sendSub(t, stream, ackCredit(2, 11, 12))
	take(1) // id 13, the last message
	sendSub(t, stream, ackCredit(1, 13, 13))
	waitFor := func() bool {
		st, err := adminv1.NewAdminServiceClient(r.conn).GetStatus(r.ctx(), &adminv1.GetStatusRequest{})
		return err == nil && len(st.GetConsumers()) == 1 && st.GetConsumers()[0].GetCredit() == 2 && st.GetConsumers()[0].GetDelivered() == 13
	}
	// 4 - 4 + 4 - 4 + 2 - 2 + 2 - 2 + 2 - 1 + 1 = 2.
	for i := 0; i < 200 && !waitFor(); i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if !waitFor() {
		t.Errorf("unspent credit after the grants is not 2 with 13 delivered")
	}
}
