package balancer

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/attributes"
	gbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/connectivity"
	gresolver "google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"

	"github.com/butterfly-mesh/butterfly/internal/telemetry"
	"github.com/butterfly-mesh/butterfly/registry"
)

// Name is the name of the policy, as used in a service config's
// loadBalancingConfig.
const Name = "butterfly"

func init() {
	gbalancer.Register(builder{})
}

// loggerKey is the resolver state attribute holding the balancer's logger.
type loggerKey struct{}

// AttachLogger returns attrs with l attached. The balancer logs to the
// logger attached to the resolver state's Attributes (butterfly.DialOptions
// attaches its WithLogger logger this way); without one it logs nothing.
func AttachLogger(attrs *attributes.Attributes, l *slog.Logger) *attributes.Attributes {
	return attrs.WithValue(loggerKey{}, l)
}

// metricsKey is the resolver state attribute holding the registry of the
// balancer's metrics.
type metricsKey struct{}

// AttachMetrics returns attrs with reg attached. The balancer counts its
// ejections (butterfly_balancer_ejections_total) and keeps the number of
// instances it ejects now (butterfly_balancer_ejected), labelled by service,
// on the registry attached to the first resolver state that has one
// (butterfly.WithMetrics attaches it this way); without one it counts
// nothing.
func AttachMetrics(attrs *attributes.Attributes, reg prometheus.Registerer) *attributes.Attributes {
	return attrs.WithValue(metricsKey{}, reg)
}

type builder struct{}

var (
	_ gbalancer.Builder      = builder{}
	_ gbalancer.ConfigParser = builder{}
)

func (builder) Name() string { return Name }

func (builder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	cfg, err := ParseConfig(js)
	if err != nil {
		return nil, err
	}
	return &lbConfig{Config: cfg}, nil
}

func (builder) Build(cc gbalancer.ClientConn, opts gbalancer.BuildOptions) gbalancer.Balancer {
	b := &butterflyBalancer{
		cc:       cc,
		bopts:    opts,
		service:  opts.Target.Endpoint(),
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		logger:   slog.New(slog.DiscardHandler),
		cfg:      DefaultConfig(),
		children: make(map[string]*child),
		retries:  make(map[*child]time.Time),
	}
	b.wg.Add(1)
	go b.run()
	return b
}

// butterflyBalancer keeps one pick_first child per instance (keyed by the
// instance name, not the address, so that a moved instance keeps its child
// and the child moves its connection), and publishes pickers that choose
// among the children.
type butterflyBalancer struct {
	cc      gbalancer.ClientConn
	bopts   gbalancer.BuildOptions
	service string        // the target's endpoint, e.g. "intermediate"
	kick    chan struct{} // wakes run; capacity 1
	done    chan struct{} // closed by Close to stop run
	wg      sync.WaitGroup

	// mu guards the fields below and the parent-guarded fields of every
	// child. Lock order: child.lbMu, then the child policy's own lock, then
	// mu, then Members.mu. Never call into a child policy while holding mu:
	// it may report its state synchronously.
	mu          sync.Mutex
	logger      *slog.Logger
	metrics     *telemetry.BalancerMetrics // nil: not counted
	metricsSet  bool                       // a registry was seen; metrics is final
	cfg         Config
	children    map[string]*child
	inhibit     bool                 // a top-down update is in progress; publish at its end
	resolverErr error                // last resolver error while there are no children
	retries     map[*child]time.Time // IDLE children and when to reconnect them
	members     *Members             // where the members are published: the resolver state's; nil: nowhere
	lastMembers []Member
	published   bool // lastMembers went to members
	closed      bool
}

var _ gbalancer.Balancer = (*butterflyBalancer)(nil)

