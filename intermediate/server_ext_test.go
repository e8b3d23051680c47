package intermediate_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"

	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/registry"
)

// TestServer_EndToEndAck checks that a published batch reaches a consumer
// within its credit and is acknowledged to the producer, as one range, only
// once the consumer acknowledged it.
func TestServer_EndToEndAck(t *testing.T) {
	r := newRig(t)
	sub := r.subscribe("c1", 2)
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "a"), msg("p1", 2, "b"), msg("p1", 3, "c"))
	first := nextDeliveries(t, sub)
	if len(first) != 2 || first[0].GetDeliveryId() != 1 || first[1].GetMessage().GetId().GetSeq() != 2 {
		t.Fatalf("first deliveries = %v, want ids 1-2 carrying seqs 1-2 (credit 2)", first)
	}
	ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: 1, Last: 2}}})
	a := nextAck(t, pub)
	if diff := cmp.Diff(&deliveryv1.PublishAck{Acked: []*messagev1.SeqRange{{First: 1, Last: 2}}}, a, protocmp.Transform()); diff != "" {
		t.Errorf("first PublishAck (-want +got):\n%s", diff)
	}
	if err := sub.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Credit{Credit: &deliveryv1.Credit{Messages: 5}}}); err != nil {
		t.Fatalf("Send(credit) = %v", err)
	}
	second := nextDeliveries(t, sub)
	if len(second) != 1 || second[0].GetDeliveryId() != 3 || string(second[0].GetMessage().GetPayload()) != "c" {
		t.Fatalf("second deliveries = %v, want delivery 3 with payload c", second)
	}
	ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: 3, Last: 3}}})
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 || a.GetAcked()[0].GetFirst() != 3 {
		t.Errorf("second PublishAck = %v, want seq 3", a)
	}
	st, err := adminv1.NewAdminServiceClient(r.conn).GetStatus(r.ctx(), &adminv1.GetStatusRequest{})
	if err != nil {
		t.Fatalf("GetStatus() = %v", err)
	}
	if st.GetReceived() != 3 || st.GetAcked() != 3 || st.GetDelivered() != 3 || st.GetInFlight() != 0 ||
		st.GetInstance() != "i1" || st.GetService() != service || st.GetVersion() != "v-test" || st.GetProcessor() != "passthrough" ||
		len(st.GetProducers()) != 1 || st.GetProducers()[0].GetAcked() != 3 || len(st.GetConsumers()) != 1 || st.GetConsumers()[0].GetCredit() != 4 {
		t.Errorf("GetStatus() = %v, want 3 received, acked and delivered, one producer and one consumer with credit 4", st)
	}
}

// TestServer_NackReasons checks the reason of every kind of hand-back.
func TestServer_NackReasons(t *testing.T) {
	r := newRig(t, intermediate.WithProcessor(intermediate.Upper()), intermediate.WithNoConsumerTimeout(300*time.Millisecond))
	pub := r.producer("p1")
	noID := &messagev1.Message{Payload: []byte("x")}
	badUTF8 := msg("p1", 2, "\xff")
	sendBatch(t, pub, 1, noID, badUTF8, msg("p1", 3, "waits"))
	got := map[uint64]messagev1.NackReason{}
	for len(got) < 3 {
		for _, n := range nextAck(t, pub).GetNacked() {
			got[n.GetSeq()] = n.GetReason()
		}
	}
	want := map[uint64]messagev1.NackReason{
		1: messagev1.NackReason_NACK_REASON_INVALID,
		2: messagev1.NackReason_NACK_REASON_PROCESSING_FAILED,
		3: messagev1.NackReason_NACK_REASON_NO_CONSUMER,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nack reasons (-want +got):\n%s", diff)
	}

	sub := r.subscribe("c1", 10)
	sendBatch(t, pub, 4, msg("p1", 4, "refused"))
	d := nextDeliveries(t, sub)
	if len(d) != 1 || string(d[0].GetMessage().GetPayload()) != "REFUSED" {
		t.Fatalf("deliveries = %v, want one with payload REFUSED", d)
	}
	ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Nacked: []*messagev1.Nack{{Seq: d[0].GetDeliveryId(), Detail: "no thanks"}}})
	a := nextAck(t, pub)
	if len(a.GetNacked()) != 1 || a.GetNacked()[0].GetSeq() != 4 || a.GetNacked()[0].GetReason() != messagev1.NackReason_NACK_REASON_HANDLER_FAILED {
		t.Errorf("PublishAck after a consumer nack = %v, want seq 4 HANDLER_FAILED", a)
	}
}

