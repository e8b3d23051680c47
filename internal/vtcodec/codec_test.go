package vtcodec_test

import (
	"bytes"
	"fmt"
	"testing"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/vtcodec"
)

// message returns message i of producer p with every field set.
func message(p string, i int, payload int) *messagev1.Message {
	return &messagev1.Message{
		Id:                 &messagev1.MessageId{ProducerId: p, Incarnation: 7, Seq: uint64(i + 1)},
		Key:                []byte(fmt.Sprintf("key-%d", i%5)),
		Headers:            map[string]string{"a": "1", "content-type": "text/plain", "é": "ü"},
		Payload:            bytes.Repeat([]byte{byte(i)}, payload),
		CreateTimeUnixNano: 1_700_000_000_000_000_000 + int64(i),
		Trace:              &messagev1.TraceContext{Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Tracestate: "k=v"},
		LowWaterSeq:        uint64(i/2 + 1),
		Routes:             []*messagev1.Route{{Group: "g", Consumer: "c", Handled: i%2 == 0}},
	}
}

// samples are frames of every kind the delivery streams carry, small and
// above grpc's buffer pooling threshold.
func samples() map[string]proto.Message {
	var pub deliveryv1.PublishBatch
	var sub deliveryv1.DeliveryBatch
	for i := range 64 {
		pub.Messages = append(pub.Messages, message("p1", i, 256))
		sub.Deliveries = append(sub.Deliveries, &deliveryv1.Delivery{DeliveryId: uint64(i + 100), Message: message("p2", i, 256), Redeliveries: uint32(i % 3)})
	}
	pub.FirstSeq = 1
	return map[string]proto.Message{
		"publish batch": &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &pub}},
		"publish hello": &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: &deliveryv1.PublishHello{ProducerId: "p1", Incarnation: 3, Instance: "i1", HeartbeatIntervalMs: 200}}},
		"publish ack": &deliveryv1.PublishResponse{Kind: &deliveryv1.PublishResponse_Ack{Ack: &deliveryv1.PublishAck{
			Acked:  []*messagev1.SeqRange{{First: 1, Last: 60}, {First: 62, Last: 64}},
			Nacked: []*messagev1.Nack{{Seq: 61, Reason: messagev1.NackReason_NACK_REASON_INVALID, Detail: "too large", Routes: []*messagev1.Route{{Group: "g"}}}},
		}}},
		"delivery batch": &deliveryv1.SubscribeResponse{Kind: &deliveryv1.SubscribeResponse_Batch{Batch: &sub}},
		"delivery ack":   &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Ack{Ack: &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: 100, Last: 163}}}}},
		"heartbeat":      &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Heartbeat{Heartbeat: &messagev1.Heartbeat{SendTimeUnixNano: 42}}},
		"large payload":  message("p3", 1, 1<<20),
		"empty message":  &messagev1.Message{},
		"other service":  &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING},
		"empty credit":   &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Credit{Credit: &deliveryv1.Credit{}}},
		// A oneof set to a nil message: SizeVT counts a byte more than
		// MarshalToSizedBufferVT writes.
		"nil heartbeat": &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Heartbeat{}},
		"nil drain":     &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Drain{}},
		"nil credit":    &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Credit{}},
		"well-formed unknown fields": func() proto.Message {
			m := message("p4", 1, 10)
			m.ProtoReflect().SetUnknown(protowire.AppendString(protowire.AppendTag(nil, 99, protowire.BytesType), "from a newer message.proto"))
			return m
		}(),
	}
}

// TestCodec_SameWireAsProtobufGo checks that what the codec writes,
// protobuf-go reads as the same message, and what protobuf-go writes, the
// codec reads as the same message: a peer with grpc-go's own codec (or any
// other protobuf implementation) sees no difference.
func TestCodec_SameWireAsProtobufGo(t *testing.T) {
	var c vtcodec.Codec
	for name, want := range samples() {
		t.Run(name, func(t *testing.T) {
			data, err := c.Marshal(want)
			if err != nil {
				t.Fatalf("Marshal() = %v", err)
			}
			b := data.Materialize()
			data.Free()
			if n := proto.Size(want); len(b) != n {
				t.Errorf("Marshal() wrote %d bytes, proto.Size() = %d", len(b), n)
			}
			got := want.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(b, got); err != nil {
				t.Fatalf("proto.Unmarshal(codec's bytes) = %v", err)
			}
			if !proto.Equal(got, want) {
				t.Errorf("proto.Unmarshal(codec's bytes) = %v, want %v", got, want)
			}

			pb, err := proto.Marshal(want)
			if err != nil {
				t.Fatalf("proto.Marshal() = %v", err)
			}
			got = want.ProtoReflect().New().Interface()
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(pb)}, got); err != nil {
				t.Fatalf("Unmarshal(protobuf-go's bytes) = %v", err)
			}
			if !proto.Equal(got, want) {
				t.Errorf("Unmarshal(protobuf-go's bytes) = %v, want %v", got, want)
			}
		})
	}
}

