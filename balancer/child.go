package balancer

import (
	"sync"
	"sync/atomic"
	"time"

	gbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/registry"
)

// child is the pick_first policy of one instance. It stands between the
// child policy and the parent's ClientConn to catch the child's state.
type child struct {
	gbalancer.ClientConn // the parent's; UpdateState is intercepted

	parent *butterflyBalancer
	name   string
	stats  *endpointStats
	done   func(gbalancer.DoneInfo) // stats.onDone, bound once so Pick does not allocate

	// Guarded by parent.mu.
	inst         registry.Instance
	state        gbalancer.State
	readySince   time.Time
	drops        int // connections lost soon after READY, in a row
	moves        uint64
	ejectedUntil time.Time // zero when not ejected
	ejections    int       // ejections in a row without a successful RPC between
	removed      bool

	lbMu     sync.Mutex // serializes calls into lb; taken before parent.mu
	lb       gbalancer.Balancer
	lbClosed bool
}

func newChild(parent *butterflyBalancer, name string) *child {
	c := &child{
		ClientConn: parent.cc,
		parent:     parent,
		name:       name,
		stats:      &endpointStats{kick: parent.kickRun},
		state: gbalancer.State{
			ConnectivityState: connectivity.Connecting,
			Picker:            base.NewErrPicker(gbalancer.ErrNoSubConnAvailable),
		},
	}
	c.done = c.stats.onDone
	return c
}

// UpdateState records the child policy's state and publishes a new picker.
// A connection lost after READY (state IDLE) is reconnected by run: at once
// the first time, then with backoff while connections keep dropping soon
// after they became READY.
func (c *child) UpdateState(s gbalancer.State) {
	b := c.parent
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || c.removed {
		return
	}
	prev := c.state.ConnectivityState
	c.state = s
	now := time.Now()
	switch s.ConnectivityState {
	case connectivity.Ready:
		c.readySince = now
	case connectivity.Idle:
		if prev == connectivity.Ready && now.Sub(c.readySince) >= b.cfg.Backoff.MaxDelay {
			c.drops = 0
		}
		b.retries[c] = now.Add(reconnectDelay(b.cfg.Backoff, c.drops))
		c.drops++
		b.kickRun()
		b.logger.Debug("balancer: connection lost", "instance", c.name, "addr", c.inst.Addr, "drops", c.drops)
	}
	if !b.inhibit {
		b.updateStateLocked()
	}
}

// reconnectDelay is the wait before the reconnect that follows drops
// connections lost in a row soon after becoming READY.
func reconnectDelay(cfg BackoffConfig, drops int) time.Duration {
	if drops == 0 {
		return 0
	}
	d := cfg.BaseDelay
	for i := 1; i < drops && d < cfg.MaxDelay; i++ {
		d *= 2
	}
	return min(d, cfg.MaxDelay)
}

func (c *child) updateClientConnState(opts gbalancer.BuildOptions, s gbalancer.ClientConnState) error {
	c.lbMu.Lock()
	defer c.lbMu.Unlock()
	if c.lbClosed {
		return nil
	}
	if c.lb == nil {
		c.lb = gbalancer.Get(pickfirst.Name).Build(c, opts)
	}
	return c.lb.UpdateClientConnState(s)
}

func (c *child) resolverError(err error) {
	c.lbMu.Lock()
	defer c.lbMu.Unlock()
	if c.lb != nil && !c.lbClosed {
		c.lb.ResolverError(err)
	}
}

func (c *child) exitIdle() {
	c.lbMu.Lock()
	defer c.lbMu.Unlock()
	if c.lb != nil && !c.lbClosed {
		c.lb.ExitIdle()
	}
}

// close shuts the child's connection down. Streams still open on it go on
// until they end (a graceful transport close); new picks never reach it.
func (c *child) close() {
	c.lbMu.Lock()
	defer c.lbMu.Unlock()
	if c.lbClosed {
		return
	}
	c.lbClosed = true
	if c.lb != nil {
		c.lb.Close()
	}
}

// endpointStats are the per-instance counters updated by picks and by the
// Done callbacks of RPCs.
type endpointStats struct {
	outstanding atomic.Int64  // RPCs picked and not done
	failures    atomic.Uint32 // failed RPCs in a row
	succeeded   atomic.Bool   // an RPC succeeded since the last ejection
	threshold   atomic.Uint32 // ejection.consecutiveFailures; 0 disables
	kick        func()        // wakes the balancer's ejection loop
}

// onDone is the PickResult.Done of every pick of the instance.
func (s *endpointStats) onDone(di gbalancer.DoneInfo) {
	s.outstanding.Add(-1)
	switch classify(di) {
	case outcomeFailure:
		if t := s.threshold.Load(); t > 0 && s.failures.Add(1) >= t {
			s.kick()
		}
	case outcomeSuccess:
		s.failures.Store(0)
		s.succeeded.Store(true)
	}
}

type outcome int

const (
	outcomeNeutral outcome = iota
	outcomeSuccess
	outcomeFailure
)

// classify tells how an RPC's end counts for outlier ejection. Failures are
// the codes that say the server or the path to it is broken: Unavailable,
// Unknown, Internal, DataLoss and DeadlineExceeded (a frozen server shows
// as deadlines). Canceled, and a pick abandoned before the RPC started, are
// neutral. Every other end, including application errors such as NotFound
// or InvalidArgument, shows a working server and counts as a success.
func classify(di gbalancer.DoneInfo) outcome {
	if di.Err == nil {
		if !di.BytesSent && !di.BytesReceived {
			return outcomeNeutral
		}
		return outcomeSuccess
	}
	switch status.Code(di.Err) {
	case codes.Unavailable, codes.Unknown, codes.Internal, codes.DataLoss, codes.DeadlineExceeded:
		return outcomeFailure
	case codes.Canceled:
		return outcomeNeutral
	default:
		return outcomeSuccess
	}
}
