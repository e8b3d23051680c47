package intermediate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly"
	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/vtcodec"
	"github.com/butterfly-mesh/butterfly/registry"
)

// Errors returned by the Server.
var (
	// ErrServing is returned by Serve when it is called twice.
	ErrServing = errors.New("intermediate: Serve already called")
	// ErrLeaseLost is returned by Serve after the server fenced itself
	// because its registration lost its lease (WithFenceOnLeaseLoss).
	ErrLeaseLost = errors.New("intermediate: registration lost its lease: fenced (etcd unreachable for the lease TTL, or the lease revoked)")
	// ErrNotServing is returned by Drain before Serve registered the server.
	ErrNotServing = errors.New("intermediate: not serving")
)

// Server is one intermediate instance. See the package documentation.
type Server struct {
	cli      *clientv3.Client
	service  string
	instance string
	opts     options
	log      *slog.Logger
	grpc     *grpc.Server
	started  time.Time
	obs      observer // health, metrics and tracing; see observe.go

	// releaseMessages is whether the messages of publish batches go back to
	// the codec (released) once done: the processor is one that keeps none
	// of the messages it is given.
	releaseMessages bool
	released        vtcodec.Releaser // guarded by mu

	ready     chan struct{} // closed once registered; stream handlers wait for it
	subsReady chan struct{} // closed once the subscriptions were read; stream handlers wait for it
	drainCh   chan drainRequest
	stopCh    chan struct{} // closed by Stop
	stopOnce  sync.Once
	done      chan struct{} // closed when Serve returns
	changed   chan struct{} // poked when held messages or streams go away
	// wg counts the goroutines Serve waits for before it returns. A
	// stream's handler adds its own through trackLocked, under mu, so that
	// none is added once Serve waits (untracked): sync.WaitGroup forbids an
	// Add that may race with Wait.
	wg sync.WaitGroup

	received  atomic.Uint64
	acked     atomic.Uint64
	nacked    nackCounts
	delivered atomic.Uint64
	frames    frameCounters

	// mu guards the fields below and every field of pubStream, subStream,
	// group, held and delivery documented as guarded by Server.mu. It is the
	// only lock of the package and is never held across gRPC, etcd or
	// processor calls.
	mu          sync.Mutex
	serveCalled bool
	untracked   bool // Serve waits for wg: handlers start no goroutine and are refused
	addr        string
	epoch       uint64
	reg         *registry.Registration
	draining    bool                   // no new batches; DrainNotice on publish streams
	drainNotice *messagev1.DrainNotice // set with draining
	drainHeld   uint64                 // messages held when the drain started
	leaving     bool                   // end of drain: DrainNotice on subscribe streams, streams end
	heldTotal   int
	heldBytes   int           // bytes of held messages, against the memory budget
	bytesFreed  chan struct{} // closed when heldBytes falls; nil while nobody waits
	admitted    uint64        // messages admitted so far: the order of held
	pubs        map[*pubStream]struct{}
	subs        map[*subStream]struct{}
	groups      map[string]*group       // from etcd, and groups with streams here
	declared    []*group                // the declared groups of groups, by name (setDeclaredLocked)
	unrouted    []*held                 // admitted while no group was declared
	parked      map[string][]*delivery  // waiting for the owner or a consumer of the group
	viewWaits   []*viewWait             // waiting for the view to know what their routes name (viewcheck.go)
	viewChecks  map[string]*viewCheck   // reads of subscription keys, by key, while messages wait on them
	viewReads   int                     // of viewChecks, those under way
	viewQueue   []*viewPeer             // clients with messages waiting for a read maxViewReads holds back, in turn
	viewPeers   map[string]*viewPeer    // of viewQueue, by peerKey
	viewCtx     context.Context         // ends the reads of viewChecks with Serve
	awayWarned  map[[2]string]time.Time // group and owner -> when handing back its messages was last logged
	subsRead    bool                    // the subscriptions were read from etcd once
	subsChanged chan struct{}           // closed and replaced when the subscriptions change
}

type drainRequest struct {
	reason  messagev1.DrainReason
	timeout time.Duration
	started chan drainStarted // receives once the drain started; may be nil
}

type drainStarted struct {
	already bool
	held    uint64
}

