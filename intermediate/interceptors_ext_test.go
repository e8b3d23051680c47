package intermediate_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/butterfly-mesh/butterfly"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// panicky panics on the payload "boom" and passes everything else through.
type panicky struct{}

func (panicky) Name() string { return "panicky" }

func (panicky) Process(_ context.Context, m *messagev1.Message) (*messagev1.Message, error) {
	if string(m.GetPayload()) == "boom" {
		panic("processor bug")
	}
	return m, nil
}

// collectAcks reads acks until n messages were answered, and returns the
// acknowledged seqs and the nacks by seq.
func collectAcks(t *testing.T, pub deliveryv1.PublishService_PublishClient, n int) (map[uint64]bool, map[uint64]*messagev1.Nack) {
	t.Helper()
	acked, nacked := map[uint64]bool{}, map[uint64]*messagev1.Nack{}
	for len(acked)+len(nacked) < n {
		a := nextAck(t, pub)
		for _, r := range a.GetAcked() {
			for seq := r.GetFirst(); seq <= r.GetLast(); seq++ {
				acked[seq] = true
			}
		}
		for _, nk := range a.GetNacked() {
			nacked[nk.GetSeq()] = nk
		}
	}
	return acked, nacked
}

// ackAll acknowledges every delivery of the next batch and returns their
// payloads.
func ackAll(t *testing.T, sub deliveryv1.SubscribeService_SubscribeClient) []string {
	t.Helper()
	ds := nextDeliveries(t, sub)
	var payloads []string
	for _, d := range ds {
		payloads = append(payloads, string(d.GetMessage().GetPayload()))
		ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: d.GetDeliveryId(), Last: d.GetDeliveryId()}}})
	}
	return payloads
}

// TestPublish_ProcessorPanic checks that a panicking processor hands back
// only the message it panicked on, and that the stream and the server go on.
func TestPublish_ProcessorPanic(t *testing.T) {
	r := newRig(t, intermediate.WithProcessor(panicky{}))
	sub := r.subscribe("c1", 100)
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "a"), msg("p1", 2, "boom"), msg("p1", 3, "c"))
	var delivered []string
	for len(delivered) < 2 {
		delivered = append(delivered, ackAll(t, sub)...)
	}
	acked, nacked := collectAcks(t, pub, 3)
	if !acked[1] || !acked[3] || len(acked) != 2 {
		t.Errorf("acked = %v, want seqs 1 and 3", acked)
	}
	n := nacked[2]
	if n.GetReason() != messagev1.NackReason_NACK_REASON_PROCESSING_FAILED || !strings.Contains(n.GetDetail(), "panicky: processor panicked: processor bug") {
		t.Errorf("nack of seq 2 = %v, want PROCESSING_FAILED naming the panic", n)
	}
	// The same stream keeps working.
	sendBatch(t, pub, 4, msg("p1", 4, "d"))
	if got := ackAll(t, sub); len(got) != 1 || got[0] != "d" {
		t.Errorf("deliveries after the panic = %q, want [d]", got)
	}
	if acked, _ := collectAcks(t, pub, 1); !acked[4] {
		t.Errorf("acked after the panic = %v, want seq 4", acked)
	}
	// A unary Process call that panics fails alone.
	c := deliveryv1.NewProcessServiceClient(r.conn)
	if _, err := c.Process(r.ctx(), &deliveryv1.ProcessRequest{Message: &messagev1.Message{Payload: []byte("boom")}}); status.Code(err) != codes.Aborted || !strings.Contains(err.Error(), "processor panicked") {
		t.Errorf("Process(boom) = %v, want ABORTED naming the panic", err)
	}
	if res, err := c.Process(r.ctx(), &deliveryv1.ProcessRequest{Message: &messagev1.Message{Payload: []byte("ok")}}); err != nil || string(res.GetMessage().GetPayload()) != "ok" {
		t.Errorf("Process(ok) after a panic = %v, %v, want ok", res, err)
	}
}

