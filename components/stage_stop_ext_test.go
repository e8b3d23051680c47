package components_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/registry"
)

// noNacks fails t when l recorded a message handed back for good.
func noNacks(t *testing.T, l *nackLog) {
	t.Helper()
	for seq, reason := range l.get() {
		t.Errorf("%d messages handed back for good to their producer, as seq %d (%v); want none", len(l.get()), seq, reason)
		return
	}
}

// sendNumbered sends n messages of p with payloads prefix<from>,
// prefix<from+1>, …, failing t at the first Send that fails.
func sendNumbered(ctx context.Context, t *testing.T, p *components.Producer, prefix string, from, n int) {
	t.Helper()
	for i := range n {
		if _, err := p.Send(ctx, &messagev1.Message{Payload: fmt.Appendf(nil, "%s%d", prefix, from+i)}); err != nil {
			t.Fatalf("Send(%s%d) = %v", prefix, from+i, err)
		}
	}
}

// gatedSink starts consumer "sink" of service "replies", whose handler
// records each message in led once release is closed.
func gatedSink(m *mesh, led *ledger, release <-chan struct{}) {
	m.consumer("sink", func(ctx context.Context, d *components.Delivery) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return led.handler()(ctx, d)
	}, components.WithService("replies"), components.WithConcurrency(64))
}

// newPipeline starts a mesh with one instance of "requests" (r1) and one of
// "replies" (s1, with opts), the two ends of a stage.
func newPipeline(t *testing.T, opts ...intermediate.Option) (m *mesh, r1, s1 *hub) {
	t.Helper()
	m = newMesh(t)
	r1 = m.startHub("requests", "r1", "127.0.0.1")
	s1 = m.startHub("replies", "s1", "127.0.0.2", opts...)
	m.waitMembers("requests", 1)
	m.waitMembers("replies", 1)
	return m, r1, s1
}

// TestStage_DownstreamRefusalLeavesMessagesUnanswered checks that a stage
// whose downstream side is refused for good (an instance of its downstream
// service joins that refuses its producer id) hands nothing
// back to the source for good: what it held and what reaches it afterwards
// stay unacknowledged at the source for a stage that takes over, and its
// Close returns at once instead of waiting for acknowledgements that
// cannot come.
func TestStage_DownstreamRefusalLeavesMessagesUnanswered(t *testing.T) {
	m, r1, s1 := newPipeline(t)
	gate := make(chan struct{})
	led := newLedger()
	gatedSink(m, led, gate)
	stage := m.startStage(m.cli, "stage")
	waitConsumers(t, 1, r1, s1)
	nacks := &nackLog{reasons: make(map[uint64]messagev1.NackReason)}
	src := m.producer("src", components.WithService("requests"), components.WithNackHandler(nacks.handler()))
	waitProducer(t, "stage", s1)

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	const before, after = 20, 20
	sendNumbered(ctx, t, src, "b", 1, before)
	waitUntil(t, "s1 holding the stage's forwards", func() bool {
		ps := s1.producerStream(t, "stage")
		return ps != nil && ps.GetInFlight() == before
	})
	m.startHub("replies", "s2", "127.0.0.3", intermediate.WithGRPCServerOptions(refusePublisher("stage")))
	select {
	case <-stage.Done():
	case <-ctx.Done():
		t.Fatalf("the stage still runs after its downstream side was refused")
	}
	if err := stage.Err(); !errors.Is(err, components.ErrRefused) {
		t.Fatalf("stage Err() = %v, want ErrRefused", err)
	}
	sendNumbered(ctx, t, src, "a", 1, after)
	waitUntil(t, "the source's messages sent to r1", func() bool {
		ps := r1.producerStream(t, "src")
		return ps != nil && ps.GetReceived() >= before+after
	})
	close(gate)
	led.waitHandled(t, before)

	cctx, ccancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer ccancel()
	cerr := stage.Close(cctx)
	if cctx.Err() != nil {
		t.Errorf("stage Close() = %v after its context ended: it waited for acknowledgements that cannot come", cerr)
	}
	var ce *components.CloseError
	if !errors.As(cerr, &ce) || ce.Unacked != before {
		t.Errorf("stage Close() = %v, want a CloseError naming its %d forwards downstream left unacknowledged", cerr, before)
	}
	// Why they are: the refusal, though the stage closed its producer
	// with an ended context.
	if !errors.Is(cerr, components.ErrRefused) {
		t.Errorf("stage Close() = %v, want it to wrap ErrRefused", cerr)
	}
	noNacks(t, nacks)
	if st := src.Stats(); st.Nacked != 0 || st.Acked != 0 || st.InFlight != before+after {
		t.Errorf("source stats %+v, want its %d messages unacknowledged and none handed back", st, before+after)
	}
}

