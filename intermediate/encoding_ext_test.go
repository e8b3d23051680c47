package intermediate_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
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

// TestServer_MalformedUnknownFields publishes, with grpc-go's own codec
// (which writes unknown fields as they are), a message whose unknown fields
// protobuf-go cannot parse beside a plain one, then one whose unknown field
// is a known number with another wire type (which protobuf-go keeps). The
// first is handed back INVALID; the other two reach a consumer that also
// decodes with grpc-go's codec, the last with its unknown field as sent.
func TestServer_MalformedUnknownFields(t *testing.T) {
	r := newRig(t)
	sub := r.subscribe("c1", 10)
	pub := r.producer("p1")
	bad := msg("p1", 1, "bad")
	bad.ProtoReflect().SetUnknown(protowire.AppendTag(protowire.AppendTag(nil, 100, protowire.StartGroupType), 101, protowire.EndGroupType))
	sendBatch(t, pub, 1, bad, msg("p1", 2, "good"))
	odd := msg("p1", 3, "odd")
	oddField := protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 7)
	odd.ProtoReflect().SetUnknown(oddField)
	sendBatch(t, pub, 3, odd)

	var got []*deliveryv1.Delivery
	for len(got) < 2 {
		got = append(got, nextDeliveries(t, sub)...)
	}
	if len(got) != 2 || got[0].GetMessage().GetId().GetSeq() != 2 || got[1].GetMessage().GetId().GetSeq() != 3 {
		t.Fatalf("deliveries = %v, want seqs 2 and 3", got)
	}
	if u := got[1].GetMessage().ProtoReflect().GetUnknown(); !bytes.Equal(u, oddField) {
		t.Errorf("seq 3 arrived with unknown fields % x, want % x", u, oddField)
	}
	ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: got[0].GetDeliveryId(), Last: got[1].GetDeliveryId()}}})

	var nacks []*messagev1.Nack
	acked := 0
	for len(nacks)+acked < 3 {
		a := nextAck(t, pub)
		nacks = append(nacks, a.GetNacked()...)
		for _, rg := range a.GetAcked() {
			acked += int(rg.GetLast() - rg.GetFirst() + 1)
		}
	}
	if len(nacks) != 1 || nacks[0].GetSeq() != 1 || nacks[0].GetReason() != messagev1.NackReason_NACK_REASON_INVALID || !strings.Contains(nacks[0].GetDetail(), "unknown fields") {
		t.Errorf("nacks = %v, want seq 1 INVALID naming its unknown fields", nacks)
	}
}

// badHeaderProcessor writes a header that is not UTF-8 on every message.
type badHeaderProcessor struct{}

func (badHeaderProcessor) Name() string { return "bad-header" }

func (badHeaderProcessor) Process(_ context.Context, m *messagev1.Message) (*messagev1.Message, error) {
	out := proto.CloneOf(m)
	out.Headers = map[string]string{"h": "\xff"}
	return out, nil
}

// TestServer_ProcessorResultChecked checks that a processor's result that
// no protobuf library would decode is handed back PROCESSING_FAILED, naming
// the header, not sent to consumers; and that a hello whose group is not
// UTF-8 is refused with INVALID_ARGUMENT.
func TestServer_ProcessorResultChecked(t *testing.T) {
	r := newRig(t, intermediate.WithProcessor(badHeaderProcessor{}))
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "x"))
	a := nextAck(t, pub)
	if n := a.GetNacked(); len(n) != 1 || n[0].GetReason() != messagev1.NackReason_NACK_REASON_PROCESSING_FAILED || !strings.Contains(n[0].GetDetail(), `header "h"`) {
		t.Errorf("ack = %v, want seq 1 PROCESSING_FAILED naming the header", a)
	}

	stream, err := deliveryv1.NewSubscribeServiceClient(r.conn).Subscribe(r.ctx(), grpc.ForceCodecV2(vtcodec.Codec{}))
	if err != nil {
		t.Fatalf("Subscribe() = %v", err)
	}
	hello := &deliveryv1.SubscribeHello{ConsumerId: "c1", Group: "g\xff", InitialCredit: 1, HeartbeatIntervalMs: quietHeartbeatMs}
	if err := stream.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Hello{Hello: hello}}); err != nil {
		t.Fatalf("Send(hello) = %v", err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "group") {
		t.Errorf("Recv() after a hello with group %q = %v, want INVALID_ARGUMENT naming the group", hello.GetGroup(), err)
	}
}
