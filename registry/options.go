package registry

import (
	"log/slog"
	"time"
)

// DefaultTTL is the lease TTL of a registration when none is configured.
const DefaultTTL = 5 * time.Second

// Option configures Register, Watch and RequestDrain.
type Option func(*options)

type options struct {
	prefix  string
	logger  *slog.Logger
	ttl     time.Duration
	weight  uint32
	zone    string
	version string
	// consumerRole is ConsumerValue.Role of a consumer registration.
	consumerRole string
	onError      func(error)
	resync       <-chan struct{}
}

func newOptions(opts []Option) options {
	o := options{
		prefix: DefaultPrefix,
		logger: slog.New(slog.DiscardHandler),
		ttl:    DefaultTTL,
	}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithPrefix sets the etcd key prefix; the default is DefaultPrefix.
func WithPrefix(prefix string) Option {
	return func(o *options) { o.prefix = prefix }
}

// WithLogger sets the logger; the default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithTTL sets the lease TTL of a registration; the default is DefaultTTL.
// etcd counts leases in whole seconds: d is rounded up to at least 1s.
func WithTTL(d time.Duration) Option {
	return func(o *options) { o.ttl = d }
}

// WithWeight sets Metadata.weight of a registration.
func WithWeight(w uint32) Option {
	return func(o *options) { o.weight = w }
}

// WithZone sets Metadata.zone of a registration.
func WithZone(z string) Option {
	return func(o *options) { o.zone = z }
}

// WithStageRole makes a consumer registration (RegisterConsumer) a stage's:
// its role is RoleStage instead of RoleConsumer.
func WithStageRole() Option {
	return func(o *options) { o.consumerRole = RoleStage }
}

// WithVersion sets Metadata.version of a registration.
func WithVersion(v string) Option {
	return func(o *options) { o.version = v }
}

// WithErrorHandler makes Watch call f with every error that halts its watch
// or fails a re-list. f is called from Watch's goroutine.
func WithErrorHandler(f func(error)) Option {
	return func(o *options) { o.onError = f }
}

// WithResync makes Watch re-list the service whenever a value is received
// from c, as if its watch had halted, but without reporting an error. A
// resolver uses it to honour ResolveNow.
func WithResync(c <-chan struct{}) Option {
	return func(o *options) { o.resync = c }
}

// leaseTTL returns the TTL in the whole seconds etcd counts.
func (o *options) leaseTTL() int64 {
	s := int64((o.ttl + time.Second - 1) / time.Second)
	return max(s, 1)
}
