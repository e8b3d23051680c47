package intermediate_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/vtcodec"
)

// TestServer_InvalidUTF8 sends, through Butterfly's own codec (which, unlike
// protobuf-go's, writes strings unchecked), a hello and messages with
// strings that are not UTF-8. The hello is refused with INVALID_ARGUMENT;
// each bad message is handed back INVALID, naming its field, and the good
// message beside them in the batch is delivered on the same stream.
func TestServer_InvalidUTF8(t *testing.T) {
	r := newRig(t)
	client := deliveryv1.NewPublishServiceClient(r.conn)
	codec := grpc.ForceCodecV2(vtcodec.Codec{})

	bad, err := client.Publish(r.ctx(), codec)
	if err != nil {
		t.Fatalf("Publish() = %v", err)
	}
	hello := &deliveryv1.PublishHello{ProducerId: "p\xff", Incarnation: 1, HeartbeatIntervalMs: quietHeartbeatMs}
	if err := bad.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: hello}}); err != nil {
		t.Fatalf("Send(hello) = %v", err)
	}
	if _, err := bad.Recv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("Recv() after a hello with producer_id %q = %v, want INVALID_ARGUMENT naming UTF-8", hello.GetProducerId(), err)
	}

	sub := r.subscribe("c1", 10)
	pub, err := client.Publish(r.ctx(), codec)
	if err != nil {
		t.Fatalf("Publish() = %v", err)
	}
	hello.ProducerId = "p1"
	if err := pub.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: hello}}); err != nil {
		t.Fatalf("Send(hello) = %v", err)
	}
	if resp, err := pub.Recv(); err != nil || resp.GetWelcome() == nil {
		t.Fatalf("Recv() = %v, %v, want a welcome", resp, err)
	}
	badHeader := msg("p1", 1, "bad header")
	badHeader.Headers = map[string]string{"k": "v\xff"}
	badTrace := msg("p1", 2, "bad trace")
	badTrace.Trace = &messagev1.TraceContext{Traceparent: "00-\xc3"}
	sendBatch(t, pub, 1, badHeader, badTrace, msg("p1", 3, "good"))

	d := nextDeliveries(t, sub)
	if len(d) != 1 || d[0].GetMessage().GetId().GetSeq() != 3 || string(d[0].GetMessage().GetPayload()) != "good" {
		t.Fatalf("deliveries = %v, want only seq 3", d)
	}
	id := d[0].GetDeliveryId()
	ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: id, Last: id}}})

	nacked := map[uint64]*messagev1.Nack{}
	acked := 0
	for len(nacked)+acked < 3 {
		a := nextAck(t, pub)
		for _, n := range a.GetNacked() {
			nacked[n.GetSeq()] = n
		}
		for _, rg := range a.GetAcked() {
			if rg.GetFirst() != 3 || rg.GetLast() != 3 {
				t.Fatalf("acked %v, want only seq 3", rg)
			}
			acked++
		}
	}
	for seq, field := range map[uint64]string{1: `header "k"`, 2: "trace.traceparent"} {
		n := nacked[seq]
		if n.GetReason() != messagev1.NackReason_NACK_REASON_INVALID || !strings.Contains(n.GetDetail(), field) || !strings.Contains(n.GetDetail(), "UTF-8") {
			t.Errorf("nack of seq %d = %v, want INVALID naming %s and UTF-8", seq, n, field)
		}
	}
}