// UpdateClientConnState creates a child for every new instance, hands every
// child its (possibly moved) endpoint, closes the children of instances that
// are gone, and publishes one picker at the end.
func (b *butterflyBalancer) UpdateClientConnState(s gbalancer.ClientConnState) error {
	cfg := DefaultConfig()
	switch c := s.BalancerConfig.(type) {
	case nil:
	case *lbConfig:
		cfg = c.Config
	default:
		return fmt.Errorf("balancer: config of type %T: %w", s.BalancerConfig, gbalancer.ErrBadResolverState)
	}

	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	if l, ok := s.ResolverState.Attributes.Value(loggerKey{}).(*slog.Logger); ok && l != nil {
		b.logger = l.With("service", b.service)
	}
	b.setMetricsLocked(s.ResolverState.Attributes)
	b.cfg = cfg
	if m := membersOf(s.ResolverState.Attributes); m != b.members {
		b.members, b.published = m, false
	}
	b.inhibit = true
	b.resolverErr = nil

	type update struct {
		c  *child
		ep gresolver.Endpoint
	}
	updates := make([]update, 0, len(s.ResolverState.Endpoints))
	seen := make(map[string]bool, len(s.ResolverState.Endpoints))
	for _, ep := range s.ResolverState.Endpoints {
		inst, ok := instanceOf(ep)
		if !ok {
			b.logger.Warn("balancer: skipping endpoint without addresses")
			continue
		}
		if seen[inst.Name] {
			b.logger.Warn("balancer: skipping duplicate instance", "instance", inst.Name, "addr", inst.Addr)
			continue
		}
		seen[inst.Name] = true
		c := b.children[inst.Name]
		if c == nil {
			c = newChild(b, inst.Name)
			b.children[inst.Name] = c
			b.logger.Debug("balancer: instance added", "instance", inst.Name, "addr", inst.Addr)
		} else if c.inst.Addr != inst.Addr || c.inst.Metadata.Epoch != inst.Metadata.Epoch {
			c.moves++
			b.logger.Info("balancer: instance moved", "instance", inst.Name,
				"from", c.inst.Addr, "to", inst.Addr, "epoch", inst.Metadata.Epoch)
		}
		c.inst = inst
		c.stats.threshold.Store(cfg.Ejection.ConsecutiveFailures)
		updates = append(updates, update{c: c, ep: ep})
	}
	var removed []*child
	for name, c := range b.children {
		if !seen[name] {
			c.removed = true
			if !c.ejectedUntil.IsZero() {
				b.metrics.Returned(1)
			}
			delete(b.children, name)
			delete(b.retries, c)
			removed = append(removed, c)
			b.logger.Debug("balancer: instance removed", "instance", name)
		}
	}
	b.mu.Unlock()

	// Calls into the children happen without mu; their state reports are
	// recorded but not published while inhibit is set.
	var firstErr error
	for _, u := range updates {
		err := u.c.updateClientConnState(b.bopts, gbalancer.ClientConnState{
			ResolverState: pickfirst.EnableHealthListener(gresolver.State{
				Endpoints:  []gresolver.Endpoint{u.ep},
				Attributes: s.ResolverState.Attributes,
			}),
		})
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("balancer: instance %s: %w", u.c.name, err)
		}
	}
	for _, c := range removed {
		c.close()
	}

	b.mu.Lock()
	b.inhibit = false
	if !b.closed {
		b.updateStateLocked()
	}
	b.mu.Unlock()
	return firstErr
}

// instanceOf returns the registry instance of ep. An endpoint from another
// resolver (no instance attribute) is named after its first address.
func instanceOf(ep gresolver.Endpoint) (registry.Instance, bool) {
	if inst, ok := registry.InstanceFromEndpoint(ep); ok && inst.Name != "" {
		return inst, true
	}
	if len(ep.Addresses) == 0 {
		return registry.Instance{}, false
	}
	if inst, ok := registry.InstanceFromAddress(ep.Addresses[0]); ok && inst.Name != "" {
		return inst, true
	}
	addr := ep.Addresses[0].Addr
	return registry.Instance{Name: addr, Addr: addr, Metadata: registry.Metadata{Instance: addr}}, true
}