// TestServer_StreamViolations checks the statuses that end a publish stream:
// a wrong instance, a sequence gap and exceeding the in-flight limit.
func TestServer_StreamViolations(t *testing.T) {
	r := newRig(t, intermediate.WithMaxInFlight(2))
	stream, w := r.publish(&deliveryv1.PublishHello{ProducerId: "p", Instance: "i9"})
	if _, err := stream.Recv(); w != nil || status.Code(err) != codes.FailedPrecondition {
		t.Errorf("publish to instance i9 = welcome %v, %v, want FAILED_PRECONDITION", w, err)
	}

	pub := r.producer("p1")
	if w := pubWelcome(t, r); w.GetMaxInFlight() != 2 || w.GetEpoch() != r.srv.Epoch() {
		t.Errorf("welcome = %v, want max_in_flight 2 and epoch %d", w, r.srv.Epoch())
	}
	sendBatch(t, pub, 5, msg("p1", 1, "x"))
	if err := recvEnd(pub); status.Code(err) != codes.InvalidArgument {
		t.Errorf("batch with first_seq 5 on a new stream ended with %v, want INVALID_ARGUMENT", err)
	}

	pub = r.producer("p2")
	sendBatch(t, pub, 1, msg("p2", 1, "x"), msg("p2", 2, "y"))
	sendBatch(t, pub, 3, msg("p2", 3, "z"))
	if err := recvEnd(pub); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("third message over max_in_flight 2 ended the stream with %v, want RESOURCE_EXHAUSTED", err)
	}
}

func pubWelcome(t *testing.T, r *rig) *deliveryv1.PublishWelcome {
	t.Helper()
	_, w := r.publish(&deliveryv1.PublishHello{ProducerId: "w", HeartbeatIntervalMs: quietHeartbeatMs})
	return w
}

// recvEnd reads until the stream ends and returns its status.
func recvEnd(stream deliveryv1.PublishService_PublishClient) error {
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
	}
}

// TestServer_ConsumerLeaves checks that deliveries a consumer did not
// acknowledge go to the group's other consumer, marked as redelivered, when
// its stream ends and its registration goes.
func TestServer_ConsumerLeaves(t *testing.T) {
	r := newRig(t)
	subA := r.subscribe("a", 10)
	subB := r.subscribe("b", 10)
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "x"))
	type got struct {
		name string
		d    []*deliveryv1.Delivery
	}
	ch := make(chan got, 2)
	for name, s := range map[string]deliveryv1.SubscribeService_SubscribeClient{"a": subA, "b": subB} {
		go func() {
			for {
				resp, err := s.Recv()
				if err != nil {
					return
				}
				if b := resp.GetBatch(); b != nil {
					ch <- got{name, b.GetDeliveries()}
				}
			}
		}()
	}
	first := <-ch
	if err := map[string]deliveryv1.SubscribeService_SubscribeClient{"a": subA, "b": subB}[first.name].CloseSend(); err != nil {
		t.Fatalf("CloseSend() = %v", err)
	}
	r.unregister(intermediate.DefaultGroup, first.name)
	second := <-ch
	if second.name == first.name || len(second.d) != 1 || second.d[0].GetRedeliveries() != 1 || second.d[0].GetMessage().GetId().GetSeq() != 1 {
		t.Fatalf("after %s left: delivery %v to %s, want seq 1 with 1 redelivery to the other consumer", first.name, second.d, second.name)
	}
	other := map[string]deliveryv1.SubscribeService_SubscribeClient{"a": subA, "b": subB}[second.name]
	ackDeliveries(t, other, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: second.d[0].GetDeliveryId(), Last: second.d[0].GetDeliveryId()}}})
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 || a.GetAcked()[0].GetFirst() != 1 {
		t.Errorf("PublishAck = %v, want seq 1", a)
	}
}

// TestServer_HeartbeatTimeout checks that a stream on which nothing arrives
// for five of the peer's heartbeat intervals is ended with UNAVAILABLE.
func TestServer_HeartbeatTimeout(t *testing.T) {
	r := newRig(t, intermediate.WithHeartbeatInterval(20*time.Millisecond))
	stream, w := r.publish(&deliveryv1.PublishHello{ProducerId: "p1", HeartbeatIntervalMs: 20})
	if w == nil || w.GetHeartbeatIntervalMs() != 20 {
		t.Fatalf("welcome = %v, want heartbeat interval 20ms", w)
	}
	start := time.Now()
	heartbeats := 0
	for {
		resp, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.Unavailable {
				t.Errorf("silent stream ended with %v, want UNAVAILABLE", err)
			}
			break
		}
		if resp.GetHeartbeat() != nil {
			heartbeats++
		}
	}
	if d := time.Since(start); d > 2*time.Second || heartbeats == 0 {
		t.Errorf("silent stream ended after %v with %d heartbeats received, want within ~100ms and some heartbeats", d, heartbeats)
	}
}

