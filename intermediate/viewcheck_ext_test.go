package intermediate_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/tcpproxy"
	"github.com/butterfly-mesh/butterfly/registry"
)

// gate holds the intermediate's etcd watch responses while closed (its
// view lags), delays its reads (Range) by all and by a key's own delay, and
// counts them by key.
type gate struct {
	all    atomic.Int64 // time.Duration
	mu     sync.Mutex
	closed bool
	open   chan struct{}
	delays sync.Map // key -> time.Duration
	counts sync.Map // key -> *atomic.Int64
}

func (g *gate) reads(key string) int64 {
	v, _ := g.counts.LoadOrStore(key, new(atomic.Int64))
	return v.(*atomic.Int64).Load()
}

func (g *gate) setClosed(c bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c && !g.closed {
		g.open = make(chan struct{})
	}
	if !c && g.closed {
		close(g.open)
	}
	g.closed = c
}

func (g *gate) wait() {
	g.mu.Lock()
	ch, c := g.open, g.closed
	g.mu.Unlock()
	if c {
		<-ch
	}
}

type gatedStream struct {
	grpc.ClientStream
	g *gate
}

func (s *gatedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	s.g.wait()
	return err
}

// gatedRig is newRig with the intermediate's etcd client behind a gate.
func gatedRig(t *testing.T, opts ...intermediate.Option) (*rig, *gate) {
	t.Helper()
	g := &gate{}
	etc := etcdtest.Start(t)
	unary := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if rr, ok := req.(*etcdserverpb.RangeRequest); ok {
			v, _ := g.counts.LoadOrStore(string(rr.Key), new(atomic.Int64))
			v.(*atomic.Int64).Add(1)
			d := time.Duration(g.all.Load())
			if kd, ok := g.delays.Load(string(rr.Key)); ok {
				d += kd.(time.Duration)
			}
			time.Sleep(d)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	stream := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != "/etcdserverpb.Watch/Watch" {
			return cs, err
		}
		return &gatedStream{cs, g}, nil
	}
	own, err := clientv3.New(clientv3.Config{Endpoints: []string{etc.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithUnaryInterceptor(unary), grpc.WithStreamInterceptor(stream)}})
	if err != nil {
		t.Fatalf("clientv3.New() = %v", err)
	}
	t.Cleanup(func() { own.Close() })
	t.Cleanup(func() { g.setClosed(false) })
	return rigOn(t, etc.Client(t), own, opts...), g
}

// slowReadRig is newRig with the intermediate's reads of etcd taking at
// least delay more.
func slowReadRig(t *testing.T, delay time.Duration, opts ...intermediate.Option) *rig {
	t.Helper()
	r, g := gatedRig(t, opts...)
	g.all.Store(int64(delay))
	return r
}

// cutRig is newRig with the intermediate's etcd client behind a proxy the
// test can blackhole.
func cutRig(t *testing.T, opts ...intermediate.Option) (*rig, *tcpproxy.Proxy) {
	t.Helper()
	etc := etcdtest.Start(t)
	own, px := etc.ProxiedClient(t)
	t.Cleanup(func() { px.Blackhole(false) })
	return rigOn(t, etc.Client(t), own, opts...), px
}

// ackAll subscribes consumer c1 of the default group, which acknowledges
// every delivery, waits until the intermediate knows it, and returns the
// count of what it handled.
func (r *rig) ackAll() *atomic.Int64 {
	r.t.Helper()
	handled := new(atomic.Int64)
	go ackEvery(r.subscribeGroup(r.ctx(), "c1", intermediate.DefaultGroup, 1<<20), counting(handled))
	r.waitConsumers(1)
	return handled
}

// ackEvery acknowledges every delivery sub receives until it ends, and
// tells seen of each.
func ackEvery(sub deliveryv1.SubscribeService_SubscribeClient, seen func(*deliveryv1.Delivery)) {
	for {
		resp, err := sub.Recv()
		if err != nil {
			return
		}
		b := resp.GetBatch()
		if b == nil {
			continue
		}
		a := &deliveryv1.DeliveryAck{}
		for _, d := range b.GetDeliveries() {
			a.Acked = append(a.Acked, &messagev1.SeqRange{First: d.GetDeliveryId(), Last: d.GetDeliveryId()})
			seen(d)
		}
		if err := sub.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Ack{Ack: a}}); err != nil {
			return
		}
	}
}

// counting returns a seen for ackEvery that counts into n.
func counting(n *atomic.Int64) func(*deliveryv1.Delivery) {
	return func(*deliveryv1.Delivery) { n.Add(1) }
}