// setMetricsLocked creates the metrics on the first registry attached to
// attrs.
func (b *butterflyBalancer) setMetricsLocked(attrs *attributes.Attributes) {
	if b.metricsSet {
		return
	}
	reg, ok := attrs.Value(metricsKey{}).(prometheus.Registerer)
	if !ok || reg == nil {
		return
	}
	b.metricsSet = true
	m, err := telemetry.NewBalancerMetrics(reg, b.service)
	if err != nil {
		b.logger.Warn("balancer: metrics not registered", "err", err)
		return
	}
	b.metrics = m
}

// ResolverError keeps the current children (the last good state stays in
// force) and records err for the picker when there are none.
func (b *butterflyBalancer) ResolverError(err error) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.logger.Warn("balancer: resolver error", "err", err)
	b.resolverErr = err
	b.inhibit = true
	children := b.childrenLocked()
	b.mu.Unlock()

	for _, c := range children {
		c.resolverError(err)
	}

	b.mu.Lock()
	b.inhibit = false
	if !b.closed {
		b.updateStateLocked()
	}
	b.mu.Unlock()
}

// UpdateSubConnState is not used: every SubConn has a StateListener.
func (b *butterflyBalancer) UpdateSubConnState(gbalancer.SubConn, gbalancer.SubConnState) {}

// ExitIdle reconnects every idle child.
func (b *butterflyBalancer) ExitIdle() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	children := b.childrenLocked()
	b.mu.Unlock()
	for _, c := range children {
		c.exitIdle()
	}
}

// Close stops the timer goroutine, closes every child (shutting their
// connections down) and stops publishing members. Safe to call twice.
func (b *butterflyBalancer) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	children := b.childrenLocked()
	for _, c := range children {
		if !c.ejectedUntil.IsZero() {
			b.metrics.Returned(1)
		}
	}
	clear(b.children)
	clear(b.retries)
	members := b.members
	b.mu.Unlock()

	close(b.done)
	b.wg.Wait()
	for _, c := range children {
		c.close()
	}
	if members != nil {
		members.forget()
	}
}

// childrenLocked returns the children sorted by instance name.
func (b *butterflyBalancer) childrenLocked() []*child {
	out := make([]*child, 0, len(b.children))
	for _, c := range b.children {
		out = append(out, c)
	}
	slices.SortFunc(out, func(x, y *child) int { return strings.Compare(x.name, y.name) })
	return out
}

// kickRun wakes run without blocking.
func (b *butterflyBalancer) kickRun() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// updateStateLocked publishes a new picker and the aggregated state, and the
// members to the connection's Members. It must not be called while inhibit is set.
func (b *butterflyBalancer) updateStateLocked() {
	children := b.childrenLocked()
	var noneErr error
	if len(children) == 0 {
		if b.resolverErr != nil {
			noneErr = fmt.Errorf("butterfly: no instances of service %q: resolver: %w", b.service, b.resolverErr)
		} else {
			noneErr = fmt.Errorf("butterfly: no instances of service %q", b.service)
		}
	}
	p := newPicker(b.service, b.cfg.LocalZone, children, noneErr)
	b.cc.UpdateState(gbalancer.State{ConnectivityState: aggregateState(children), Picker: p})
	b.publishMembersLocked(children)
}

// aggregateState is READY if any child is, else CONNECTING if any child is
// connecting or idle (idle children are reconnected), else
// TRANSIENT_FAILURE (also when there are no children).
func aggregateState(children []*child) connectivity.State {
	agg := connectivity.TransientFailure
	for _, c := range children {
		switch c.state.ConnectivityState {
		case connectivity.Ready:
			return connectivity.Ready
		case connectivity.Connecting, connectivity.Idle:
			agg = connectivity.Connecting
		}
	}
	return agg
}

func (b *butterflyBalancer) publishMembersLocked(children []*child) {
	if b.members == nil {
		return
	}
	members := make([]Member, len(children))
	for i, c := range children {
		members[i] = Member{
			Instance: c.inst,
			State:    c.state.ConnectivityState,
			Ejected:  !c.ejectedUntil.IsZero(),
			Moves:    c.moves,
		}
	}
	if b.published && slices.Equal(members, b.lastMembers) {
		return
	}
	b.lastMembers, b.published = members, true
	b.members.publish(members)
}
