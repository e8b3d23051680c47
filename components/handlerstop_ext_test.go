package components_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/butterfly-mesh/butterfly/components"
)

// TestConsumer_HandlerStopHandsTheRestOn checks Stop: a handler that loses
// its output mid-load stops its consumer; the message it was handling and
// everything the consumer held go, unanswered, to the group's other
// consumer, nothing is handed back to the producer, and every message is
// handled exactly once.
func TestConsumer_HandlerStopHandsTheRestOn(t *testing.T) {
	const total, before = 4000, 200
	all := newLedger()
	errFull := errors.New("write out.tsv: no space left on device")
	var mine, stops atomic.Int64
	a := stopsMidLoad(t, total, all, func(_ context.Context, d *components.Delivery) error {
		if mine.Load() >= before {
			stops.Add(1)
			return components.Stop(errFull)
		}
		mine.Add(1)
		all.record(d)
		return nil
	}, []components.ConsumerOption{components.WithConcurrency(4)}, nil, components.ErrHandlerStopped, errFull)
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
