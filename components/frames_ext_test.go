package components_test

// The tests of this file count the frames streams carry: batching and
// coalescing, which a message's delivery does not show.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"google.golang.org/grpc"
)

// TestConsumer_AcksInFewFrames checks that a consumer answers a batch it
// handles one message after the other in a few acknowledgement frames, not
// in one frame per message: batches of 64 are published, the handler takes
// 20 µs a message, and the intermediate counts the acknowledgement frames
// the consumer sends. Every message is acknowledged to the publisher
// exactly once.
func TestConsumer_AcksInFewFrames(t *testing.T) {
	const (
		batches  = 20
		perBatch = 64
	)
	m := newMesh(t)
	var ackFrames atomic.Int64
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1", countFrames(func(f any) {
		if r, ok := f.(*deliveryv1.SubscribeRequest); ok && r.GetAck() != nil {
			ackFrames.Add(1)
		}
	}))
	var handled atomic.Int64
	m.consumer("c1", func(ctx context.Context, d *components.Delivery) error {
		spin(20 * time.Microsecond)
		handled.Add(1)
		return nil
	})
	waitConsumers(t, 1, h)

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	stream := newFlooder(t, h.addr).accepted(ctx, &deliveryv1.PublishHello{ProducerId: "ackp", Incarnation: 1, HeartbeatIntervalMs: 60000})
	var acked atomic.Int64
	twice := make(chan uint64, 1)
	go func() {
		seen := make(map[uint64]bool)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			a := resp.GetAck()
			if len(a.GetAcked()) == 0 {
				continue
			}
			for _, r := range a.GetAcked() {
				for s := r.GetFirst(); s <= r.GetLast(); s++ {
					if seen[s] {
						select {
						case twice <- s:
						default:
						}
					}
					seen[s] = true
				}
				acked.Add(int64(r.GetLast() - r.GetFirst() + 1))
			}
		}
	}()
	seq := uint64(1)
	start := time.Now()
	for b := range batches {
		msgs := make([]*messagev1.Message, perBatch)
		for i := range msgs {
			msgs[i] = &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "ackp", Incarnation: 1, Seq: seq + uint64(i)}, Payload: fmt.Appendf(nil, "m%d", seq+uint64(i))}
		}
		if err := stream.Send(batchReq(seq, msgs...)); err != nil {
			t.Fatalf("Send(batch %d) = %v", b+1, err)
		}
		seq += perBatch
		want := int64((b + 1) * perBatch)
		waitUntil(t, "the batch to be acknowledged", func() bool { return acked.Load() == want })
	}
	select {
	case s := <-twice:
		t.Fatalf("seq %d acknowledged twice", s)
	default:
	}
	if n := handled.Load(); n != batches*perBatch {
		t.Errorf("handled %d messages, want %d", n, batches*perBatch)
	}
	// Without the linger the consumer sent 2.6 to 5.3 frames a batch (8 to
	// 21 under the race detector), with it 1.1 to 1.6.
	got := ackFrames.Load()
	t.Logf("%d messages acknowledged in %d frames (%.1f a batch of %d) in %v", batches*perBatch, got, float64(got)/batches, perBatch, time.Since(start))
	if got > 3*batches {
		t.Errorf("%d acknowledgement frames for %d batches of %d, want at most %d", got, batches, perBatch, 3*batches)
	}
}

// spin busies the goroutine for d, as a handler doing work does.
func spin(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
	}
}