// New returns a server for instance of service. It serves nothing until
// Serve.
func New(cli *clientv3.Client, service, instance string, opts ...Option) (*Server, error) {
	if cli == nil {
		return nil, errors.New("intermediate: etcd client is nil")
	}
	if err := registry.ValidateName("service", service); err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	if err := registry.ValidateName("instance", instance); err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	o.ownerWait = min(o.ownerWait, o.noConsumerTimeout)
	s := &Server{
		cli:        cli,
		service:    service,
		instance:   instance,
		opts:       o,
		log:        o.logger.With("service", service, "instance", instance),
		started:    time.Now(),
		ready:      make(chan struct{}),
		drainCh:    make(chan drainRequest, 1),
		stopCh:     make(chan struct{}),
		done:       make(chan struct{}),
		changed:    make(chan struct{}, 1),
		pubs:       make(map[*pubStream]struct{}),
		subs:       make(map[*subStream]struct{}),
		groups:     make(map[string]*group),
		parked:     make(map[string][]*delivery),
		awayWarned: make(map[[2]string]time.Time),

		subsChanged: make(chan struct{}),
		subsReady:   make(chan struct{}),

		releaseMessages: keepsNoMessage(o.processor),
	}
	// The observing interceptors (metrics, the "finished call" log) come
	// first, outermost: they see every call, those the limits refuse
	// included.
	obsOpts, err := s.observeServerOptions()
	if err != nil {
		return nil, err
	}
	sopts := append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(2*o.maxBatchBytes + 1<<16),
		grpc.ConnectionTimeout(o.connectionTimeout),
		vtcodec.ServerOption(),
		grpc.InitialWindowSize(butterfly.StreamWindow),
		grpc.InitialConnWindowSize(butterfly.ConnWindow),
	}, obsOpts...)
	sopts = append(sopts, s.interceptorOptions()...)
	sopts = append(sopts, o.serverOptions...)
	s.grpc = grpc.NewServer(sopts...)
	deliveryv1.RegisterPublishServiceServer(s.grpc, &publishService{s: s})
	deliveryv1.RegisterSubscribeServiceServer(s.grpc, &subscribeService{s: s})
	deliveryv1.RegisterProcessServiceServer(s.grpc, &processService{s: s})
	adminv1.RegisterAdminServiceServer(s.grpc, &adminService{s: s})
	if err := s.observe(); err != nil {
		return nil, err
	}
	return s, nil
}

// Addr returns the address the server is registered at, once Serve started.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Instance returns the instance name.
func (s *Server) Instance() string { return s.instance }

// Epoch returns the registration epoch, 0 before the server is registered.
func (s *Server) Epoch() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

