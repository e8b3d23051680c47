package bench

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// loadLevel is the rate each producer sends at from since on; 0 is as fast
// as the window allows.
type loadLevel struct {
	perProducer float64
	since       time.Time
}

// newLoadLevel is perProducer messages per second from now on.
func newLoadLevel(perProducer float64) *loadLevel {
	return &loadLevel{perProducer: perProducer, since: time.Now()}
}

// sendAtLevel sends messages with payload through p at the rate level holds
// (read again before every message) until ctx is done. It returns Send's
// error, or nil once ctx is done.
func sendAtLevel(ctx context.Context, p *components.Producer, payload []byte, level *atomic.Pointer[loadLevel]) error {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var (
		cur *loadLevel
		n   int64
	)
	for ctx.Err() == nil {
		if l := level.Load(); l != cur {
			cur, n = l, 0
		}
		if cur.perProducer > 0 && float64(n) >= cur.perProducer*time.Since(cur.since).Seconds() {
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
			continue
		}
		if _, err := p.Send(ctx, &messagev1.Message{Payload: payload}); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		n++
	}
	return nil
}