// TestStage_CloseWithDownstreamDown checks that a stage closed while its
// downstream hub is down, with forwards in hand when its Close runs out of
// time, hands none of them back to the source for good: a stage with the
// same id that comes back with a new downstream hub forwards every message,
// and the sink handles each exactly once.
func TestStage_CloseWithDownstreamDown(t *testing.T) {
	m, r1, s1 := newPipeline(t)
	led := newLedger()
	m.consumer("sink", led.handler(), components.WithService("replies"))
	newStage := func() *components.Stage { return m.startStage(m.cli, "stage") }
	stage := newStage()
	waitConsumers(t, 1, r1, s1)
	nacks := &nackLog{reasons: make(map[uint64]messagev1.NackReason)}
	src := m.producer("src", components.WithService("requests"), components.WithNackHandler(nacks.handler()))
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	const n1, n2 = 50, 50
	for i := range n1 {
		if err := src.SendWait(ctx, &messagev1.Message{Payload: fmt.Appendf(nil, "m%d", i+1)}); err != nil {
			t.Fatalf("SendWait(m%d) = %v", i+1, err)
		}
	}
	s1.srv.Stop() // the downstream hub crashes
	sendNumbered(ctx, t, src, "m", n1+1, n2)
	waitUntil(t, "the stage holding forwards", func() bool { return stage.Stats().Producer.InFlight > 0 })
	cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
	_ = stage.Close(cctx) // runs out of time: nothing can be acknowledged downstream
	ccancel()
	m.startHub("replies", "s3", "127.0.0.3")
	newStage()
	pctx, pcancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer pcancel()
	if err := src.Close(pctx); err != nil {
		t.Errorf("source Close() = %v, want every message acknowledged", err)
	}
	noNacks(t, nacks)
	led.waitHandled(t, n1+n2)
	led.checkExactlyOnce(t, map[string]int{"src": n1 + n2})
}

// replayStream serves a stream whose first message an interceptor already
// read.
type replayStream struct {
	grpc.ServerStream
	first proto.Message
}

func (s *replayStream) RecvMsg(m any) error {
	if s.first != nil {
		proto.Merge(m.(proto.Message), s.first)
		s.first = nil
		return nil
	}
	return s.ServerStream.RecvMsg(m)
}

// refuseHello refuses, UNAUTHENTICATED, the streams of method whose first
// request idOf finds id in: an instance whose authentication turns one
// component away for good.
func refuseHello[Req any, PReq interface {
	*Req
	proto.Message
}](method, id string, idOf func(PReq) string) grpc.ServerOption {
	return grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if info.FullMethod != method {
			return h(srv, ss)
		}
		req := PReq(new(Req))
		if err := ss.RecvMsg(req); err != nil {
			return err
		}
		if idOf(req) == id {
			return status.Errorf(codes.Unauthenticated, "refused here: %s", id)
		}
		return h(srv, &replayStream{ServerStream: ss, first: req})
	})
}

// refuseSubscriber refuses the subscribe hello of consumer id.
func refuseSubscriber(id string) grpc.ServerOption {
	return refuseHello(deliveryv1.SubscribeService_Subscribe_FullMethodName, id,
		func(r *deliveryv1.SubscribeRequest) string { return r.GetHello().GetConsumerId() })
}

// refusePublisher refuses the publish hello of producer id (a stage's
// downstream side).
func refusePublisher(id string) grpc.ServerOption {
	return refuseHello(deliveryv1.PublishService_Publish_FullMethodName, id,
		func(r *deliveryv1.PublishRequest) string { return r.GetHello().GetProducerId() })
}

