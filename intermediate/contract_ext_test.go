package intermediate_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// subEnd reads a subscribe stream until it ends and returns its status.
func subEnd(stream deliveryv1.SubscribeService_SubscribeClient) error {
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
	}
}

func sendSub(t *testing.T, stream deliveryv1.SubscribeService_SubscribeClient, req *deliveryv1.SubscribeRequest) {
	t.Helper()
	if err := stream.Send(req); err != nil {
		t.Fatalf("Send(%v) = %v", req, err)
	}
}

func ackFrame(ranges ...uint64) *deliveryv1.SubscribeRequest {
	a := &deliveryv1.DeliveryAck{}
	for i := 0; i+1 < len(ranges); i += 2 {
		a.Acked = append(a.Acked, &messagev1.SeqRange{First: ranges[i], Last: ranges[i+1]})
	}
	return &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Ack{Ack: a}}
}

// manyRanges is an ack frame of n copies of the range [1, 1].
func manyRanges(n int) *deliveryv1.SubscribeRequest {
	r := make([]uint64, 0, 2*n)
	for range n {
		r = append(r, 1, 1)
	}
	return ackFrame(r...)
}

func nackFrame(id uint64) *deliveryv1.SubscribeRequest {
	a := &deliveryv1.DeliveryAck{Nacked: []*messagev1.Nack{{Seq: id, Reason: messagev1.NackReason_NACK_REASON_HANDLER_FAILED}}}
	return &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Ack{Ack: a}}
}

func creditFrame(n uint32) *deliveryv1.SubscribeRequest {
	return &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Credit{Credit: &deliveryv1.Credit{Messages: n}}}
}

// ackCredit is an ack frame of ranges that grants credit.
func ackCredit(credit uint32, ranges ...uint64) *deliveryv1.SubscribeRequest {
	f := ackFrame(ranges...)
	f.GetAck().Credit = credit
	return f
}

// TestSubscribe_AckCarriesCredit checks that the welcome says acks may carry
// credit, and that credit granted in an ack frame lets the next deliveries
// go as a Credit frame's would: with an initial credit of 2 and no Credit
// frame, six messages arrive two by two, and the producer hears of each.
func TestSubscribe_AckCarriesCredit(t *testing.T) {
	r := newRig(t, intermediate.WithMaxCredit(4))
	stream, w := r.subscribeWelcome(r.ctx(), "c", intermediate.DefaultGroup, 2)
	if !w.GetAckCredit() {
		t.Fatalf("welcome = %v, want ack_credit set", w)
	}
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msgs("p1", 1, 6)...)
	var ids []uint64
	for len(ids) < 6 {
		got := nextDeliveries(t, stream)
		for _, d := range got {
			ids = append(ids, d.GetDeliveryId())
		}
		if len(ids)%2 != 0 || len(got) > 2 {
			t.Fatalf("deliveries so far %v, the last batch %d: want two at a time, as the credit allows", ids, len(got))
		}
		last := ids[len(ids)-1]
		sendSub(t, stream, ackCredit(2, last-1, last))
	}
	if want := []uint64{1, 2, 3, 4, 5, 6}; !slices.Equal(ids, want) {
		t.Errorf("delivery ids = %v, want %v", ids, want)
	}
	acked := map[uint64]int{}
	for len(acked) < 6 {
		for _, rg := range nextAck(t, pub).GetAcked() {
			for s := rg.GetFirst(); s <= rg.GetLast(); s++ {
				acked[s]++
			}
		}
	}
	for s := uint64(1); s <= 6; s++ {
		if acked[s] != 1 {
			t.Errorf("seq %d acknowledged %d times, want 1", s, acked[s])
		}
	}
}