// TestPublish_MessageLimits checks that messages over the size and header
// limits are handed back INVALID with a detail naming the limit, while the
// rest of their batch and the stream go on.
func TestPublish_MessageLimits(t *testing.T) {
	r := newRig(t, intermediate.WithMaxMessageBytes(200), intermediate.WithMaxHeaders(2, 32))
	sub := r.subscribe("c1", 100)
	pub := r.producer("p1")
	big := msg("p1", 2, strings.Repeat("x", 300))
	headers := msg("p1", 3, "h")
	headers.Headers = map[string]string{"a": "1", "b": "2", "c": "3"}
	long := msg("p1", 4, "l")
	long.Headers = map[string]string{"k": strings.Repeat("v", 40)}
	sendBatch(t, pub, 1, msg("p1", 1, "ok1"), big, headers, long, msg("p1", 5, "ok5"))
	var delivered []string
	for len(delivered) < 2 {
		delivered = append(delivered, ackAll(t, sub)...)
	}
	acked, nacked := collectAcks(t, pub, 5)
	if !acked[1] || !acked[5] || len(acked) != 2 {
		t.Errorf("acked = %v, want seqs 1 and 5", acked)
	}
	for seq, want := range map[uint64]string{
		2: "message 2 of the batch: message of 3",
		3: "message 3 of the batch: 3 headers exceeds max-headers 2",
		4: "message 4 of the batch: headers of 41 bytes exceeds max-header-bytes 32",
	} {
		n := nacked[seq]
		if n.GetReason() != messagev1.NackReason_NACK_REASON_INVALID || !strings.Contains(n.GetDetail(), want) {
			t.Errorf("nack of seq %d = %v, want INVALID containing %q", seq, n, want)
		}
	}
	if !strings.Contains(nacked[2].GetDetail(), "exceeds max-message-bytes 200") {
		t.Errorf("nack of seq 2 = %q, want it to name max-message-bytes 200", nacked[2].GetDetail())
	}
	c := deliveryv1.NewProcessServiceClient(r.conn)
	_, err := c.Process(r.ctx(), &deliveryv1.ProcessRequest{Message: &messagev1.Message{Payload: []byte(strings.Repeat("x", 300))}})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max-message-bytes 200") {
		t.Errorf("Process(300 bytes) = %v, want RESOURCE_EXHAUSTED naming max-message-bytes 200", err)
	}
}

// TestDelivery_ResendWithRoutesAtMessageLimit checks that a message exactly
// at max-message-bytes, sent again with the routes an earlier attempt
// learned, is delivered and acknowledged: the producer is limited on the
// message, not on what the intermediates add to it. It is charged its size
// and what its routes hold, more than max-in-flight-bytes, which it fits
// since nothing else is held.
func TestDelivery_ResendWithRoutesAtMessageLimit(t *testing.T) {
	const limit = 4096
	r := newRig(t, intermediate.WithMaxBatch(16, limit), intermediate.WithMaxInFlightBytes(limit),
		intermediate.WithMemoryBudget(limit, time.Minute))
	sub := r.subscribe("c1", 10)
	pub := r.producer("p1")
	m := msg("p1", 1, "")
	m.LowWaterSeq = 1
	for proto.Size(m) < limit {
		m.Payload = append(m.Payload, 'x')
	}
	if got := proto.Size(m); got != limit {
		t.Fatalf("proto.Size(message) = %d, want %d", got, limit)
	}
	m.Routes = []*messagev1.Route{{Group: "audit", Consumer: "a1", Handled: true}, {Group: intermediate.DefaultGroup, Consumer: "c1"}}
	charge := proto.Size(m) + 2*intermediate.RouteOverhead + intermediate.MessageOverhead
	sendBatch(t, pub, 1, m)
	ds := nextDeliveries(t, sub)
	if len(ds) != 1 || ds[0].GetMessage().GetId().GetSeq() != 1 || len(ds[0].GetMessage().GetRoutes()) != 0 {
		t.Fatalf("deliveries = %v, want seq 1 without routes", ds)
	}
	if got := r.srv.HeldBytes(); got != charge {
		t.Errorf("HeldBytes() while delivered = %d, want %d (the message, its two routes and MessageOverhead)", got, charge)
	}
	ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: ds[0].GetDeliveryId(), Last: ds[0].GetDeliveryId()}}})
	acked, nacked := collectAcks(t, pub, 1)
	if !acked[1] || len(nacked) != 0 {
		t.Fatalf("acked %v, nacked %v; want stream seq 1 acknowledged", acked, nacked)
	}
	if got := r.srv.HeldBytes(); got != 0 {
		t.Errorf("HeldBytes() after the ack = %d, want 0", got)
	}
}