// TestProcessService_Codes checks the result and the error codes of Process.
func TestProcessService_Codes(t *testing.T) {
	r := newRig(t, intermediate.WithProcessor(intermediate.Upper()))
	c := deliveryv1.NewProcessServiceClient(r.conn)
	resp, err := c.Process(r.ctx(), &deliveryv1.ProcessRequest{Message: &messagev1.Message{Payload: []byte("abc")}})
	if err != nil || string(resp.GetMessage().GetPayload()) != "ABC" || resp.GetInstance() != "i1" || resp.GetProcessor() != "upper" {
		t.Errorf("Process(abc) = %v, %v, want ABC from i1 by upper", resp, err)
	}
	if _, err := c.Process(r.ctx(), &deliveryv1.ProcessRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Process(no message) = %v, want INVALID_ARGUMENT", err)
	}
	if _, err := c.Process(r.ctx(), &deliveryv1.ProcessRequest{Message: &messagev1.Message{Payload: []byte{0xff}}}); status.Code(err) != codes.Aborted {
		t.Errorf("Process(invalid UTF-8) = %v, want ABORTED", err)
	}
}

// TestServer_DrainByControlKey checks that `butterfly drain` (the control
// key) drains the server: producers get a notice, the key goes, Serve
// returns nil.
func TestServer_DrainByControlKey(t *testing.T) {
	r := newRig(t)
	pub := r.producer("p1")
	if err := registry.RequestDrain(r.ctx(), r.cli, service, "i1", registry.WithPrefix(prefix)); err != nil {
		t.Fatalf("RequestDrain() = %v", err)
	}
	var notice *messagev1.DrainNotice
	for notice == nil {
		resp, err := pub.Recv()
		if err != nil {
			t.Fatalf("Recv() waiting for the drain notice = %v", err)
		}
		notice = resp.GetDrain()
	}
	if notice.GetReason() != messagev1.DrainReason_DRAIN_REASON_OPERATOR || notice.GetInstance() != "i1" {
		t.Errorf("drain notice = %v, want instance i1 reason OPERATOR", notice)
	}
	if err := r.wait(); err != nil {
		t.Errorf("Serve() after the drain = %v, want nil", err)
	}
	if n := keyCount(t, r); n != 0 {
		t.Errorf("keys of i1 after the drain = %d, want 0", n)
	}
}

// TestServer_DrainTimeoutHandsBack checks that an admin drain hands back, with
// NACK_REASON_DRAINING, what no consumer acknowledged within the drain
// timeout, refuses new batches, tells consumers and ends.
func TestServer_DrainTimeoutHandsBack(t *testing.T) {
	r := newRig(t)
	sub := r.subscribe("c1", 10)
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "held"))
	if d := nextDeliveries(t, sub); len(d) != 1 {
		t.Fatalf("deliveries = %v, want 1", d)
	}
	resp, err := adminv1.NewAdminServiceClient(r.conn).Drain(r.ctx(), &adminv1.DrainRequest{Timeout: durationpb.New(200 * time.Millisecond)})
	if err != nil || resp.GetInFlight() != 1 || resp.GetAlreadyDraining() {
		t.Fatalf("Drain() = %v, %v, want in_flight 1, not already draining", resp, err)
	}
	if !r.srv.Draining() {
		t.Errorf("Draining() after Drain = false, want true")
	}
	sendBatch(t, pub, 2, msg("p1", 2, "late"))
	got := map[uint64]messagev1.NackReason{}
	sawNotice := false
	for {
		resp, err := pub.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Errorf("publish stream ended with %v, want a clean end", err)
			}
			break
		}
		sawNotice = sawNotice || resp.GetDrain() != nil
		for _, n := range resp.GetAck().GetNacked() {
			got[n.GetSeq()] = n.GetReason()
		}
	}
	want := map[uint64]messagev1.NackReason{1: messagev1.NackReason_NACK_REASON_DRAINING, 2: messagev1.NackReason_NACK_REASON_DRAINING}
	if diff := cmp.Diff(want, got); diff != "" || !sawNotice {
		t.Errorf("publish stream during the drain: notice %v, nacks (-want +got):\n%s", sawNotice, diff)
	}
	for {
		resp, err := sub.Recv()
		if err != nil {
			t.Fatalf("subscribe stream ended with %v before a drain notice", err)
		}
		if resp.GetDrain() != nil {
			break
		}
	}
	if err := r.wait(); err != nil {
		t.Errorf("Serve() after the drain = %v, want nil", err)
	}
}

