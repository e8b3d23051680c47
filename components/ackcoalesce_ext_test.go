package components_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// TestConsumer_AcksInFewFrames checks that a consumer answers a batch it
// handles one message after the other in a few acknowledgement frames, not
// in one frame per message: batches of 64 are published, the handler takes
// 20 µs a message, and the intermediate counts the acknowledgement frames
// the consumer sends. Every message is acknowledged to the publisher
// exactly once.
func TestConsumer_AcksInFewFrames(t *testing.T) {
	const (
		batches  = 20
		perBatch = 64
	)
	m := newMesh(t)
	var ackFrames atomic.Int64
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1", countFrames(func(f any) {
		if r, ok := f.(*deliveryv1.SubscribeRequest); ok && r.GetAck() != nil {
			ackFrames.Add(1)
		}
	}))
	var handled atomic.Int64
	m.consumer("c1", func(ctx context.Context, d *components.Delivery) error {
		spin(20 * time.Microsecond)
		handled.Add(1)
		return nil
	})
	waitConsumers(t, 1, h)

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	stream := newFlooder(t, h.addr).accepted(ctx, &deliveryv1.PublishHello{ProducerId: "ackp", Incarnation: 1, HeartbeatIntervalMs: 60000})
	var acked atomic.Int64
	twice := make(chan uint64, 1)
	go func() {
		seen := make(map[uint64]bool)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			a := resp.GetAck()
			if len(a.GetAcked()) == 0 {
				continue
			}
			for _, r := range a.GetAcked() {
				for s := r.GetFirst(); s <= r.GetLast(); s++ {
					if seen[s] {
						select {
						case twice <- s:
						default:
						}
					}
					seen[s] = true
				}
				acked.Add(int64(r.GetLast() - r.GetFirst() + 1))
			}
		}
	}()
	seq := uint64(1)
	start := time.Now()
	for b := range batches {
		msgs := make([]*messagev1.Message, perBatch)
		for i := range msgs {
			msgs[i] = &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "ackp", Incarnation: 1, Seq: seq + uint64(i)}, Payload: fmt.Appendf(nil, "m%d", seq+uint64(i))}
		}
		if err := stream.Send(batchReq(seq, msgs...)); err != nil {
			t.Fatalf("Send(batch %d) = %v", b+1, err)
		}
		seq += perBatch
		want := int64((b + 1) * perBatch)
		waitUntil(t, "the batch to be acknowledged", func() bool { return acked.Load() == want })
	}
	select {
	case s := <-twice:
		t.Fatalf("seq %d acknowledged twice", s)
	default:
	}
	if n := handled.Load(); n != batches*perBatch {
		t.Errorf("handled %d messages, want %d", n, batches*perBatch)
	}
	// Without the linger the consumer sent 2.6 to 5.3 frames a batch (8 to
	// 21 under the race detector), with it 1.1 to 1.6.
	got := ackFrames.Load()
	t.Logf("%d messages acknowledged in %d frames (%.1f a batch of %d) in %v", batches*perBatch, got, float64(got)/batches, perBatch, time.Since(start))
	if got > 3*batches {
		t.Errorf("%d acknowledgement frames for %d batches of %d, want at most %d", got, batches, perBatch, 3*batches)
	}
}

// spin busies the goroutine for d, as a handler doing work does.
func spin(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
	}
}