// TestProducer_BatchesDoNotSplitAcrossIntermediates checks that a producer
// sending one message at a time fills one batch before it starts the next,
// whatever the number of intermediates: with a message held unacknowledged
// (so that batches wait for the linger, 5 s, or to be full), 256 messages
// sent 100 µs apart to four intermediates go in four full publish batches,
// each message through the intermediate of its batch: the intermediate
// changes three times at most along the sequence (two batches in a row may
// take the same one), where one message to each in turn would change it at
// almost every message. Every message is handled exactly once.
func TestProducer_BatchesDoNotSplitAcrossIntermediates(t *testing.T) {
	const (
		hubs  = 4
		batch = 64
		total = 4 * batch
	)
	var batches atomic.Int64
	count := countFrames(func(f any) {
		if r, ok := f.(*deliveryv1.PublishRequest); ok && r.GetBatch() != nil {
			batches.Add(1)
		}
	})
	r := newLingerRig(t, hubs, []intermediate.Option{count}, components.WithBatch(batch, 1<<20, 5*time.Second))
	for i := range total {
		r.send(t, fmt.Sprintf("m%d", i))
		spin(100 * time.Microsecond)
	}
	r.led.waitHandled(t, total)
	if got := batches.Load(); got != 1+total/batch {
		t.Errorf("the intermediates received %d publish batches, want %d: the held message's and %d full ones", got, 1+total/batch, total/batch)
	}
	changes := 0
	r.mu.Lock()
	for seq := uint64(3); seq <= 1+total; seq++ { // p1's first is the held message
		if r.via[seq] != r.via[seq-1] {
			changes++
		}
	}
	r.mu.Unlock()
	if changes > total/batch-1 {
		t.Errorf("the intermediate changed %d times along the %d messages, want at most %d: a batch's messages went through several", changes, total, total/batch-1)
	}
	close(r.release)
	closeProducers(t, r.p)
	r.led.checkExactlyOnce(t, map[string]int{"p1": 1 + total})
}

// TestHeartbeats_OnlyOnQuietStreams checks that heartbeats go only where
// nothing else does: while a producer publishes without pause, its stream
// and the consumer's carry next to no heartbeats (a heartbeat is due only
// when the stream's last frame is half a beat old), and once the load stops both send
// them again at their interval. Every message is handled exactly once.
func TestHeartbeats_OnlyOnQuietStreams(t *testing.T) {
	const beat = 50 * time.Millisecond
	m := newMesh(t)
	var pubBeats, subBeats atomic.Int64
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1", intermediate.WithHeartbeatInterval(beat), countFrames(func(f any) {
		switch r := f.(type) {
		case *deliveryv1.PublishRequest:
			if r.GetHeartbeat() != nil {
				pubBeats.Add(1)
			}
		case *deliveryv1.SubscribeRequest:
			if r.GetHeartbeat() != nil {
				subBeats.Add(1)
			}
		}
	}))
	led := newLedger()
	m.consumer("c1", led.handler(), components.WithHeartbeatInterval(beat))
	waitConsumers(t, 1, h)
	p := m.producer("p1", components.WithHeartbeatInterval(beat))

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	l := startLoad(ctx, maxLoad, p)
	led.waitHandled(t, 200)
	pub0, sub0 := pubBeats.Load(), subBeats.Load()
	busy, handled0 := time.Now(), led.handled()
	time.Sleep(25 * beat)
	pubBusy, subBusy, busyFor := pubBeats.Load()-pub0, subBeats.Load()-sub0, time.Since(busy)
	if n := led.handled() - handled0; n < 1000 {
		t.Fatalf("handled %d messages in %v of load, want a busy stream", n, busyFor)
	}
	sent := l.halt(t)

	// Idle: both send heartbeats again.
	waitUntil(t, "heartbeats from the idle producer and consumer", func() bool {
		return pubBeats.Load()-pub0-pubBusy >= 5 && subBeats.Load()-sub0-subBusy >= 5
	})
	ticks := int64(busyFor / beat)
	t.Logf("while busy for %v (%d ticks): %d heartbeats from the producer, %d from the consumer", busyFor.Round(time.Millisecond), ticks, pubBusy, subBusy)
	if pubBusy > ticks/2 || subBusy > ticks/2 {
		t.Errorf("busy streams sent %d (producer) and %d (consumer) heartbeats in %d ticks, want at most %d each", pubBusy, subBusy, ticks, ticks/2)
	}
	closeProducers(t, p)
	led.checkExactlyOnce(t, sent)
}

