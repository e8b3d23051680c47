package ctxgrace

import (
	"context"
	"testing"
	"time"
)

type key struct{}

// TestWithGrace checks the three ways the context ends: at max while the
// caller's lives on, grace after the caller's ends, and grace after the call
// when the caller's had already ended; and that it keeps the caller's
// values.
func TestWithGrace(t *testing.T) {
	const grace = 50 * time.Millisecond
	t.Run("max", func(t *testing.T) {
		gctx, cancel := WithGrace(context.Background(), grace, time.Hour)
		defer cancel()
		select {
		case <-gctx.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the context outlived max")
		}
		if gctx.Err() != context.DeadlineExceeded {
			t.Errorf("Err() = %v, want context.DeadlineExceeded", gctx.Err())
		}
	})
	t.Run("caller ends later", func(t *testing.T) {
		ctx, cancelCaller := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
		gctx, cancel := WithGrace(ctx, time.Hour, grace)
		defer cancel()
		if gctx.Value(key{}) != "v" {
			t.Errorf("Value() = %v, want the caller's", gctx.Value(key{}))
		}
		cancelCaller()
		if err := gctx.Err(); err != nil {
			t.Errorf("Err() right after the caller's context ended = %v, want nil during the grace", err)
		}
		select {
		case <-gctx.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the context outlived the caller's by more than its grace")
		}
	})
	t.Run("caller ended before", func(t *testing.T) {
		ctx, cancelCaller := context.WithCancel(context.Background())
		cancelCaller()
		gctx, cancel := WithGrace(ctx, time.Hour, grace)
		defer cancel()
		if err := gctx.Err(); err != nil {
			t.Errorf("Err() at the call = %v, want nil during the grace", err)
		}
		select {
		case <-gctx.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the context outlived its grace")
		}
	})
	t.Run("cancel", func(t *testing.T) {
		gctx, cancel := WithGrace(context.Background(), time.Hour, time.Hour)
		cancel()
		if gctx.Err() != context.Canceled {
			t.Errorf("Err() after cancel = %v, want context.Canceled", gctx.Err())
		}
	})
}
