package intermediate_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/registry"
)

// TestServer_QueueShedsWhatOtherGroupsFinished checks that a subscribe
// stream whose consumer holds its credit does not keep the deliveries of
// messages another group finished without it. Two groups are declared;
// group b's only consumer holds its first messages, so its credit is spent
// and its queue is not taken from. Group a finishes every message without b:
//
//   - noConsumer: a has no consumer; the producer's window is handed back
//     every no-consumer timeout and sent again;
//   - ownerUnreachable: a's owner is registered but not connected here; the
//     same every owner wait;
//   - handlerFails: a's consumer fails every message (a permanent nack), and
//     the producer sends new ones.
//
// Each time b's delivery stays in b's queue, stale, until credit reaches
// it; the queue must stay within a small multiple of the window, not grow
// by every message a finished.
func TestServer_QueueShedsWhatOtherGroupsFinished(t *testing.T) {
	for _, mode := range []string{"noConsumer", "ownerUnreachable", "handlerFails"} {
		t.Run(mode, func(t *testing.T) { queueSheds(t, mode) })
	}
}

func queueSheds(t *testing.T, mode string) {
	const (
		window  = 200
		timeout = 100 * time.Millisecond
		run     = 1500 * time.Millisecond
		sends   = 5000 // handlerFails: messages sent while measuring
	)
	quiet := slog.New(slog.DiscardHandler)
	r := newRig(t, intermediate.WithNoConsumerTimeout(timeout), intermediate.WithOwnerWait(timeout), intermediate.WithLogger(quiet))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	subs := 1
	switch mode {
	case "noConsumer":
		if _, err := registry.CreateGroup(ctx, r.cli, service, "a", "test", registry.WithPrefix(prefix)); err != nil {
			t.Fatalf("CreateGroup(a) = %v", err)
		}
	case "ownerUnreachable":
		r.register("a", "ghost")
	case "handlerFails":
		ca, err := components.NewConsumer(r.cli, "ca", func(context.Context, *components.Delivery) error {
			return errors.New("a fails everything")
		}, components.WithService(service), components.WithPrefix(prefix), components.WithGroup("a"), components.WithLogger(quiet))
		if err != nil {
			t.Fatalf("NewConsumer(ca) = %v", err)
		}
		defer closeWithin(2*time.Second, ca.Close)
		subs = 2
	}
	release := make(chan struct{})
	c, err := components.NewConsumer(r.cli, "c1", func(ctx context.Context, d *components.Delivery) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}, components.WithService(service), components.WithPrefix(prefix), components.WithGroup("b"), components.WithCredit(10), components.WithLogger(quiet))
	if err != nil {
		t.Fatalf("NewConsumer() = %v", err)
	}
	defer func() {
		close(release)
		closeWithin(2*time.Second, c.Close)
	}()
	r.waitConsumers(subs)
	p, err := components.NewProducer(r.cli, "p1", components.WithService(service), components.WithPrefix(prefix), components.WithWindow(window), components.WithLogger(quiet))
	if err != nil {
		t.Fatalf("NewProducer() = %v", err)
	}
	defer closeWithin(100*time.Millisecond, p.Close)
	send := func(n int) {
		for i := range n {
			if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("m")}); err != nil {
				t.Fatalf("Send(#%d) = %v", i+1, err)
			}
		}
	}
	send(window)
	time.Sleep(5 * timeout)
	q0, u0, h0 := r.srv.GroupQueue("b")
	start := p.Stats()
	if mode == "handlerFails" {
		send(sends)
		for p.Stats().Nacked-start.Nacked < sends-window && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
	} else {
		time.Sleep(run)
	}
	q1, u1, h1 := r.srv.GroupQueue("b")
	end := p.Stats()
	t.Logf("b's queue: %d -> %d entries (b unacked %d -> %d, held %d -> %d); producer: %d resent, %d nacked, %d new sent",
		q0, q1, u0, u1, h0, h1, end.Resent-start.Resent, end.Nacked-start.Nacked, end.Sent-start.Sent)
	if q1 > 2*window {
		t.Errorf("b's queue holds %d entries with a producer window of %d, want at most %d", q1, window, 2*window)
	}
	if mode == "handlerFails" && end.Nacked-start.Nacked < sends-window {
		t.Errorf("the producer saw %d nacks, want at least %d: group a did not fail them", end.Nacked-start.Nacked, sends-window)
	}
	if mode != "handlerFails" && end.Resent-start.Resent < 4*window {
		t.Errorf("the producer resent %d messages, want at least %d: group a did not hand back", end.Resent-start.Resent, 4*window)
	}
}

// closeWithin calls close with a context that ends after d.
func closeWithin(d time.Duration, close func(context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	close(ctx) //nolint:errcheck // the test has its verdict; what is left is cleanup
}
