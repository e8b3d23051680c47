package intermediate_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
)

// TestServer_StreamsOpeningAsItStops opens publish streams without pause
// while the server stops hard: a handler that starts as Serve waits for its
// goroutines must be refused, not count one more (sync.WaitGroup forbids an
// Add that races with Wait; the race detector and the WaitGroup itself
// report it). Each stream ends with a status and Serve returns.
func TestServer_StreamsOpeningAsItStops(t *testing.T) {
	for range 5 {
		r := newRig(t)
		ctx, cancel := context.WithCancel(context.Background())
		var (
			wg     sync.WaitGroup
			opened atomic.Int64
		)
		for w := range 4 {
			wg.Go(func() {
				client := deliveryv1.NewPublishServiceClient(r.conn)
				for i := 0; ctx.Err() == nil; i++ {
					sctx, scancel := context.WithCancel(ctx)
					stream, err := client.Publish(sctx)
					if err == nil {
						hello := &deliveryv1.PublishHello{ProducerId: "p", Incarnation: uint64(w*1_000_000 + i + 1), HeartbeatIntervalMs: quietHeartbeatMs}
						if stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: hello}}) == nil {
							if resp, err := stream.Recv(); err == nil && resp.GetWelcome() != nil {
								opened.Add(1)
							}
						}
					}
					scancel()
				}
			})
		}
		deadline := time.Now().Add(defaultTestTimeout)
		for opened.Load() < 20 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if opened.Load() < 20 {
			t.Fatalf("%d publish streams welcomed in %v, want 20 before the stop", opened.Load(), defaultTestTimeout)
		}
		r.srv.Stop()
		if err := r.wait(); err != nil {
			t.Errorf("Serve() after Stop = %v, want nil", err)
		}
		cancel()
		wg.Wait()
	}
}