// TestServer_StopLeavesKey checks that Stop is a crash: Serve returns nil and
// the key stays until its lease expires.
func TestServer_StopLeavesKey(t *testing.T) {
	r := newRig(t)
	r.srv.Stop()
	if err := r.wait(); err != nil {
		t.Errorf("Serve() after Stop = %v, want nil", err)
	}
	if n := keyCount(t, r); n != 1 {
		t.Errorf("keys of i1 right after Stop = %d, want 1", n)
	}
	r.srv.Stop()
}

func keyCount(t *testing.T, r *rig) int64 {
	t.Helper()
	resp, err := r.cli.Get(r.ctx(), registry.ServiceKey(prefix, service, "i1"), clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("Get() = %v", err)
	}
	return resp.Count
}

// TestServer_OwnerAwayKeepsItsMessages checks that the deliveries of a
// consumer whose stream broke wait for it while its registration lives: they
// return to it when it comes back, go back to the producer with
// OWNER_UNREACHABLE when it stays away (never to the group's other
// consumer), and go to the other consumer only once its registration is
// gone.
func TestServer_OwnerAwayKeepsItsMessages(t *testing.T) {
	r := newRig(t, intermediate.WithOwnerWait(300*time.Millisecond))
	subs := map[string]deliveryv1.SubscribeService_SubscribeClient{}
	cancels := map[string]context.CancelFunc{}
	for _, id := range []string{"a", "b"} {
		ctx, cancel := context.WithCancel(r.ctx())
		t.Cleanup(cancel)
		subs[id], cancels[id] = r.subscribeCtx(ctx, id, 10), cancel
	}
	got := make(chan string, 4)
	watch := func(id string, s deliveryv1.SubscribeService_SubscribeClient) {
		go func() {
			for {
				resp, err := s.Recv()
				if err != nil {
					return
				}
				for _, d := range resp.GetBatch().GetDeliveries() {
					got <- fmt.Sprintf("%s:%d:%d", id, d.GetMessage().GetId().GetSeq(), d.GetRedeliveries())
				}
			}
		}()
	}
	for id, s := range subs {
		watch(id, s)
	}
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "x"))
	first := <-got
	owner, other := first[:1], map[string]string{"a": "b", "b": "a"}[first[:1]]
	if first != owner+":1:0" {
		t.Fatalf("first delivery = %s, want seq 1 with 0 redeliveries", first)
	}

	// The owner's stream breaks; it comes back: the delivery returns to it.
	cancels[owner]()
	ctx, cancel := context.WithCancel(r.ctx())
	t.Cleanup(cancel)
	back := r.subscribeCtx(ctx, owner, 10)
	watch(owner, back)
	if d := <-got; d != owner+":1:1" {
		t.Fatalf("delivery after %s came back = %s, want %s:1:1", owner, d, owner)
	}

	// It breaks again and stays away, still registered: the message goes
	// back to its producer, not to the other consumer.
	cancel()
	a := nextAck(t, pub)
	if len(a.GetAcked()) != 0 || len(a.GetNacked()) != 1 || a.GetNacked()[0].GetReason() != messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE {
		t.Fatalf("ack while %s is away = %v, want one OWNER_UNREACHABLE nack", owner, a)
	}
	select {
	case d := <-got:
		t.Fatalf("delivery %s while its owner %s is registered, want none", d, owner)
	case <-time.After(50 * time.Millisecond):
	}

	// Its registration goes: the message sent again goes to the other (a
	// copy sent before the server saw the registration go comes back).
	r.unregister(intermediate.DefaultGroup, owner)
	for seq := uint64(2); ; seq++ {
		sendBatch(t, pub, seq, msg("p1", 1, "x"))
		select {
		case d := <-got:
			if d != other+":1:0" {
				t.Fatalf("delivery after %s left = %s, want %s:1:0", owner, d, other)
			}
			return
		case <-time.After(time.Second):
			if a := nextAck(t, pub); len(a.GetNacked()) != 1 {
				t.Fatalf("ack of seq %d = %v, want a delivery to %s or a nack", seq, a, other)
			}
		}
		if seq == 10 {
			t.Fatalf("no delivery to %s after %s's registration went", other, owner)
		}
	}

}