// Ready returns a channel closed once Serve serves and the server is
// registered in etcd.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Draining reports whether the server drains (or drained).
func (s *Server) Draining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// Serve serves the Publish, Subscribe, Process and Admin services on lis,
// registers the server in etcd once it is serving, and runs until ctx is
// done, Drain is called, the control key asks for a drain or another
// incarnation replaces the registration: then it drains and returns nil.
// With an address of WithAdvertiseAddr, it first asks who answers there
// (WithAdvertiseCheck): when another server does, it returns an
// *AdvertiseError without registering; without one, a listener on every
// address (0.0.0.0, ::) is refused, nothing registered, since no client
// can dial the address it would register. After Stop it returns nil at once;
// a ctx that ends before the server registered ends it with ctx's error,
// nothing registered. lis is closed when Serve returns.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if s.opts.advertiseAddr == "" {
		if host, _, err := net.SplitHostPort(lis.Addr().String()); err == nil && EveryAddress(host) {
			lis.Close()
			return fmt.Errorf("intermediate: %s listens on every address, which others cannot dial: give WithAdvertiseAddr the address they reach this server at", lis.Addr())
		}
	}
	s.mu.Lock()
	if s.serveCalled {
		s.mu.Unlock()
		return ErrServing
	}
	s.serveCalled = true
	s.addr = s.opts.advertiseAddr
	if s.addr == "" {
		s.addr = lis.Addr().String()
	}
	addr := s.addr
	s.mu.Unlock()
	defer close(s.done)

	serveErr := make(chan error, 1)
	go func() { serveErr <- s.grpc.Serve(lis) }()

	// Routing follows the subscriptions from the moment the server is
	// registered: streams wait until they were read once.
	// jctx ends the server's own goroutines: the watch and the janitor.
	jctx, jcancel := context.WithCancel(context.WithoutCancel(ctx))
	s.mu.Lock()
	s.viewCtx = jctx
	s.mu.Unlock()
	defer jcancel()
	s.wg.Add(1)
	go s.watchSubscriptions(jctx)

	ropts := append([]registry.Option{
		registry.WithPrefix(s.opts.prefix),
		registry.WithLogger(s.opts.logger),
		registry.WithTTL(s.opts.leaseTTL),
	}, s.opts.registryOptions...)
	if s.opts.version != "" {
		ropts = append(ropts, registry.WithVersion(s.opts.version))
	}
	// The check comes before the registration, which would take over that
	// of an instance of the same name answering at the address.
	err := s.checkAdvertised(ctx, addr)
	var reg *registry.Registration
	if err == nil {
		reg, err = s.registerUntilStopped(ctx, addr, ropts)
	}
	if err != nil {
		s.grpc.Stop()
		<-serveErr //nolint:errcheck // Serve ends because of Stop: its error says nothing more
		jcancel()
		s.waitTracked()
		if s.stopped() {
			return nil
		}
		return err
	}
	s.mu.Lock()
	s.reg = reg
	s.epoch = reg.Epoch()
	s.mu.Unlock()
	close(s.ready)
	s.setServing()
	s.log.Info("intermediate: serving", "addr", addr, "epoch", reg.Epoch(), "processor", s.opts.processor.Name())

	s.wg.Add(1)
	go s.janitor(jctx)
	defer func() {
		jcancel()
		s.waitTracked()
	}()

	var leaseLost <-chan struct{}
	if s.opts.fenceOnLeaseLoss {
		leaseLost = reg.LeaseLost()
	}
	req := drainRequest{timeout: s.opts.drainTimeout}
	lost := false
	select {
	case <-ctx.Done():
		req.reason = messagev1.DrainReason_DRAIN_REASON_SHUTDOWN
	case req = <-s.drainCh:
	case <-reg.DrainRequested():
		req.reason = messagev1.DrainReason_DRAIN_REASON_OPERATOR
	case <-reg.Replaced():
		req.reason = messagev1.DrainReason_DRAIN_REASON_FENCED
	case <-leaseLost:
		s.log.Warn("intermediate: registration lost its lease; fencing (etcd unreachable for the lease TTL, or the lease revoked)", "ttl", s.opts.leaseTTL)
		req.reason = messagev1.DrainReason_DRAIN_REASON_FENCED
		lost = true
		// It puts no key back while this process leaves.
		stopKeeping(ctx, reg)
	case <-s.stopCh:
		s.crash(ctx, reg, serveErr)
		return nil
	case err := <-serveErr:
		// The listener failed: nothing can reach the server any more.
		s.log.Error("intermediate: serve failed", "err", err)
		s.crash(ctx, reg, nil)
		return fmt.Errorf("intermediate: serve: %w", err)
	}
	s.setNotServing()
	drainStart := time.Now()
	s.drain(context.WithoutCancel(ctx), reg, req, serveErr)
	s.drained(req.reason, time.Since(drainStart))
	if lost {
		return ErrLeaseLost
	}
	return nil
}

// trackLocked counts n goroutines a stream's handler starts in wg, unless
// Serve already waits for it: then it counts none and reports false, and the
// handler refuses its stream.
func (s *Server) trackLocked(n int) bool {
	if s.untracked {
		return false
	}
	s.wg.Add(n)
	return true
}

// waitTracked counts no more goroutines and waits for those counted.
func (s *Server) waitTracked() {
	s.mu.Lock()
	s.untracked = true
	s.mu.Unlock()
	s.wg.Wait()
}

// errStopped refuses a stream that arrives as Serve ends.
var errStopped = status.Error(codes.Unavailable, "intermediate: stopped")