// TestConsumer_StoppedGivesUpItsShare checks that a consumer that stops on
// its own (an instance refuses it for good) and is not closed marks its
// registration draining: it takes nothing new, and the group's other
// consumer handles every message, those sent to the stopped one included,
// exactly once.
func TestConsumer_StoppedGivesUpItsShare(t *testing.T) {
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	led := newLedger()
	c1 := m.consumer("c1", led.handler())
	m.consumer("c2", led.handler())
	waitConsumers(t, 2, h1)
	m.startHub(components.DefaultService, "i2", "127.0.0.2", intermediate.WithGRPCServerOptions(refuseSubscriber("c1")))
	select {
	case <-c1.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("c1 still runs after i2 refused it")
	}
	if err := c1.Err(); !errors.Is(err, components.ErrRefused) {
		t.Fatalf("c1 Err() = %v, want ErrRefused", err)
	}
	waitUntil(t, "c1's registration draining", func() bool {
		_, draining := registration(m, components.DefaultService, components.DefaultGroup, "c1")
		return draining
	})
	// A small window: messages held for the stopped consumer would stall
	// the producer.
	p := m.producer("p1", components.WithWindow(32))
	const n = 300
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	sent := startLoad(ctx, n, p).wait(t)
	led.waitHandled(t, n)
	led.checkExactlyOnce(t, sent)
}

// TestStage_RefusedWhileClosing checks that a stage whose downstream side is
// refused for good while its Close waits for forwards in hand returns then,
// not when its context ends, and hands none of them back to the source for
// good.
func TestStage_RefusedWhileClosing(t *testing.T) {
	m, r1, s1 := newPipeline(t)
	gate := make(chan struct{})
	defer close(gate)
	gatedSink(m, newLedger(), gate)
	stage := m.startStage(m.cli, "stage")
	waitConsumers(t, 1, r1, s1)
	nacks := &nackLog{reasons: make(map[uint64]messagev1.NackReason)}
	src := m.producer("src", components.WithService("requests"), components.WithNackHandler(nacks.handler()))
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	const n = 20
	sendNumbered(ctx, t, src, "m", 1, n)
	waitUntil(t, "s1 holding the stage's forwards", func() bool {
		ps := s1.producerStream(t, "stage")
		return ps != nil && ps.GetInFlight() == n
	})
	closeCtx, closeCancel := context.WithTimeout(context.Background(), 2*defaultTestTimeout)
	defer closeCancel()
	closed := make(chan error, 1)
	go func() { closed <- stage.Close(closeCtx) }()

	m.startHub("replies", "s2", "127.0.0.3", intermediate.WithGRPCServerOptions(refusePublisher("stage")))
	select {
	case err := <-closed:
		var ce *components.CloseError
		if !errors.As(err, &ce) || ce.Unacked != n || !errors.Is(err, components.ErrRefused) {
			t.Errorf("stage Close() = %v, want a CloseError naming its %d forwards unacknowledged and the refusal", err, n)
		}
	case <-time.After(defaultTestTimeout):
		t.Fatalf("stage Close() still waits %v after its downstream side was refused", defaultTestTimeout)
	}
	noNacks(t, nacks)
	if st := src.Stats(); st.Nacked != 0 || st.Acked != 0 || st.InFlight != n {
		t.Errorf("source stats %+v, want its %d messages unacknowledged and none handed back", st, n)
	}
}

// drainGate holds, while set, one etcd client's Txns that write a
// registration marked draining (SetDraining): an etcd that is slow, or cut
// off from this process, just when the mark is written. Other requests
// pass.
type drainGate struct {
	txnGate
}

