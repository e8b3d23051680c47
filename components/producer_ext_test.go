package components_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly"
	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
)

// TestProducer_SendTooLarge checks that Send refuses, without queueing it,
// a message larger than the producer's batch byte limit or than the
// max_batch_bytes the intermediate advertised, and that the stream carries
// on.
func TestProducer_SendTooLarge(t *testing.T) {
	m := newMesh(t)
	const advertised = 2000
	i1 := m.startHub("intermediate", "i1", "127.0.0.1", intermediate.WithMaxBatch(64, advertised))
	m.waitMembers("intermediate", 1)
	led := newLedger()
	m.consumer("c1", led.handler())
	waitConsumers(t, 1, i1)
	p := m.producer("p1", components.WithBatch(64, 8000, 0))
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()

	if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("small")}); err != nil {
		t.Fatalf("SendWait(small) = %v, want nil", err)
	}
	for _, tc := range []struct {
		size  int
		limit string
	}{
		{size: 3000, limit: "limit of 2000"},
		{size: 9000, limit: "limit of 8000"},
	} {
		_, err := p.Send(ctx, &messagev1.Message{Payload: make([]byte, tc.size)})
		if !errors.Is(err, components.ErrMessageTooLarge) || !strings.Contains(err.Error(), tc.limit) {
			t.Errorf("Send(%d bytes) = %v, want %v naming the %s", tc.size, err, components.ErrMessageTooLarge, tc.limit)
		}
	}
	if err := p.SendWait(ctx, &messagev1.Message{Payload: make([]byte, advertised-100)}); err != nil {
		t.Errorf("SendWait(%d bytes) = %v, want nil", advertised-100, err)
	}
	closeProducers(t, p)
	if st := p.Stats(); st.Sent != 2 || st.Acked != 2 || st.Resent != 0 {
		t.Errorf("Stats() = %+v, want Sent=2 Acked=2 Resent=0", st)
	}
	if got := i1.status(t).GetReceived(); got != 2 {
		t.Errorf("GetStatus(i1).Received = %d, want 2", got)
	}
	led.checkExactlyOnce(t, map[string]int{"p1": 2})
}