// lingerRig is a mesh whose producer p1 has a message waiting for its
// acknowledgement, so that its linger applies: consumer c1 (room for two
// messages at once) keeps the first message whose payload is "hold",
// unacknowledged, until release is closed, then records it. Every message
// handled is recorded in led.
type lingerRig struct {
	m       *mesh
	hubs    []*hub
	led     *ledger
	p       *components.Producer
	ctx     context.Context
	holder  string        // the instance the held message came through
	release chan struct{} // closed to let the held message go

	mu  sync.Mutex
	via map[uint64]string // the instance each of p1's messages came through, by seq
}

// newLingerRig starts intermediates i1…in with hubOpts, consumer c1 and
// producer p1 with opts, and sends the message c1 keeps, returning once
// c1's handler has it.
func newLingerRig(t *testing.T, n int, hubOpts []intermediate.Option, opts ...components.ProducerOption) *lingerRig {
	t.Helper()
	r := &lingerRig{m: newMesh(t), led: newLedger(), release: make(chan struct{}), via: make(map[uint64]string)}
	for i := range n {
		r.hubs = append(r.hubs, r.m.startHub(components.DefaultService, fmt.Sprintf("i%d", i+1), "127.0.0.1", hubOpts...))
	}
	held := make(chan string, 1)
	var once sync.Once
	r.m.consumer("c1", func(ctx context.Context, d *components.Delivery) error {
		r.mu.Lock()
		r.via[d.Message.GetId().GetSeq()] = d.Instance
		r.mu.Unlock()
		if string(d.Message.GetPayload()) == "hold" {
			first := false
			once.Do(func() { first = true })
			if first {
				held <- d.Instance
				select {
				case <-r.release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		r.led.record(d)
		return nil
	}, components.WithConcurrency(2))
	waitConsumers(t, 1, r.hubs...)
	r.p = r.m.producer("p1", opts...)
	waitProducer(t, "p1", r.hubs...)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	t.Cleanup(cancel)
	r.ctx = ctx
	if _, err := r.p.Send(ctx, &messagev1.Message{Payload: []byte("hold")}); err != nil {
		t.Fatalf("Send(hold) = %v", err)
	}
	select {
	case r.holder = <-held:
	case <-ctx.Done():
		t.Fatal("the held message never reached the handler")
	}
	return r
}

// sendBehind sends a message after the held one ("behind", p1's second)
// and fails the test unless, 300 ms on, nothing was handled: c1 takes two
// at once, so the message would be handled had it not lingered.
func (r *lingerRig) sendBehind(t *testing.T) {
	t.Helper()
	r.send(t, "behind")
	r.noneHandledSoon(t)
}

func (r *lingerRig) send(t *testing.T, payload string) {
	t.Helper()
	if _, err := r.p.Send(r.ctx, &messagev1.Message{Payload: []byte(payload)}); err != nil {
		t.Fatalf("Send(%s) = %v", payload, err)
	}
}

// waitBehindHandled waits until the message sent after the held one (p1's
// second) is handled.
func (r *lingerRig) waitBehindHandled(t *testing.T) {
	t.Helper()
	waitUntil(t, "the second message handled", func() bool {
		r.led.mu.Lock()
		defer r.led.mu.Unlock()
		return r.led.counts["p1"][2] > 0
	})
}

// noneHandledSoon fails the test unless, 300 ms on, nothing was handled.
func (r *lingerRig) noneHandledSoon(t *testing.T) {
	t.Helper()
	time.Sleep(300 * time.Millisecond)
	if got := r.led.handled(); got != 0 {
		r.led.mu.Lock()
		counts := fmt.Sprint(r.led.counts)
		r.led.mu.Unlock()
		t.Fatalf("handled %d messages while the first was held (by producer and seq: %s; stats %+v), want 0: the second did not wait for the linger", got, counts, r.p.Stats())
	}
}

// TestProducer_FullBatchDoesNotWaitForTheLinger checks that a batch that
// fills while its first message waits for the linger goes out at once:
// under a linger of 600 ms, with a message waiting for its acknowledgement
// (so that the linger applies), one message, then 63 more 100 ms later,
// are all handled within 300 ms of the first, once each.
func TestProducer_FullBatchDoesNotWaitForTheLinger(t *testing.T) {
	const (
		n      = 64
		linger = 600 * time.Millisecond
	)
	r := newLingerRig(t, 1, nil, components.WithBatch(n, 1<<20, linger))
	led, p, ctx := r.led, r.p, r.ctx
	start := time.Now()
	for i := range n {
		if _, err := p.Send(ctx, &messagev1.Message{Payload: fmt.Appendf(nil, "m%d", i)}); err != nil {
			t.Fatalf("Send(%d) = %v", i, err)
		}
		if i == 0 {
			time.Sleep(100 * time.Millisecond) // the first waits for the linger
		}
	}
	led.waitHandled(t, n)
	took := time.Since(start)
	t.Logf("handled %d messages %v after the first Send", n, took)
	if took > linger/2 {
		t.Errorf("a full batch of %d was handled %v after the first Send, want well within the %v linger", n, took, linger)
	}
	close(r.release)
	closeProducers(t, p)
	led.checkExactlyOnce(t, map[string]int{"p1": n + 1})
}

// TestProducer_LongLingerKeepsTheStream checks that a linger longer than the
// stream's deadline (five heartbeats, 1 s by default) costs the stream
// nothing: the producer beats while its batch waits. With a message held
// unacknowledged throughout, a message sent under a linger of 2 s is
// handled once, after the linger, through the stream it was sent on (never
// resent), which stays up.
func TestProducer_LongLingerKeepsTheStream(t *testing.T) {
	const linger = 2 * time.Second
	r := newLingerRig(t, 1, nil, components.WithBatch(64, 1<<20, linger))
	led, p, ctx := r.led, r.p, r.ctx
	start := time.Now()
	if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("alone")}); err != nil {
		t.Fatalf("SendWait() = %v", err)
	}
	took := time.Since(start)
	if st := p.Stats(); st.Resent != 0 || st.Acked != 1 {
		t.Errorf("Stats() = %+v after %v, want Acked=1 Resent=0: the stream kept through the linger", st, took)
	}
	if took < linger {
		t.Errorf("acknowledged %v after Send, want after the %v linger", took, linger)
	}
	close(r.release)
	closeProducers(t, p)
	led.checkExactlyOnce(t, map[string]int{"p1": 2})
}

// TestProducer_LoneMessageDoesNotWaitForTheLinger checks that a message sent
// while nothing the producer sent waits for its acknowledgement goes at
// once: under a linger of 5 s, ten messages sent one after the other, each
// once the one before is acknowledged, are each acknowledged well within
// the linger, in ten publish batches.
func TestProducer_LoneMessageDoesNotWaitForTheLinger(t *testing.T) {
	const (
		n      = 10
		linger = 5 * time.Second
	)
	m := newMesh(t)
	var batches atomic.Int64
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1", countFrames(func(f any) {
		if r, ok := f.(*deliveryv1.PublishRequest); ok && r.GetBatch() != nil {
			batches.Add(1)
		}
	}))
	led := newLedger()
	m.consumer("c1", led.handler())
	waitConsumers(t, 1, h)
	p := m.producer("p1", components.WithBatch(64, 1<<20, linger))
	waitProducer(t, "p1", h)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	for i := range n {
		start := time.Now()
		if err := p.SendWait(ctx, &messagev1.Message{Payload: fmt.Appendf(nil, "m%d", i)}); err != nil {
			t.Fatalf("SendWait(%d) = %v", i, err)
		}
		if took := time.Since(start); took > linger/5 {
			t.Fatalf("message %d acknowledged %v after Send, want well within the %v linger: it waited for it", i, took, linger)
		}
	}
	if got := batches.Load(); got != n {
		t.Errorf("the intermediate received %d publish batches, want %d", got, n)
	}
	closeProducers(t, p)
	led.checkExactlyOnce(t, map[string]int{"p1": n})
}