// TestPublish_FrameLimits checks that a batch over the batch limits, or a
// hello with an invalid producer id, ends the stream with a status naming
// the limit.
func TestPublish_FrameLimits(t *testing.T) {
	r := newRig(t, intermediate.WithMaxBatch(3, 1000))
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "a"), msg("p1", 2, "b"), msg("p1", 3, "c"), msg("p1", 4, "d"))
	if err := recvEnd(pub); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "batch of 4 messages exceeds the batch limit max-batch-messages 3") {
		t.Errorf("batch of 4 messages ended the stream with %v, want RESOURCE_EXHAUSTED naming max-batch-messages 3", err)
	}
	pub = r.producer("p2")
	sendBatch(t, pub, 1, msg("p2", 1, strings.Repeat("a", 600)), msg("p2", 2, strings.Repeat("b", 600)))
	if err := recvEnd(pub); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max-batch-bytes 1000") {
		t.Errorf("batch of 1200 bytes ended the stream with %v, want RESOURCE_EXHAUSTED naming max-batch-bytes 1000", err)
	}
	if _, err := openPublish(t, r, r.ctx(), &deliveryv1.PublishHello{ProducerId: "bad/id"}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "producer_id") {
		t.Errorf("hello with producer_id bad/id = %v, want INVALID_ARGUMENT naming producer_id", err)
	}
	// A batch before the hello.
	stream, err := deliveryv1.NewPublishServiceClient(r.conn).Publish(r.ctx())
	if err != nil {
		t.Fatalf("Publish() = %v", err)
	}
	sendBatch(t, stream, 1, msg("p3", 1, "a"))
	if err := recvEnd(stream); status.Code(err) != codes.InvalidArgument {
		t.Errorf("batch before hello = %v, want INVALID_ARGUMENT", err)
	}
}

// openPublish opens a publish stream, sends hello and returns the stream and
// the result of the first Recv: the welcome, or the status that ended it.
func openPublish(t *testing.T, r *rig, ctx context.Context, hello *deliveryv1.PublishHello) (deliveryv1.PublishService_PublishClient, error) {
	t.Helper()
	stream, _, err := r.openPublishOn(ctx, r.conn, hello)
	return stream, err
}

