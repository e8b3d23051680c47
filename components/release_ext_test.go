package components_test

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"weak"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// weakSet keeps weak pointers to messages by seq.
type weakSet struct {
	mu   sync.Mutex
	msgs map[uint64]weak.Pointer[messagev1.Message]
}

func (w *weakSet) add(seq uint64, m *messagev1.Message) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs[seq] = weak.Make(m)
}

// reachable returns, sorted, the seqs other than except whose message is
// still referenced after a collection.
func (w *weakSet) reachable(except uint64) []uint64 {
	runtime.GC()
	runtime.GC()
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []uint64
	for seq, p := range w.msgs {
		if seq != except && p.Value() != nil {
			out = append(out, seq)
		}
	}
	slices.Sort(out)
	return out
}

// TestRelease_AcknowledgedMessagesWhileOneIsHandled checks that the producer
// and the consumer keep no reference to a message once it was handled and
// acknowledged, though a message sent just before it is still being
// handled: a stage's producer forwards 64 messages with the ids they came
// with, and the consumer's handler holds on to the first.
func TestRelease_AcknowledgedMessagesWhileOneIsHandled(t *testing.T) {
	const n = 64
	m := newMesh(t)
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	release := make(chan struct{})
	sent := &weakSet{msgs: map[uint64]weak.Pointer[messagev1.Message]{}}
	handled := &weakSet{msgs: map[uint64]weak.Pointer[messagev1.Message]{}}
	var mu sync.Mutex
	count := 0
	m.consumer("c1", func(ctx context.Context, d *components.Delivery) error {
		seq := d.Message.GetId().GetSeq()
		if seq == 1 {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil
		}
		handled.add(seq, d.Message)
		mu.Lock()
		count++
		mu.Unlock()
		return nil
	}, components.WithCredit(2*n), components.WithConcurrency(2*n))
	t.Cleanup(func() { close(release) })
	waitConsumers(t, 1, h)
	p := m.producer("stage", components.WithBatch(n, 4<<20, 20*time.Millisecond))
	for i := range n {
		msg := &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "upstream", Incarnation: 1, Seq: uint64(i + 1)}, Payload: []byte(strings.Repeat("x", 1024))}
		sent.add(uint64(i+1), msg)
		if _, err := p.Send(context.Background(), msg); err != nil {
			t.Fatalf("Send(seq %d) = %v", i+1, err)
		}
	}
	waitUntil(t, "every message but seq 1 to be handled and acknowledged", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return count == n-1 && p.Stats().InFlight == 1
	})
	if s := p.Stats(); s.Acked != n-1 || s.InFlight != 1 {
		t.Fatalf("producer Stats() = %+v, want %d acked and 1 in flight", s, n-1)
	}
	if stale := sent.reachable(1); len(stale) > 0 {
		t.Errorf("producer: %d messages acknowledged are still referenced (seqs %v), want none", len(stale), stale)
	}
	if stale := handled.reachable(1); len(stale) > 0 {
		t.Errorf("consumer: %d messages handled and acknowledged are still referenced (seqs %v), want none", len(stale), stale)
	}
}