// TestProducer_LingerEndsWithTheLastAck checks that a batch waiting for the
// linger goes once nothing the producer sent waits for its acknowledgement:
// under a linger of 5 s, a message sent while another is held
// unacknowledged is not handled while that one is held (its batch waits),
// and is handled well within the linger once the held one is released and
// acknowledged.
func TestProducer_LingerEndsWithTheLastAck(t *testing.T) {
	const linger = 5 * time.Second
	r := newLingerRig(t, 1, nil, components.WithBatch(64, 1<<20, linger))
	led, p := r.led, r.p
	r.sendBehind(t)
	released := time.Now()
	close(r.release)
	led.waitHandled(t, 2)
	if took := time.Since(released); took > linger/5 {
		t.Errorf("the waiting message was handled %v after the held one was released, want well within the %v linger", took, linger)
	}
	closeProducers(t, p)
	led.checkExactlyOnce(t, map[string]int{"p1": 2})
}

// TestProducer_MessageQueuedDuringASendLingers checks that a message queued
// while the sender is still busy sending the batch before waits for the
// linger like any other: under a linger of 5 s, the sender's first batch
// (the held message) stays in its Send until a second message is queued;
// once it returns, the second is not handled while the first is held, and
// is handled once after.
func TestProducer_MessageQueuedDuringASendLingers(t *testing.T) {
	const linger = 5 * time.Second
	stall := make(chan struct{})
	r := newLingerRig(t, 1, nil, components.WithBatch(64, 1<<20, linger), stallFirstBatch(stall))
	led, p := r.led, r.p
	r.send(t, "behind")
	close(stall)
	r.noneHandledSoon(t)
	close(r.release)
	led.waitHandled(t, 2)
	closeProducers(t, p)
	led.checkExactlyOnce(t, map[string]int{"p1": 2})
}