// TestCodec_UnmarshalSplitFrame reads a frame that arrives in pieces, as
// grpc hands over a message spread over several HTTP/2 data frames.
func TestCodec_UnmarshalSplitFrame(t *testing.T) {
	want := samples()["delivery batch"]
	b, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var data mem.BufferSlice
	for len(b) > 0 {
		n := min(len(b), 1000)
		data = append(data, mem.SliceBuffer(b[:n]))
		b = b[n:]
	}
	got := &deliveryv1.SubscribeResponse{}
	if err := (vtcodec.Codec{}).Unmarshal(data, got); err != nil {
		t.Fatalf("Unmarshal() = %v", err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("Unmarshal() of %d pieces differs from the message", len(data))
	}
}

// TestCodec_UnmarshalResets checks that a message decoded into holds only
// what the frame says, as with proto.Unmarshal.
func TestCodec_UnmarshalResets(t *testing.T) {
	want := &messagev1.Message{Payload: []byte("new")}
	b, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	got := message("old", 3, 10)
	if err := (vtcodec.Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got); err != nil {
		t.Fatalf("Unmarshal() = %v", err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("Unmarshal() into a used message = %v, want %v", got, want)
	}
}

// TestCodec_ReadsAsProtobufGoDoes checks frames on which the generated
// decoder and protobuf-go disagree: protobuf-go's reading stands.
func TestCodec_ReadsAsProtobufGoDoes(t *testing.T) {
	var c vtcodec.Codec
	t.Run("known field with another wire type", func(t *testing.T) {
		// key (field 2, bytes) sent as a varint: protobuf-go keeps it as an
		// unknown field; the generated decoder refuses the frame.
		want := &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p1", Incarnation: 1, Seq: 1}, Payload: []byte("x")}
		want.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 7))
		req := &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{FirstSeq: 1, Messages: []*messagev1.Message{want}}}}
		b, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		got := &deliveryv1.PublishRequest{}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got); err != nil {
			t.Fatalf("Unmarshal() = %v, want the frame read as protobuf-go reads it", err)
		}
		if !proto.Equal(got, req) {
			t.Errorf("Unmarshal() = %v, want %v", got, req)
		}
	})
	t.Run("map key past its entry", func(t *testing.T) {
		// A header entry of 4 bytes whose key says 5: protobuf-go refuses
		// the frame; the generated decoder reads the key from the bytes
		// after the entry.
		entry := []byte{0x0a, 0x05, 'a', 'b'}
		b := protowire.AppendTag(nil, 3, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(len(entry)))
		b = append(b, entry...)
		b = append(b, 0x22, 0x01, 'P') // payload "P"
		if err := proto.Unmarshal(b, &messagev1.Message{}); err == nil {
			t.Fatal("proto.Unmarshal() = nil: the frame is not the malformed one meant")
		}
		got := &messagev1.Message{}
		if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got); err == nil {
			t.Errorf("Unmarshal() = nil with headers %q, want an error as from protobuf-go", got.GetHeaders())
		}
	})
}

// TestCodec_Errors checks that a truncated frame and a value that is not a
// protobuf message are errors, not panics or empty messages.
func TestCodec_Errors(t *testing.T) {
	var c vtcodec.Codec
	b, err := proto.Marshal(samples()["publish batch"])
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:len(b)-10])}, &deliveryv1.PublishRequest{}); err == nil {
		t.Error("Unmarshal(truncated frame) = nil, want an error")
	}
	if _, err := c.Marshal(struct{}{}); err == nil {
		t.Error("Marshal(struct{}{}) = nil, want an error")
	}
	if c.Name() != grpcproto.Name {
		t.Errorf("Name() = %q, want %q", c.Name(), grpcproto.Name)
	}
}

// BenchmarkCodec compares the codec with grpc-go's own on the frames of the
// hot path: a publish batch and a delivery batch of 64 messages of 256
// bytes, encoded (producer, intermediate) and decoded (intermediate,
// consumer).
func BenchmarkCodec(b *testing.B) {
	codecs := []struct {
		name  string
		codec encoding.CodecV2
	}{
		{"vtprotobuf", vtcodec.Codec{}},
		{"protobuf-go", encoding.GetCodecV2(grpcproto.Name)},
	}
	s := samples()
	for _, frame := range []string{"publish batch", "delivery batch"} {
		msg := s[frame]
		raw, err := proto.Marshal(msg)
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range codecs {
			b.Run(fmt.Sprintf("frame=%s/codec=%s/op=marshal", frame, c.name), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(raw)))
				for b.Loop() {
					data, err := c.codec.Marshal(msg)
					if err != nil {
						b.Fatal(err)
					}
					data.Free()
				}
			})
			b.Run(fmt.Sprintf("frame=%s/codec=%s/op=unmarshal", frame, c.name), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(raw)))
				for b.Loop() {
					m := msg.ProtoReflect().New().Interface()
					if err := c.codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(raw)}, m); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestCodec_BatchFramesAsProtobufGo checks frames around the batches the