// recording returns a seen for ackEvery that records each message's seq.
func recording(seqs *sync.Map) func(*deliveryv1.Delivery) {
	return func(d *deliveryv1.Delivery) { seqs.Store(d.GetMessage().GetId().GetSeq(), true) }
}

// answers counts what a publish stream is answered, until it ends.
type answers struct {
	acked, nacked atomic.Int64
	mu            sync.Mutex
	reasons       map[messagev1.NackReason]int
}

func countAnswers(pub deliveryv1.PublishService_PublishClient) *answers {
	a := &answers{reasons: map[messagev1.NackReason]int{}}
	go func() {
		for {
			resp, err := pub.Recv()
			if err != nil {
				return
			}
			ack := resp.GetAck()
			for _, r := range ack.GetAcked() {
				a.acked.Add(int64(r.GetLast() - r.GetFirst() + 1))
			}
			a.mu.Lock()
			for _, n := range ack.GetNacked() {
				a.reasons[n.GetReason()]++
			}
			a.mu.Unlock()
			a.nacked.Add(int64(len(ack.GetNacked())))
		}
	}()
	return a
}

// forged returns a message whose routes name n groups that never existed.
func forged(id string, seq uint64, n int) *messagev1.Message {
	m := msg(id, seq, "x")
	for i := range n {
		m.Routes = append(m.Routes, &messagev1.Route{Group: fmt.Sprintf("forged-%s-%d-%d", id, seq, i)})
	}
	return m
}

// TestViewCheck_GoneConsumerUnderSteadyResends sends, one a millisecond
// for a second, messages whose route names a consumer that is not
// registered (one that left), while each read of etcd takes 3 ms: a read
// under way when a message arrives revisits it when it ends, and starts
// another for it, so nearly every message is routed to the group's
// consumer. A read begun for a later message once replaced the one under
// way, whose answer was then dropped: most went back OWNER_UNREACHABLE.
func TestViewCheck_GoneConsumerUnderSteadyResends(t *testing.T) {
	r := slowReadRig(t, 3*time.Millisecond, intermediate.WithOwnerWait(500*time.Millisecond))
	handled := r.ackAll()
	pub := r.producer("p1")
	got := countAnswers(pub)
	seq := uint64(1)
	for stop := time.Now().Add(time.Second); time.Now().Before(stop); seq++ {
		m := msg("p1", seq, "x")
		m.Routes = []*messagev1.Route{{Group: intermediate.DefaultGroup, Consumer: "left"}}
		sendBatch(t, pub, seq, m)
		time.Sleep(time.Millisecond)
	}
	sent := int64(seq - 1)
	waitFor(t, "every message answered", func() bool { return got.acked.Load()+got.nacked.Load() == sent })
	if n := got.nacked.Load(); n > sent/20 {
		got.mu.Lock()
		defer got.mu.Unlock()
		t.Errorf("%d of %d messages handed back (%v), want nearly all routed: etcd says the consumer they name is gone", n, sent, got.reasons)
	}
	if handled.Load() != got.acked.Load() {
		t.Errorf("handled %d, acknowledged %d", handled.Load(), got.acked.Load())
	}
	waitFor(t, "no check kept once nothing waits", func() bool {
		w, c, _ := r.srv.ViewState()
		return w == 0 && c == 0
	})
}