// TestProducer_LingerRunsFromWhenTheMessageWasQueued checks that a message
// waits one linger at most from when it was queued, however long the
// sender takes to come back to it: under a linger of 1 s, with a message
// held unacknowledged, a second message is queued while the sender stays
// 1.5 s in the Send of the batch before; it is handled well within a
// linger of the sender's return, once.
func TestProducer_LingerRunsFromWhenTheMessageWasQueued(t *testing.T) {
	const linger = time.Second
	stall := make(chan struct{})
	// A stalled sender sends no heartbeat: the intermediate gives the
	// stream five of its intervals.
	r := newLingerRig(t, 1, nil, components.WithBatch(64, 1<<20, linger), stallFirstBatch(stall), components.WithHeartbeatInterval(time.Second))
	led, p := r.led, r.p
	r.send(t, "behind")
	time.Sleep(linger + linger/2)
	returned := time.Now()
	close(stall)
	r.waitBehindHandled(t)
	if took := time.Since(returned); took > linger/2 {
		t.Errorf("the second message was handled %v after the sender came back, want well within the %v linger it had waited out", took, linger)
	}
	close(r.release)
	closeProducers(t, p)
	led.checkExactlyOnce(t, map[string]int{"p1": 2})
}

// stallFirstBatch keeps the sender of a producer's first publish batch on
// each stream in its SendMsg, after the batch went, until stall is closed.
func stallFirstBatch(stall <-chan struct{}) components.ProducerOption {
	return components.WithDialOptions(grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		return &stallingStream{ClientStream: cs, stall: stall}, err
	}))
}

type stallingStream struct {
	grpc.ClientStream
	stall <-chan struct{}
	once  sync.Once
}

func (s *stallingStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if r, ok := m.(*deliveryv1.PublishRequest); ok && r.GetBatch() != nil {
		s.once.Do(func() { <-s.stall })
	}
	return err
}