// TestPublish_StreamsPerPeer checks that a peer cannot open more streams
// than max-streams-per-peer, and can again once one closed.
func TestPublish_StreamsPerPeer(t *testing.T) {
	r := newRig(t, intermediate.WithMaxStreamsPerPeer(2))
	r.producer("p1")
	ctx, cancel := context.WithCancel(r.ctx())
	if _, err := openPublish(t, r, ctx, &deliveryv1.PublishHello{ProducerId: "p2", HeartbeatIntervalMs: quietHeartbeatMs}); err != nil {
		t.Fatalf("second stream = %v, want a welcome", err)
	}
	_, err := openPublish(t, r, r.ctx(), &deliveryv1.PublishHello{ProducerId: "p3", HeartbeatIntervalMs: quietHeartbeatMs})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "127.0.0.1 has 2 streams open, the limit of max-streams-per-peer") {
		t.Fatalf("third stream = %v, want RESOURCE_EXHAUSTED naming max-streams-per-peer", err)
	}
	cancel()
	// The stream is released when its handler returns: poll.
	deadline := time.Now().Add(defaultTestTimeout)
	for {
		_, err := openPublish(t, r, r.ctx(), &deliveryv1.PublishHello{ProducerId: "p4", HeartbeatIntervalMs: quietHeartbeatMs})
		if err == nil {
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("stream after one closed = %v, want a welcome", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPublish_SeqWindowWithoutMark checks that a producer that sends no
// low-water mark may send seqs 1 to 2^24, and that a seq beyond is handed
// back INVALID with a detail that names low_water_seq and the limit and
// says how to send more.
func TestPublish_SeqWindowWithoutMark(t *testing.T) {
	r := newRig(t)
	sub := r.subscribe("c1", 10)
	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", butterfly.MaxSeqSpan, "last"), msg("p1", butterfly.MaxSeqSpan+1, "beyond"))
	if got := ackAll(t, sub); len(got) != 1 || got[0] != "last" {
		t.Fatalf("delivered %q, want only the message of seq 2^24", got)
	}
	acked, nacked := collectAcks(t, pub, 2)
	if !acked[1] || len(acked) != 1 {
		t.Errorf("acked = %v, want stream seq 1 (message seq 2^24)", acked)
	}
	want := "message 2 of the batch: invalid envelope: seq 16777217 is beyond the producer window: with low_water_seq 0 a producer may send seqs 1 to 16777216 (2^24) of an incarnation; to send more it must set low_water_seq to its lowest unacknowledged seq"
	if n := nacked[2]; n.GetReason() != messagev1.NackReason_NACK_REASON_INVALID || n.GetDetail() != want {
		t.Errorf("nack of stream seq 2 = %v, want INVALID with detail %q", n, want)
	}
}

// TestPublish_HostileRoutes checks the routes a producer sends back with a
// message: more than MaxRoutes, more bytes than max-batch-bytes, or a
// group or consumer no registry key could name are handed back INVALID and
// never held; valid ones are charged against max-in-flight-bytes with what
// they hold, so a producer cannot hold more than its bytes through them.
func TestPublish_HostileRoutes(t *testing.T) {
	const limit = 4096
	r := newRig(t, intermediate.WithMaxBatch(16, limit), intermediate.WithMaxInFlightBytes(2*limit),
		intermediate.WithMemoryBudget(2*limit, 100*time.Millisecond))
	sub := r.subscribe("c1", 10)
	pub := r.producer("p1")
	routes := func(n int, group string) []*messagev1.Route {
		rs := make([]*messagev1.Route, n)
		for i := range rs {
			rs[i] = &messagev1.Route{Group: fmt.Sprintf("%s-%d", group, i)}
		}
		return rs
	}
	withRoutes := func(seq uint64, rs []*messagev1.Route) *messagev1.Message {
		m := msg("p1", seq, "x")
		m.Routes = rs
		return m
	}
	sendBatch(t, pub, 1,
		withRoutes(1, routes(intermediate.MaxRoutes+1, "g")),
		withRoutes(2, routes(20, strings.Repeat("g", 300))),
		withRoutes(3, []*messagev1.Route{{Group: "audit/x"}}),
		withRoutes(4, []*messagev1.Route{{Group: "audit", Consumer: "a 1"}}),
	)
	acked, nacked := collectAcks(t, pub, 4)
	if len(acked) != 0 {
		t.Errorf("acked %v, want none", acked)
	}
	for seq, want := range map[uint64]string{
		1: "message 1 of the batch: invalid routes: 1025 routes, more than 1024",
		2: "message 2 of the batch: invalid routes: routes of 6170 bytes exceed max-batch-bytes 4096",
		3: `message 3 of the batch: invalid routes: route 1: registry: group "audit/x" contains '/'`,
		4: `message 4 of the batch: invalid routes: route 1: registry: consumer "a 1" contains ' '`,
	} {
		if n := nacked[seq]; n.GetReason() != messagev1.NackReason_NACK_REASON_INVALID || n.GetDetail() != want {
			t.Errorf("nack of stream seq %d = %v, want INVALID with detail %q", seq, n, want)
		}
	}
	if got := r.srv.HeldBytes(); got != 0 {
		t.Errorf("HeldBytes() after the refusals = %d, want 0", got)
	}

	// Two messages of 12 routes of 300-byte group names each: a few bytes
	// of payload, but about 4 900 bytes held each. The subscriber takes the
	// first and answers nothing: the second does not fit the stream's
	// 8 192 bytes and is handed back once the budget wait passed.
	m5, m6 := withRoutes(5, routes(12, strings.Repeat("h", 300))), withRoutes(6, routes(12, strings.Repeat("k", 300)))
	charge := func(m *messagev1.Message) int {
		return proto.Size(m) + len(m.GetRoutes())*intermediate.RouteOverhead + intermediate.MessageOverhead
	}
	sendBatch(t, pub, 5, m5)
	ds := nextDeliveries(t, sub)
	if len(ds) != 1 || ds[0].GetMessage().GetId().GetSeq() != 5 {
		t.Fatalf("deliveries = %v, want message seq 5", ds)
	}
	if got, want := r.srv.HeldBytes(), charge(m5); got != want {
		t.Errorf("HeldBytes() holding message 5 = %d, want %d (its envelope, its routes, %d bytes a route and %d a message)", got, want, intermediate.RouteOverhead, intermediate.MessageOverhead)
	}
	sendBatch(t, pub, 6, m6)
	_, nacked = collectAcks(t, pub, 1)
	if n := nacked[6]; n.GetReason() != messagev1.NackReason_NACK_REASON_UNAVAILABLE || !strings.Contains(n.GetDetail(), "does not fit") {
		t.Errorf("nack of stream seq 6 = %v, want UNAVAILABLE: does not fit", n)
	}
	ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: ds[0].GetDeliveryId(), Last: ds[0].GetDeliveryId()}}})
	if acked, _ := collectAcks(t, pub, 1); !acked[5] {
		t.Errorf("acked %v after the subscriber's ack, want stream seq 5", acked)
	}
	if got := r.srv.HeldBytes(); got != 0 {
		t.Errorf("HeldBytes() after the ack = %d, want 0", got)
	}
}