// TestProducer_TooLargeForItsInstanceFails checks that a message larger
// than the instance it would go to takes is handed back for good
// (NACK_REASON_INVALID, naming the sizes and the instance), as the
// instance would, and not sent: one Send took while no instance was
// connected to say its limit, and one an instance with a larger limit
// handed back as it drained. Sent, a message over twice an instance's
// max-batch-bytes is refused by gRPC's frame limit, which ends the stream
// without a word on the message: it was sent again on every new stream,
// never answered, and held back what came after it.
func TestProducer_TooLargeForItsInstanceFails(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 3<<20)
	wantInvalid := func(t *testing.T, err error) {
		t.Helper()
		var ne *components.NackError
		if !errors.As(err, &ne) || ne.Reason != messagev1.NackReason_NACK_REASON_INVALID ||
			!strings.Contains(ne.Detail, "instance i") || !strings.Contains(ne.Detail, "over the 1048576 bytes") {
			t.Errorf("the 3 MiB message: %.300v; want a NackError with NACK_REASON_INVALID naming the instance and its limit", err)
		}
	}

	t.Run("sent before an instance said its limit", func(t *testing.T) {
		m := newMesh(t)
		p := m.producer("p1", components.WithMaxMessageBytes(8<<20))
		ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
		defer cancel()
		bigDone := make(chan error, 1)
		go func() { bigDone <- p.SendWait(ctx, &messagev1.Message{Payload: big}) }()
		waitUntil(t, "the big message to be queued", func() bool { return p.Stats().InFlight == 1 })
		i1 := m.startHub(components.DefaultService, "i1", "127.0.0.1") // max-batch-bytes 1 MiB
		led := newLedger()
		m.consumer("c1", led.handler())
		waitConsumers(t, 1, i1)
		if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("small")}); err != nil {
			t.Errorf("SendWait(small) after the big one = %v, want nil", err)
		}
		wantInvalid(t, <-bigDone)
		closeFailed(t, p, 1)
		if st := p.Stats(); st.Sent != 2 || st.Acked != 1 || st.Nacked != 1 || st.Resent != 0 || st.InFlight != 0 {
			t.Errorf("Stats() = %+v, want Sent=2 Acked=1 Nacked=1 Resent=0 InFlight=0", st)
		}
		if got := i1.status(t).GetReceived(); got != 1 {
			t.Errorf("GetStatus(i1).Received = %d, want 1 (the small message only)", got)
		}
		led.mu.Lock()
		defer led.mu.Unlock()
		if got := led.counts["p1"]; len(got) != 1 || got[2] != 1 {
			t.Errorf("handled p1 seqs %v, want seq 2 once", got)
		}
	})

	t.Run("handed back by an instance with a larger limit", func(t *testing.T) {
		m := newMesh(t)
		i1 := m.startHub(components.DefaultService, "i1", "127.0.0.1",
			intermediate.WithMaxBatch(256, 8<<20), intermediate.WithDrainTimeout(time.Second))
		entered, release := make(chan struct{}, 1), make(chan struct{})
		m.consumer("c1", func(ctx context.Context, d *components.Delivery) error {
			if len(d.Message.GetPayload()) > 1<<20 {
				select {
				case entered <- struct{}{}:
				default:
				}
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
		waitConsumers(t, 1, i1)
		p := m.producer("p1", components.WithMaxMessageBytes(8<<20))
		ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
		defer cancel()
		bigDone := make(chan error, 1)
		go func() { bigDone <- p.SendWait(ctx, &messagev1.Message{Payload: big}) }()
		select {
		case <-entered:
		case <-ctx.Done():
			t.Fatal("the big message never reached c1")
		}
		i2 := m.startHub(components.DefaultService, "i2", "127.0.0.2") // max-batch-bytes 1 MiB
		waitConsumers(t, 1, i2)
		waitProducer(t, "p1", i2)
		if err := i1.srv.Drain(ctx); err != nil { // hands the big message back after its drain timeout
			t.Fatalf("Drain(i1) = %v", err)
		}
		close(release)
		wantInvalid(t, <-bigDone)
		if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("small")}); err != nil {
			t.Errorf("SendWait(small) = %v, want nil", err)
		}
		closeFailed(t, p, 1)
		if got := i2.status(t).GetReceived(); got != 1 {
			t.Errorf("GetStatus(i2).Received = %d, want 1 (the small message only)", got)
		}
	})
}

// closeFailed closes p and checks that it reports failed messages handed
// back for good and none unacknowledged.
func closeFailed(t *testing.T, p *components.Producer, failed int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	var ce *components.CloseError
	if err := p.Close(ctx); !errors.As(err, &ce) || ce.Unacked != 0 || ce.Failed != failed {
		t.Errorf("Close() = %v, want a CloseError with 0 unacknowledged and %d failed", err, failed)
	}
}