// TestSubscribe_Refusals checks every frame that ends a subscribe stream,
// with its status code and the range it names, and that a refused frame is
// not applied in part: the message its valid range acknowledged is
// delivered again on the consumer's next stream.
func TestSubscribe_Refusals(t *testing.T) {
	r := newRig(t, intermediate.WithMaxCredit(100), intermediate.WithOwnerWait(time.Minute), intermediate.WithNoConsumerTimeout(time.Minute))
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "x"))
	redeliveries := uint32(0)
	for _, tc := range []struct {
		name      string
		credit    uint32
		delivered bool // wait for the message's delivery (id 1) first
		frame     *deliveryv1.SubscribeRequest
		code      codes.Code
		text      string
	}{
		{"empty ack", 10, true, &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Ack{Ack: &deliveryv1.DeliveryAck{}}}, codes.InvalidArgument, "names no delivery"},
		{"reversed range", 10, true, ackFrame(1, 1, 3, 2), codes.InvalidArgument, "ack range [3, 2] is reversed"},
		{"id 0", 10, true, ackFrame(0, 1), codes.InvalidArgument, "ack range [0, 1] names delivery id 0"},
		{"never sent", 10, true, ackFrame(1, 1, 2, 7), codes.InvalidArgument, "ack range [2, 7] names deliveries never sent: ids sent on this stream are 1 to 1"},
		{"huge range", 10, true, ackFrame(1, 1<<40), codes.InvalidArgument, "ack range [1, 1099511627776] names deliveries never sent"},
		{"nothing sent yet", 0, false, ackFrame(1, 1), codes.InvalidArgument, "ack range [1, 1] names deliveries never sent: none was sent"},
		{"nack id 0", 10, true, nackFrame(0), codes.InvalidArgument, "nack of delivery id 0"},
		{"nack never sent", 10, true, nackFrame(5), codes.InvalidArgument, "nack of delivery id 5 names deliveries never sent"},
		{"too many ranges", 10, true, manyRanges(4097), codes.ResourceExhausted, "ack frame of 4097 ranges and nacks exceeds max_ack_ranges 4096"},
		{"credit 0", 10, false, creditFrame(0), codes.InvalidArgument, "credit of 0 messages"},
		{"credit over max", 10, false, creditFrame(100), codes.ResourceExhausted, "credit of 100 on top of"},
		{"ack credit over max", 10, true, ackCredit(92, 1, 1), codes.ResourceExhausted, "credit of 92 on top of 9 unspent exceeds max-credit 100"},
		{"frame without kind", 10, false, &deliveryv1.SubscribeRequest{}, codes.InvalidArgument, "subscribe frame without a kind"},
		{"second hello", 10, false, &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Hello{Hello: &deliveryv1.SubscribeHello{ConsumerId: "c"}}}, codes.InvalidArgument, "second hello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(r.ctx())
			defer cancel()
			stream := r.subscribeCtx(ctx, "c", tc.credit)
			if tc.delivered {
				d := nextDeliveries(t, stream)
				if len(d) != 1 || d[0].GetDeliveryId() != 1 || d[0].GetRedeliveries() < redeliveries {
					t.Fatalf("deliveries = %v, want delivery id 1 with at least %d redeliveries", d, redeliveries)
				}
				redeliveries = d[0].GetRedeliveries() + 1
			}
			sendSub(t, stream, tc.frame)
			err := subEnd(stream)
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.text) {
				t.Errorf("stream after %s ended with %v, want %v containing %q", tc.name, err, tc.code, tc.text)
			}
		})
	}

	t.Run("initial credit over max", func(t *testing.T) {
		_, w, err := r.trySubscribe(r.ctx(), &deliveryv1.SubscribeHello{ConsumerId: "c", Instance: "i1", InitialCredit: 101,
			HeartbeatIntervalMs: quietHeartbeatMs, RegistrationEpoch: r.register(intermediate.DefaultGroup, "c")})
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "initial_credit 101 exceeds max-credit 100") {
			t.Errorf("hello with initial_credit 101 = welcome %v, %v, want RESOURCE_EXHAUSTED naming max-credit 100", w, err)
		}
	})

	// Acks of deliveries already settled are accepted and change nothing.
	stream := r.subscribe("c", 10)
	if d := nextDeliveries(t, stream); len(d) != 1 || d[0].GetRedeliveries() < redeliveries || d[0].GetMessage().GetId().GetSeq() != 1 {
		t.Fatalf("deliveries after the refusals = %v, want seq 1 with at least %d redeliveries: a refused frame was applied", d, redeliveries)
	}
	sendSub(t, stream, ackFrame(1, 1))
	sendSub(t, stream, ackFrame(1, 1))
	sendSub(t, stream, nackFrame(1))
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 || a.GetAcked()[0].GetFirst() != 1 || a.GetAcked()[0].GetLast() != 1 || len(a.GetNacked()) != 0 {
		t.Fatalf("PublishAck = %v, want seq 1 acknowledged", a)
	}
	sendBatch(t, pub, 2, msg("p1", 2, "y"))
	if d := nextDeliveries(t, stream); len(d) != 1 || d[0].GetDeliveryId() != 2 || d[0].GetMessage().GetId().GetSeq() != 2 {
		t.Fatalf("deliveries = %v, want seq 2 as delivery id 2 on the stream that acknowledged id 1 three times", d)
	}
	sendSub(t, stream, ackFrame(1, 2))
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 || a.GetAcked()[0].GetFirst() != 2 || a.GetAcked()[0].GetLast() != 2 || len(a.GetNacked()) != 0 {
		t.Fatalf("PublishAck = %v, want seq 2 acknowledged once", a)
	}
}

