package components_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// TestMemory_UnansweredMessagePinsOnlyItself checks that a message left
// unanswered keeps only itself reachable in the intermediate and the
// consumer, not the messages that travelled in its batch and were
// acknowledged: the first message of every batch of 64 is held by its
// handler, the other 63 are handled and acknowledged to the publisher, and
// the live heap may grow by the held messages but not by the handled ones.
func TestMemory_UnansweredMessagePinsOnlyItself(t *testing.T) {
	const (
		batches  = 48
		perBatch = 64
		size     = 4 << 10
	)
	m := newMesh(t)
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	release := make(chan struct{})
	var handled atomic.Int64
	m.consumer("c1", func(ctx context.Context, d *components.Delivery) error {
		if d.Message.GetPayload()[0] == 's' {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		}
		handled.Add(1)
		return nil
	}, components.WithCredit(2*batches), components.WithConcurrency(2*batches))
	t.Cleanup(func() { close(release) })
	waitConsumers(t, 1, h)

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	stream := newFlooder(t, h.addr).accepted(ctx, &deliveryv1.PublishHello{ProducerId: "pin", Incarnation: 1, HeartbeatIntervalMs: 60000})
	var acked atomic.Int64
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			for _, r := range resp.GetAck().GetAcked() {
				acked.Add(int64(r.GetLast() - r.GetFirst() + 1))
			}
		}
	}()

	base := heapInUse()
	seq := uint64(1)
	for b := range batches {
		msgs := make([]*messagev1.Message, perBatch)
		for i := range msgs {
			fill := "o"
			if i == 0 {
				fill = "s"
			}
			msgs[i] = &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "pin", Incarnation: 1, Seq: seq + uint64(i)}, Payload: []byte(strings.Repeat(fill, size))}
		}
		if err := stream.Send(batchReq(seq, msgs...)); err != nil {
			t.Fatalf("Send(batch %d) = %v", b+1, err)
		}
		seq += perBatch
		want := int64((b + 1) * (perBatch - 1))
		waitUntil(t, "the batch's handled messages to be acknowledged", func() bool { return acked.Load() == want })
	}
	if n := handled.Load(); n != batches*(perBatch-1) {
		t.Fatalf("handled %d messages, want %d", n, batches*(perBatch-1))
	}
	if st := h.status(t); st.GetInFlight() != batches {
		t.Fatalf("intermediate holds %d messages, want the %d unanswered", st.GetInFlight(), batches)
	}
	growth := int64(heapInUse()) - int64(base)
	// The unanswered messages, a copy at the intermediate and one at the
	// consumer, plus room for buffers and bookkeeping; the handled messages
	// are 12 MiB a copy.
	const limit = 2*batches*size + 4<<20
	t.Logf("heap grew by %.1f MiB with %d of %d messages of %d B unanswered", float64(growth)/(1<<20), batches, batches*perBatch, size)
	if growth > limit {
		t.Errorf("live heap grew by %d bytes with %d messages of %d bytes unanswered, want at most %d: acknowledged messages stay reachable", growth, batches, size, limit)
	}
}