// TestDelivery_ResendWithRoutesOverASmallMessageLimit checks that a message
// handed back with the routes an intermediate wrote is taken again with
// them when they add up to more than a small max-message-bytes: twelve
// groups with long names, one with a pod-like consumer id the message was
// sent to, write over 512 bytes of routes, the limit.
func TestDelivery_ResendWithRoutesOverASmallMessageLimit(t *testing.T) {
	const groups = 12
	r := newRig(t, intermediate.WithMaxMessageBytes(512), intermediate.WithOwnerWait(300*time.Millisecond))
	subs := make([]deliveryv1.SubscribeService_SubscribeClient, groups)
	var cancelLast context.CancelFunc
	for i := range subs {
		ctx, cancel := context.WithCancel(r.ctx())
		t.Cleanup(cancel)
		if i == groups-1 {
			cancelLast = cancel
		}
		subs[i] = r.subscribeGroup(ctx, fmt.Sprintf("billing-ledger-consumer-5f7d8c9b6-x2x4q-%d", i+1), fmt.Sprintf("billing-ledger-reconciliation-eu-west-%d", i+1), 10)
	}
	pub := r.producer("p1")
	m := msg("p1", 1, strings.Repeat("e", 100))
	sendBatch(t, pub, 1, m)
	for i, s := range subs {
		ds := nextDeliveries(t, s)
		if i < groups-1 {
			ackDeliveries(t, s, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: ds[0].GetDeliveryId(), Last: ds[0].GetDeliveryId()}}})
		}
	}
	cancelLast() // the last group's consumer leaves with the message unanswered
	_, nacked := collectAcks(t, pub, 1)
	n := nacked[1]
	if n.GetReason() != messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE || len(n.GetRoutes()) != groups {
		t.Fatalf("nack = %v, want OWNER_UNREACHABLE with %d routes", n, groups)
	}
	if size := proto.Size(&messagev1.Message{Routes: n.GetRoutes()}); size <= 512 {
		t.Fatalf("the routes take %d bytes, want more than the 512 of max-message-bytes", size)
	}
	again := proto.Clone(m).(*messagev1.Message)
	again.Routes = n.GetRoutes()
	sendBatch(t, pub, 2, again)
	if _, nacked := collectAcks(t, pub, 1); nacked[2].GetReason() == messagev1.NackReason_NACK_REASON_INVALID {
		t.Errorf("the resend with the intermediate's own routes was refused for good: %v", nacked[2])
	}
}