// TestProducer_NackHandlerBlocks checks that a nack handler that blocks
// holds back no acknowledgement: another message is acknowledged while it
// runs, and Close waits for it.
func TestProducer_NackHandlerBlocks(t *testing.T) {
	m := newMesh(t)
	m.startHub("intermediate", "i1", "127.0.0.1", intermediate.WithProcessor(failOn{}))
	m.waitMembers("intermediate", 1)
	m.consumer("c1", newLedger().handler())
	entered := make(chan uint64, 10)
	release := make(chan struct{})
	var releaseOnce sync.Once
	var calls []messagev1.NackReason
	var mu sync.Mutex
	p := m.producer("p1", components.WithNackHandler(func(msg *messagev1.Message, reason messagev1.NackReason, _ string) {
		entered <- msg.GetId().GetSeq()
		<-release
		mu.Lock()
		calls = append(calls, reason)
		mu.Unlock()
	}))
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()

	if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("bad-1")}); err != nil {
		t.Fatalf("Send(bad-1) = %v", err)
	}
	select {
	case seq := <-entered:
		if seq != 1 {
			t.Errorf("nack handler called for seq %d, want 1", seq)
		}
	case <-ctx.Done():
		t.Fatalf("nack handler not called for bad-1")
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := p.SendWait(wctx, &messagev1.Message{Payload: []byte("good-2")}); err != nil {
		t.Errorf("SendWait(good-2) while the nack handler blocks = %v, want nil", err)
	}
	releaseOnce.Do(func() { close(release) })
	err := p.Close(ctx)
	var ce *components.CloseError
	if !errors.As(err, &ce) || ce.Unacked != 0 || ce.Failed != 1 {
		t.Errorf("Close() = %v, want a CloseError with 0 unacknowledged and 1 failed", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 1 || calls[0] != messagev1.NackReason_NACK_REASON_PROCESSING_FAILED {
		t.Errorf("nack handler calls after Close = %v, want [%v]", calls, messagev1.NackReason_NACK_REASON_PROCESSING_FAILED)
	}
}

// TestProducer_NackHandlerSends checks that a nack handler may send, and
// wait for, a message of its own producer with a window of one.
func TestProducer_NackHandlerSends(t *testing.T) {
	m := newMesh(t)
	m.startHub("intermediate", "i1", "127.0.0.1", intermediate.WithProcessor(failOn{}))
	m.waitMembers("intermediate", 1)
	led := newLedger()
	m.consumer("c1", led.handler())
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	result := make(chan error, 1)
	var p *components.Producer
	p = m.producer("p1", components.WithWindow(1), components.WithNackHandler(func(msg *messagev1.Message, _ messagev1.NackReason, _ string) {
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		result <- p.SendWait(wctx, &messagev1.Message{Payload: []byte("retry-of-" + string(msg.GetPayload()))})
	}))

	if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("bad-1")}); err != nil {
		t.Fatalf("Send(bad-1) = %v", err)
	}
	select {
	case err := <-result:
		if err != nil {
			t.Errorf("SendWait(retry) in the nack handler = %v, want nil", err)
		}
	case <-ctx.Done():
		t.Fatalf("nack handler did not finish")
	}
	err := p.Close(ctx)
	var ce *components.CloseError
	if !errors.As(err, &ce) || ce.Unacked != 0 || ce.Failed != 1 {
		t.Errorf("Close() = %v, want a CloseError with 0 unacknowledged and 1 failed", err)
	}
	led.mu.Lock()
	defer led.mu.Unlock()
	if got := led.counts["p1"][2]; got != 1 || led.total != 1 {
		t.Errorf("handled p1/2 %d times of %d handled, want 1 of 1", got, led.total)
	}
}

// TestProducer_SendWaitAfterCloseTimeout checks that SendWait returns
// ErrClosed when Close gives up waiting for its message's acknowledgement,
// and that the message its stream held when Close ended it is not counted
// as resent: nothing is sent again.
func TestProducer_SendWaitAfterCloseTimeout(t *testing.T) {
	m := newMesh(t)
	m.startHub("intermediate", "i1", "127.0.0.1")
	m.waitMembers("intermediate", 1)
	p := m.producer("p1")
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	result := make(chan error, 1)
	go func() { result <- p.SendWait(wctx, &messagev1.Message{Payload: []byte("nobody listens")}) }()
	waitUntil(t, "the message accepted", func() bool { return p.Stats().InFlight == 1 })

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := p.Close(ctx)
	var ce *components.CloseError
	if !errors.As(err, &ce) || ce.Unacked != 1 || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close() = %v, want a CloseError with 1 unacknowledged, wrapping %v", err, context.DeadlineExceeded)
	}
	if st := p.Stats(); st.Sent != 1 || st.Resent != 0 || st.Acked != 0 {
		t.Errorf("Stats() after Close = %+v, want Sent=1 Resent=0 Acked=0", st)
	}
	select {
	case err := <-result:
		if !errors.Is(err, components.ErrClosed) {
			t.Errorf("SendWait() after Close = %v, want %v", err, components.ErrClosed)
		}
	case <-time.After(defaultTestTimeout):
		t.Fatalf("SendWait() did not return after Close")
	}
}

