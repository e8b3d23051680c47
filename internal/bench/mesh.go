package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/tcpproxy"
)

// service is the intermediates' service in a run.
const service = "bench"

// mesh is the Butterfly side of a run, in one process: an embedded etcd,
// the intermediates, the producers and the consumers, what the consumers
// handled, and the throughput series.
type mesh struct {
	cfg          Config
	log          *slog.Logger
	start        time.Time
	ctx          context.Context // canceled by close
	cancel       context.CancelFunc
	etcd         *benchEtcd
	cli          *clientv3.Client // etcd's
	payload      []byte
	producers    []*components.Producer
	incarnations []uint64
	prodIndex    map[string]int // producer id -> index; read-only once consumers run
	seen         []*idSet       // per producer
	consumers    []*components.Consumer
	// regs is each consumer's registration key with the revision it was
	// created at, once every consumer registered; read-only after.
	regs map[string]int64

	consumed  atomic.Uint64 // first handling of a message
	twice     atomic.Uint64 // handled again
	strangers atomic.Uint64 // from no producer of this run
	lat       atomic.Pointer[histogram]
	moveName  string // the instance that is stopped, moved and frozen
	moveArmed atomic.Bool
	moveFirst atomic.Int64 // unix nanos of the first delivery through the moved instance

	level    atomic.Pointer[loadLevel]
	loadStop context.CancelFunc
	loadWG   sync.WaitGroup
	wg       sync.WaitGroup // sampler and helpers

	// mu guards the fields below.
	mu       sync.Mutex
	servers  map[string]*benchServer
	samples  []Sample
	events   []Event
	peakHeap uint64
	sendErr  error
}

// serverStats returns the counters of the running intermediates, added up.
func (m *mesh) serverStats() intermediate.Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	var sum intermediate.Stats
	for _, bs := range m.servers {
		sum = addStats(sum, bs.srv.Stats())
	}
	return sum
}

// benchServer is one running intermediate.
type benchServer struct {
	srv   *intermediate.Server
	done  chan error
	proxy *tcpproxy.Proxy
}

// Sample is the throughput, in messages handled per second, over one
// interval of the run.
type Sample struct {
	Start, End time.Duration // since the start of the Butterfly run
	Rate       float64
}

// Event is something the run did, at a time since its start.
type Event struct {
	At   time.Duration
	Name string
}

func newMesh(ctx context.Context, cfg Config) (m *mesh, err error) {
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m = &mesh{
		cfg: cfg, log: cfg.Logger, start: time.Now(), ctx: mctx, cancel: cancel,
		payload: make([]byte, cfg.Payload), prodIndex: map[string]int{},
		servers: map[string]*benchServer{}, moveName: "i0",
	}
	for i := range m.payload {
		m.payload[i] = byte(i)
	}
	defer func() {
		if err != nil {
			m.close(ctx)
		}
	}()
	if m.etcd, err = startEtcd(ctx); err != nil {
		return m, err
	}
	m.cli = m.etcd.cli
	for i := range cfg.Intermediates {
		name := fmt.Sprintf("i%d", i)
		if err := m.startServer(ctx, name, fmt.Sprintf("127.0.0.%d", 2+i), false); err != nil {
			return m, err
		}
	}
	quiet := slog.New(slog.DiscardHandler)
	for i := range cfg.Producers {
		id := fmt.Sprintf("p%d", i)
		p, err := components.NewProducer(m.cli, id,
			components.WithService(service), components.WithLogger(quiet),
			components.WithWindow(cfg.Window),
			components.WithBatch(cfg.BatchMessages, cfg.BatchBytes, cfg.Linger),
			components.WithHeartbeatInterval(cfg.Heartbeat))
		if err != nil {
			return m, fmt.Errorf("bench: %w", err)
		}
		m.producers = append(m.producers, p)
		m.incarnations = append(m.incarnations, p.Incarnation())
		m.prodIndex[id] = i
		m.seen = append(m.seen, &idSet{})
	}
	for i := range cfg.Consumers {
		c, err := components.NewConsumer(m.cli, fmt.Sprintf("c%d", i), m.handle,
			components.WithService(service), components.WithLogger(quiet),
			components.WithCredit(cfg.Credit),
			components.WithHeartbeatInterval(cfg.Heartbeat))
		if err != nil {
			return m, fmt.Errorf("bench: %w", err)
		}
		m.consumers = append(m.consumers, c)
	}
	if m.regs, err = consumerRegistrations(ctx, m.cli, len(m.consumers)); err != nil {
		return m, err
	}
	m.wg.Add(1)
	go m.sampler()
	m.level.Store(newLoadLevel(0))
	lctx, lcancel := context.WithCancel(mctx)
	m.loadStop = lcancel
	for _, p := range m.producers {
		m.loadWG.Add(1)
		go m.produce(lctx, p)
	}
	return m, nil
}