// TestPublish_Refusals checks the frames that end a publish stream with
// INVALID_ARGUMENT: an empty batch and a frame without a kind.
func TestPublish_Refusals(t *testing.T) {
	r := newRig(t)
	for _, tc := range []struct {
		name  string
		frame *deliveryv1.PublishRequest
		text  string
	}{
		{"empty batch", &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{FirstSeq: 1}}}, "batch with first_seq 1 has no messages"},
		{"frame without kind", &deliveryv1.PublishRequest{}, "publish frame without a kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub := r.producer("p-" + strings.ReplaceAll(tc.name, " ", "-"))
			if err := pub.Send(tc.frame); err != nil {
				t.Fatalf("Send() = %v", err)
			}
			if err := recvEnd(pub); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("stream after %s ended with %v, want INVALID_ARGUMENT containing %q", tc.name, err, tc.text)
			}
		})
	}
}

// TestWelcome_StatesBounds checks that both welcomes state the heartbeat
// interval the client is held to (its own, lowered to the cap), the deadline
// and the cap, and the subscribe welcome the credit limit.
func TestWelcome_StatesBounds(t *testing.T) {
	r := newRig(t, intermediate.WithMaxPeerHeartbeat(3*time.Second), intermediate.WithMaxCredit(500))
	for _, tc := range []struct {
		declared, held uint32
	}{
		{0, 200}, // the server's own interval
		{1000, 1000},
		{60000, 3000},
	} {
		_, w := r.publish(&deliveryv1.PublishHello{ProducerId: "p", HeartbeatIntervalMs: tc.declared})
		if w.GetPeerHeartbeatIntervalMs() != tc.held || w.GetPeerTimeoutMs() != 5*tc.held || w.GetMaxHeartbeatIntervalMs() != 3000 || w.GetHeartbeatIntervalMs() != 200 {
			t.Errorf("publish welcome for a declared %dms = %v, want peer interval %d, timeout %d, max 3000, own 200", tc.declared, w, tc.held, 5*tc.held)
		}
		_, sw, err := r.trySubscribe(r.ctx(), &deliveryv1.SubscribeHello{ConsumerId: "c", Instance: "i1", InitialCredit: 1,
			HeartbeatIntervalMs: tc.declared, RegistrationEpoch: r.register(intermediate.DefaultGroup, "c")})
		if err != nil {
			t.Fatalf("subscribe = %v", err)
		}
		if sw.GetPeerHeartbeatIntervalMs() != tc.held || sw.GetPeerTimeoutMs() != 5*tc.held || sw.GetMaxHeartbeatIntervalMs() != 3000 || sw.GetMaxCredit() != 500 || sw.GetMaxAckRanges() != 4096 {
			t.Errorf("subscribe welcome for a declared %dms = %v, want peer interval %d, timeout %d, max 3000, max credit 500, max ack ranges 4096", tc.declared, sw, tc.held, 5*tc.held)
		}
	}
}

// TestSubscribe_SilentConsumerDroppedAtTheCap checks that a consumer that
// grants no credit and declares a 60s heartbeat is dropped within five of
// the server's cap, not five of its declared interval, and that the message
// it held goes on to the consumer's next stream.
func TestSubscribe_SilentConsumerDroppedAtTheCap(t *testing.T) {
	r := newRig(t, intermediate.WithMaxPeerHeartbeat(100*time.Millisecond), intermediate.WithHeartbeatInterval(20*time.Millisecond),
		intermediate.WithOwnerWait(time.Minute), intermediate.WithNoConsumerTimeout(time.Minute))
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "x"))
	keepAlive(t, func() error {
		return pub.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Heartbeat{Heartbeat: &messagev1.Heartbeat{}}})
	})
	start := time.Now()
	stream, w, err := r.trySubscribe(r.ctx(), &deliveryv1.SubscribeHello{ConsumerId: "c", Instance: "i1", InitialCredit: 0,
		HeartbeatIntervalMs: 60000, RegistrationEpoch: r.register(intermediate.DefaultGroup, "c")})
	if err != nil {
		t.Fatalf("subscribe = %v", err)
	}
	if w.GetPeerHeartbeatIntervalMs() != 100 || w.GetPeerTimeoutMs() != 500 {
		t.Fatalf("welcome = %v, want peer interval 100ms and peer_timeout_ms 500", w)
	}
	err = subEnd(stream)
	elapsed := time.Since(start)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "missed its heartbeats") {
		t.Errorf("silent stream ended with %v, want UNAVAILABLE: missed its heartbeats", err)
	}
	if elapsed < 500*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("silent stream with a declared 60s heartbeat ended after %v, want after the stated 500ms deadline and well before 5x60s", elapsed)
	}
	next := r.subscribe("c", 10)
	ack := make(chan *deliveryv1.SubscribeRequest, 1)
	keepAlive(t, func() error {
		select {
		case req := <-ack:
			return next.Send(req)
		default:
			return next.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Heartbeat{Heartbeat: &messagev1.Heartbeat{}}})
		}
	})
	d := nextDeliveries(t, next)
	if len(d) != 1 || d[0].GetMessage().GetId().GetSeq() != 1 {
		t.Fatalf("deliveries on the consumer's next stream = %v, want seq 1", d)
	}
	ack <- ackFrame(d[0].GetDeliveryId(), d[0].GetDeliveryId())
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 || a.GetAcked()[0].GetFirst() != 1 {
		t.Errorf("PublishAck = %v, want seq 1", a)
	}
}

