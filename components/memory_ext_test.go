package components_test

import (
	"context"
	"errors"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// stalledMesh is an intermediate whose only consumer takes credit deliveries
// and then never answers them, so it never grants credit again.
type stalledMesh struct {
	m   *mesh
	hub *hub
}

func newStalledMesh(t *testing.T, maxInFlight, credit int) *stalledMesh {
	t.Helper()
	m := newMesh(t)
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1", intermediate.WithMaxInFlight(maxInFlight))
	release := make(chan struct{})
	// Registered after the consumer's own cleanup, so it runs first: the
	// handlers return and the consumer can close.
	m.consumer("c1", func(ctx context.Context, _ *components.Delivery) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return errors.New("stalled consumer")
	}, components.WithCredit(credit), components.WithConcurrency(credit))
	t.Cleanup(func() { close(release) })
	waitConsumers(t, 1, h)
	return &stalledMesh{m: m, hub: h}
}

// TestMemory_StalledConsumerHoldsAtLimits checks that with a consumer that
// never grants credit, a producer's Send blocks once its window is full and
// the intermediate holds exactly its in-flight limit, no more.
func TestMemory_StalledConsumerHoldsAtLimits(t *testing.T) {
	const window, maxInFlight, credit = 500, 200, 10
	sm := newStalledMesh(t, maxInFlight, credit)
	p := sm.m.producer("p1", components.WithWindow(window))
	for i := range window {
		if _, err := p.Send(context.Background(), &messagev1.Message{Payload: []byte("m")}); err != nil {
			t.Fatalf("Send(#%d) within the window = %v", i+1, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("over")}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send() over a full window of %d = %v, want it to block until the deadline", window, err)
	}
	waitUntil(t, "the intermediate to hold its in-flight limit, the consumer its credit", func() bool {
		st := sm.hub.status(t)
		return st.GetInFlight() == maxInFlight && len(st.GetConsumers()) == 1 && st.GetConsumers()[0].GetInFlight() == credit
	})
	st := sm.hub.status(t)
	if st.GetInFlight() != maxInFlight || st.GetReceived() != maxInFlight || len(st.GetConsumers()) != 1 || st.GetConsumers()[0].GetInFlight() != credit {
		t.Errorf("GetStatus() = %d in flight, %d received, consumers %v; want %d, %d and one consumer holding %d",
			st.GetInFlight(), st.GetReceived(), st.GetConsumers(), maxInFlight, maxInFlight, credit)
	}
	if ps := p.Stats(); ps.Sent != window || ps.InFlight != window {
		t.Errorf("producer Stats() = %+v, want %d sent and in flight", ps, window)
	}
}

// heapInUse returns the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// offer pushes n messages of size bytes at the intermediate from a raw
// publisher that ignores its in-flight limit: each stream is refused with
// RESOURCE_EXHAUSTED once it exceeds the limit, and the publisher opens
// another. It calls sample after every step messages.
func offer(t *testing.T, f *flooder, n, size, step int, sample func(offered int)) (streams int) {
	t.Helper()
	const batch = 256
	payload := []byte(strings.Repeat("o", size))
	hello := &deliveryv1.PublishHello{ProducerId: "offer", Incarnation: 1, HeartbeatIntervalMs: 60000}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	offered, next := 0, step
	for offered < n {
		s := f.accepted(ctx, hello)
		streams++
		seq := uint64(1)
		refused := false
		for offered < n {
			msgs := make([]*messagev1.Message, batch)
			for i := range msgs {
				msgs[i] = &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "offer", Incarnation: 1, Seq: seq + uint64(i)}, Payload: payload}
			}
			if err := s.Send(batchReq(seq, msgs...)); err != nil {
				refused = true
				break
			}
			seq += batch
			offered += batch
			if offered >= next {
				sample(offered)
				next += step
			}
		}
		if !refused {
			// Everything was offered: close the last stream.
			if err := s.CloseSend(); err != nil {
				t.Fatalf("CloseSend() = %v", err)
			}
		}
		err := end(s)
		if refused || !errors.Is(err, io.EOF) {
			if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max-in-flight") {
				t.Fatalf("offering stream ended with %v, want RESOURCE_EXHAUSTED naming max-in-flight", err)
			}
		}
	}
	return streams
}

// TestMemory_MillionOffered measures the heap while a million messages are
// offered to an intermediate whose consumer never grants credit, beside a
// producer blocked at its window. Set BUTTERFLY_MEMTEST=1 to run it.
func TestMemory_MillionOffered(t *testing.T) {
	if os.Getenv("BUTTERFLY_MEMTEST") != "1" {
		t.Skip("set BUTTERFLY_MEMTEST=1 to offer a million messages and measure the heap")
	}
	const (
		total       = 1_000_000
		size        = 100
		maxInFlight = intermediate.DefaultMaxInFlight
		window      = components.DefaultWindow
		maxGrowth   = 64 << 20
	)
	sm := newStalledMesh(t, maxInFlight, 100)
	p := sm.m.producer("p1", components.WithWindow(window))
	for range window {
		if _, err := p.Send(context.Background(), &messagev1.Message{Payload: []byte(strings.Repeat("p", size))}); err != nil {
			t.Fatalf("Send() within the window = %v", err)
		}
	}
	base := heapInUse()
	peak := base
	start := time.Now()
	streams := offer(t, newFlooder(t, sm.hub.addr), total, size, 100_000, func(offered int) {
		h := heapInUse()
		peak = max(peak, h)
		held := sm.hub.status(t).GetInFlight()
		t.Logf("offered %7d: heap %6.1f MiB (%+6.1f MiB), intermediate holds %d", offered, float64(h)/(1<<20), (float64(h)-float64(base))/(1<<20), held)
		if held > 2*maxInFlight {
			t.Errorf("intermediate holds %d messages after %d offered, want at most %d", held, offered, 2*maxInFlight)
		}
	})
	growth := int64(peak) - int64(base)
	t.Logf("%d messages offered over %d streams in %v; heap base %.1f MiB, peak %.1f MiB, growth %.1f MiB",
		total, streams, time.Since(start).Round(time.Millisecond), float64(base)/(1<<20), float64(peak)/(1<<20), float64(growth)/(1<<20))
	if growth > maxGrowth {
		t.Errorf("heap grew by %d bytes while %d messages were offered, want at most %d", growth, total, maxGrowth)
	}
	if ps := p.Stats(); ps.Sent != window {
		t.Errorf("producer Stats().Sent = %d, want %d (blocked at its window)", ps.Sent, window)
	}
}