func (g *drainGate) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if tr, ok := req.(*etcdserverpb.TxnRequest); ok {
		for _, op := range tr.GetSuccess() {
			if put := op.GetRequestPut(); put != nil && strings.Contains(string(put.GetValue()), `"draining":true`) {
				return g.txnGate.intercept(ctx, method, req, reply, cc, invoker, opts...)
			}
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// gatedClient returns an etcd client of m's etcd whose unary calls pass
// through intercept, closed when the test ends.
func gatedClient(t *testing.T, m *mesh, intercept grpc.UnaryClientInterceptor) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   m.etc.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(intercept)},
	})
	if err != nil {
		t.Fatalf("clientv3.New() = %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// registration returns whether consumer id's key of group exists in
// service, and whether it is marked draining.
func registration(m *mesh, service, group, id string) (present, draining bool) {
	resp, err := m.cli.Get(context.Background(), registry.ConsumerKey(testPrefix, service, group, id))
	if err != nil || len(resp.Kvs) != 1 {
		return false, false
	}
	v, err := registry.ParseConsumerValue(group, id, resp.Kvs[0].Value)
	return err == nil, err == nil && v.Draining
}

// TestConsumer_StoppedHandsOnWhatItWasSentBeforeItsMark checks that what an
// intermediate sent a consumer between its stop and its draining mark
// (held at etcd meanwhile), which the stopped consumer does not take, goes
// to the group's other consumer once the mark is written, without the
// stopped consumer being closed: every message is handled exactly once.
func TestConsumer_StoppedHandsOnWhatItWasSentBeforeItsMark(t *testing.T) {
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	gate := &drainGate{}
	t.Cleanup(gate.release)
	led := newLedger()
	c1 := (&mesh{t: t, etc: m.etc, cli: gatedClient(t, m, gate.intercept), log: m.log}).consumer("c1", led.handler())
	m.consumer("c2", led.handler())
	waitConsumers(t, 2, h1)
	p := m.producer("p1")
	gate.set()
	m.startHub(components.DefaultService, "i2", "127.0.0.2", intermediate.WithGRPCServerOptions(refuseSubscriber("c1")))
	select {
	case <-c1.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("c1 still runs after i2 refused it")
	}
	waitUntil(t, "c1's mark held at etcd", func() bool { return gate.held.Load() > 0 })
	const n = 160
	sent := startLoad(context.Background(), n, p).wait(t)
	waitUntil(t, "i1 sending c1 messages it does not take", func() bool {
		for _, cs := range h1.status(t).GetConsumers() {
			if cs.GetConsumerId() == "c1" && cs.GetInFlight() > 0 {
				return true
			}
		}
		return false
	})
	gate.release()
	led.waitHandled(t, n)
	led.checkExactlyOnce(t, sent)
	if _, draining := registration(m, components.DefaultService, components.DefaultGroup, "c1"); !draining {
		t.Errorf("c1's registration is not marked draining after it stopped")
	}
}

// TestStage_StoppedBeforeItRegisteredOwnsNothing checks that a stage whose
// downstream side is refused for good while its consumer side registers
// (its etcd writes held meanwhile) ends with no registration that owns
// messages: the group's other stage forwards every message, and the sink
// handles each exactly once, without the stopped stage being closed.
func TestStage_StoppedBeforeItRegisteredOwnsNothing(t *testing.T) {
	m, r1, s1 := newPipeline(t, intermediate.WithGRPCServerOptions(refusePublisher("sA")))
	led := newLedger()
	m.consumer("sink", led.handler(), components.WithService("replies"))
	m.startStage(m.cli, "sB")
	waitConsumers(t, 1, r1, s1)

	gate := &txnGate{}
	t.Cleanup(gate.release)
	acli := gatedClient(t, m, gate.intercept)
	gate.set()
	sA := m.startStage(acli, "sA")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sA.Close(ctx)
	})
	select {
	case <-sA.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("sA still runs after s1 refused it")
	}
	// The registration held at etcd goes through once released, and is
	// then marked draining at once.
	gate.release()
	waitUntil(t, "sA's registration marked draining", func() bool {
		present, draining := registration(m, "requests", components.DefaultGroup, "sA")
		return present && draining
	})
	src := m.producer("src", components.WithService("requests"))
	const n = 64
	sent := startLoad(context.Background(), n, src).wait(t)
	led.waitHandled(t, n)
	led.checkExactlyOnce(t, sent)
}

// TestStage_CloseDoesNotWaitForTheStopsMark checks that a stage whose
// downstream side is refused while etcd does not answer its draining mark
// closes within its Close context: the mark the stop writes in the
// background does not hold Close.
func TestStage_CloseDoesNotWaitForTheStopsMark(t *testing.T) {
	m, r1, s1 := newPipeline(t)
	gate := &drainGate{}
	t.Cleanup(gate.release)
	sA := m.startStage(gatedClient(t, m, gate.intercept), "sA")
	waitConsumers(t, 1, r1)
	waitProducer(t, "sA", s1)
	gate.set()
	m.startHub("replies", "s2", "127.0.0.3", intermediate.WithGRPCServerOptions(refusePublisher("sA")))
	waitUntil(t, "sA's mark held at etcd", func() bool { return gate.held.Load() > 0 })
	closeReturnsInTime(t, "sA", sA.Close)
}

