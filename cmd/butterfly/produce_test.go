package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
)

// TestPacer_KeepsTheRate checks that --rate is the rate sent, on a clock
// whose sleeps overshoot: each lasts at least a millisecond, as coarse
// timers do, and a send takes 5 µs. Over ten simulated seconds at 50 000 a
// second, 500 000 sends are due; a pacer that waits a tick per send gets
// one send a millisecond (10 000).
func TestPacer_KeepsTheRate(t *testing.T) {
	for _, rate := range []float64{50_000, 1_000, 3} {
		var clock time.Time
		pc := newPacer(rate)
		pc.now = func() time.Time { return clock }
		pc.sleep = func(_ context.Context, d time.Duration) error {
			clock = clock.Add(max(d, time.Millisecond))
			return nil
		}
		const span = 10 * time.Second
		sent := 0
		for end := clock.Add(span); clock.Before(end); sent++ {
			if err := pc.wait(context.Background()); err != nil {
				t.Fatalf("wait() = %v", err)
			}
			clock = clock.Add(5 * time.Microsecond)
		}
		if want := int(rate * span.Seconds()); sent < want-1 || sent > want+1 {
			t.Errorf("rate %v: %d sends in %v, want %d", rate, sent, span, want)
		}
	}
}

// TestPacer_NoBurstAfterAStall checks that sends held up for more than a
// second (a full window) do not go in a burst to catch up: after a stall of
// three seconds at 1 000 a second, the next second has 1 000 sends.
func TestPacer_NoBurstAfterAStall(t *testing.T) {
	var clock time.Time
	pc := newPacer(1000)
	pc.now = func() time.Time { return clock }
	pc.sleep = func(_ context.Context, d time.Duration) error {
		clock = clock.Add(d)
		return nil
	}
	ctx := context.Background()
	for range 10 {
		if err := pc.wait(ctx); err != nil {
			t.Fatalf("wait() = %v", err)
		}
	}
	clock = clock.Add(3 * time.Second)
	sent := 0
	for end := clock.Add(time.Second); clock.Before(end); sent++ {
		if err := pc.wait(ctx); err != nil {
			t.Fatalf("wait() = %v", err)
		}
	}
	if sent < 999 || sent > 1001 {
		t.Errorf("%d sends in the second after a stall, want 1000", sent)
	}
}

// TestPacer_StopsWithItsContext checks that a wait ends with the context.
func TestPacer_StopsWithItsContext(t *testing.T) {
	pc := newPacer(0.001) // one send every 1000 s
	defer pc.stop()
	ctx, cancel := context.WithCancel(context.Background())
	if err := pc.wait(ctx); err != nil {
		t.Fatalf("first wait() = %v, want nil", err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		cancel()
	}()
	if err := pc.wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("wait() = %v, want context.Canceled", err)
	}
}

// TestProduce_StdinLineTooLargeIsNamed checks that a line of stdin over
// --max-message-bytes ends produce naming the line and the flag, after the
// lines before it were sent, and saying that the lines after it were not.
func TestProduce_StdinLineTooLargeIsNamed(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	p, err := components.NewProducer(cli, "p1", components.WithMaxMessageBytes(100))
	if err != nil {
		t.Fatalf("NewProducer() = %v", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = p.Close(ctx) // the first line has no instance to go to
	}()
	in := strings.NewReader("short\n" + strings.Repeat("x", 300) + "\nafter\n")
	err = produce(context.Background(), p, in, 0, 0, 0, false)
	if !errors.Is(err, components.ErrMessageTooLarge) || !strings.HasPrefix(err.Error(), "stdin line 2 (--max-message-bytes): ") ||
		!strings.HasSuffix(err.Error(), "; the lines after it were not sent") {
		t.Fatalf("produce() = %v, want %v naming stdin line 2, the flag, and the lines not sent", err, components.ErrMessageTooLarge)
	}
	if st := p.Stats(); st.Sent != 1 {
		t.Errorf("Stats().Sent = %d, want 1 (the line before)", st.Sent)
	}
}
