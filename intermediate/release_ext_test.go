package intermediate_test

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"weak"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// watchingProcessor passes every message through unchanged and keeps a weak
// pointer to it, by seq, so a test can tell whether the server still
// references it.
type watchingProcessor struct {
	mu   sync.Mutex
	msgs map[uint64]weak.Pointer[messagev1.Message]
}

func (w *watchingProcessor) Name() string { return "watching" }

func (w *watchingProcessor) Process(_ context.Context, m *messagev1.Message) (*messagev1.Message, error) {
	w.mu.Lock()
	w.msgs[m.GetId().GetSeq()] = weak.Make(m)
	w.mu.Unlock()
	return m, nil
}

// reachable returns the seqs whose message is still referenced, after a
// collection.
func (w *watchingProcessor) reachable() []uint64 {
	runtime.GC()
	runtime.GC()
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []uint64
	for seq, p := range w.msgs {
		if p.Value() != nil {
			out = append(out, seq)
		}
	}
	return out
}

// TestRelease_AcknowledgedMessagesOfAHeldBatch checks that once a message is
// acknowledged end to end the server keeps no reference to it, though a
// message of the same batch is still held: of a batch of 64, the consumer
// acknowledges all but the first.
func TestRelease_AcknowledgedMessagesOfAHeldBatch(t *testing.T) {
	const n = 64
	w := &watchingProcessor{msgs: map[uint64]weak.Pointer[messagev1.Message]{}}
	r := newRig(t, intermediate.WithProcessor(w))
	sub := r.subscribe("c1", n)
	pub := r.producer("p")
	// The test keeps no reference to what it sent.
	sendBatch(t, pub, 1, func() []*messagev1.Message {
		msgs := make([]*messagev1.Message, n)
		for i := range msgs {
			msgs[i] = msg("p", uint64(i+1), strings.Repeat("x", 1024))
		}
		return msgs
	}()...)
	var firstID uint64
	ack := &deliveryv1.DeliveryAck{}
	for got := 0; got < n; {
		for _, d := range nextDeliveries(t, sub) {
			got++
			if d.GetMessage().GetId().GetSeq() == 1 {
				firstID = d.GetDeliveryId()
				continue
			}
			ack.Acked = append(ack.Acked, &messagev1.SeqRange{First: d.GetDeliveryId(), Last: d.GetDeliveryId()})
		}
	}
	if firstID == 0 {
		t.Fatalf("no delivery of seq 1 among %d", n)
	}
	ackDeliveries(t, sub, ack)
	acked := 0
	for acked < n-1 {
		for _, rg := range nextAck(t, pub).GetAcked() {
			if rg.GetFirst() <= 1 && rg.GetLast() >= 1 {
				t.Fatalf("seq 1 acknowledged to the producer, though its delivery %d was not", firstID)
			}
			acked += int(rg.GetLast() - rg.GetFirst() + 1)
		}
	}
	if acked != n-1 {
		t.Fatalf("producer got %d acks, want %d", acked, n-1)
	}
	live := w.reachable()
	var stale []uint64
	held := false
	for _, seq := range live {
		if seq == 1 {
			held = true
			continue
		}
		stale = append(stale, seq)
	}
	if !held {
		t.Errorf("seq 1, held for its unanswered delivery, is no longer referenced")
	}
	slices.Sort(stale)
	if len(stale) > 0 {
		t.Errorf("%d messages acknowledged end to end are still referenced by the server (seqs %v), want none", len(stale), stale)
	}
}
