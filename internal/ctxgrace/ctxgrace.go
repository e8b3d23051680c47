// Package ctxgrace gives clean-up work a context that may outlive the
// caller's, by a bounded grace.
package ctxgrace

import (
	"context"
	"time"
)

// WithGrace returns a context for clean-up on behalf of ctx (removing a
// registration, revoking a lease): it keeps ctx's values, ends max after
// the call, and ends grace after ctx does, or grace after the call when
// ctx has already ended. So the clean-up gets a chance when ctx ended just
// before it, and never holds its caller more than grace past ctx. Call
// cancel when the work is done.
func WithGrace(ctx context.Context, max, grace time.Duration) (context.Context, context.CancelFunc) {
	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max)
	// Once ctx ends, a timer cancels gctx after grace; canceling twice is
	// harmless, so the timer is not stopped.
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(grace, cancel) })
	return gctx, func() {
		stop()
		cancel()
	}
}