// TestPublish_UnsentNacksCountAgainstTheBudget checks that the routes an
// intermediate hands back in nacks its producer has not read stay counted
// against the byte limits until they are sent, and are given back when
// they are sent or the stream ends: a producer that stops reading its
// stream cannot make the intermediate hold them outside its budget.
func TestPublish_UnsentNacksCountAgainstTheBudget(t *testing.T) {
	const messages, routesEach = 100, 1000
	routes := make([]*messagev1.Route, routesEach)
	for i := range routes {
		routes[i] = &messagev1.Route{Group: fmt.Sprintf("unheard-group-%04d", i)}
	}
	// Every nack carries the routes back: about 22 KB each, 2.2 MB in all.
	// gRPC takes one frame of them (at most 1 MiB) and 64 KiB more into
	// its buffers before the window it was given holds the rest back.
	charge := proto.Size(&messagev1.Message{Routes: routes}) + routesEach*intermediate.RouteOverhead
	for _, end := range []string{"read", "cancel"} {
		t.Run(end, func(t *testing.T) {
			// Long enough for every batch to be admitted before the first
			// is handed back, under the race detector too.
			r := newRig(t, intermediate.WithNoConsumerTimeout(2*time.Second))
			ctx, cancel := context.WithCancel(r.ctx())
			defer cancel()
			// A fixed 64 KiB window: gRPC's default grows with the traffic.
			conn, err := grpc.NewClient(r.srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			pub, w := r.publishOn(ctx, conn, &deliveryv1.PublishHello{ProducerId: "p1", Incarnation: 1, Instance: "i1", HeartbeatIntervalMs: quietHeartbeatMs})
			if w == nil {
				t.Fatal("no welcome")
			}
			for first := uint64(1); first <= messages; first += 10 {
				batch := make([]*messagev1.Message, 10)
				for i := range batch {
					batch[i] = msg("p1", first+uint64(i), "x")
					batch[i].Routes = routes
				}
				sendBatch(t, pub, first, batch...)
			}
			heldNow := func() int { _, _, held := r.srv.GroupQueue("none"); return held }
			waitFor(t, "every message to be held", func() bool { return heldNow() == messages })
			waitFor(t, "every message to be handed back", func() bool { return heldNow() == 0 })
			// What gRPC took is at most a frame and a window; the rest waits.
			if got, want := r.srv.HeldBytes(), messages*charge/3; got < want {
				t.Errorf("HeldBytes() with every nack unread = %d, want at least %d (a third of the %d bytes their routes hold)", got, want, messages*charge)
			}
			switch end {
			case "read":
				_, nacked := collectAcks(t, pub, messages)
				for seq := uint64(1); seq <= messages; seq++ {
					if n := nacked[seq]; n.GetReason() != messagev1.NackReason_NACK_REASON_NO_CONSUMER || len(n.GetRoutes()) != routesEach {
						t.Fatalf("nack of seq %d = reason %v with %d routes, want NO_CONSUMER with %d", seq, n.GetReason(), len(n.GetRoutes()), routesEach)
					}
				}
				// 2.2 MB of nacks, at most 1 MiB a frame.
				if got := r.srv.Stats().PublishAcks; got < 3 {
					t.Errorf("the nacks came in %d frames, want at least 3", got)
				}
			case "cancel":
				cancel()
			}
			waitFor(t, "the nacks' bytes to be given back", func() bool { return r.srv.HeldBytes() == 0 })
		})
	}
}

// TestPublish_WaitingBatchesWaitEncoded checks that a batch waiting for
// room under the memory budget is held as it came, encoded, not decoded:
// routes of one letter decode to many times their bytes, and every stream
// may have a batch waiting, uncounted. Each of the eight batches here is
// 100 KB on the wire and about 1.6 MB decoded. Once room comes they
// are decoded again and delivered whole, headers and all, the first of
// each with a field only protobuf-go decodes.
func TestPublish_WaitingBatchesWaitEncoded(t *testing.T) {
	const limit = 512 << 10
	const streams, each = 8, 20
	r := newRig(t, intermediate.WithMaxBatch(256, limit/2), intermediate.WithMaxInFlightBytes(limit), intermediate.WithMemoryBudget(limit, time.Minute))
	sub := r.subscribe("c1", 1000)
	// The filler takes 400 KiB of the budget until its consumer answers.
	filler := r.producer("p0")
	for seq := uint64(1); seq <= 2; seq++ {
		sendBatch(t, filler, seq, msg("p0", seq, strings.Repeat("f", 200<<10)))
	}
	var held []*deliveryv1.Delivery
	for len(held) < 2 {
		held = append(held, nextDeliveries(t, sub)...)
	}
	// Groups that handled it on an earlier attempt: routes the
	// intermediate decodes and keeps, and does not check against etcd.
	routes := make([]*messagev1.Route, intermediate.MaxRoutes)
	for i := range routes {
		routes[i] = &messagev1.Route{Group: string(rune('a' + i%26)), Handled: true}
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	pubs := make([]deliveryv1.PublishService_PublishClient, streams)
	for k := range pubs {
		id := fmt.Sprintf("p%d", k+1)
		pubs[k] = r.producer(id)
		ms := make([]*messagev1.Message, each)
		for i := range ms {
			ms[i] = msg(id, uint64(i+1), "x")
			ms[i].Routes = routes
			ms[i].Headers = map[string]string{"n": fmt.Sprintf("%s/%d", id, i+1)}
		}
		// A known field (create_time_unix_nano, a varint) sent as bytes:
		// protobuf-go keeps it as an unknown field, which the generated
		// decoder refuses.
		ms[0].ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), []byte("zz")))
		sendBatch(t, pubs[k], 1, ms...)
	}
	waitFor(t, "every batch to be read", func() bool { return r.srv.Stats().Received == 2+streams*each })
	// Decoded, the batches held 12.9 MB of heap while they waited.
	waitFor(t, "the heap to have grown by under 4 MiB with the batches waiting (decoded, they hold about 1.6 MB each)", func() bool {
		now := heap()
		return now < before || now-before < 4<<20
	})

	// Room comes: every waiting batch is delivered, as it was sent.
	ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: held[0].GetDeliveryId(), Last: held[1].GetDeliveryId()}}})
	got := map[string]bool{}
	for len(got) < streams*each {
		for _, d := range nextDeliveries(t, sub) {
			m := d.GetMessage()
			want := fmt.Sprintf("%s/%d", m.GetId().GetProducerId(), m.GetId().GetSeq())
			if h := m.GetHeaders()["n"]; h != want || string(m.GetPayload()) != "x" {
				t.Fatalf("delivery of %s: header n = %q and payload %q, want %q and \"x\"", want, h, m.GetPayload(), want)
			}
			got[want] = true
			ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: d.GetDeliveryId(), Last: d.GetDeliveryId()}}})
		}
	}
	for k, pub := range pubs {
		if acked, nacked := collectAcks(t, pub, each); len(acked) != each {
			t.Errorf("p%d: acked %d of %d, nacked %v", k+1, len(acked), each, nacked)
		}
	}
	waitFor(t, "nothing to be held", func() bool { return r.srv.HeldBytes() == 0 })
}