// TestViewCheck_ForgedRoutesBounded checks what a producer that forges
// routes can make an intermediate do: a message naming 1 024 unknown groups
// waits on 16 at a time and goes back at the owner wait without the ones
// found gone; messages naming new ones each time keep at most their
// stream's reads under way and their checks only while they wait. Meanwhile another
// producer's resend naming a consumer that left is routed every time: the
// bounds left it reads of its own.
func TestViewCheck_ForgedRoutesBounded(t *testing.T) {
	r := slowReadRig(t, 20*time.Millisecond, intermediate.WithOwnerWait(300*time.Millisecond))
	r.ackAll()
	lctx, lcancel := context.WithTimeout(context.Background(), time.Minute)
	defer lcancel()

	evil, _ := r.publishOn(lctx, r.conn, &deliveryv1.PublishHello{ProducerId: "evil", Incarnation: 1, Instance: "i1", HeartbeatIntervalMs: quietHeartbeatMs})
	sendBatch(t, evil, 1, forged("evil", 1, intermediate.MaxRoutes))
	a := nextAck(t, evil)
	if len(a.GetNacked()) != 1 || a.GetNacked()[0].GetReason() != messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE {
		t.Fatalf("a message naming %d unknown groups was answered %v, want it handed back OWNER_UNREACHABLE", intermediate.MaxRoutes, a)
	}
	// 16 names at a time, 8 reads of 20 ms at once, for 300 ms: what it
	// learned (groups that do not exist) is dropped from the routes it
	// goes back with, and it would learn the rest on its next attempts.
	if n := len(a.GetNacked()[0].GetRoutes()); n >= intermediate.MaxRoutes || n == 0 {
		t.Errorf("the forged message went back with %d of its %d routes, want those its reads found gone dropped, and not all of them", n, intermediate.MaxRoutes)
	}
	waitFor(t, "no check kept once nothing waits", func() bool {
		w, c, reads := r.srv.ViewState()
		return w == 0 && c == 0 && reads == 0
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := countAnswers(evil)
	var sent atomic.Int64
	var maxReads, maxChecks atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for seq := uint64(2); ctx.Err() == nil; seq++ {
			if err := evil.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{FirstSeq: seq, Messages: []*messagev1.Message{forged("evil", seq, 16)}}}}); err != nil {
				return
			}
			sent.Add(1)
			_, c, reads := r.srv.ViewState()
			if int64(reads) > maxReads.Load() {
				maxReads.Store(int64(reads))
			}
			if int64(c) > maxChecks.Load() {
				maxChecks.Store(int64(c))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()

	good := r.producer("good")
	for seq := uint64(1); seq <= 10; seq++ {
		m := msg("good", seq, "x")
		m.Routes = []*messagev1.Route{{Group: intermediate.DefaultGroup, Consumer: "left"}}
		sendBatch(t, good, seq, m)
		if a := nextAck(t, good); len(a.GetAcked()) != 1 {
			t.Errorf("another producer's resend #%d naming a consumer that left was answered %v, want it acknowledged", seq, a)
		}
	}
	cancel()
	<-done
	waitFor(t, "every forged message answered", func() bool { return got.acked.Load()+got.nacked.Load() == sent.Load() })
	// 8 reads for the stream; the other producer's one; checks only for
	// the forged messages that waited at once (16 names each).
	if n := maxReads.Load(); n > 9 {
		t.Errorf("%d reads under way at once for one producer's forged routes, want at most its 8", n)
	}
	if n := maxChecks.Load(); n > 16*int64(300/5+10) {
		t.Errorf("%d checks kept at once, want no more than the names of the messages waiting", n)
	}
	waitFor(t, "no check kept once nothing waits", func() bool {
		w, c, reads := r.srv.ViewState()
		return w == 0 && c == 0 && reads == 0
	})
}

// handedBackAcross declares groups g0000 and up, without consumers, and
// sends p1's message 1 until it comes back naming want groups in its
// routes; it returns the stream, those routes and the stream's next seq.
func handedBackAcross(t *testing.T, r *rig, groups, want int) (deliveryv1.PublishService_PublishClient, []*messagev1.Route, uint64) {
	t.Helper()
	for i := range groups {
		if _, err := registry.CreateGroup(r.ctx(), r.cli, service, fmt.Sprintf("g%04d", i), "test", registry.WithPrefix(prefix)); err != nil {
			t.Fatalf("CreateGroup(%d) = %v", i, err)
		}
	}
	pub := r.producer("p1")
	var routes []*messagev1.Route
	next := uint64(1)
	waitFor(t, fmt.Sprintf("the message handed back naming %d groups", want), func() bool {
		sendBatch(t, pub, next, msg("p1", 1, "x"))
		next++
		a := nextAck(t, pub)
		if len(a.GetNacked()) != 1 {
			t.Fatalf("answer %v, want one nack (groups without consumers)", a)
		}
		routes = a.GetNacked()[0].GetRoutes()
		return len(routes) == want
	})
	return pub, routes, next
}

// TestViewCheck_ManyGroupsRoutesWithinMaxRoutes checks that with more
// groups declared than MaxRoutes, a message handed back before any copy
// was sent names no more groups than a resend may carry: its resend is not
// refused INVALID.
func TestViewCheck_ManyGroupsRoutesWithinMaxRoutes(t *testing.T) {
	r := newRig(t, intermediate.WithNoConsumerTimeout(300*time.Millisecond), intermediate.WithOwnerWait(300*time.Millisecond))
	pub, routes, next := handedBackAcross(t, r, intermediate.MaxRoutes+1, intermediate.MaxRoutes)
	m := msg("p1", 1, "x")
	m.Routes = routes
	sendBatch(t, pub, next, m)
	if a := nextAck(t, pub); len(a.GetNacked()) != 1 || a.GetNacked()[0].GetReason() == messagev1.NackReason_NACK_REASON_INVALID {
		t.Errorf("the resend with the routes the intermediate wrote was answered %v, want it handed back again, not refused", a)
	}
}

// TestViewCheck_StopWithAReadUnderWay checks that a read of etcd under way
// for a waiting message does not hold Serve once Stop is called: with etcd
// cut off and an owner wait of 10s, Serve returns well before the read's
// own timeout.
func TestViewCheck_StopWithAReadUnderWay(t *testing.T) {
	r, px := cutRig(t, intermediate.WithOwnerWait(10*time.Second), intermediate.WithNoConsumerTimeout(20*time.Second))
	r.ackAll()
	pub := r.producer("p1")
	px.Blackhole(true)
	m := msg("p1", 1, "x")
	m.Routes = []*messagev1.Route{{Group: intermediate.DefaultGroup, Consumer: "left"}}
	sendBatch(t, pub, 1, m)
	waitFor(t, "a read under way", func() bool { _, _, reads := r.srv.ViewState(); return reads == 1 })
	stopped := make(chan struct{})
	go func() {
		r.srv.Stop()
		r.wait()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatalf("Serve still running 5s after Stop, with a read of etcd under way for a 10s owner wait")
	}
}

// TestViewCheck_AnAnswerFromBeforeTheMessageDoesNotCount checks that an
// answer counts only for the messages that arrived before its read began:
// a first read found consumer c2 gone; c2 registers, which the view does
// not learn (its watch held); a message sent to c2 by an intermediate that
// knows it arrives and starts a second, slow read. While that read is under
// way, another of the message's routes is answered and the message is
// reviewed: it must not be routed past c2 on the first read's answer, which
// once took the second read's start for its own (h2 went to c1, 6 of 6).
func TestViewCheck_AnAnswerFromBeforeTheMessageDoesNotCount(t *testing.T) {
	r, g := gatedRig(t, intermediate.WithOwnerWait(3*time.Second), intermediate.WithNoConsumerTimeout(10*time.Second))
	var got sync.Map
	go ackEvery(r.subscribeGroup(r.ctx(), "c1", intermediate.DefaultGroup, 1<<20), recording(&got))
	r.waitConsumers(1)
	pub := r.producer("p1")
	answers := countAnswers(pub)

	g.setClosed(true) // the view lags from here
	ctx := r.ctx()
	if _, err := registry.CreateGroup(ctx, r.cli, service, "gz", "test", registry.WithPrefix(prefix)); err != nil {
		t.Fatalf("CreateGroup(gz) = %v", err)
	}
	// h1 names c2 (not registered: the first read finds it gone) and gz
	// (declared, unknown to the view: h1 waits on, so c2's check is kept).
	m1 := msg("p1", 1, "x")
	m1.Routes = []*messagev1.Route{{Group: intermediate.DefaultGroup, Consumer: "c2"}, {Group: "gz"}}
	sendBatch(t, pub, 1, m1)
	waitFor(t, "the first reads done", func() bool { w, _, reads := r.srv.ViewState(); return w == 1 && reads == 0 })

	reg, err := registry.RegisterConsumer(ctx, r.cli, service, intermediate.DefaultGroup, "c2", registry.WithPrefix(prefix), registry.WithTTL(30*time.Second))
	if err != nil {
		t.Fatalf("RegisterConsumer(c2) = %v", err)
	}
	defer reg.Close(context.Background())
	g.delays.Store(registry.ConsumerKey(prefix, service, intermediate.DefaultGroup, "c2"), 1500*time.Millisecond)
	ghost := registry.GroupKey(prefix, service, "ghost")
	g.delays.Store(ghost, 100*time.Millisecond)

	m2 := msg("p1", 2, "x")
	m2.Routes = []*messagev1.Route{{Group: intermediate.DefaultGroup, Consumer: "c2"}, {Group: "ghost"}}
	sendBatch(t, pub, 2, m2)
	waitFor(t, "the read of ghost done", func() bool { return g.reads(ghost) == 1 })
	time.Sleep(300 * time.Millisecond) // ghost's answer reviewed h2; c2's second read under way
	if _, ok := got.Load(uint64(2)); ok {
		t.Errorf("h2 went to c1 while c2, the consumer its route names, is registered and no read begun after h2 arrived had answered (acked %d, nacked %d)", answers.acked.Load(), answers.nacked.Load())
	}
}

// TestViewCheck_DeletedGroupsLearnedOnce checks that a message whose
// routes name more deleted groups than it waits on at a time is routed by
// an intermediate whose view is current: it reads 16 names, then the next;
// it once went back at once, every time, with the same routes.
func TestViewCheck_DeletedGroupsLearnedOnce(t *testing.T) {
	r := newRig(t, intermediate.WithNoConsumerTimeout(300*time.Millisecond), intermediate.WithOwnerWait(300*time.Millisecond))
	r.ackAll()
	const n = 40
	pub, routes, next := handedBackAcross(t, r, n, n+1)
	for i := range n {
		if _, err := registry.DeleteGroup(r.ctx(), r.cli, service, fmt.Sprintf("g%04d", i), registry.WithPrefix(prefix)); err != nil {
			t.Fatalf("DeleteGroup(%d) = %v", i, err)
		}
	}
	waitFor(t, "the view without the groups", func() bool {
		m := msg("p1", 2, "x")
		sendBatch(t, pub, next, m)
		next++
		return len(nextAck(t, pub).GetAcked()) == 1
	})
	m := msg("p1", 1, "x")
	m.Routes = routes
	sendBatch(t, pub, next, m)
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 {
		t.Errorf("the resend naming %d deleted groups was answered %v, want it routed to the default group and acknowledged", n, a)
	}
}

// TestViewCheck_GoneKeyReadOnce checks that a key a read found gone since
// a message arrived is not read again while the message waits on another:
// it was read at every janitor tick (11 times in a 2s owner wait).
func TestViewCheck_GoneKeyReadOnce(t *testing.T) {
	r, g := gatedRig(t, intermediate.WithOwnerWait(2*time.Second), intermediate.WithNoConsumerTimeout(10*time.Second))
	var got sync.Map
	go ackEvery(r.subscribeGroup(r.ctx(), "c1", intermediate.DefaultGroup, 1<<20), recording(&got))
	r.waitConsumers(1)
	pub := r.producer("p1")
	answers := countAnswers(pub)
	g.setClosed(true)
	if _, err := registry.CreateGroup(r.ctx(), r.cli, service, "gz", "test", registry.WithPrefix(prefix)); err != nil {
		t.Fatalf("CreateGroup(gz) = %v", err)
	}
	c2 := registry.ConsumerKey(prefix, service, intermediate.DefaultGroup, "c2")
	m := msg("p1", 1, "x")
	m.Routes = []*messagev1.Route{{Group: intermediate.DefaultGroup, Consumer: "c2"}, {Group: "gz"}}
	sendBatch(t, pub, 1, m)
	waitFor(t, "the message handed back", func() bool { return answers.nacked.Load() == 1 })
	if n := g.reads(c2); n != 1 {
		t.Errorf("the key of c2, found gone by a read begun after the message arrived, was read %d times while the message waited 2s, want once", n)
	}
}

// TestViewCheck_MalformedConsumerKeyCountsAsGone checks that a consumer
// key whose value the view skips (written by hand, naming another
// consumer) counts as gone, as it does for routing: a message whose route
// names that consumer is routed to the group's consumer. A read that only
// counted keys took it for present, and the message went back at every
// attempt, from every intermediate, for as long as the key stayed.
func TestViewCheck_MalformedConsumerKeyCountsAsGone(t *testing.T) {
	r := newRig(t, intermediate.WithOwnerWait(300*time.Millisecond), intermediate.WithNoConsumerTimeout(5*time.Second))
	handled := r.ackAll()
	key := registry.ConsumerKey(prefix, service, intermediate.DefaultGroup, "c2")
	if _, err := r.cli.Put(r.ctx(), key, `{"consumer":"other","group":"default","epoch":1}`); err != nil {
		t.Fatalf("Put(%s) = %v", key, err)
	}
	pub := r.producer("p1")
	waitFor(t, "a message without routes routed past the malformed key", func() bool {
		sendBatch(t, pub, 1, msg("p1", 1, "x"))
		return len(nextAck(t, pub).GetAcked()) == 1
	})
	m := msg("p1", 2, "x")
	m.Routes = []*messagev1.Route{{Group: intermediate.DefaultGroup, Consumer: "c2"}}
	sendBatch(t, pub, 2, m)
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 {
		t.Errorf("a message whose route names c2, whose key the view skips as malformed, was answered %v, want it routed to c1 and acknowledged", a)
	}
	if n := handled.Load(); n != 2 {
		t.Errorf("c1 handled %d messages, want 2", n)
	}
}

// TestViewCheck_UnsentGroupsWithinMaxBatchBytes checks that the groups a
// message was not sent to are named in its routes only as far as a resend
// may carry them: with 150 groups of long names and a max-batch-bytes of
// 4 096, the resend with the routes the intermediate wrote is not refused
// INVALID (routes over max-batch-bytes), which it was.
func TestViewCheck_UnsentGroupsWithinMaxBatchBytes(t *testing.T) {
	r := newRig(t, intermediate.WithMaxBatch(256, 4096), intermediate.WithMaxInFlightBytes(1<<20),
		intermediate.WithNoConsumerTimeout(300*time.Millisecond), intermediate.WithOwnerWait(300*time.Millisecond))
	const n = 150
	for i := range n {
		if _, err := registry.CreateGroup(r.ctx(), r.cli, service, fmt.Sprintf("group-with-a-longish-name-%03d", i), "test", registry.WithPrefix(prefix)); err != nil {
			t.Fatalf("CreateGroup(%d) = %v", i, err)
		}
	}
	pub := r.producer("p1")
	var routes []*messagev1.Route
	next := uint64(1)
	waitFor(t, "the message handed back naming groups", func() bool {
		sendBatch(t, pub, next, msg("p1", 1, "x"))
		next++
		a := nextAck(t, pub)
		if len(a.GetNacked()) != 1 {
			t.Fatalf("answer %v, want one nack (groups without consumers)", a)
		}
		routes = a.GetNacked()[0].GetRoutes()
		return len(routes) > 100 // every group declared here by now, as far as they fit
	})
	if size := proto.Size(&messagev1.Message{Routes: routes}); size > 4096 {
		t.Errorf("the routes handed back are %d bytes encoded, over max-batch-bytes 4096", size)
	}
	m := msg("p1", 1, "x")
	m.Routes = routes
	sendBatch(t, pub, next, m)
	if a := nextAck(t, pub); len(a.GetNacked()) != 1 || a.GetNacked()[0].GetReason() == messagev1.NackReason_NACK_REASON_INVALID {
		t.Errorf("the resend with the %d routes the intermediate wrote was answered %v, want it handed back again, not refused", len(routes), a)
	}
}

// TestViewCheck_HandledRoutesNameNoConsumer checks that the route of a
// group that handled a message does not carry its consumer's name, which
// only took room: with 50 groups whose consumers (of long ids) handled it
// and one whose owner is registered but away, the routes handed back were
// 4 550 bytes, over max-batch-bytes 4 096, and the resend was refused
// INVALID, the message failed for good.
func TestViewCheck_HandledRoutesNameNoConsumer(t *testing.T) {
	r := newRig(t, intermediate.WithMaxBatch(256, 4096), intermediate.WithMaxInFlightBytes(1<<20),
		intermediate.WithNoConsumerTimeout(2*time.Second), intermediate.WithOwnerWait(300*time.Millisecond))
	const n = 50
	var handled atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range n {
		go ackEvery(r.subscribeGroup(ctx, fmt.Sprintf("consumer-host-%03d-5f2c1e0a-9b7d-4e21-8c3f-aa01b2c3d4e5", i), fmt.Sprintf("group-with-a-longish-name-%03d", i), 1<<10), counting(&handled))
	}
	r.waitConsumers(n)
	r.register("away-group", "away") // registered, never connected here
	pub := r.producer("p1")
	var routes []*messagev1.Route
	next := uint64(1)
	waitFor(t, "the message handed back OWNER_UNREACHABLE by the away group", func() bool {
		sendBatch(t, pub, next, msg("p1", 1, "x"))
		next++
		a := nextAck(t, pub)
		if len(a.GetNacked()) != 1 {
			return false
		}
		routes = a.GetNacked()[0].GetRoutes()
		return a.GetNacked()[0].GetReason() == messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE && len(routes) >= n
	})
	m := msg("p1", 1, "x")
	m.Routes = routes
	sendBatch(t, pub, next, m)
	if a := nextAck(t, pub); len(a.GetNacked()) == 1 && a.GetNacked()[0].GetReason() == messagev1.NackReason_NACK_REASON_INVALID {
		t.Errorf("the resend with the routes the intermediate wrote was refused: %v", a.GetNacked()[0].GetDetail())
	}
	for _, r := range routes {
		if r.GetHandled() && r.GetConsumer() != "" {
			t.Errorf("route %v of a group that handled the message names its consumer", r)
			break
		}
	}
}

// TestViewCheck_TwoNamesReadInTurn sends, every 5 ms for 2 s, messages
// naming two groups that do not exist while each read takes 40 ms, the
// first message naming one only, so that the reads of the two names run
// out of step: a read begun for newer messages must not hold back the
// messages an earlier answer already released. It did: a read's end looked
// only at messages none of whose names was being read, so most waited for
// their 2 s deadline (358 of ~705).
func TestViewCheck_TwoNamesReadInTurn(t *testing.T) {
	r, g := gatedRig(t, intermediate.WithOwnerWait(2*time.Second), intermediate.WithNoConsumerTimeout(10*time.Second))
	r.ackAll()
	g.all.Store(int64(40 * time.Millisecond))
	pub := r.producer("p1")
	var mu sync.Mutex
	sentAt := map[uint64]time.Time{}
	var lat []time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			resp, err := pub.Recv()
			if err != nil {
				return
			}
			now := time.Now()
			mu.Lock()
			for _, rg := range resp.GetAck().GetAcked() {
				for s := rg.GetFirst(); s <= rg.GetLast(); s++ {
					lat = append(lat, now.Sub(sentAt[s]))
				}
			}
			for _, n := range resp.GetAck().GetNacked() {
				t.Errorf("seq %d nacked %v", n.GetSeq(), n.GetReason())
			}
			mu.Unlock()
		}
	}()
	seq := uint64(1)
	send := func(routes ...string) {
		m := msg("p1", seq, "x")
		for _, gname := range routes {
			m.Routes = append(m.Routes, &messagev1.Route{Group: gname})
		}
		mu.Lock()
		sentAt[seq] = time.Now()
		mu.Unlock()
		sendBatch(t, pub, seq, m)
		seq++
	}
	send("gone-a") // a read of gone-a under way before the first read of gone-b
	time.Sleep(20 * time.Millisecond)
	for stop := time.Now().Add(2 * time.Second); time.Now().Before(stop); {
		send("gone-a", "gone-b")
		time.Sleep(5 * time.Millisecond)
	}
	sent := int(seq - 1)
	waitFor(t, "every message acked", func() bool { mu.Lock(); defer mu.Unlock(); return len(lat) == sent })
	slow := 0
	for _, l := range lat {
		if l >= 1500*time.Millisecond {
			slow++
		}
	}
	if slow > sent/10 {
		t.Errorf("%d of %d messages waited for their deadline though reads of 40 ms found both names gone", slow, sent)
	}
}

