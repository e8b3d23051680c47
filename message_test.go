package butterfly_test

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"weak"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/butterfly-mesh/butterfly"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/vtcodec"
)

func TestCheckMessage(t *testing.T) {
	valid := func() *messagev1.Message {
		return &messagev1.Message{
			Id:      &messagev1.MessageId{ProducerId: "p-é", Incarnation: 1, Seq: 1},
			Headers: map[string]string{"k": "v", "ü": "ß"},
			Payload: []byte{0xff, 0xfe}, // bytes, not a string: anything goes
			Trace:   &messagev1.TraceContext{Traceparent: "00-aa-bb-01", Tracestate: "k=v"},
			Routes:  []*messagev1.Route{{Group: "g", Consumer: "c"}},
		}
	}
	if err := butterfly.CheckMessage(valid()); err != nil {
		t.Errorf("CheckMessage(valid) = %v, want nil", err)
	}
	if err := butterfly.CheckMessage(&messagev1.Message{}); err != nil {
		t.Errorf("CheckMessage(empty) = %v, want nil", err)
	}
	for _, tc := range []struct {
		field  string
		spoil  func(m *messagev1.Message)
		naming string
	}{
		{"producer id", func(m *messagev1.Message) { m.Id.ProducerId = "p\xff" }, "id.producer_id"},
		{"header key", func(m *messagev1.Message) { m.Headers["\xc3"] = "v" }, "header key"},
		{"header value", func(m *messagev1.Message) { m.Headers["k"] = "v\xed\xa0\x80" }, `header "k": value`},
		{"traceparent", func(m *messagev1.Message) { m.Trace.Traceparent = "\xff" }, "trace.traceparent"},
		{"tracestate", func(m *messagev1.Message) { m.Trace.Tracestate = "\xff" }, "trace.tracestate"},
		{"route group", func(m *messagev1.Message) { m.Routes[0].Group = "\xff" }, "routes[0].group"},
		{"route consumer", func(m *messagev1.Message) { m.Routes[0].Consumer = "\xff" }, "routes[0].consumer"},
	} {
		m := valid()
		tc.spoil(m)
		err := butterfly.CheckMessage(m)
		if !errors.Is(err, butterfly.ErrInvalidUTF8) || !strings.Contains(err.Error(), tc.naming) {
			t.Errorf("CheckMessage(bad %s) = %v, want %v naming %s", tc.field, err, butterfly.ErrInvalidUTF8, tc.naming)
		}
	}
	for name, unknown := range map[string][]byte{
		"group closed under another number": protowire.AppendTag(protowire.AppendTag(nil, 100, protowire.StartGroupType), 101, protowire.EndGroupType),
		"field number 2^29":                 protowire.AppendVarint(protowire.AppendTag(nil, 1<<29, protowire.VarintType), 0),
		"field 0 in a group":                append(append(protowire.AppendTag(nil, 100, protowire.StartGroupType), 0x00, 0x00), protowire.AppendTag(nil, 100, protowire.EndGroupType)...),
		"truncated bytes field":             protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.BytesType), 10),
	} {
		for _, where := range []string{"message", "id", "trace", "routes[0]"} {
			m := valid()
			target := map[string]protoreflect.ProtoMessage{"message": m, "id": m.Id, "trace": m.Trace, "routes[0]": m.Routes[0]}[where]
			target.ProtoReflect().SetUnknown(unknown)
			err := butterfly.CheckMessage(m)
			if !errors.Is(err, butterfly.ErrMalformedUnknown) || !strings.HasPrefix(err.Error(), where) {
				t.Errorf("CheckMessage(%s in %s) = %v, want %v naming %s", name, where, err, butterfly.ErrMalformedUnknown, where)
			}
		}
	}
	m := valid()
	m.ProtoReflect().SetUnknown(protowire.AppendString(protowire.AppendTag(nil, 99, protowire.BytesType), "newer field"))
	m.Id.ProtoReflect().SetUnknown(protowire.AppendTag(protowire.AppendTag(nil, 50, protowire.StartGroupType), 50, protowire.EndGroupType))
	if err := butterfly.CheckMessage(m); err != nil {
		t.Errorf("CheckMessage(well-formed unknown fields) = %v, want nil", err)
	}
}