// TestSubscribe_HostileAckFrame checks that acknowledgement frames naming a
// huge number of ids cost the server O(ranges): one that repeats the full
// range of sent ids 4000 times settles the one still outstanding, and one
// whose 1500 ranges name 1.57 billion never-sent ids is refused with
// INVALID_ARGUMENT, each holding the server's lock far less than walking
// the ids named would (seconds for 1.57 billion), while a legitimate
// consumer beside it handles every message exactly once and the producer
// hears of each exactly once. The bound, 100 ms, is also far above what a
// loaded two-core machine adds by keeping the thread off its core (a few
// milliseconds), which a bound of 1 ms did not stand.
func TestSubscribe_HostileAckFrame(t *testing.T) {
	const n = 300
	var (
		mu    sync.Mutex
		held  = map[string][]time.Duration{}
		total = map[string][]time.Duration{}
	)
	r := newRig(t, intermediate.WithAckObserver(func(consumer string, h, all time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		held[consumer] = append(held[consumer], h)
		total[consumer] = append(total[consumer], all)
	}))
	ctx := r.ctx()
	good := r.subscribeGroup(ctx, "c1", "good", n)
	evil := r.subscribeGroup(ctx, "e1", "evil", n)

	// The legitimate consumer acknowledges every delivery as it comes.
	goodSeqs := make(chan []uint64, 1)
	go func() {
		var seqs []uint64
		for len(seqs) < n {
			resp, err := good.Recv()
			if err != nil {
				break
			}
			var ids []uint64
			for _, d := range resp.GetBatch().GetDeliveries() {
				seqs = append(seqs, d.GetMessage().GetId().GetSeq())
				ids = append(ids, d.GetDeliveryId())
			}
			if len(ids) > 0 {
				a := &deliveryv1.DeliveryAck{}
				for _, id := range ids {
					a.Acked = append(a.Acked, &messagev1.SeqRange{First: id, Last: id})
				}
				if good.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Ack{Ack: a}}) != nil {
					break
				}
			}
		}
		goodSeqs <- seqs
	}()

	pub := r.producer("p1")
	for seq := uint64(1); seq <= n; seq += 50 {
		var msgs []*messagev1.Message
		for i := range uint64(50) {
			msgs = append(msgs, msg("p1", seq+i, "x"))
		}
		sendBatch(t, pub, seq, msgs...)
	}
	// The hostile consumer takes every delivery and acknowledges all but the
	// last one, one frame per id; then it acknowledges the last one with a
	// frame repeating the whole range 4000 times (1.2 million ids named)...
	got := 0
	for got < n {
		got += len(nextDeliveries(t, evil))
	}
	for id := uint64(1); id < n; id++ {
		ackDeliveries(t, evil, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: id, Last: id}}})
	}
	wide := &deliveryv1.DeliveryAck{}
	for range 4000 {
		wide.Acked = append(wide.Acked, &messagev1.SeqRange{First: 1, Last: n})
	}
	ackDeliveries(t, evil, wide)
	// ...and sends 1500 ranges of 2^20 ids each, never sent.
	huge := &deliveryv1.DeliveryAck{}
	for k := uint64(1); k <= 1500; k++ {
		huge.Acked = append(huge.Acked, &messagev1.SeqRange{First: k << 20, Last: k<<20 + 1<<20 - 1})
	}
	ackDeliveries(t, evil, huge)
	err := subEnd(evil)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "ack range [1572864000, 1573912575] names deliveries never sent: ids sent on this stream are 1 to 300") {
		t.Errorf("hostile stream ended with %v, want INVALID_ARGUMENT naming the highest range", err)
	}

	// The producer hears of every message exactly once.
	acked := map[uint64]int{}
	for len(acked) < n {
		a := nextAck(t, pub)
		if len(a.GetNacked()) > 0 {
			t.Fatalf("PublishAck = %v, want no nacks", a)
		}
		for _, rg := range a.GetAcked() {
			for s := rg.GetFirst(); s <= rg.GetLast(); s++ {
				acked[s]++
			}
		}
	}
	for s := uint64(1); s <= n; s++ {
		if acked[s] != 1 {
			t.Errorf("seq %d acknowledged %d times, want 1", s, acked[s])
		}
	}
	seqs := <-goodSeqs
	seen := map[uint64]int{}
	for _, s := range seqs {
		seen[s]++
	}
	for s := uint64(1); s <= n; s++ {
		if seen[s] != 1 {
			t.Errorf("legitimate consumer got seq %d %d times, want 1", s, seen[s])
		}
	}

	mu.Lock()
	defer mu.Unlock()
	if len(held["e1"]) != n+1 {
		t.Fatalf("ack frames of e1 observed = %d, want %d", len(held["e1"]), n+1)
	}
	for i, name := range []string{"4000 ranges naming 1.2 million ids", "1500 ranges naming 1.57 billion ids never sent"} {
		h, all := held["e1"][n-1+i], total["e1"][n-1+i]
		t.Logf("ack frame of %s: lock held %v, handled in %v", name, h, all)
		if h >= 100*time.Millisecond {
			t.Errorf("ack frame of %s held the server's lock %v, want under 100ms: its cost follows the ids it names, not its ranges", name, h)
		}
	}
}

