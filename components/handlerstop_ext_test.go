package components_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
)

// TestConsumer_HandlerStopHandsTheRestOn checks Stop: a handler that loses
// its output mid-load stops its consumer; the message it was handling and
// everything the consumer held go, unanswered, to the group's other
// consumer, nothing is handed back to the producer, and every message is
// handled exactly once.
func TestConsumer_HandlerStopHandsTheRestOn(t *testing.T) {
	const total, before = 4000, 200
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	h2 := m.startHub(components.DefaultService, "i2", "127.0.0.1")
	all := newLedger()
	errFull := errors.New("write out.tsv: no space left on device")
	var mine, stops atomic.Int64
	a := m.consumer("a", func(_ context.Context, d *components.Delivery) error {
		if mine.Load() >= before {
			stops.Add(1)
			return components.Stop(errFull)
		}
		mine.Add(1)
		all.record(d)
		return nil
	}, components.WithConcurrency(4))
	m.consumer("b", all.handler())
	waitConsumers(t, 2, h1, h2)
	p := m.producer("p")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	load := startLoad(ctx, total, p)

	select {
	case <-a.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("consumer a did not stop; handled %d", mine.Load())
	}
	err := a.Err()
	if !errors.Is(err, components.ErrHandlerStopped) || !errors.Is(err, errFull) {
		t.Errorf("a.Err() = %v, want ErrHandlerStopped wrapping %v", err, errFull)
	}
	// Everything is acknowledged while a, stopped, is not closed yet.
	sent := load.wait(t)
	closeProducers(t, p)
	all.checkExactlyOnce(t, sent)
	if st := p.Stats(); st.Nacked != 0 || st.Acked != total {
		t.Errorf("producer stats = %+v, want Acked=%d Nacked=0", st, total)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer ccancel()
	if err := a.Close(cctx); err != nil {
		t.Errorf("a.Close() = %v, want nil", err)
	}
	if st := a.Stats(); st.Delivered != uint64(mine.Load()) || st.Nacked != 0 {
		t.Errorf("a.Stats() = %+v, want Delivered=%d Nacked=0", st, mine.Load())
	}
	if stops.Load() == 0 {
		t.Errorf("a's handler never returned Stop (handled %d)", mine.Load())
	}
}

// TestStop_Nil checks that Stop(nil) acknowledges, as nil does.
func TestStop_Nil(t *testing.T) {
	if err := components.Stop(nil); err != nil {
		t.Errorf("Stop(nil) = %v, want nil", err)
	}
}