// TestProducer_MaxMessageBytes checks that a producer with default options
// sends a message over the default batch byte limit and up to what an
// intermediate accepts by default (1 MiB), and that WithMaxMessageBytes
// lowers and names the limit.
func TestProducer_MaxMessageBytes(t *testing.T) {
	m := newMesh(t)
	i1 := m.startHub("intermediate", "i1", "127.0.0.1")
	m.waitMembers("intermediate", 1)
	led := newLedger()
	m.consumer("c1", led.handler())
	waitConsumers(t, 1, i1)
	p := m.producer("p1")
	small := m.producer("p2", components.WithMaxMessageBytes(1000))
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()

	big := components.DefaultMaxMessageBytes - 100
	if err := p.SendWait(ctx, &messagev1.Message{Payload: make([]byte, big)}); err != nil {
		t.Fatalf("SendWait(%d bytes) = %v, want nil", big, err)
	}
	if _, err := p.Send(ctx, &messagev1.Message{Payload: make([]byte, components.DefaultMaxMessageBytes)}); !errors.Is(err, components.ErrMessageTooLarge) {
		t.Errorf("Send(%d bytes) = %v, want %v", components.DefaultMaxMessageBytes, err, components.ErrMessageTooLarge)
	}
	_, err := small.Send(ctx, &messagev1.Message{Payload: make([]byte, 2000)})
	if !errors.Is(err, components.ErrMessageTooLarge) || !strings.Contains(err.Error(), "limit of 1000") {
		t.Errorf("Send(2000 bytes) with WithMaxMessageBytes(1000) = %v, want %v naming the limit of 1000", err, components.ErrMessageTooLarge)
	}
	closeProducers(t, p, small)
	led.checkExactlyOnce(t, map[string]int{"p1": 1})
}

// TestProducer_SaysWhatItWaitsFor checks that a producer whose messages no
// stream takes says what they wait for, while they wait and when Close gives
// up: no instance of its service registered, every one registered draining,
// or none of those registered answering.
func TestProducer_SaysWhatItWaitsFor(t *testing.T) {
	m := newMesh(t)
	registerInstance(t, m, "silent", "i1", etcdtest.FreeAddr(t))
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	t.Cleanup(cancel) // after the parallel subtests
	for _, name := range []string{"i2", "i1"} {
		if err := registerInstance(t, m, "leaving", name, etcdtest.FreeAddr(t)).SetDraining(ctx); err != nil {
			t.Fatalf("SetDraining(leaving/%s) = %v", name, err)
		}
	}
	for _, tc := range []struct{ service, want string }{
		{"nobody", "no instance of service nobody is registered"},
		{"silent", "no instance of service silent answers"},
		// Its instances are in the registry, every one draining.
		{"leaving", "every instance of service leaving is draining (i1, i2)"},
	} {
		t.Run(tc.service, func(t *testing.T) {
			t.Parallel()
			var logs logtest.Recorder
			p := m.producer("p-"+tc.service, components.WithService(tc.service), components.WithLogger(logs.Logger()))
			if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("x")}); err != nil {
				t.Fatalf("Send() = %v", err)
			}
			waitUntil(t, tc.want+" (waiting) logged", func() bool { return logs.Has(tc.want + " (waiting)") })
			if tc.service == "nobody" {
				// The key watched, so that a wrong --prefix shows.
				if recs := logs.Attrs(tc.want + " (waiting)"); recs[0]["key"] != testPrefix+"/services/nobody/" {
					t.Errorf("warning %v, want key %q", recs[0], testPrefix+"/services/nobody/")
				}
			}
			closeCtx, cancelClose := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancelClose()
			var ce *components.CloseError
			if err := p.Close(closeCtx); !errors.As(err, &ce) || ce.Unacked != 1 || !strings.HasPrefix(ce.Waiting, tc.want) {
				t.Errorf("Close() = %v, want a CloseError with 1 unacknowledged, waiting for %q", err, tc.want)
			}
			// A registered instance that did not welcome the producer is
			// named, with why: nothing listens at its address.
			if tc.service == "silent" && (ce == nil || !strings.HasPrefix(ce.Waiting, tc.want+" (i1: ") || !strings.Contains(ce.Waiting, "connection refused")) {
				t.Errorf("Close() waiting for %q, want it to name i1 and its connection refused", ce.Waiting)
			}
		})
	}
}

// TestProducer_SaysItsOwnerIsNotConnected checks that a producer whose
// message keeps coming back because the consumer that owns it is
// registered but connected to no intermediate says so, while it waits and
// when Close gives up, naming the consumer and its group.
func TestProducer_SaysItsOwnerIsNotConnected(t *testing.T) {
	m := newMesh(t)
	m.startHub("intermediate", "i1", "127.0.0.1")
	m.waitMembers("intermediate", 1)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	registerConsumer(t, m, "ghost")

	var logs logtest.Recorder
	p := m.producer("p1", components.WithLogger(logs.Logger()))
	if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("x")}); err != nil {
		t.Fatalf("Send() = %v", err)
	}
	const want = "consumer ghost of group " + components.DefaultGroup + " owns the message but is not connected to this intermediate"
	waitUntil(t, want+" (waiting) logged", func() bool { return logs.Has(want + " (waiting)") })
	closeCtx, cancelClose := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelClose()
	var ce *components.CloseError
	if err := p.Close(closeCtx); !errors.As(err, &ce) || ce.Unacked != 1 || ce.Waiting != want {
		t.Errorf("Close() = %v, want a CloseError with 1 unacknowledged, waiting for %q", err, want)
	}
}

