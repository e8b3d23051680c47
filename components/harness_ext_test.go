package components_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/butterfly-mesh/butterfly/components"
	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

const (
	defaultTestTimeout = 30 * time.Second
	testPrefix         = "bt"
	testLeaseTTL       = 2 * time.Second
)

// messageCount is how many messages each producer sends in the load tests:
// BUTTERFLY_TEST_MESSAGES when set, else def (def/5 under the race
// detector, whose overhead would dominate).
func messageCount(t *testing.T, def int) int {
	t.Helper()
	if s := os.Getenv("BUTTERFLY_TEST_MESSAGES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("BUTTERFLY_TEST_MESSAGES=%q is not a positive number", s)
		}
		return n
	}
	if raceEnabled {
		return max(def/5, 100)
	}
	return def
}

// testLogger logs to the test when BUTTERFLY_TEST_LOG is set.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("BUTTERFLY_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// mesh is one test's etcd and the servers and components on it.
type mesh struct {
	t   *testing.T
	etc *etcdtest.Server
	cli *clientv3.Client
	log *slog.Logger
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	etc := etcdtest.Start(t)
	return &mesh{t: t, etc: etc, cli: etc.Client(t), log: testLogger(t)}
}

// hub is one running intermediate.
type hub struct {
	srv  *intermediate.Server
	addr string
	done chan error // receives Serve's result
}

// startHub starts an intermediate of service on host (listening on port 0)
// and waits until it is registered. advertise, when set, replaces the
// listener's address in the registry.
func (m *mesh) startHub(service, instance, host string, opts ...intermediate.Option) *hub {
	m.t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		m.t.Fatalf("net.Listen(%s) = %v", host, err)
	}
	return m.serveHub(service, instance, lis, opts...)
}

func (m *mesh) serveHub(service, instance string, lis net.Listener, opts ...intermediate.Option) *hub {
	m.t.Helper()
	base := []intermediate.Option{
		intermediate.WithPrefix(testPrefix),
		intermediate.WithLogger(m.log.With("hub", instance)),
		intermediate.WithLeaseTTL(testLeaseTTL),
		intermediate.WithDrainTimeout(5 * time.Second),
		intermediate.WithStopTimeout(500 * time.Millisecond),
	}
	srv, err := intermediate.New(m.cli, service, instance, append(base, opts...)...)
	if err != nil {
		m.t.Fatalf("intermediate.New(%s) = %v", instance, err)
	}
	h := &hub{srv: srv, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { h.done <- srv.Serve(ctx, lis) }()
	m.t.Cleanup(func() {
		cancel()
		select {
		case <-h.done:
		case <-time.After(defaultTestTimeout):
			srv.Stop()
			<-h.done
		}
		h.done <- nil
	})
	select {
	case <-srv.Ready():
	case err := <-h.done:
		m.t.Fatalf("Serve(%s) = %v before it was ready", instance, err)
	case <-time.After(defaultTestTimeout):
		m.t.Fatalf("Serve(%s) not ready in time", instance)
	}
	h.addr = srv.Addr()
	return h
}

// wait waits for Serve to return and returns its result.
func (h *hub) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-h.done:
		h.done <- err
		return err
	case <-time.After(defaultTestTimeout):
		t.Fatalf("Serve(%s) did not return", h.srv.Instance())
		return nil
	}
}

// status reads GetStatus through the admin service.
func (h *hub) status(t *testing.T) *adminv1.GetStatusResponse {
	t.Helper()
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient(%s) = %v", h.addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := adminv1.NewAdminServiceClient(conn).GetStatus(ctx, &adminv1.GetStatusRequest{})
	if err != nil {
		t.Fatalf("GetStatus(%s) = %v", h.addr, err)
	}
	return st
}

func (m *mesh) producer(id string, opts ...components.ProducerOption) *components.Producer {
	m.t.Helper()
	base := []components.ProducerOption{components.WithPrefix(testPrefix), components.WithLogger(m.log)}
	p, err := components.NewProducer(m.cli, id, append(base, opts...)...)
	if err != nil {
		m.t.Fatalf("NewProducer(%s) = %v", id, err)
	}
	m.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = p.Close(ctx)
	})
	return p
}

func (m *mesh) consumer(id string, h components.Handler, opts ...components.ConsumerOption) *components.Consumer {
	m.t.Helper()
	base := []components.ConsumerOption{components.WithPrefix(testPrefix), components.WithLogger(m.log)}
	c, err := components.NewConsumer(m.cli, id, h, append(base, opts...)...)
	if err != nil {
		m.t.Fatalf("NewConsumer(%s) = %v", id, err)
	}
	m.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return c
}

