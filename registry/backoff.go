package registry

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff is an exponential backoff with jitter for retry loops.
type backoff struct {
	min, max time.Duration
	next     time.Duration
}

func newBackoff(minDelay, maxDelay time.Duration) backoff {
	return backoff{min: minDelay, max: maxDelay, next: minDelay}
}

// reset makes the next wait the shortest again.
func (b *backoff) reset() { b.next = b.min }

// wait sleeps for the next delay, or until ctx is done; it reports whether
// the delay elapsed.
func (b *backoff) wait(ctx context.Context) bool {
	d := b.next
	// Up to 20% jitter either way, so that many clients do not retry in step.
	d += time.Duration((rand.Float64()*0.4 - 0.2) * float64(d))
	b.next = min(b.next*2, b.max)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