// TestProducer_SendInvalidUTF8 checks that Send refuses, naming the field, a
// message with a string that is not UTF-8 (which no protobuf client could
// decode), queues nothing, and sends the next message as usual.
func TestProducer_SendInvalidUTF8(t *testing.T) {
	m := newMesh(t)
	i1 := m.startHub("intermediate", "i1", "127.0.0.1")
	m.waitMembers("intermediate", 1)
	led := newLedger()
	m.consumer("c1", led.handler())
	waitConsumers(t, 1, i1)
	p := m.producer("p1")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()

	_, err := p.Send(ctx, &messagev1.Message{Headers: map[string]string{"k": "\xff"}, Payload: []byte("bad")})
	if !errors.Is(err, butterfly.ErrInvalidUTF8) || !strings.Contains(err.Error(), `header "k"`) {
		t.Errorf("Send(header not UTF-8) = %v, want %v naming the header", err, butterfly.ErrInvalidUTF8)
	}
	if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("good")}); err != nil {
		t.Fatalf("SendWait(good) = %v, want nil", err)
	}
	closeProducers(t, p)
	if st := p.Stats(); st.Sent != 1 || st.Acked != 1 {
		t.Errorf("Stats() = %+v, want Sent=1 Acked=1", st)
	}
	led.checkExactlyOnce(t, map[string]int{"p1": 1})
}

// TestProducer_StatsCountAnAckBeforeSendWaitReturns checks that a message
// whose SendWait returned is counted in Stats: 200 messages sent one by
// one, each followed at once by Stats, which counts every message
// acknowledged so far.
func TestProducer_StatsCountAnAckBeforeSendWaitReturns(t *testing.T) {
	const n = 200
	p, led := oneHop(t)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	for i := range n {
		if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("m")}); err != nil {
			t.Fatalf("SendWait(%d) = %v", i, err)
		}
		if st := p.Stats(); st.Acked != uint64(i+1) {
			t.Fatalf("Stats() = %+v after SendWait %d returned, want Acked=%d", st, i, i+1)
		}
	}
	closeProducers(t, p)
	led.checkExactlyOnce(t, map[string]int{"p1": n})
}

// TestProducer_StatsAddUp checks that Stats reads its counters together:
// while 3 000 messages go in batches of 8, a reader polling Stats never
// sees Sent other than Acked + Nacked + InFlight.
func TestProducer_StatsAddUp(t *testing.T) {
	p, led := oneHop(t, components.WithBatch(8, 1<<20, time.Millisecond))
	stop, done := make(chan struct{}), make(chan struct{})
	var (
		reads int
		bad   []components.ProducerStats
	)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			st := p.Stats()
			reads++
			if st.Acked+st.Nacked+st.InFlight != st.Sent && len(bad) < 5 {
				bad = append(bad, st)
			}
			time.Sleep(20 * time.Microsecond)
		}
	}()
	led.deliverAll(t, 3000, p)
	close(stop)
	<-done
	if len(bad) > 0 {
		t.Errorf("Stats() in %d reads: %+v, want Sent = Acked + Nacked + InFlight in each", reads, bad)
	}
}

// oneHop starts intermediate i1, consumer c1 recording into the returned
// ledger, and producer p1 with opts.
func oneHop(t *testing.T, opts ...components.ProducerOption) (*components.Producer, *ledger) {
	t.Helper()
	m := newMesh(t)
	i1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	led := newLedger()
	m.consumer("c1", led.handler())
	waitConsumers(t, 1, i1)
	return m.producer("p1", opts...), led
}

