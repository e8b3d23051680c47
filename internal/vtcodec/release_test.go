package vtcodec

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// full returns a message with every field set.
func full(seq uint64, payload int) *messagev1.Message {
	return &messagev1.Message{
		Id:                 &messagev1.MessageId{ProducerId: "p1", Incarnation: 7, Seq: seq},
		Key:                []byte("key"),
		Headers:            map[string]string{"a": "1"},
		Payload:            bytes.Repeat([]byte{'x'}, payload),
		CreateTimeUnixNano: 42,
		Trace:              &messagev1.TraceContext{Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		LowWaterSeq:        1,
		Routes:             []*messagev1.Route{{Group: "g", Consumer: "c", Handled: true}},
	}
}

// TestRenew_DecodesAsNew checks that a message given back and taken
// again holds nothing of what it held, its id and payload array aside, and
// that a frame decoded into it reads as protobuf-go reads the frame: a
// message with fewer fields than the one before it in that memory gets none
// of that one's.
func TestRenew_DecodesAsNew(t *testing.T) {
	m := full(3, 100)
	id, payload := m.Id, m.Payload
	renew(m)
	if m.Id != id || cap(m.Payload) != cap(payload) {
		t.Errorf("renew() kept id %p and a payload of capacity %d, want %p and %d", m.Id, cap(m.Payload), id, cap(payload))
	}
	if !proto.Equal(m, &messagev1.Message{Id: &messagev1.MessageId{}}) || len(m.Payload) != 0 {
		t.Errorf("renew() left %v, want a message with an empty id and nothing else", m)
	}
	for name, next := range map[string]*messagev1.Message{
		"fewer fields":     {Id: &messagev1.MessageId{ProducerId: "p2", Seq: 9}, Payload: []byte("short")},
		"no payload":       {Id: &messagev1.MessageId{ProducerId: "p2", Incarnation: 1, Seq: 9}},
		"every field":      full(4, 60),
		"a larger payload": full(5, 300),
	} {
		t.Run(name, func(t *testing.T) {
			m := full(3, 100)
			renew(m)
			b, err := proto.Marshal(next)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.UnmarshalVT(b); err != nil {
				t.Fatalf("UnmarshalVT() = %v", err)
			}
			if !proto.Equal(m, next) {
				t.Errorf("decoded into a message given back: %v, want %v", m, next)
			}
		})
	}
}

// TestRenew_KeepsSmallPayloads checks which payload arrays renew keeps: up
// to maxPooledPayload; and that one not kept leaves the message without.
func TestRenew_KeepsSmallPayloads(t *testing.T) {
	for _, n := range []int{1, 256, maxPooledPayload, maxPooledPayload + 1, 1 << 20} {
		m := &messagev1.Message{Id: &messagev1.MessageId{Seq: 1}, Payload: make([]byte, n)}
		renew(m)
		kept := cap(m.Payload) == n
		if want := n <= maxPooledPayload; kept != want || len(m.Payload) != 0 {
			t.Errorf("renew() of a payload of %d bytes: capacity %d kept, len %d; want kept %v, len 0", n, cap(m.Payload), len(m.Payload), want)
		}
	}
	m := &messagev1.Message{}
	renew(m)
	if m.Id == nil {
		t.Error("renew() of a message without an id left it without, want an empty one to decode into")
	}
}

// TestReleaser_HandsBackInBatches checks that a Releaser hands messages to
// the codec releaseBatch at a time, and that the codec takes each message
// once, emptied, whether it takes a whole batch or part of one.
func TestReleaser_HandsBackInBatches(t *testing.T) {
	for takeReleased(make([]*messagev1.Message, 1024)) > 0 {
		// What other tests gave back.
	}
	var r Releaser
	given := make(map[*messagev1.Message]bool)
	for i := range 2*releaseBatch + 3 {
		m := full(uint64(i+1), 10)
		r.Release(m)
		given[m] = true
		if want := (i + 1) % releaseBatch; len(r.Pending()) != want {
			t.Fatalf("after %d messages given back, %d pending, want %d", i+1, len(r.Pending()), want)
		}
	}
	taken := make(map[*messagev1.Message]bool)
	for _, n := range []int{10, releaseBatch - 10, releaseBatch + 5, 100} {
		ms := make([]*messagev1.Message, n)
		k := takeReleased(ms)
		for _, m := range ms[:k] {
			switch {
			case !given[m]:
				t.Errorf("took %p, which was not given back", m)
			case taken[m]:
				t.Errorf("took %p twice", m)
			case !proto.Equal(m, &messagev1.Message{Id: &messagev1.MessageId{}}):
				t.Errorf("took %v, want it emptied", m)
			}
			taken[m] = true
		}
		for _, m := range ms[k:] {
			if m != nil {
				t.Errorf("takeReleased() set %p past the %d it reports", m, k)
			}
		}
	}
	if !raceEnabled && len(taken) != 2*releaseBatch {
		t.Errorf("took %d messages, want the %d of the two full batches", len(taken), 2*releaseBatch)
	}
}

// TestCodec_TrimsSlack checks that a payload decoded into an array given
// back with more than maxSlack bytes to spare gets an array of its own
// size, and one with less keeps it.
func TestCodec_TrimsSlack(t *testing.T) {
	for _, tc := range []struct {
		array, payload int
		keep           bool
	}{
		{256, 256, true},
		{256, 200, true},
		{4096, 4096 - maxSlack, true},
		{4096, 4096 - maxSlack - 1, false},
		{4096, 10, false},
		{4096, 0, false},
	} {
		ms := []*messagev1.Message{{Id: &messagev1.MessageId{}, Payload: make([]byte, 0, tc.array)}}
		array := ms[0].Payload[:1]
		b, err := proto.Marshal(&messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p1", Incarnation: 1, Seq: 1}, Payload: bytes.Repeat([]byte{'y'}, tc.payload)})
		if err != nil {
			t.Fatal(err)
		}
		if err := ms[0].UnmarshalVT(b); err != nil {
			t.Fatal(err)
		}
		trim(ms)
		p := ms[0].Payload
		kept := cap(p) > 0 && &p[:1][0] == &array[0]
		if kept != tc.keep || len(p) != tc.payload || !bytes.Equal(p, bytes.Repeat([]byte{'y'}, tc.payload)) {
			t.Errorf("array %d, payload %d: kept %v (capacity %d, len %d), want %v", tc.array, tc.payload, kept, cap(p), len(p), tc.keep)
		}
		if !tc.keep && cap(p)-len(p) > maxSlack {
			t.Errorf("array %d, payload %d: %d bytes to spare after trim, want at most %d", tc.array, tc.payload, cap(p)-len(p), maxSlack)
		}
	}
}

// TestCodec_PublishBatchIntoReleased checks what decoding a publish batch
// allocates a message once the messages of the batch before were given
// back: the id's producer string alone (the message, its id and its
// payload array are those given back), against three without; fewer than
// two under the race detector, whose pool drops a quarter of what it is
// given.
func TestCodec_PublishBatchIntoReleased(t *testing.T) {
	frame := func(n int) []byte {
		var pub deliveryv1.PublishBatch
		for i := range n {
			pub.Messages = append(pub.Messages, &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p1", Incarnation: 7, Seq: uint64(i + 1)}, Payload: make([]byte, 256), CreateTimeUnixNano: 1})
		}
		b, err := proto.Marshal(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &pub}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var c Codec
	var r Releaser
	decode := func(b []byte, release bool) float64 {
		return testing.AllocsPerRun(50, func() {
			req := &deliveryv1.PublishRequest{}
			if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, req); err != nil {
				t.Fatal(err)
			}
			if release {
				for _, m := range req.GetBatch().GetMessages() {
					r.Release(m)
				}
			}
		})
	}
	small, large := frame(64), frame(128)
	kept := (decode(large, false) - decode(small, false)) / 64
	given := (decode(large, true) - decode(small, true)) / 64
	if kept < 2.5 || given >= 2 {
		t.Errorf("allocations a message: %.2f with the messages kept, %.2f with them given back; want about 3 and under 2", kept, given)
	}
}

// TestCodec_TrimsOnlyArraysGivenBack checks that Unmarshal trims the
// payload arrays of messages given back, and leaves alone those the decoder
// allocated, whose spare bytes (the allocator's size classes) a copy would
// not shed: a 5 000-byte payload gets a 5 376-byte array either way.
func TestCodec_TrimsOnlyArraysGivenBack(t *testing.T) {
	frame := func(payload int) mem.BufferSlice {
		b, err := proto.Marshal(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{FirstSeq: 1, Messages: []*messagev1.Message{
			{Id: &messagev1.MessageId{ProducerId: "p1", Incarnation: 1, Seq: 1}, Payload: bytes.Repeat([]byte{'z'}, payload)},
		}}}})
		if err != nil {
			t.Fatal(err)
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}
	}
	decode := func(payload int) *messagev1.Message {
		req := &deliveryv1.PublishRequest{}
		if err := (Codec{}).Unmarshal(frame(payload), req); err != nil {
			t.Fatalf("Unmarshal() = %v", err)
		}
		m := req.GetBatch().GetMessages()[0]
		if len(m.GetPayload()) != payload {
			t.Fatalf("decoded a payload of %d bytes, want %d", len(m.GetPayload()), payload)
		}
		return m
	}
	for takeReleased(make([]*messagev1.Message, 1024)) > 0 {
		// What other tests gave back.
	}
	if p := decode(5000).GetPayload(); cap(p)-len(p) <= maxSlack {
		t.Errorf("a payload of 5 000 bytes decoded into a new message has an array of %d bytes, want the allocator's, over %d: not copied again", cap(p), len(p)+maxSlack)
	}

	var r Releaser
	given := make(map[*messagev1.Message]bool)
	for range releaseBatch {
		m := &messagev1.Message{Id: &messagev1.MessageId{}, Payload: make([]byte, 256)}
		given[m] = true
		r.Release(m)
	}
	m := decode(1)
	if !given[m] {
		if !raceEnabled {
			t.Fatal("the frame was not decoded into a message given back")
		}
		t.Skip("the race detector's pool dropped the batch given back")
	}
	if p := m.GetPayload(); cap(p)-len(p) > maxSlack {
		t.Errorf("a payload of 1 byte decoded into an array of 256 given back: %d bytes to spare, want at most %d", cap(p)-len(p), maxSlack)
	}
}
