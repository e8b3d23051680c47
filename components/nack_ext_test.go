package components_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/butterfly-mesh/butterfly"
	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// failOn is a processor that fails on payloads starting with "bad".
type failOn struct{}

func (failOn) Name() string { return "fail-on-bad" }

func (failOn) Process(_ context.Context, msg *messagev1.Message) (*messagev1.Message, error) {
	if strings.HasPrefix(string(msg.GetPayload()), "bad") {
		return nil, errors.New("payload is bad")
	}
	return msg, nil
}

// nackLog records a producer's permanent nacks.
type nackLog struct {
	mu      sync.Mutex
	reasons map[uint64]messagev1.NackReason
}

func (l *nackLog) handler() func(*messagev1.Message, messagev1.NackReason, string) {
	return func(msg *messagev1.Message, reason messagev1.NackReason, _ string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.reasons[msg.GetId().GetSeq()] = reason
	}
}

func (l *nackLog) get() map[uint64]messagev1.NackReason {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[uint64]messagev1.NackReason, len(l.reasons))
	for k, v := range l.reasons {
		out[k] = v
	}
	return out
}

// TestDelivery_ProcessorErrors checks that messages the processor fails on
// come back to the producer as negative acknowledgements, counted and never
// dropped, while the others are delivered.
func TestDelivery_ProcessorErrors(t *testing.T) {
	m := newMesh(t)
	m.startHub("intermediate", "i1", "127.0.0.1", intermediate.WithProcessor(failOn{}))
	m.startHub("intermediate", "i2", "127.0.0.2", intermediate.WithProcessor(failOn{}))
	m.waitMembers("intermediate", 2)
	led := newLedger()
	m.consumer("c1", led.handler())
	nacks := &nackLog{reasons: make(map[uint64]messagev1.NackReason)}
	p := m.producer("p1", components.WithNackHandler(nacks.handler()))

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	const n = 200
	wantNacks := make(map[uint64]messagev1.NackReason)
	for i := 1; i <= n; i++ {
		payload := fmt.Sprintf("good-%d", i)
		if i%10 == 0 {
			payload = fmt.Sprintf("bad-%d", i)
			wantNacks[uint64(i)] = messagev1.NackReason_NACK_REASON_PROCESSING_FAILED
		}
		if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte(payload)}); err != nil {
			t.Fatalf("Send(#%d) = %v", i, err)
		}
	}
	err := p.Close(ctx)
	var ce *components.CloseError
	if !errors.As(err, &ce) || ce.Unacked != 0 || ce.Failed != len(wantNacks) {
		t.Fatalf("Close() = %v, want a CloseError with 0 unacknowledged and %d failed", err, len(wantNacks))
	}
	if got := nacks.get(); !mapsEqual(got, wantNacks) {
		t.Errorf("nacked seqs = %v, want %v", got, wantNacks)
	}
	if st := p.Stats(); st.Nacked != uint64(len(wantNacks)) || st.Acked != uint64(n-len(wantNacks)) {
		t.Errorf("Stats() = %+v, want Nacked=%d Acked=%d", st, len(wantNacks), n-len(wantNacks))
	}
	led.mu.Lock()
	defer led.mu.Unlock()
	for i := 1; i <= n; i++ {
		want := 1
		if i%10 == 0 {
			want = 0
		}
		if got := led.counts["p1"][uint64(i)]; got != want {
			t.Errorf("message p1/%d handled %d times, want %d", i, got, want)
		}
	}
}

// TestDelivery_HandlerErrors checks that a handler error comes back to
// SendWait as a NackError with NACK_REASON_HANDLER_FAILED.
func TestDelivery_HandlerErrors(t *testing.T) {
	m := newMesh(t)
	m.startHub("intermediate", "i1", "127.0.0.1")
	m.waitMembers("intermediate", 1)
	c := m.consumer("c1", func(_ context.Context, d *components.Delivery) error {
		if strings.HasPrefix(string(d.Message.GetPayload()), "bad") {
			return errors.New("refused")
		}
		return nil
	})
	p := m.producer("p1")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("good")}); err != nil {
		t.Errorf("SendWait(good) = %v, want nil", err)
	}
	err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("bad")})
	var ne *components.NackError
	if !errors.As(err, &ne) || ne.Reason != messagev1.NackReason_NACK_REASON_HANDLER_FAILED || !strings.Contains(ne.Detail, "refused") || ne.ID.GetSeq() != 2 {
		t.Errorf("SendWait(bad) = %v, want a NackError for seq 2 with HANDLER_FAILED naming the error", err)
	}
	if st := c.Stats(); st.Delivered != 1 || st.Nacked != 1 {
		t.Errorf("consumer Stats() = %+v, want Delivered=1 Nacked=1", st)
	}
}