// startServer starts intermediate name on host; behind a blackholing proxy
// (registered at the proxy's address) when proxied.
func (m *mesh) startServer(ctx context.Context, name, host string, proxied bool) error {
	lis, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return fmt.Errorf("bench: listen on %s: %w", host, err)
	}
	opts := []intermediate.Option{
		intermediate.WithLogger(slog.New(slog.DiscardHandler)),
		intermediate.WithLeaseTTL(m.cfg.LeaseTTL),
		intermediate.WithHeartbeatInterval(m.cfg.Heartbeat),
		intermediate.WithMaxInFlight(max(m.cfg.Window, intermediate.DefaultMaxInFlight)),
	}
	bs := &benchServer{done: make(chan error, 1)}
	if proxied {
		if bs.proxy, err = tcpproxy.Listen(net.JoinHostPort(host, "0"), lis.Addr().String()); err != nil {
			lis.Close()
			return fmt.Errorf("bench: proxy on %s: %w", host, err)
		}
		opts = append(opts, intermediate.WithAdvertiseAddr(bs.proxy.Addr()))
	}
	if bs.srv, err = intermediate.New(m.cli, service, name, opts...); err != nil {
		lis.Close()
		if bs.proxy != nil {
			bs.proxy.Close()
		}
		return fmt.Errorf("bench: %w", err)
	}
	go func() { bs.done <- bs.srv.Serve(m.ctx, lis) }()
	select {
	case <-bs.srv.Ready():
	case err := <-bs.done:
		bs.done <- err
		m.addServer(name, bs)
		return fmt.Errorf("bench: intermediate %s: %w", name, err)
	case <-ctx.Done():
		m.addServer(name, bs)
		return ctx.Err()
	}
	m.addServer(name, bs)
	return nil
}

// addServer records bs under name; a server it replaces is kept for close.
func (m *mesh) addServer(name string, bs *benchServer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.servers[name]; old != nil {
		m.servers[name+"@"+fmt.Sprint(len(m.servers))] = old
	}
	m.servers[name] = bs
}

func (m *mesh) server(name string) *benchServer {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.servers[name]
}

// handle is every consumer's handler: it records which message arrived,
// its end-to-end latency and the first delivery through a moved instance.
func (m *mesh) handle(_ context.Context, d *components.Delivery) error {
	now := time.Now()
	id := d.Message.GetId()
	i, ok := m.prodIndex[id.GetProducerId()]
	if !ok || id.GetIncarnation() != m.incarnations[i] {
		m.strangers.Add(1)
		return nil
	}
	if m.seen[i].add(id.GetSeq()) {
		m.consumed.Add(1)
	} else {
		m.twice.Add(1)
	}
	if h := m.lat.Load(); h != nil {
		h.record(now.Sub(time.Unix(0, d.Message.GetCreateTimeUnixNano())))
	}
	if d.Instance == m.moveName && m.moveArmed.Load() && m.moveFirst.Load() == 0 {
		m.moveFirst.CompareAndSwap(0, now.UnixNano())
	}
	return nil
}

// produce sends messages through p at the current load level until ctx is
// done.
func (m *mesh) produce(ctx context.Context, p *components.Producer) {
	defer m.loadWG.Done()
	if err := sendAtLevel(ctx, p, m.payload, &m.level); err != nil {
		m.mu.Lock()
		m.sendErr = errors.Join(m.sendErr, fmt.Errorf("bench: producer %s: %w", p.ID(), err))
		m.mu.Unlock()
	}
}

