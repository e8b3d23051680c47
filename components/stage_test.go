package components

import (
	"context"
	"runtime"
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

// TestStage_ResultDoesNotKeepItsInput checks that what a stage forwards,
// a processor's result given back its input's id and mark, does not keep
// the input reachable: the codec allocates a decoded message and its id
// together, and a result pointing at that id would keep the input's
// payload in memory while in flight.
func TestStage_ResultDoesNotKeepItsInput(t *testing.T) {
	frame, err := proto.Marshal(&deliveryv1.SubscribeResponse{Kind: &deliveryv1.SubscribeResponse_Batch{Batch: &deliveryv1.DeliveryBatch{
		Deliveries: []*deliveryv1.Delivery{{DeliveryId: 1, Message: &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p", Incarnation: 1, Seq: 3}, LowWaterSeq: 2, Payload: make([]byte, 1<<20)}}},
	}}})
	if err != nil {
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
			return &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "q", Seq: 9}, LowWaterSeq: 7, Payload: []byte("fresh")}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp deliveryv1.SubscribeResponse
			if err := (vtcodec.Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(frame)}, &resp); err != nil {
				t.Fatal(err)
			}
			in := resp.GetBatch().GetDeliveries()[0].GetMessage()
			resp.Reset()
			s := &Stage{proc: processorFunc(tc.proc)}
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