// waitMembers waits until service has n non-draining instances in etcd.
func (m *mesh) waitMembers(service string, n int) {
	m.t.Helper()
	waitUntil(m.t, fmt.Sprintf("%d members of %s", n, service), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		resp, err := m.cli.Get(ctx, registry.ServicesPrefix(testPrefix, service), clientv3.WithPrefix())
		if err != nil {
			return false
		}
		live := 0
		for _, kv := range resp.Kvs {
			v, err := registry.ParseValue(string(kv.Key[strings.LastIndexByte(string(kv.Key), '/')+1:]), kv.Value)
			if err == nil && !v.Metadata.Draining {
				live++
			}
		}
		return live == n
	})
}

// waitUntil polls cond until it holds or defaultTestTimeout passes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(defaultTestTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ledger records every handled message, by producer and seq.
type ledger struct {
	mu     sync.Mutex
	counts map[string]map[uint64]int
	byInst map[string]int
	total  int
	notify chan struct{}
}

func newLedger() *ledger {
	return &ledger{counts: make(map[string]map[uint64]int), byInst: make(map[string]int), notify: make(chan struct{}, 1)}
}

// handler returns a consumer handler that records into the ledger.
func (l *ledger) handler() components.Handler {
	return func(_ context.Context, d *components.Delivery) error {
		l.record(d)
		return nil
	}
}

func (l *ledger) record(d *components.Delivery) {
	id := d.Message.GetId()
	l.mu.Lock()
	m := l.counts[id.GetProducerId()]
	if m == nil {
		m = make(map[uint64]int)
		l.counts[id.GetProducerId()] = m
	}
	m[id.GetSeq()]++
	l.byInst[d.Instance]++
	l.total++
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

func (l *ledger) handled() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

func (l *ledger) instance(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byInst[name]
}

// waitHandled waits until n messages were handled.
func (l *ledger) waitHandled(t *testing.T, n int) {
	t.Helper()
	timer := time.NewTimer(defaultTestTimeout)
	defer timer.Stop()
	for l.handled() < n {
		select {
		case <-l.notify:
		case <-timer.C:
			t.Fatalf("handled %d messages, want %d", l.handled(), n)
		}
	}
}

// checkExactlyOnce fails the test unless every seq 1..n of every producer was
// handled exactly once and nothing else was.
func (l *ledger) checkExactlyOnce(t *testing.T, producers map[string]int) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	want := 0
	for p, n := range producers {
		want += n
		got := l.counts[p]
		missing, dup := 0, 0
		for seq := uint64(1); seq <= uint64(n); seq++ {
			switch c := got[seq]; {
			case c == 0:
				missing++
				if missing <= 5 {
					t.Errorf("message %s/%d handled 0 times, want 1", p, seq)
				}
			case c > 1:
				dup++
				if dup <= 5 {
					t.Errorf("message %s/%d handled %d times, want 1", p, seq, c)
				}
			}
		}
		if missing > 0 || dup > 0 {
			t.Errorf("producer %s: %d of %d messages missing, %d duplicated", p, missing, n, dup)
		}
	}
	if l.total != want {
		t.Errorf("handled %d messages, want %d", l.total, want)
	}
}

// load runs producers that each send up to n messages in the background,
// until stopped.
type load struct {
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	sent map[string]int
	errs []error
}

// deliverAll sends n messages from each of ps, closes them, and fails the
// test unless the ledger handled every message exactly once.
func (l *ledger) deliverAll(t *testing.T, n int, ps ...*components.Producer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	sent := startLoad(ctx, n, ps...).wait(t)
	closeProducers(t, ps...)
	l.checkExactlyOnce(t, sent)
}

func startLoad(ctx context.Context, n int, ps ...*components.Producer) *load {
	l := &load{stop: make(chan struct{}), sent: make(map[string]int)}
	for _, p := range ps {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			sent, err := l.send(ctx, p, n)
			l.mu.Lock()
			defer l.mu.Unlock()
			l.sent[p.ID()] = sent
			if err != nil {
				l.errs = append(l.errs, err)
			}
		}()
	}
	return l
}

// send sends up to n messages from p, keyed so that they spread over the
// consumers, and returns how many it sent.
func (l *load) send(ctx context.Context, p *components.Producer, n int) (int, error) {
	for i := range n {
		select {
		case <-l.stop:
			return i, nil
		default:
		}
		msg := &messagev1.Message{
			Key:     []byte(strconv.Itoa(i % 16)),
			Payload: []byte(fmt.Sprintf("%s-%d", p.ID(), i+1)),
		}
		if _, err := p.Send(ctx, msg); err != nil {
			return i, fmt.Errorf("Send(%s #%d) = %w", p.ID(), i+1, err)
		}
	}
	return n, nil
}