// TestNewProducer_IDLongerThanIntermediatesTake checks that a producer id,
// or a stage's (it produces under it), longer than an intermediate takes is
// refused where it is given, not by every intermediate at every stream's
// hello once the producer runs.
func TestNewProducer_IDLongerThanIntermediatesTake(t *testing.T) {
	m := newMesh(t)
	id := strings.Repeat("p", butterfly.MaxProducerIDBytes+1)
	want := "producer id of 257 bytes is longer than 256, the most an intermediate takes"
	if p, err := components.NewProducer(m.cli, id, components.WithPrefix(testPrefix)); err == nil || !strings.Contains(err.Error(), want) {
		if err == nil {
			p.Close(context.Background())
		}
		t.Errorf("NewProducer(id of 257 bytes) = %v, want an error containing %q", err, want)
	}
	if s, err := components.NewStage(m.cli, id, "a", "b", components.WithPrefix(testPrefix)); err == nil || !strings.Contains(err.Error(), want) {
		if err == nil {
			s.Close(context.Background())
		}
		t.Errorf("NewStage(id of 257 bytes) = %v, want an error containing %q", err, want)
	}
	p, err := components.NewProducer(m.cli, id[:butterfly.MaxProducerIDBytes], components.WithPrefix(testPrefix))
	if err != nil {
		t.Fatalf("NewProducer(id of 256 bytes) = %v, want nil", err)
	}
	p.Close(context.Background())
}

// TestProducer_SendRefusesAnIDNoIntermediateTakes checks that Send refuses a
// message whose caller-set id (a stage forwards messages under theirs) no
// intermediate would take, naming the rule it breaks, where it was sent and
// then handed back for good (NACK_REASON_INVALID); that it counts and queues
// none of them; and that the producer goes on with the next message.
func TestProducer_SendRefusesAnIDNoIntermediateTakes(t *testing.T) {
	p, led := oneHop(t)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	long := strings.Repeat("q", butterfly.MaxProducerIDBytes+1)
	for _, tc := range []struct {
		name string
		id   *messagev1.MessageId
		lwm  uint64
		want string
	}{
		{"producer id too long", &messagev1.MessageId{ProducerId: long, Incarnation: 1, Seq: 1}, 1, "producer_id of 257 bytes is longer than 256"},
		{"producer id with a slash", &messagev1.MessageId{ProducerId: "q/1", Incarnation: 1, Seq: 1}, 1, `producer_id "q/1" contains '/'`},
		{"producer id not UTF-8", &messagev1.MessageId{ProducerId: "q\xff", Incarnation: 1, Seq: 1}, 1, `producer_id "q\xff" is not valid UTF-8`},
		{"empty producer id", &messagev1.MessageId{Incarnation: 1, Seq: 1}, 1, "producer_id is empty"},
		{"seq 0", &messagev1.MessageId{ProducerId: "q1", Incarnation: 1}, 0, "message id has seq 0"},
		{"incarnation 0", &messagev1.MessageId{ProducerId: "q1", Seq: 1}, 1, "message id has incarnation 0"},
		{"seq below its mark", &messagev1.MessageId{ProducerId: "q1", Incarnation: 1, Seq: 3}, 5, "seq 3 is below its low_water_seq 5"},
		{"seq beyond the window", &messagev1.MessageId{ProducerId: "q1", Incarnation: 1, Seq: butterfly.MaxSeqSpan + 1}, 0, "beyond the producer window"},
	} {
		msg := &messagev1.Message{Id: tc.id, LowWaterSeq: tc.lwm, Payload: []byte(tc.name)}
		_, err := p.Send(ctx, msg)
		if !errors.Is(err, butterfly.ErrInvalidMessageID) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Send(%s) = %v, want %v naming %q", tc.name, err, butterfly.ErrInvalidMessageID, tc.want)
		}
	}
	if err := p.SendWait(ctx, &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "q1", Incarnation: 1, Seq: 1}, LowWaterSeq: 1, Payload: []byte("forwarded")}); err != nil {
		t.Fatalf("SendWait(a caller-set id intermediates take) = %v, want nil", err)
	}
	if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("own")}); err != nil {
		t.Fatalf("SendWait(own) = %v, want nil", err)
	}
	closeProducers(t, p)
	if st := p.Stats(); st.Sent != 2 || st.Acked != 2 || st.Nacked != 0 {
		t.Errorf("Stats() = %+v, want Sent=2 Acked=2 Nacked=0", st)
	}
	led.checkExactlyOnce(t, map[string]int{"p1": 1, "q1": 1})
}