// TestDelivery_LongErrorsAreCut checks that an error whose text is longer
// than a frame may be (3 MiB: one that quotes a large payload) still hands
// its message back for good, once: the detail is cut to
// butterfly.MaxNackDetail. Uncut, a handler's error made an acknowledgement
// frame over the intermediate's receive limit, which ended the stream; the
// intermediate sent the delivery again on the next one, the handler failed
// again, without end, and the producer never heard of it.
func TestDelivery_LongErrorsAreCut(t *testing.T) {
	long := strings.Repeat("e", 3<<20)
	for _, tc := range []struct {
		name   string
		reason messagev1.NackReason
		opts   []intermediate.Option
		fails  func(string) bool
	}{
		{"handler", messagev1.NackReason_NACK_REASON_HANDLER_FAILED, nil, func(p string) bool { return p == "bad" }},
		{"processor", messagev1.NackReason_NACK_REASON_PROCESSING_FAILED, []intermediate.Option{intermediate.WithProcessor(longFail{long})}, func(string) bool { return false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			m.startHub("intermediate", "i1", "127.0.0.1", tc.opts...)
			m.waitMembers("intermediate", 1)
			var calls atomic.Int32
			m.consumer("c1", func(_ context.Context, d *components.Delivery) error {
				calls.Add(1)
				if tc.fails(string(d.Message.GetPayload())) {
					return errors.New(long)
				}
				return nil
			})
			p := m.producer("p1")
			ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
			defer cancel()
			err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("bad")})
			var ne *components.NackError
			if !errors.As(err, &ne) || ne.Reason != tc.reason {
				t.Fatalf("SendWait = %.200v, want a NackError with %v", err, tc.reason)
			}
			if len(ne.Detail) > butterfly.MaxNackDetail || !strings.Contains(ne.Detail, "eeee") || !strings.HasSuffix(ne.Detail, " bytes cut)") {
				t.Errorf("detail of %d bytes ending %q, want at most %d bytes of the error, saying what was cut", len(ne.Detail), ne.Detail[max(0, len(ne.Detail)-40):], butterfly.MaxNackDetail)
			}
			want := int32(0)
			if tc.reason == messagev1.NackReason_NACK_REASON_HANDLER_FAILED {
				want = 1
			}
			if got := calls.Load(); got != want {
				t.Errorf("handler called %d times, want %d", got, want)
			}
			if st := p.Stats(); st.Nacked != 1 || st.Acked != 0 || st.InFlight != 0 {
				t.Errorf("producer Stats() = %+v, want Nacked=1 Acked=0 InFlight=0", st)
			}
		})
	}
}

// longFail is a processor that fails every message with err as its text.
type longFail struct{ err string }

func (longFail) Name() string { return "long-fail" }

func (f longFail) Process(context.Context, *messagev1.Message) (*messagev1.Message, error) {
	return nil, errors.New(f.err)
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestDelivery_ResendAfterHandlerFailure checks that a message the handler
// failed on, sent again by the application, is handled: it goes out as a
// new message, above the low-water mark its consumer already passed.
func TestDelivery_ResendAfterHandlerFailure(t *testing.T) {
	m := newMesh(t)
	m.startHub("intermediate", "i1", "127.0.0.1")
	m.waitMembers("intermediate", 1)
	var (
		mu      sync.Mutex
		calls   = map[string]int{}
		handled = map[string]bool{}
	)
	m.consumer("c1", func(_ context.Context, d *components.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		payload := string(d.Message.GetPayload())
		calls[payload]++
		if payload == "flaky" && calls[payload] == 1 {
			return errors.New("first try fails")
		}
		handled[payload] = true
		return nil
	})
	p := m.producer("p1")
	ctx := t.Context()
	flaky := &messagev1.Message{Payload: []byte("flaky")}
	var nerr *components.NackError
	if err := p.SendWait(ctx, flaky); !errors.As(err, &nerr) || nerr.Reason != messagev1.NackReason_NACK_REASON_HANDLER_FAILED {
		t.Fatalf("SendWait(flaky) = %v, want a HANDLER_FAILED NackError", err)
	}
	first := flaky.GetId().GetSeq()
	if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("next")}); err != nil {
		t.Fatalf("SendWait(next) = %v", err)
	}
	if err := p.SendWait(ctx, flaky); err != nil {
		t.Fatalf("SendWait(flaky) again = %v", err)
	}
	if got := flaky.GetId().GetSeq(); got <= first {
		t.Errorf("seq of the message sent again = %d, want a new one above %d", got, first)
	}
	mu.Lock()
	defer mu.Unlock()
	if !handled["flaky"] || calls["flaky"] != 2 {
		t.Errorf("flaky: handled %v after %d calls, want handled on the second call", handled["flaky"], calls["flaky"])
	}
}