// wait waits until every producer sent its messages and returns how many
// each sent.
func (l *load) wait(t *testing.T) map[string]int {
	t.Helper()
	l.wg.Wait()
	if err := errors.Join(l.errs...); err != nil {
		t.Fatalf("load: %v", err)
	}
	return l.sent
}

// halt stops the producers early and returns how many each sent.
func (l *load) halt(t *testing.T) map[string]int {
	t.Helper()
	close(l.stop)
	return l.wait(t)
}

// closeProducers closes every producer and fails the test unless each
// returns nil.
func closeProducers(t *testing.T, ps ...*components.Producer) {
	t.Helper()
	for _, p := range ps {
		ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
		err := p.Close(ctx)
		cancel()
		if err != nil {
			t.Errorf("Close(%s) = %v, want nil; stats %+v", p.ID(), err, p.Stats())
		}
	}
}

func mustListen(t *testing.T, host string) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("net.Listen(%s) = %v", host, err)
	}
	return lis
}

// waitConsumers waits until every hub has n subscribe streams, so that
// routing is the same on all of them before a load starts.
func waitConsumers(t *testing.T, n int, hubs ...*hub) {
	t.Helper()
	for _, h := range hubs {
		waitUntil(t, fmt.Sprintf("%d consumers on %s", n, h.srv.Instance()), func() bool {
			return len(h.status(t).GetConsumers()) == n
		})
	}
}

// waitProducer waits until every hub has a publish stream of producer id.
func waitProducer(t *testing.T, id string, hubs ...*hub) {
	t.Helper()
	for _, h := range hubs {
		waitUntil(t, fmt.Sprintf("%s's stream to %s", id, h.srv.Instance()), func() bool {
			return h.producerStream(t, id) != nil
		})
	}
}

// producerStream returns the status of producer id's stream to h, nil
// when it has none.
func (h *hub) producerStream(t *testing.T, id string) *adminv1.ProducerStatus {
	t.Helper()
	for _, ps := range h.status(t).GetProducers() {
		if ps.GetProducerId() == id {
			return ps
		}
	}
	return nil
}

// countFrames is an intermediate option that calls count with every frame
// the intermediate receives on a stream, once decoded.
func countFrames(count func(frame any)) intermediate.Option {
	return intermediate.WithGRPCServerOptions(grpc.ChainStreamInterceptor(
		func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			return handler(srv, &tappedStream{ServerStream: ss, recv: count})
		}))
}

// tappedStream shows send every frame a server stream sends, before it goes
// out, and recv every frame it receives, once decoded, before the server
// reads it; either may be nil.
type tappedStream struct {
	grpc.ServerStream
	send, recv func(frame any)
}

func (s *tappedStream) SendMsg(m any) error {
	if s.send != nil {
		s.send(m)
	}
	return s.ServerStream.SendMsg(m)
}

func (s *tappedStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil && s.recv != nil {
		s.recv(m)
	}
	return err
}

// registerInstance registers instance name of service at addr in etcd, with
// no server of this package behind it, until the test ends, and returns its
// registration.
func registerInstance(t *testing.T, m *mesh, service, name, addr string) *registry.Registration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	reg, err := registry.Register(ctx, m.cli, service, name, addr, registry.WithPrefix(testPrefix))
	if err != nil {
		t.Fatalf("registry.Register(%s/%s at %s) = %v", service, name, addr, err)
	}
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
	return reg
}

// registerConsumer declares the default group of the default service and
// registers consumer id in it, with no Consumer of this package behind it
// (a stranger, a stalled or a frozen one), until the test ends.
func registerConsumer(t *testing.T, m *mesh, id string) *registry.Registration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if _, err := registry.CreateGroup(ctx, m.cli, components.DefaultService, components.DefaultGroup, "test", registry.WithPrefix(testPrefix)); err != nil {
		t.Fatalf("registry.CreateGroup() = %v", err)
	}
	reg, err := registry.RegisterConsumer(ctx, m.cli, components.DefaultService, components.DefaultGroup, id, registry.WithPrefix(testPrefix), registry.WithTTL(testLeaseTTL))
	if err != nil {
		t.Fatalf("registry.RegisterConsumer(%s) = %v", id, err)
	}
	t.Cleanup(func() { _ = reg.Close(context.Background()) })
	return reg
}