// forgeOn opens a publish stream of producer id on conn and sends on it,
// every interval until ctx ends, four messages whose routes each name a
// group of their own that does not exist.
func forgeOn(ctx context.Context, wg *sync.WaitGroup, r *rig, conn *grpc.ClientConn, id string, every time.Duration) {
	evil, _ := r.publishOn(ctx, conn, &deliveryv1.PublishHello{ProducerId: id, Incarnation: 1, Instance: "i1", HeartbeatIntervalMs: quietHeartbeatMs})
	countAnswers(evil)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for seq := uint64(1); ctx.Err() == nil; seq += 4 {
			ms := make([]*messagev1.Message, 4)
			for k := range ms {
				ms[k] = forged(id, seq+uint64(k), 1)
			}
			if evil.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{FirstSeq: seq, Messages: ms}}}) != nil {
				return
			}
			time.Sleep(every)
		}
	}()
}

// honestBack sends n messages of producer "good", one at a time, each with
// the routes of its seq, and returns how many were not acknowledged.
func honestBack(t *testing.T, r *rig, n uint64, routes func(seq uint64) []*messagev1.Route) int {
	t.Helper()
	good := r.producer("good")
	back := 0
	for seq := uint64(1); seq <= n; seq++ {
		m := msg("good", seq, "x")
		m.Routes = routes(seq)
		sendBatch(t, good, seq, m)
		if a := nextAck(t, good); len(a.GetAcked()) != 1 {
			back++
		}
	}
	return back
}