// codec sizes before decoding (a frame that is one batch field): each is
// read as protobuf-go reads it, whether it is such a frame or only nearly
// (another field after the batch, the batch twice, elements empty or with
// unknown fields between them, a truncated element).
func TestCodec_BatchFramesAsProtobufGo(t *testing.T) {
	field := func(b []byte, num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
	}
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	d1 := marshal(&deliveryv1.Delivery{DeliveryId: 7, Message: message("p1", 1, 16)})
	d2 := marshal(&deliveryv1.Delivery{DeliveryId: 8, Message: message("p1", 2, 16), Redeliveries: 2})
	m1, m2 := marshal(message("p1", 1, 16)), marshal(message("p1", 2, 16))
	unknown := protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 5)
	heartbeat := field(nil, 4, marshal(&messagev1.Heartbeat{SendTimeUnixNano: 42}))
	deliveries := field(field(nil, 1, d1), 1, d2)
	seq := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 3)
	noID := marshal(&messagev1.Message{Payload: []byte("no id"), CreateTimeUnixNano: 9})
	noMessage := marshal(&deliveryv1.Delivery{DeliveryId: 9})
	withID := marshal(&messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p1", Incarnation: 7, Seq: 3}, Payload: []byte("id"), CreateTimeUnixNano: 9})
	// twice appends varint field num again, with the value 9.
	twice := func(b []byte, num protowire.Number) []byte {
		return protowire.AppendVarint(protowire.AppendTag(append([]byte{}, b...), num, protowire.VarintType), 9)
	}
	cases := []struct {
		name  string
		frame []byte
		msg   func() proto.Message
	}{
		{"delivery batch", field(nil, 2, deliveries), func() proto.Message { return &deliveryv1.SubscribeResponse{} }},
		{"empty delivery", field(nil, 2, field(field(nil, 1, d1), 1, nil)), func() proto.Message { return &deliveryv1.SubscribeResponse{} }},
		{"unknown field between deliveries", field(nil, 2, append(append(field(nil, 1, d1), unknown...), field(nil, 1, d2)...)), func() proto.Message { return &deliveryv1.SubscribeResponse{} }},
		{"heartbeat after the batch", append(field(nil, 2, deliveries), heartbeat...), func() proto.Message { return &deliveryv1.SubscribeResponse{} }},
		{"batch twice", append(field(nil, 2, field(nil, 1, d1)), field(nil, 2, field(nil, 1, d2))...), func() proto.Message { return &deliveryv1.SubscribeResponse{} }},
		{"delivery batch, element truncated", field(nil, 2, append(field(nil, 1, d1), 0x0a, 0x7f, 0x08)), func() proto.Message { return &deliveryv1.SubscribeResponse{} }},
		{"publish batch", field(nil, 2, append(append([]byte{}, seq...), field(field(nil, 2, m1), 2, m2)...)), func() proto.Message { return &deliveryv1.PublishRequest{} }},
		{"first seq after the messages", field(nil, 2, append(field(field(nil, 2, m1), 2, m2), seq...)), func() proto.Message { return &deliveryv1.PublishRequest{} }},
		{"empty message", field(nil, 2, field(field(nil, 2, m1), 2, nil)), func() proto.Message { return &deliveryv1.PublishRequest{} }},
		{"message without an id", field(nil, 2, field(field(nil, 2, m1), 2, noID)), func() proto.Message { return &deliveryv1.PublishRequest{} }},
		{"message with an empty id", field(nil, 2, field(field(nil, 2, m1), 2, field(noID, 1, nil))), func() proto.Message { return &deliveryv1.PublishRequest{} }},
		{"delivery without a message", field(nil, 2, field(field(nil, 1, d1), 1, noMessage)), func() proto.Message { return &deliveryv1.SubscribeResponse{} }},
		{"delivery whose message has no id", field(nil, 2, field(nil, 1, field(noMessage, 2, noID))), func() proto.Message { return &deliveryv1.SubscribeResponse{} }},
		// Bytes the encoding does not need (a scalar field twice, a varint
		// longer than it need be) make up for what an empty id or message
		// adds to SizeVT.
		{"message without an id, a field twice", field(nil, 2, field(nil, 2, twice(noID, 5))), func() proto.Message { return &deliveryv1.PublishRequest{} }},
		{"message without an id, a long varint", field(nil, 2, field(nil, 2, append(field(nil, 4, []byte("no id")), 0x28, 0x89, 0x80, 0x00))), func() proto.Message { return &deliveryv1.PublishRequest{} }},
		{"message without an id, padded in another message", field(nil, 2, field(field(nil, 2, twice(withID, 5)), 2, noID)), func() proto.Message { return &deliveryv1.PublishRequest{} }},
		{"delivery whose message has no id, a field twice", field(nil, 2, field(nil, 1, field(nil, 2, twice(noID, 5)))), func() proto.Message { return &deliveryv1.SubscribeResponse{} }},
		{"delivery without a message, a field twice", field(nil, 2, field(nil, 1, twice(twice(noMessage, 1), 1))), func() proto.Message { return &deliveryv1.SubscribeResponse{} }},
		{"publish batch twice", append(field(nil, 2, field(nil, 2, m1)), field(nil, 2, field(nil, 2, m2))...), func() proto.Message { return &deliveryv1.PublishRequest{} }},
	}
	var c vtcodec.Codec
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.msg()
			wantErr := proto.Unmarshal(tc.frame, want)
			got := tc.msg()
			err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(tc.frame)}, got)
			switch {
			case (err != nil) != (wantErr != nil):
				t.Fatalf("Unmarshal() = %v, protobuf-go: %v", err, wantErr)
			case err == nil && !proto.Equal(got, want):
				t.Errorf("Unmarshal() = %v, want %v", got, want)
			}
		})
	}
}