// TestProducer_LingerEndsWhenTheAwaitedStreamEnds checks that a batch
// waiting for the linger goes once the stream that held the only message
// waited for ends: with a message held unacknowledged through one
// intermediate, a message sent next lingers on the stream to the other
// (under a linger of 5 s); the first intermediate stops hard, its message
// is taken back, nothing sent waits any more, and the second message is
// handled well within the linger.
func TestProducer_LingerEndsWhenTheAwaitedStreamEnds(t *testing.T) {
	const linger = 5 * time.Second
	r := newLingerRig(t, 2, nil, components.WithBatch(64, 1<<20, linger))
	led, p := r.led, r.p
	r.sendBehind(t)
	stop := r.hubs[0]
	if r.holder == "i2" {
		stop = r.hubs[1]
	}
	stopped := time.Now()
	stop.srv.Stop()
	// The held message is handled: through the stream that ended, or, sent
	// again, through the other.
	close(r.release)
	r.waitBehindHandled(t)
	if took := time.Since(stopped); took > linger/5 {
		t.Errorf("the lingering message was handled %v after the stream holding the awaited one ended, want well within the %v linger", took, linger)
	}
	closeProducers(t, p)
	led.checkExactlyOnce(t, map[string]int{"p1": 2})
}

// TestProducer_BatchFullByBytesDoesNotWaitForTheLinger checks that a batch
// full by its byte limit goes at once, as one full by count does: under a
// linger of 5 s and batches of at most 1 000 bytes, with a message held
// unacknowledged, two messages of 600 bytes are handled well within the
// linger.
func TestProducer_BatchFullByBytesDoesNotWaitForTheLinger(t *testing.T) {
	const linger = 5 * time.Second
	r := newLingerRig(t, 1, nil, components.WithBatch(64, 1000, linger))
	led, p, ctx := r.led, r.p, r.ctx
	start := time.Now()
	for i := range 2 {
		if _, err := p.Send(ctx, &messagev1.Message{Payload: make([]byte, 600)}); err != nil {
			t.Fatalf("Send(%d) = %v", i, err)
		}
	}
	led.waitHandled(t, 2)
	if took := time.Since(start); took > linger/5 {
		t.Errorf("two messages over the batch's byte limit were handled %v after Send, want well within the %v linger", took, linger)
	}
	close(r.release)
	closeProducers(t, p)
	led.checkExactlyOnce(t, map[string]int{"p1": 3})
}

// TestConsumer_CreditRidesWithAcks checks that a consumer grants credit in
// its acknowledgement frames to an intermediate whose welcome allows it: with
// a credit of 16 and 2 000 messages, the only Credit frame of a stream is its
// first (the initial grant), the acknowledgement frames grant the rest, and
// every message is handled exactly once.
func TestConsumer_CreditRidesWithAcks(t *testing.T) {
	const n, credit = 2000, 16
	m := newMesh(t)
	var hellos, creditFrames, ackGrants atomic.Int64
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1", countFrames(func(f any) {
		r, ok := f.(*deliveryv1.SubscribeRequest)
		switch {
		case !ok:
		case r.GetHello() != nil:
			hellos.Add(1)
		case r.GetCredit() != nil:
			creditFrames.Add(1)
		case r.GetAck() != nil:
			ackGrants.Add(int64(r.GetAck().GetCredit()))
		}
	}))
	led := newLedger()
	m.consumer("c1", led.handler(), components.WithCredit(credit))
	waitConsumers(t, 1, h)
	p := m.producer("p1")
	led.deliverAll(t, n, p)
	if got, most := creditFrames.Load(), hellos.Load(); got < 1 || got > most {
		t.Errorf("Credit frames = %d for %d subscribe streams, want at most one each (the initial grant)", got, most)
	}
	if got := ackGrants.Load(); got < n-credit {
		t.Errorf("credit granted in acknowledgement frames = %d, want at least %d (every delivery past the initial credit)", got, n-credit)
	}
}