// TestViewCheck_ForgersLeaveReadsForOthers checks that producers forging
// routes cannot keep every read from another producer: 8 of them take all
// 64 reads, then 16 of them each keep more messages waiting for reads than
// etcd answers; an honest resend naming a consumer that left gets a read
// within a turn of the streams, and is routed. A read's end once started
// the next read for its own stream at once while another stream's waited
// for the janitor's tick (8 forgers: 2 to 6 of 10 went back with the race
// detector on); then reads were given to messages oldest first, and 16
// forgers' thousands of queued messages kept it past its owner wait (9 or
// 10 of 10 went back).
func TestViewCheck_ForgersLeaveReadsForOthers(t *testing.T) {
	for _, forgers := range []int{8, 16} {
		t.Run(fmt.Sprint(forgers), func(t *testing.T) {
			// An owner wait of 600 ms, twice what an honest resend
			// needs on a loaded machine: the version before the fix
			// still had 2 to 4 of 10 go back with it (4 of 4 runs).
			r := slowReadRig(t, 20*time.Millisecond, intermediate.WithOwnerWait(600*time.Millisecond))
			r.ackAll()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var wg sync.WaitGroup
			for e := range forgers {
				forgeOn(ctx, &wg, r, r.conn, fmt.Sprintf("evil%d", e), 5*time.Millisecond)
			}
			time.Sleep(400 * time.Millisecond)
			back := honestBack(t, r, 10, func(uint64) []*messagev1.Route {
				return []*messagev1.Route{{Group: intermediate.DefaultGroup, Consumer: "left"}}
			})
			cancel()
			wg.Wait()
			if back > 0 {
				t.Errorf("%d of 10 honest resends naming a consumer that left went back while %d producers forged routes", back, forgers)
			}
		})
	}
}