// registerUntilStopped registers the server, giving up when ctx is done or
// Stop is called.
func (s *Server) registerUntilStopped(ctx context.Context, addr string, ropts []registry.Option) (*registry.Registration, error) {
	rctx, cancel := s.untilStopped(ctx)
	defer cancel()
	reg, err := registry.Register(rctx, s.cli, s.service, s.instance, addr, ropts...)
	if err != nil {
		return nil, fmt.Errorf("intermediate: register %s: %w", s.instance, err)
	}
	return reg, nil
}

// untilStopped returns a context that ends with ctx or once Stop is called.
// Its goroutine is counted in wg and ends with cancel.
func (s *Server) untilStopped(ctx context.Context) (context.Context, context.CancelFunc) {
	sctx, cancel := context.WithCancel(ctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-s.stopCh:
			cancel()
		case <-sctx.Done():
		}
	}()
	return sctx, cancel
}

// crash stops everything at once, like a killed process: the key is left to
// expire with its lease and no peer is told anything.
func (s *Server) crash(ctx context.Context, reg *registry.Registration, serveErr <-chan error) {
	s.log.Warn("intermediate: stopped hard")
	s.grpc.Stop()
	if serveErr != nil {
		<-serveErr //nolint:errcheck // Serve ends because of Stop: its error says nothing more
	}
	stopKeeping(ctx, reg)
}

// stopKeeping stops the registration's goroutines without a single etcd
// call (Close with a canceled context): the key stays until its lease
// expires, and is not put back.
func stopKeeping(ctx context.Context, reg *registry.Registration) {
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	cancel()
	_ = reg.Close(cctx)
}

// Drain starts a drain (reason: shutdown) and returns when it finished and
// Serve returned, or when ctx is done.
func (s *Server) Drain(ctx context.Context) error {
	if _, err := s.requestDrain(ctx, messagev1.DrainReason_DRAIN_REASON_SHUTDOWN, s.opts.drainTimeout); err != nil {
		return err
	}
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("intermediate: drain: %w", ctx.Err())
	}
}

// requestDrain asks Serve to drain and waits until the drain started.
func (s *Server) requestDrain(ctx context.Context, reason messagev1.DrainReason, timeout time.Duration) (drainStarted, error) {
	select {
	case <-s.ready:
	default:
		return drainStarted{}, ErrNotServing
	}
	started := make(chan drainStarted, 1)
	select {
	case s.drainCh <- drainRequest{reason: reason, timeout: timeout, started: started}:
	default:
		// A drain was already requested.
		s.mu.Lock()
		held := s.drainHeld
		s.mu.Unlock()
		return drainStarted{already: true, held: held}, nil
	}
	select {
	case st := <-started:
		return st, nil
	case <-s.done:
		return drainStarted{already: true}, nil
	case <-ctx.Done():
		return drainStarted{}, fmt.Errorf("intermediate: drain: %w", ctx.Err())
	}
}

// Stop stops the server at once, like a crash: connections are cut, the
// listener is closed, the registration key is left to expire with its lease
// and no peer is told anything. Serve then returns nil. Stop is safe to call
// more than once and before Serve.
func (s *Server) Stop() {
	s.stopOnce.Do(func() { close(s.stopCh) })
	s.grpc.Stop()
}

// poke wakes whoever waits on s.changed.
func (s *Server) poke() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// stopped reports whether Stop was called.
func (s *Server) stopped() bool {
	select {
	case <-s.stopCh:
		return true
	default:
		return false
	}
}

// watchSubscriptions follows the groups and consumers of the service in etcd
// until ctx is done.
func (s *Server) watchSubscriptions(ctx context.Context) {
	defer s.wg.Done()
	err := registry.WatchSubscriptions(ctx, s.cli, s.service, func(v registry.Subscriptions) {
		s.mu.Lock()
		s.applySubscriptionsLocked(v)
		close(s.subsChanged)
		s.subsChanged = make(chan struct{})
		first := !s.subsRead
		s.subsRead = true
		s.mu.Unlock()
		if first {
			close(s.subsReady)
		}
	}, registry.WithPrefix(s.opts.prefix), registry.WithLogger(s.opts.logger))
	if err != nil && !errors.Is(err, context.Canceled) {
		s.log.Error("intermediate: subscriptions watch ended", "err", err)
	}
}