// TestProducer_UnavailableNackTriesAnotherStream checks that a message an
// intermediate hands back UNAVAILABLE, its memory budget full, goes out
// again through another intermediate, even when the full one has the
// fewest messages of the producer in flight: handed back once, then
// acknowledged.
func TestProducer_UnavailableNackTriesAnotherStream(t *testing.T) {
	const budget = 64 << 10
	m := newMesh(t)
	i2 := m.startHub(components.DefaultService, "i2", "127.0.0.2")
	release := make(chan struct{})
	defer close(release)
	var holding atomic.Int32
	led := newLedger()
	m.consumer("c1", func(ctx context.Context, d *components.Delivery) error {
		if strings.HasPrefix(string(d.Message.GetPayload()), "hold") {
			holding.Add(1)
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		led.record(d)
		return nil
	}, components.WithConcurrency(8))
	waitConsumers(t, 1, i2)
	p := m.producer("p1")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	// Two messages of p1 stay in flight on i2, the only intermediate yet.
	for range 2 {
		if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("hold")}); err != nil {
			t.Fatalf("Send(hold) = %v", err)
		}
	}
	waitUntil(t, "c1 holding the 2 messages of p1", func() bool { return holding.Load() == 2 })

	// i1's budget is full with a message of another producer that c1 holds.
	i1 := m.startHub(components.DefaultService, "i1", "127.0.0.1", intermediate.WithMaxBatch(16, budget),
		intermediate.WithMaxInFlightBytes(budget), intermediate.WithMemoryBudget(budget, 50*time.Millisecond))
	m.waitMembers(components.DefaultService, 2)
	waitConsumers(t, 1, i1)
	filler := newRawPublisher(t, i1.addr, "filler")
	big := &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "filler", Incarnation: 1, Seq: 1}, LowWaterSeq: 1,
		Payload: append([]byte("hold"), bytes.Repeat([]byte("x"), budget-100-intermediate.MessageOverhead)...)}
	for proto.Size(big)+intermediate.MessageOverhead < budget {
		big.Payload = append(big.Payload, 'x')
	}
	b := &deliveryv1.PublishBatch{FirstSeq: 1, Messages: []*messagev1.Message{big}}
	if err := filler.stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: b}}); err != nil {
		t.Fatalf("Send(filler batch) = %v", err)
	}
	waitUntil(t, "c1 holding the filler's message", func() bool { return holding.Load() == 3 })
	if got := i1.srv.HeldBytes(); got != budget {
		t.Fatalf("HeldBytes(i1) = %d, want the whole budget %d (the filler's message and MessageOverhead)", got, budget)
	}
	waitProducer(t, "p1", i1)

	// i1 has none of p1's messages in flight and i2 two: the message goes
	// to i1 first, which hands it back; then to i2.
	if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("m")}); err != nil {
		t.Fatalf("SendWait(m) = %v; stats %+v", err, p.Stats())
	}
	if st := p.Stats(); st.Resent != 1 || st.Acked != 1 || st.InFlight != 2 {
		t.Errorf("Stats() = %+v, want Resent=1 (handed back by i1 once), Acked=1, InFlight=2", st)
	}
	led.mu.Lock()
	defer led.mu.Unlock()
	if got := led.counts["p1"][3]; got != 1 || led.total != 1 {
		t.Errorf("p1/3 handled %d times, %d messages in all; want 1, 1", got, led.total)
	}
	if got := led.byInst["i2"]; got != 1 {
		t.Errorf("messages through i2 = %d, want 1", got)
	}
}