// TestPublish_SmallMessagesChargedWhatTheyHold checks that a message of a
// few bytes is charged what holding it costs (MessageOverhead), not its 13
// bytes: an intermediate held about 560 bytes for each, so a budget of
// 64 KiB held some 5 000 of them, 2.8 MB. It now holds about 100, and
// hands back the rest.
func TestPublish_SmallMessagesChargedWhatTheyHold(t *testing.T) {
	const limit, sent = 64 << 10, 1000
	r := newRig(t, intermediate.WithMaxBatch(256, limit), intermediate.WithMaxInFlightBytes(limit),
		intermediate.WithMemoryBudget(limit, 50*time.Millisecond))
	r.subscribe("c1", 1) // answers nothing
	pub := r.producer("p1")
	for first := uint64(1); first <= sent; first += 100 {
		ms := make([]*messagev1.Message, 100)
		for i := range ms {
			ms[i] = msg("p1", first+uint64(i), "x")
		}
		sendBatch(t, pub, first, ms...)
	}
	_, nacked := collectAcks(t, pub, sent-limit/(proto.Size(msg("p1", 1, "x"))+intermediate.MessageOverhead))
	_, _, held := r.srv.GroupQueue(intermediate.DefaultGroup)
	if most := limit / intermediate.MessageOverhead; held > most {
		t.Errorf("held %d messages of 13 bytes under a budget of %d, want at most %d", held, limit, most)
	}
	for seq, n := range nacked {
		if n.GetReason() != messagev1.NackReason_NACK_REASON_UNAVAILABLE {
			t.Fatalf("nack of seq %d = %v, want UNAVAILABLE", seq, n)
		}
	}
	if got := r.srv.HeldBytes(); got > limit || got != held*(proto.Size(msg("p1", 1, "x"))+intermediate.MessageOverhead) {
		t.Errorf("HeldBytes() = %d holding %d messages, want %d each, at most %d in all", got, held, proto.Size(msg("p1", 1, "x"))+intermediate.MessageOverhead, limit)
	}
}