// TestViewCheck_ManyStreamsOfOneClientLeaveReadsForOthers checks that one
// client's streams together take no more of the reads held back by the
// bound on all reads than another client's one stream: a client on
// another address opens 100 publish streams, each keeping forged messages
// waiting for reads that take 50 ms, and an honest resend whose routes
// name 16 groups etcd no longer has is routed within its owner wait. When
// reads went to the streams in turn, it got one read per turn of the 101
// streams and went back OWNER_UNREACHABLE (5 of 5).
func TestViewCheck_ManyStreamsOfOneClientLeaveReadsForOthers(t *testing.T) {
	const streams = 100
	r := slowReadRig(t, 50*time.Millisecond, intermediate.WithOwnerWait(time.Second))
	r.ackAll()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	other := r.connFrom("127.0.0.2")
	var wg sync.WaitGroup
	for e := range streams {
		forgeOn(ctx, &wg, r, other, fmt.Sprintf("evil%d", e), 200*time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond)
	back := honestBack(t, r, 5, func(seq uint64) []*messagev1.Route {
		var routes []*messagev1.Route
		for i := range 16 {
			routes = append(routes, &messagev1.Route{Group: fmt.Sprintf("deleted-%d-%d", seq, i)})
		}
		return routes
	})
	cancel()
	wg.Wait()
	if back > 0 {
		t.Errorf("%d of 5 honest resends naming 16 deleted groups went back while another client forged routes on %d streams", back, streams)
	}
}

// TestViewCheck_StreamsEndingWhileQueuedLeaveNothing checks the queues of
// reads held back by the bound on all reads while streams of two clients
// end with their messages queued and others take their place: honest
// resends beside them are routed, and once the streams are gone nothing
// is left waiting, checked, read, queued or counted against a stream.
func TestViewCheck_StreamsEndingWhileQueuedLeaveNothing(t *testing.T) {
	r := slowReadRig(t, 10*time.Millisecond, intermediate.WithOwnerWait(600*time.Millisecond))
	r.ackAll()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conns := []*grpc.ClientConn{r.conn, r.connFrom("127.0.0.2")}
	var queuedOnce atomic.Bool
	var wg sync.WaitGroup
	for e := range 12 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for gen := 0; ctx.Err() == nil; gen++ {
				id := fmt.Sprintf("evil%d-%d", e, gen)
				sctx, scancel := context.WithTimeout(ctx, time.Duration(30+(e*37+gen*53)%250)*time.Millisecond)
				evil, w := r.publishOn(sctx, conns[e%2], &deliveryv1.PublishHello{ProducerId: id, Incarnation: 1, Instance: "i1", HeartbeatIntervalMs: quietHeartbeatMs})
				if w != nil {
					countAnswers(evil)
					for seq := uint64(1); sctx.Err() == nil; seq += 4 {
						ms := make([]*messagev1.Message, 4)
						for k := range ms {
							m := msg(id, seq+uint64(k), "x")
							for j := range 1 + (k*7+int(seq))%20 {
								name := fmt.Sprintf("shared-%d", (j*13+int(seq))%40)
								if j%2 == 1 {
									name = fmt.Sprintf("u-%s-%d-%d", id, seq+uint64(k), j)
								}
								m.Routes = append(m.Routes, &messagev1.Route{Group: name})
							}
							ms[k] = m
						}
						if evil.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{FirstSeq: seq, Messages: ms}}}) != nil {
							break
						}
						if _, streams, _, _ := r.srv.ViewQueueState(); streams > 0 {
							queuedOnce.Store(true)
						}
						time.Sleep(2 * time.Millisecond)
					}
				}
				scancel()
			}
		}()
	}
	good := r.producer("good")
	back := 0
	for seq := uint64(1); seq <= 20; seq++ {
		m := msg("good", seq, "x")
		m.Routes = []*messagev1.Route{{Group: intermediate.DefaultGroup, Consumer: "left"}}
		sendBatch(t, good, seq, m)
		if a := nextAck(t, good); len(a.GetAcked()) != 1 {
			back++
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	if back > 0 {
		t.Errorf("%d of 20 honest resends naming a consumer that left went back", back)
	}
	if !queuedOnce.Load() {
		t.Fatal("no read was ever held back by the bound on all reads: the test did not test the queues")
	}
	var state [7]int
	waitFor(t, "nothing left of the streams that ended", func() bool {
		state[0], state[1], state[2] = r.srv.ViewState()
		state[3], state[4], state[5], state[6] = r.srv.ViewQueueState()
		return state == [7]int{}
	})
}
