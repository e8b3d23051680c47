package resolver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	gresolver "google.golang.org/grpc/resolver"

	"github.com/butterfly-mesh/butterfly/internal/telemetry"
	"github.com/butterfly-mesh/butterfly/registry"
)

// Scheme is the URI scheme of Butterfly targets: "butterfly:///<service>".
const Scheme = "butterfly"

// Option configures the builder.
type Option func(*options)

type options struct {
	prefix  string
	logger  *slog.Logger
	metrics prometheus.Registerer
	onView  func(registry.View)
}

// WithPrefix sets the etcd key prefix; the default is registry.DefaultPrefix.
func WithPrefix(p string) Option {
	return func(o *options) { o.prefix = p }
}

// WithLogger sets the logger; the default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithMetrics counts the resolvers' states pushed
// (butterfly_resolver_updates_total) and errors reported
// (butterfly_resolver_errors_total), labelled by service, on reg; nil (the
// default) counts nothing.
func WithMetrics(reg prometheus.Registerer) Option {
	return func(o *options) { o.metrics = reg }
}

// WithViewFunc calls f with every view of the target's service that a
// resolver built by the builder reads from etcd, once gRPC has taken it
// (the balancer knows the view's instances when f runs), on the resolver's
// watch goroutine: f must not block. It lets a client follow the membership
// through its connection's own watch instead of a second one.
func WithViewFunc(f func(registry.View)) Option {
	return func(o *options) { o.onView = f }
}

// NewBuilder returns a resolver builder for targets "butterfly:///<service>"
// that follows the service's registrations in etcd through cli. The
// resolvers it builds stop when they are closed or when cli is closed.
func NewBuilder(cli *clientv3.Client, opts ...Option) gresolver.Builder {
	o := options{prefix: registry.DefaultPrefix, logger: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	return &builder{cli: cli, o: o}
}

type builder struct {
	cli *clientv3.Client
	o   options
}

var _ gresolver.Builder = (*builder)(nil)

// Scheme returns Scheme.
func (b *builder) Scheme() string { return Scheme }

// Build starts watching the target's service. It fails for a target with an
// authority or an invalid service name, or when its metrics clash with
// other collectors of the same names.
func (b *builder) Build(target gresolver.Target, cc gresolver.ClientConn, _ gresolver.BuildOptions) (gresolver.Resolver, error) {
	if b.cli == nil {
		return nil, errors.New("resolver: no etcd client")
	}
	if target.URL.Host != "" {
		return nil, fmt.Errorf("resolver: target %q has an authority; want %s:///<service>", target.String(), Scheme)
	}
	service := target.Endpoint()
	if err := registry.ValidateName("service", service); err != nil {
		return nil, fmt.Errorf("resolver: target %q: %w", target.String(), err)
	}
	if err := registry.ValidateName("prefix", b.o.prefix); err != nil {
		return nil, fmt.Errorf("resolver: %w", err)
	}
	metrics, err := telemetry.NewResolverMetrics(b.o.metrics, service)
	if err != nil {
		return nil, fmt.Errorf("resolver: metrics: %w", err)
	}
	// The resolver lives until Close or until the etcd client closes.
	ctx, cancel := context.WithCancel(b.cli.Ctx())
	r := &etcdResolver{
		cc:      cc,
		onView:  b.o.onView,
		logger:  b.o.logger.With("service", service),
		metrics: metrics,
		cancel:  cancel,
		resync:  make(chan struct{}, 1),
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		err := registry.Watch(ctx, b.cli, service, r.update,
			registry.WithPrefix(b.o.prefix),
			registry.WithLogger(b.o.logger),
			registry.WithErrorHandler(r.reportError),
			registry.WithResync(r.resync),
		)
		r.logger.Debug("resolver: watch ended", "err", err)
	}()
	return r, nil
}