// closeReturnsInTime calls closeFn with a context of one second and fails t
// when it returns later than three seconds after: waiting on etcd past its
// context took five or six.
func closeReturnsInTime(t *testing.T, name string, closeFn func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err := closeFn(ctx)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("%s Close() with a context of 1s = %v after %v: it waited on etcd past its context", name, err, took.Round(time.Millisecond))
	}
}

// checkOnceBesides fails t for every message of producer p (1 to n) that led
// counts other than once, but for seq besides, which may be handled twice.
func checkOnceBesides(t *testing.T, led *ledger, p string, n int, besides uint64) {
	t.Helper()
	led.mu.Lock()
	defer led.mu.Unlock()
	for seq := uint64(1); seq <= uint64(n); seq++ {
		if c := led.counts[p][seq]; c != 1 && !(c == 2 && seq == besides) {
			t.Errorf("message %s/%d handled %d times, want once", p, seq, c)
		}
	}
}

// TestConsumer_StoppedHandsNothingFromAnEndedStream checks that a consumer
// that stopped on its own (refused by an instance) does not handle the
// messages queued from a stream that has ended (its intermediate crashed):
// its registration is marked draining, so they go to the group's other
// consumer, and handling them as well would handle them twice. Only the
// message in its handler when the stream ended may be handled twice.
func TestConsumer_StoppedHandsNothingFromAnEndedStream(t *testing.T) {
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	led := newLedger()
	entered := make(chan uint64, 1)
	release := make(chan struct{})
	reg := prometheus.NewRegistry()
	a := m.consumer("a", heldHandler(led, entered, release), components.WithMetrics(reg))
	m.consumer("b", led.handler())
	waitConsumers(t, 2, h1)
	p := m.producer("p")
	const n = 64
	load := startLoad(context.Background(), n, p)
	first := waitHeld(t, h1, entered)
	h2 := m.startHub(components.DefaultService, "i2", "127.0.0.2", intermediate.WithGRPCServerOptions(refuseSubscriber("a")))
	select {
	case <-a.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("a still runs after i2 refused it")
	}
	waitUntil(t, "a's registration draining", func() bool {
		_, draining := registration(m, components.DefaultService, components.DefaultGroup, "a")
		return draining
	})
	waitConsumers(t, 1, h2)
	h1.srv.Stop() // i1 crashes with a's messages queued
	sent := load.wait(t)
	led.waitHandled(t, n)
	// Until a sees its stream end, it cannot tell its queued messages
	// from ones it may still answer; a draining consumer may then handle
	// them again, as the guarantee allows.
	waitUntil(t, "a to see its stream to i1 end", func() bool { return a.OpenStreams() == 0 })
	close(release)
	// Not closed: a closing consumer hands nothing from an ended stream
	// anyway. Wait for a to have nothing queued or in hand.
	waitUntil(t, "a with nothing in hand", func() bool {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("Gather() = %v", err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "butterfly_consumer_in_flight" {
				return mf.GetMetric()[0].GetGauge().GetValue() == 0
			}
		}
		return false
	})
	checkOnceBesides(t, led, "p", sent["p"], first)
}

// TestConsumer_CloseDoesNotWaitForAMark checks that a consumer refused for
// good while etcd does not answer its draining mark closes within its
// Close context: neither the mark its stop writes in the background nor the
// keeper's write of it again, once that one failed, holds Close, whose own
// mark gives up with its context.
func TestConsumer_CloseDoesNotWaitForAMark(t *testing.T) {
	for _, tc := range []struct {
		name string
		held int32 // marks held at etcd before Close
	}{
		{"the stop's", 1},
		{"the keeper's again", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
			gate := &drainGate{}
			t.Cleanup(gate.release)
			c1 := (&mesh{t: t, etc: m.etc, cli: gatedClient(t, m, gate.intercept), log: m.log}).consumer("c1", newLedger().handler())
			waitConsumers(t, 1, h1)
			gate.set()
			m.startHub(components.DefaultService, "i2", "127.0.0.2", intermediate.WithGRPCServerOptions(refuseSubscriber("c1")))
			waitUntil(t, fmt.Sprintf("%d marks held at etcd", tc.held), func() bool { return gate.held.Load() >= tc.held })
			closeReturnsInTime(t, "c1", c1.Close)
		})
	}
}

