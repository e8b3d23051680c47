package butterfly

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	gresolver "google.golang.org/grpc/resolver"

	"github.com/butterfly-mesh/butterfly/balancer"
	"github.com/butterfly-mesh/butterfly/internal/vtcodec"
	"github.com/butterfly-mesh/butterfly/registry"
	"github.com/butterfly-mesh/butterfly/resolver"
)

// DialOption configures DialOptions.
type DialOption func(*dialOptions)

type dialOptions struct {
	prefix   string
	logger   *slog.Logger
	creds    credentials.TransportCredentials
	lbConfig string
	metrics  prometheus.Registerer
	members  *balancer.Members
	onView   func(registry.View)
}

// The HTTP/2 flow-control windows of Butterfly's connections, in bytes, on
// both sides (DialOptions and the intermediate's server). A fixed window
// turns off grpc-go's window estimation, whose pings and small windows cost
// a write and a wake-up per few kilobytes on a fast link; a stream of 1 MiB
// carries a full default batch (512 KiB) at once, and up to 1 MiB per
// round trip: about 20 MB/s per stream at 50 ms. Options given after
// these override them (grpc.WithInitialWindowSize,
// intermediate.WithGRPCServerOptions(grpc.InitialWindowSize(...))).
const (
	StreamWindow = 1 << 20
	ConnWindow   = 4 << 20
)

// minConnectTimeout bounds one connection attempt: on a LAN a live instance
// answers well within it, and a dead host is given up on quickly.
const minConnectTimeout = 3 * time.Second

// WithPrefix sets the etcd key prefix the resolver reads (default
// registry.DefaultPrefix).
func WithPrefix(prefix string) DialOption {
	return func(o *dialOptions) { o.prefix = prefix }
}

// WithLogger sets the logger of the resolver and of the balancer.
func WithLogger(l *slog.Logger) DialOption {
	return func(o *dialOptions) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithMetrics counts, labelled by service, the resolver's states and errors
// (butterfly_resolver_updates_total, butterfly_resolver_errors_total) and
// the balancer's ejections (butterfly_balancer_ejections_total, with the
// gauge butterfly_balancer_ejected) on reg. Every client connection given
// the same reg adds to the same series. Default: nothing is counted.
func WithMetrics(reg prometheus.Registerer) DialOption {
	return func(o *dialOptions) { o.metrics = reg }
}

// WithTransportCredentials sets the credentials of the connections to the
// instances (default insecure).
func WithTransportCredentials(c credentials.TransportCredentials) DialOption {
	return func(o *dialOptions) {
		if c != nil {
			o.creds = c
		}
	}
}

// WithBalancerConfig sets the JSON configuration of the butterfly balancer
// (see balancer.Config), e.g. `{"localZone":"eu-1a"}`. Its backoff also
// paces the channel's connection attempts (grpc.WithConnectParams); without
// it they back off from 100ms to 3s. An invalid config makes grpc.NewClient
// fail.
func WithBalancerConfig(js string) DialOption {
	return func(o *dialOptions) { o.lbConfig = js }
}

// WithMembers makes the connection's balancer publish its members (each
// instance with the state of its connection; see balancer.Members) to m,
// which m.Subscribe follows.
func WithMembers(m *balancer.Members) DialOption {
	return func(o *dialOptions) { o.members = m }
}

// WithViews calls f with every view of the target's service that the
// connection's resolver reads from etcd, once the balancer has it (a
// stream pinned to one of its instances finds it), on the resolver's
// goroutine: f must not block. A client follows the membership this way
// through its connection's own etcd watch, with no second one. The
// connection then never goes idle (grpc.WithIdleTimeout(0)), so that its
// resolver keeps watching while no RPC runs; call Connect on it to start
// the resolver without an RPC.
func WithViews(f func(registry.View)) DialOption {
	return func(o *dialOptions) { o.onView = f }
}

// DialOptions returns the grpc.DialOption set that gives a client the
// butterfly resolver and balancer:
//
//	conn, err := grpc.NewClient("butterfly:///intermediate", butterfly.DialOptions(cli)...)
//
// The client follows the instances registered in etcd under the service
// named by the target, keeps one connection per instance and balances over
// them (see package balancer). Its calls encode and decode Butterfly's
// messages with vtprotobuf's generated code under the codec name "proto"
// (the wire does not change; any other message goes through grpc-go's
// codec), so a message sent through it should pass CheckMessage. Its
// connections have fixed flow-control windows (StreamWindow, ConnWindow).
// Options given to grpc.NewClient after these override them.
func DialOptions(cli *clientv3.Client, opts ...DialOption) []grpc.DialOption {
	o := dialOptions{
		prefix: registry.DefaultPrefix,
		logger: slog.New(slog.DiscardHandler),
		creds:  insecure.NewCredentials(),
	}
	for _, opt := range opts {
		opt(&o)
	}
	rb := resolver.NewBuilder(cli, resolver.WithPrefix(o.prefix), resolver.WithLogger(o.logger),
		resolver.WithMetrics(o.metrics), resolver.WithViewFunc(o.onView))
	dopts := []grpc.DialOption{
		grpc.WithResolvers(attachingBuilder{Builder: rb, logger: o.logger, metrics: o.metrics, members: o.members}),
		grpc.WithDefaultServiceConfig(balancer.ServiceConfig(o.lbConfig)),
		grpc.WithTransportCredentials(o.creds),
		grpc.WithConnectParams(o.connectParams()),
		vtcodec.DialOption(),
		grpc.WithInitialWindowSize(StreamWindow),
		grpc.WithInitialConnWindowSize(ConnWindow),
	}
	if o.onView != nil {
		dopts = append(dopts, grpc.WithIdleTimeout(0))
	}
	return dopts
}

// connectParams is the channel's connection backoff: the balancer config's
// backoff when it has a valid one, else 100ms to 3s.
func (o dialOptions) connectParams() grpc.ConnectParams {
	cfg := balancer.DefaultConfig()
	if parsed, err := balancer.ParseConfig([]byte(o.lbConfig)); err == nil {
		cfg = parsed
	}
	bc := backoff.DefaultConfig
	bc.BaseDelay = cfg.Backoff.BaseDelay
	bc.MaxDelay = cfg.Backoff.MaxDelay
	return grpc.ConnectParams{Backoff: bc, MinConnectTimeout: minConnectTimeout}
}

// attachingBuilder wraps the resolver builder so that every resolver state
// carries the logger, the metrics registry and the members for the
// balancer.
type attachingBuilder struct {
	gresolver.Builder
	logger  *slog.Logger
	metrics prometheus.Registerer // nil: none attached
	members *balancer.Members     // nil: none attached
}

func (b attachingBuilder) Build(target gresolver.Target, cc gresolver.ClientConn, opts gresolver.BuildOptions) (gresolver.Resolver, error) {
	return b.Builder.Build(target, attachingClientConn{ClientConn: cc, logger: b.logger, metrics: b.metrics, members: b.members}, opts)
}

// attachingClientConn attaches the logger, the registry and the members to
// every state it passes on.
type attachingClientConn struct {
	gresolver.ClientConn
	logger  *slog.Logger
	metrics prometheus.Registerer
	members *balancer.Members
}

func (cc attachingClientConn) UpdateState(s gresolver.State) error {
	s.Attributes = balancer.AttachLogger(s.Attributes, cc.logger)
	if cc.metrics != nil {
		s.Attributes = balancer.AttachMetrics(s.Attributes, cc.metrics)
	}
	if cc.members != nil {
		s.Attributes = balancer.AttachMembers(s.Attributes, cc.members)
	}
	return cc.ClientConn.UpdateState(s)
}