// BenchmarkCheckMessage measures the check producers and intermediates make
// of every message, on a typical one (an id, a low-water mark and a payload
// of 256 bytes): one message checked again and again ("reused"), and, as
// producers and intermediates check them, each message once ("fresh", from
// slabs of 4 096 made while the timer is stopped).
func BenchmarkCheckMessage(b *testing.B) {
	newMessage := func() *messagev1.Message {
		return &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "producer-7f3a9c1e", Incarnation: 1, Seq: 9}, Payload: make([]byte, 256), LowWaterSeq: 3}
	}
	b.Run("reused", func(b *testing.B) {
		m := newMessage()
		b.ReportAllocs()
		for b.Loop() {
			if err := butterfly.CheckMessage(m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("fresh", func(b *testing.B) {
		ms := make([]*messagev1.Message, 4096)
		next := len(ms)
		b.ReportAllocs()
		for b.Loop() {
			if next == len(ms) {
				b.StopTimer()
				for i := range ms {
					ms[i] = newMessage()
				}
				next = 0
				b.StartTimer()
			}
			if err := butterfly.CheckMessage(ms[next]); err != nil {
				b.Fatal(err)
			}
			next++
		}
	})
}

// TestKeepIdentity checks what a processor's result gets of its input, a
// message decoded by Butterfly's codec (which allocates it with its id):
// the input's id and low-water mark, whatever id the result had, and
// nothing that keeps the input reachable while the result is held.
func TestKeepIdentity(t *testing.T) {
	frame, err := proto.Marshal(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{
		Messages: []*messagev1.Message{{Id: &messagev1.MessageId{ProducerId: "p", Incarnation: 1, Seq: 3}, LowWaterSeq: 2, Payload: make([]byte, 1<<20)}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		process func(in *messagev1.Message) *messagev1.Message
	}{
		{"no id", func(*messagev1.Message) *messagev1.Message { return &messagev1.Message{Payload: []byte("out")} }},
		{"the input's id", func(in *messagev1.Message) *messagev1.Message {
			return &messagev1.Message{Id: in.GetId(), Payload: []byte("out")}
		}},
		{"an equal id", func(*messagev1.Message) *messagev1.Message {
			return &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p", Incarnation: 1, Seq: 3}, Payload: []byte("out")}
		}},
		{"another id and mark", func(*messagev1.Message) *messagev1.Message {
			return &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "q", Seq: 9}, LowWaterSeq: 7, Payload: []byte("out")}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var req deliveryv1.PublishRequest
			if err := (vtcodec.Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(frame)}, &req); err != nil {
				t.Fatal(err)
			}
			in := req.GetBatch().GetMessages()[0]
			req.Reset()
			out := tc.process(in)
			butterfly.KeepIdentity(out, in)
			want := &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p", Incarnation: 1, Seq: 3}, LowWaterSeq: 2, Payload: []byte("out")}
			if !proto.Equal(out, want) {
				t.Errorf("KeepIdentity() gave %v, want %v", out, want)
			}
			input := weak.Make(in)
			runtime.GC()
			if input.Value() != nil {
				t.Error("the input is reachable while its result is held, want it collected")
			}
			runtime.KeepAlive(out)
		})
	}
	m := &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p", Incarnation: 1, Seq: 3}, LowWaterSeq: 2}
	id := m.GetId()
	butterfly.KeepIdentity(m, m)
	if m.GetId() != id || m.GetLowWaterSeq() != 2 {
		t.Errorf("KeepIdentity(m, m) changed m to %v", m)
	}
}