// setLoad makes the producers send total messages per second between them
// (0: as fast as they can).
func (m *mesh) setLoad(total float64) {
	m.level.Store(newLoadLevel(total / float64(len(m.producers))))
}

// sampler records the throughput series and the peak heap in use.
func (m *mesh) sampler() {
	defer m.wg.Done()
	tick := time.NewTicker(m.cfg.SampleInterval)
	defer tick.Stop()
	heap := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	prevT, prev := time.Now(), m.consumed.Load()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-tick.C:
		}
		now, n := time.Now(), m.consumed.Load()
		metrics.Read(heap)
		var inUse uint64
		for _, s := range heap {
			if s.Value.Kind() == metrics.KindUint64 {
				inUse += s.Value.Uint64()
			}
		}
		m.mu.Lock()
		m.samples = append(m.samples, Sample{Start: prevT.Sub(m.start), End: now.Sub(m.start), Rate: float64(n-prev) / now.Sub(prevT).Seconds()})
		m.peakHeap = max(m.peakHeap, inUse)
		m.mu.Unlock()
		prevT, prev = now, n
	}
}

// event records and logs what the run does now.
func (m *mesh) event(name string, args ...any) time.Time {
	now := time.Now()
	m.mu.Lock()
	m.events = append(m.events, Event{At: now.Sub(m.start), Name: name})
	m.mu.Unlock()
	m.log.Info("bench: "+name, args...)
	return now
}

// since is a time of the run as an offset from its start.
func (m *mesh) since(t time.Time) time.Duration { return t.Sub(m.start) }

// waitUntil polls cond every millisecond until it holds (true) or timeout
// passes or ctx is done (false).
func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return cond()
		case <-tick.C:
		}
	}
	return true
}

// pause waits d, or until ctx is done (false).
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// stopLoad stops the producers' senders and waits for them.
func (m *mesh) stopLoad() {
	if m.loadStop != nil {
		m.loadStop()
	}
	m.loadWG.Wait()
}

// finish stops the load, closes the producers (each waits until all it sent
// is acknowledged, within timeout) and returns how many messages were sent,
// how many of them never reached a handler, how many went out again, and
// how many were still unacknowledged at their producers.
func (m *mesh) finish(ctx context.Context, timeout time.Duration) (sent, lost, resent, unacked uint64, err error) {
	m.stopLoad()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var errs []error
	for _, p := range m.producers {
		if cerr := p.Close(cctx); cerr != nil {
			errs = append(errs, fmt.Errorf("bench: close producer %s: %w", p.ID(), cerr))
		}
	}
	for i, p := range m.producers {
		st := p.Stats()
		sent += st.Sent
		resent += st.Resent
		unacked += st.InFlight
		lost += m.seen[i].missing(st.Sent)
	}
	m.mu.Lock()
	errs = append(errs, m.sendErr)
	m.mu.Unlock()
	return sent, lost, resent, unacked, errors.Join(errs...)
}

// close stops everything the mesh started, consumers first so that they
// leave the intermediates cleanly. Safe after a partial start.
func (m *mesh) close(ctx context.Context) {
	m.stopLoad()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, p := range m.producers {
		_ = p.Close(cctx) // a second Close returns the first one's result
	}
	for _, c := range m.consumers {
		if err := c.Close(cctx); err != nil {
			m.log.Debug("bench: close consumer", "consumer", c.ID(), "err", err)
		}
	}
	m.mu.Lock()
	servers := make([]*benchServer, 0, len(m.servers))
	for _, bs := range m.servers {
		servers = append(servers, bs)
	}
	m.mu.Unlock()
	for _, bs := range servers {
		bs.srv.Stop()
		<-bs.done //nolint:errcheck // Serve ends because of Stop: its error says nothing more
		if bs.proxy != nil {
			bs.proxy.Close()
		}
	}
	m.cancel()
	m.wg.Wait()
	if m.etcd != nil {
		m.etcd.close()
	}
}
