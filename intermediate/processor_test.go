package intermediate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"runtime"
	"strings"
	"testing"
	"weak"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/vtcodec"
)

// TestProcessorByName_Choices checks every built-in name and that an unknown
// name's error lists the valid ones.
func TestProcessorByName_Choices(t *testing.T) {
	if diff := cmp.Diff([]string{"passthrough", "sha256", "upper"}, ProcessorNames()); diff != "" {
		t.Errorf("ProcessorNames() (-want +got):\n%s", diff)
	}
	for _, name := range ProcessorNames() {
		p, err := ProcessorByName(name)
		if err != nil || p.Name() != name {
			t.Errorf("ProcessorByName(%q) = %v, %v, want a processor named %q", name, p, err, name)
		}
	}
	_, err := ProcessorByName("nope")
	if err == nil || !strings.Contains(err.Error(), "passthrough, sha256, upper") {
		t.Errorf("ProcessorByName(nope) = %v, want an error naming passthrough, sha256, upper", err)
	}
}

// TestProcessors_Transform checks what each processor makes of a message,
// and that the input is left alone.
func TestProcessors_Transform(t *testing.T) {
	id := &messagev1.MessageId{ProducerId: "p", Incarnation: 1, Seq: 3}
	in := &messagev1.Message{Id: id, Key: []byte("k"), Payload: []byte("Hello, wörld 1")}
	sum := sha256.Sum256(in.Payload)
	for _, tc := range []struct {
		p    Processor
		want *messagev1.Message
	}{
		{Passthrough(), in},
		{Upper(), &messagev1.Message{Id: id, Key: []byte("k"), Payload: []byte("HELLO, WöRLD 1")}},
		{SHA256(), &messagev1.Message{Id: id, Key: []byte("k"), Payload: []byte(hex.EncodeToString(sum[:])),
			Headers: map[string]string{OriginalLengthHeader: "15", OriginalPayloadHeader: "Hello, wörld 1"}}},
	} {
		got, err := tc.p.Process(context.Background(), in)
		if err != nil {
			t.Errorf("%s.Process() = %v", tc.p.Name(), err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, protocmp.Transform()); diff != "" {
			t.Errorf("%s.Process() (-want +got):\n%s", tc.p.Name(), diff)
		}
	}
	if string(in.Payload) != "Hello, wörld 1" || in.Headers != nil {
		t.Errorf("input after processing = %v, want it unchanged", in)
	}
	if _, err := Upper().Process(context.Background(), &messagev1.Message{Payload: []byte{0xff}}); err == nil {
		t.Errorf("upper.Process(invalid UTF-8) = nil error, want an error")
	}
}

// TestProcess_ResultDoesNotKeepItsInput checks that a processor's result,
// given back its input's id, does not keep the input reachable: the codec
// allocates a decoded message and its id together, and a held result
// pointing at that id would keep the input's payload in memory.
func TestProcess_ResultDoesNotKeepItsInput(t *testing.T) {
	frame, err := proto.Marshal(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{
		Messages: []*messagev1.Message{{Id: &messagev1.MessageId{ProducerId: "p", Incarnation: 1, Seq: 3}, LowWaterSeq: 2, Payload: make([]byte, 1<<20)}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	var req deliveryv1.PublishRequest
	if err := (vtcodec.Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(frame)}, &req); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		proc func(m *messagev1.Message) *messagev1.Message
	}{
		{"no id", func(*messagev1.Message) *messagev1.Message { return &messagev1.Message{Payload: []byte("fresh")} }},
		{"the input's id", func(m *messagev1.Message) *messagev1.Message {
			return &messagev1.Message{Id: m.GetId(), Payload: []byte("fresh")}
		}},
		{"another id", func(*messagev1.Message) *messagev1.Message {
			return &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "q", Seq: 9}, Payload: []byte("fresh")}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var req deliveryv1.PublishRequest
			if err := (vtcodec.Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(frame)}, &req); err != nil {
				t.Fatal(err)
			}
			in := req.GetBatch().GetMessages()[0]
			req.Reset()
			s := &Server{opts: options{processor: processorFunc(tc.proc)}}
			res, err := s.process(context.Background(), in)
			if err != nil {
				t.Fatalf("process() = %v", err)
			}
			want := &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p", Incarnation: 1, Seq: 3}, LowWaterSeq: 2, Payload: []byte("fresh")}
			if diff := cmp.Diff(want, res, protocmp.Transform()); diff != "" {
				t.Errorf("process() (-want +got):\n%s", diff)
			}
			input := weak.Make(in)
			runtime.GC()
			if input.Value() != nil {
				t.Error("the input is reachable while its result is held, want it collected")
			}
			runtime.KeepAlive(res)
		})
	}
}

// processorFunc is a Processor that calls itself.
type processorFunc func(m *messagev1.Message) *messagev1.Message

func (processorFunc) Name() string { return "func" }

func (f processorFunc) Process(_ context.Context, m *messagev1.Message) (*messagev1.Message, error) {
	return f(m), nil
}