// TestCodec_BatchAllocationsPerMessage counts what decoding a batch
// allocates for each message it adds, as the data path's messages are: an
// id, a payload and nothing else. The message and its id are one
// allocation, the payload another, the id's producer a third; deliveries
// come from their batch's slab.
func TestCodec_BatchAllocationsPerMessage(t *testing.T) {
	frame := func(kind string, n int) []byte {
		var m proto.Message
		switch kind {
		case "publish":
			var pub deliveryv1.PublishBatch
			for i := range n {
				pub.Messages = append(pub.Messages, &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p1", Incarnation: 7, Seq: uint64(i + 1)}, Payload: make([]byte, 256), CreateTimeUnixNano: 1})
			}
			m = &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &pub}}
		case "delivery":
			var sub deliveryv1.DeliveryBatch
			for i := range n {
				sub.Deliveries = append(sub.Deliveries, &deliveryv1.Delivery{DeliveryId: uint64(i + 1), Message: &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p1", Incarnation: 7, Seq: uint64(i + 1)}, Payload: make([]byte, 256), CreateTimeUnixNano: 1}})
			}
			m = &deliveryv1.SubscribeResponse{Kind: &deliveryv1.SubscribeResponse_Batch{Batch: &sub}}
		}
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var c vtcodec.Codec
	decode := func(kind string, b []byte) float64 {
		return testing.AllocsPerRun(50, func() {
			var m proto.Message = &deliveryv1.PublishRequest{}
			if kind == "delivery" {
				m = &deliveryv1.SubscribeResponse{}
			}
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, m); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, kind := range []string{"publish", "delivery"} {
		small, large := decode(kind, frame(kind, 64)), decode(kind, frame(kind, 128))
		if perMessage := (large - small) / 64; perMessage > 3 {
			t.Errorf("%s batch: %.2f allocations per message (%v for 64, %v for 128), want at most 3", kind, perMessage, small, large)
		}
	}
}

// TestDecode_AsUnmarshal checks that Decode reads what Unmarshal read, once
// encoded again: a known field of the wrong wire type, which only
// protobuf-go reads (as an unknown field), and a plain message.
func TestDecode_AsUnmarshal(t *testing.T) {
	odd := message("p1", 0, 8)
	odd.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), []byte("zz")))
	for name, in := range map[string]*messagev1.Message{"plain": message("p1", 1, 8), "wrong wire type": odd} {
		t.Run(name, func(t *testing.T) {
			frame, err := proto.Marshal(&deliveryv1.PublishBatch{FirstSeq: 3, Messages: []*messagev1.Message{in}})
			if err != nil {
				t.Fatal(err)
			}
			first := &deliveryv1.PublishBatch{}
			if err := (vtcodec.Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(frame)}, first); err != nil {
				t.Fatalf("Unmarshal() = %v", err)
			}
			again, err := first.MarshalVT()
			if err != nil {
				t.Fatalf("MarshalVT() = %v", err)
			}
			got := &deliveryv1.PublishBatch{FirstSeq: 99}
			if err := vtcodec.Decode(again, got); err != nil {
				t.Fatalf("Decode() = %v", err)
			}
			if !proto.Equal(got, first) {
				t.Errorf("Decode() = %v, want %v", got, first)
			}
		})
	}
	if err := vtcodec.Decode([]byte{0x0a, 0x05, 0x01}, &deliveryv1.PublishBatch{}); err == nil {
		t.Error("Decode(truncated) = nil, want an error")
	}
}