// TestStage_ProducerStopAfterConsumerStopEndsItsForwards checks that a
// stage whose consumer side stops first (refused upstream) and whose
// producer side stops after (refused downstream) ends its forwards in hand,
// without being closed: they go back upstream unanswered and the group's
// other stage forwards them, so the source has every message acknowledged.
func TestStage_ProducerStopAfterConsumerStopEndsItsForwards(t *testing.T) {
	m, r1, s1 := newPipeline(t)
	release := make(chan struct{})
	led := newLedger()
	gatedSink(m, led, release)
	sA := m.startStage(m.cli, "sA")
	m.startStage(m.cli, "sB")
	waitConsumers(t, 2, r1)
	waitProducer(t, "sA", s1)
	waitProducer(t, "sB", s1)
	src := m.producer("src", components.WithService("requests"))
	const n = 64
	sent := startLoad(context.Background(), n, src).wait(t)
	waitUntil(t, "s1 holding sA's forwards", func() bool {
		ps := s1.producerStream(t, "sA")
		return ps != nil && ps.GetInFlight() > 0
	})
	m.startHub("requests", "r2", "127.0.0.3", intermediate.WithGRPCServerOptions(refuseSubscriber("sA")))
	select {
	case <-sA.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("sA still runs after r2 refused it")
	}
	m.startHub("replies", "s2", "127.0.0.4", intermediate.WithGRPCServerOptions(refusePublisher("sA")))
	waitUntil(t, "sA's producer side stopped", func() bool { return s1.producerStream(t, "sA") == nil })
	close(release)
	waitUntil(t, "every source message acknowledged", func() bool { return src.Stats().InFlight == 0 })
	led.waitHandled(t, n)
	led.checkExactlyOnce(t, sent)
}

// watchDelay delays, while set, every watch response one etcd client
// receives: an intermediate that sees the registry late (watch lag).
type watchDelay struct{ d atomic.Int64 }

type delayedStream struct {
	grpc.ClientStream
	wd *watchDelay
}

func (s *delayedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if d := s.wd.d.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	return err
}