// keepAlive calls send every 20ms, from one goroutine, until the test ends
// or send fails: send is the only sender on its stream.
func keepAlive(t *testing.T, send func() error) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ticker := time.NewTicker(20 * time.Millisecond)
		defer ticker.Stop()
		for {
			select {
			case <-done:
				return
			case <-ticker.C:
				if send() != nil {
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		close(done)
		wg.Wait()
	})
}

// TestHello_Refusals checks the statuses that refuse a stream at its first
// frame: not a hello, a hello that names no sender or another instance, and
// no hello in time.
func TestHello_Refusals(t *testing.T) {
	r := newRig(t, intermediate.WithHeartbeatInterval(20*time.Millisecond))
	subHello := func(h *deliveryv1.SubscribeHello) *deliveryv1.SubscribeRequest {
		return &deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Hello{Hello: h}}
	}
	for _, tc := range []struct {
		name  string
		first *deliveryv1.SubscribeRequest // nil: send nothing
		code  codes.Code
		text  string
	}{
		{"subscribe credit first", creditFrame(1), codes.InvalidArgument, "the first frame must be a hello"},
		{"subscribe without consumer_id", subHello(&deliveryv1.SubscribeHello{Group: "g"}), codes.InvalidArgument, "hello without consumer_id"},
		{"subscribe to another instance", subHello(&deliveryv1.SubscribeHello{ConsumerId: "c", Instance: "i9"}), codes.FailedPrecondition, `this is instance "i1", not "i9"`},
		{"subscribe without hello", nil, codes.DeadlineExceeded, "no hello received in time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stream, err := deliveryv1.NewSubscribeServiceClient(r.conn).Subscribe(r.ctx())
			if err != nil {
				t.Fatalf("Subscribe() = %v", err)
			}
			if tc.first != nil {
				sendSub(t, stream, tc.first)
			}
			if err := subEnd(stream); status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("subscribe stream = %v, want %v containing %q", err, tc.code, tc.text)
			}
		})
	}
	t.Run("publish heartbeat first", func(t *testing.T) {
		stream, err := deliveryv1.NewPublishServiceClient(r.conn).Publish(r.ctx())
		if err != nil {
			t.Fatalf("Publish() = %v", err)
		}
		if err := stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Heartbeat{Heartbeat: &messagev1.Heartbeat{}}}); err != nil {
			t.Fatalf("Send() = %v", err)
		}
		if err := recvEnd(stream); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "the first frame must be a hello") {
			t.Errorf("publish stream opened by a heartbeat = %v, want INVALID_ARGUMENT", err)
		}
	})
}