// watchDelayedClient returns an etcd client of m's etcd whose watch
// responses wd delays, closed when the test ends.
func watchDelayedClient(t *testing.T, m *mesh, wd *watchDelay) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   m.etc.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			cs, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil || method != "/etcdserverpb.Watch/Watch" {
				return cs, err
			}
			return &delayedStream{ClientStream: cs, wd: wd}, nil
		})},
	})
	if err != nil {
		t.Fatalf("clientv3.New() = %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestConsumer_TakenOverLeavesItsStreams checks that a consumer taken over
// by a second process with its id, and not closed, ends its streams: what
// an intermediate that sees the takeover late (its watch a second behind)
// sent it after its stop goes to the group's consumers when the stream
// ends, and every message is handled exactly once.
func TestConsumer_TakenOverLeavesItsStreams(t *testing.T) {
	m := newMesh(t)
	wd := &watchDelay{}
	h1 := (&mesh{t: t, etc: m.etc, cli: watchDelayedClient(t, m, wd), log: m.log}).startHub(components.DefaultService, "i1", "127.0.0.1")
	led := newLedger()
	old := m.consumer("c1", led.handler())
	m.consumer("c2", led.handler())
	waitConsumers(t, 2, h1)
	p := m.producer("p")
	const n = 3000
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	load := &load{stop: make(chan struct{}), sent: make(map[string]int)}
	load.wg.Add(1)
	go func() {
		defer load.wg.Done()
		i := 0
		for ; i < n; i++ {
			msg := &messagev1.Message{Key: fmt.Appendf(nil, "%d", i%16), Payload: fmt.Appendf(nil, "p-%d", i+1)}
			if _, err := p.Send(ctx, msg); err != nil {
				load.mu.Lock()
				load.errs = append(load.errs, err)
				load.mu.Unlock()
				break
			}
			time.Sleep(time.Millisecond)
		}
		load.mu.Lock()
		load.sent[p.ID()] = i
		load.mu.Unlock()
	}()
	led.waitHandled(t, n/4)
	wd.d.Store(int64(time.Second))  // i1 sees etcd a second late from now
	m.consumer("c1", led.handler()) // takes c1 over
	select {
	case <-old.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatal("the first c1 still runs after it was taken over")
	}
	if !errors.Is(old.Err(), components.ErrReplaced) {
		t.Fatalf("the first c1's Err() = %v, want ErrReplaced", old.Err())
	}
	sent := load.wait(t)
	led.waitHandled(t, n)
	led.checkExactlyOnce(t, sent)
}

// TestConsumer_CloseReturnsWithinItsContextWhenEtcdHoldsWrites checks that a
// Close whose drain runs out of time while etcd answers none of its writes
// returns soon after its context ends: the registration's removal is given
// what is left of the context, at least 250 ms, not five seconds.
func TestConsumer_CloseReturnsWithinItsContextWhenEtcdHoldsWrites(t *testing.T) {
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	gate := &txnGate{}
	t.Cleanup(gate.release)
	c1 := (&mesh{t: t, etc: m.etc, cli: gatedClient(t, m, gate.intercept), log: m.log}).consumer("c1", newLedger().handler())
	waitConsumers(t, 1, h1)
	gate.set() // etcd takes no write from c1 from now on
	closeReturnsInTime(t, "c1", c1.Close)
}

// opGate holds, while set, the unary etcd calls of one client that match:
// an etcd that answers some writes and holds others.
type opGate struct {
	txnGate
	match func(method string, req any) bool
}

func (g *opGate) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if g.match(method, req) {
		if err := g.wait(ctx); err != nil {
			return err
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// TestConsumer_CloseCanceledWhileRemovingItsKey checks that a Close whose
// context is canceled while etcd holds the removal of its key returns soon
// after: the removal gets 250 ms past the context, not five seconds.
func TestConsumer_CloseCanceledWhileRemovingItsKey(t *testing.T) {
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	gate := &opGate{match: func(_ string, req any) bool {
		tr, ok := req.(*etcdserverpb.TxnRequest)
		if !ok {
			return false
		}
		for _, op := range tr.GetSuccess() {
			if op.GetRequestDeleteRange() != nil {
				return true
			}
		}
		return false
	}}
	t.Cleanup(gate.release)
	c1 := (&mesh{t: t, etc: m.etc, cli: gatedClient(t, m, gate.intercept), log: m.log}).consumer("c1", newLedger().handler())
	waitConsumers(t, 1, h1)
	gate.set() // etcd holds the key's removal from now on
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c1.Close(ctx) }()
	waitUntil(t, "Close removing the key", func() bool { return gate.held.Load() > 0 })
	canceled := time.Now()
	cancel()
	select {
	case <-done:
		if took := time.Since(canceled); took > 2*time.Second {
			t.Errorf("Close() returned %v after its context was canceled: it waited on etcd past its context", took.Round(time.Millisecond))
		}
	case <-time.After(defaultTestTimeout):
		t.Fatalf("Close() still runs %v after its context was canceled", defaultTestTimeout)
	}
}

// TestConsumer_CloseWhileRegistering checks that a Close that comes while
// etcd holds the consumer's registration (the put of its key, then the
// revoke of the lease granted for it) returns within its context and the
// grace of its clean-up.
func TestConsumer_CloseWhileRegistering(t *testing.T) {
	m := newMesh(t)
	m.startHub(components.DefaultService, "i1", "127.0.0.1")
	key := registry.ConsumerKey(testPrefix, components.DefaultService, components.DefaultGroup, "c1")
	gate := &opGate{match: func(method string, req any) bool {
		if method == "/etcdserverpb.Lease/LeaseRevoke" {
			return true
		}
		tr, ok := req.(*etcdserverpb.TxnRequest)
		if !ok {
			return false
		}
		for _, op := range tr.GetSuccess() {
			if p := op.GetRequestPut(); p != nil && string(p.GetKey()) == key {
				return true
			}
		}
		return false
	}}
	t.Cleanup(gate.release)
	gate.set()
	c1 := (&mesh{t: t, etc: m.etc, cli: gatedClient(t, m, gate.intercept), log: m.log}).consumer("c1", newLedger().handler())
	waitUntil(t, "c1's registration held at etcd", func() bool { return gate.held.Load() > 0 })
	closeReturnsInTime(t, "c1", c1.Close)
}
