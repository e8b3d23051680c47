package components

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/registry"
)

// Defaults of the options.
const (
	DefaultService           = registry.DefaultService
	DefaultWindow            = 2500
	DefaultBatchMessages     = 64
	DefaultBatchBytes        = 512 << 10
	DefaultLinger            = 2 * time.Millisecond
	DefaultHeartbeatInterval = 200 * time.Millisecond
	DefaultCredit            = 1000
	DefaultConcurrency       = 1
	DefaultDedupWindow       = 1 << 17
	DefaultGroup             = "default"
	DefaultConsumerLeaseTTL  = 5 * time.Second
	registerTimeout          = 5 * time.Second
	DefaultStageConcurrency  = 256
	// DefaultDedupProducers bounds how many producer incarnations a consumer
	// tracks for deduplication; the least recently seen is forgotten first.
	DefaultDedupProducers = 1024
	heartbeatMisses       = 5
	minBackoff            = 20 * time.Millisecond
	maxBackoff            = time.Second
)

// DefaultMaxMessageBytes is the largest message a producer sends, encoded:
// what an intermediate accepts by default (its max batch bytes).
const DefaultMaxMessageBytes = 1 << 20

// DefaultMaxReceiveBytes is the largest delivery batch a consumer receives,
// encoded (its gRPC receive limit, stated to intermediates in its hello):
// above any max-batch-bytes an intermediate is likely to be given, so that
// whatever a mesh accepts reaches its consumers. It costs nothing until a
// batch that large arrives.
const DefaultMaxReceiveBytes = 64 << 20

// MinMaxReceiveBytes is the lowest receive limit WithMaxReceiveBytes takes.
const MinMaxReceiveBytes = 64 << 10

// commonConfig is what producers, consumers and stages share.
type commonConfig struct {
	prefix      string
	logger      *slog.Logger
	heartbeat   time.Duration
	dialOptions []grpc.DialOption
	metrics     prometheus.Registerer
	tracer      trace.TracerProvider
	// creds are the connections' credentials when known (plaintext by
	// default), nil when dial options may have set others: a connection a
	// server closes or resets is checked against them (refusal.go).
	creds credentials.TransportCredentials
}

func defaultCommon() commonConfig {
	return commonConfig{
		prefix:    registry.DefaultPrefix,
		logger:    slog.New(slog.DiscardHandler),
		heartbeat: DefaultHeartbeatInterval,
		creds:     insecure.NewCredentials(),
	}
}

type producerConfig struct {
	commonConfig
	service     string
	window      int
	batchMsgs   int
	batchBytes  int
	batchSet    bool // WithBatch was given
	maxMsgBytes int  // 0: DefaultMaxMessageBytes, or the batch byte limit after WithBatch
	linger      time.Duration
	nackHandler func(msg *messagev1.Message, reason messagev1.NackReason, detail string)
}

type consumerConfig struct {
	commonConfig
	service     string
	group       string
	credit      int
	maxRecv     int
	concurrency int
	dedupWindow int
	dedupProds  int
	createGroup bool
	leaseTTL    time.Duration
	version     string
	limit       uint64
	stage       bool // a stage's consumer side: registered with the stage role
}

type stageConfig struct {
	commonConfig
	processor Processor
	producer  []ProducerOption
	consumer  []ConsumerOption
}

// ProducerOption configures NewProducer.
type ProducerOption interface{ applyProducer(*producerConfig) }

// ConsumerOption configures NewConsumer.
type ConsumerOption interface{ applyConsumer(*consumerConfig) }

// StageOption configures NewStage.
type StageOption interface{ applyStage(*stageConfig) }

// Option configures producers, consumers and stages alike.
type Option interface {
	ProducerOption
	ConsumerOption
	StageOption
}

// ServiceOption configures producers and consumers.
type ServiceOption interface {
	ProducerOption
	ConsumerOption
}

type commonOption func(*commonConfig)

func (f commonOption) applyProducer(c *producerConfig) { f(&c.commonConfig) }
func (f commonOption) applyConsumer(c *consumerConfig) { f(&c.commonConfig) }
func (f commonOption) applyStage(c *stageConfig)       { f(&c.commonConfig) }

type serviceOption string

func (s serviceOption) applyProducer(c *producerConfig) { c.service = string(s) }
func (s serviceOption) applyConsumer(c *consumerConfig) { c.service = string(s) }

type producerOption func(*producerConfig)

func (f producerOption) applyProducer(c *producerConfig) { f(c) }

type consumerOption func(*consumerConfig)

func (f consumerOption) applyConsumer(c *consumerConfig) { f(c) }

type stageOption func(*stageConfig)

func (f stageOption) applyStage(c *stageConfig) { f(c) }

// WithPrefix sets the etcd key prefix (default registry.DefaultPrefix).
func WithPrefix(prefix string) Option {
	return commonOption(func(c *commonConfig) { c.prefix = prefix })
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return commonOption(func(c *commonConfig) {
		if l != nil {
			c.logger = l
		}
	})
}

// WithHeartbeatInterval sets the heartbeat interval of every stream (default
// 200ms). A stream on which nothing arrived for five of the peer's intervals
// is dead.
func WithHeartbeatInterval(d time.Duration) Option {
	return commonOption(func(c *commonConfig) { c.heartbeat = d })
}

// WithDialOptions adds options to the gRPC client connection, after those of
// butterfly.DialOptions (for example transport credentials). The connection
// never goes idle whatever they say (grpc.WithIdleTimeout): its resolver is
// the component's membership.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return commonOption(func(c *commonConfig) {
		c.dialOptions = append(c.dialOptions, opts...)
		if len(opts) > 0 {
			c.creds = nil // they may set credentials
		}
	})
}

// WithTransportCredentials sets the credentials of the connections to the
// intermediates, such as tlsutil.ClientCredentials for mutual TLS (default:
// plaintext). It is WithDialOptions(grpc.WithTransportCredentials(c)): of
// several credentials, the last given wins. A stage uses them on both sides.
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return commonOption(func(c *commonConfig) {
		c.dialOptions = append(c.dialOptions, grpc.WithTransportCredentials(creds))
		c.creds = creds
	})
}

// withCreds sets the connections' credentials as known (nil: not known): a
// stage passes on what its own options said.
func withCreds(creds credentials.TransportCredentials) Option {
	return commonOption(func(c *commonConfig) { c.creds = creds })
}

// WithService sets the service of the intermediates to use (default
// "intermediate").
func WithService(service string) ServiceOption { return serviceOption(service) }

// WithWindow sets how many messages a producer keeps unacknowledged before
// Send blocks (default DefaultWindow, 2500).
func WithWindow(n int) ProducerOption {
	return producerOption(func(c *producerConfig) { c.window = n })
}

// WithBatch sets the batching of a producer: at most maxMessages messages and
// maxBytes bytes per batch (also bounded by what each intermediate accepts),
// and how long a stream waits for more messages before it sends a batch that
// is not full (defaults 64, 512 KiB, 2ms; 0 sends at once). A batch waits
// only while something the producer sent waits for its acknowledgement,
// and no longer than that: a message sent alone goes at once. Without
// WithMaxMessageBytes, maxBytes is also the largest message Send accepts.
func WithBatch(maxMessages, maxBytes int, linger time.Duration) ProducerOption {
	return producerOption(func(c *producerConfig) {
		c.batchMsgs, c.batchBytes, c.linger = maxMessages, maxBytes, linger
		c.batchSet = true
	})
}

// WithMaxMessageBytes sets the largest message, encoded, a producer's Send
// accepts (default DefaultMaxMessageBytes, 1 MiB: what an intermediate
// accepts by default). A message over the batch byte limit travels alone in
// its batch. Each intermediate's advertised max_batch_bytes lowers it.
func WithMaxMessageBytes(n int) ProducerOption {
	return producerOption(func(c *producerConfig) { c.maxMsgBytes = n })
}

// maxMessageBytes is the largest message the configuration lets Send take.
func (c *producerConfig) maxMessageBytes() int {
	switch {
	case c.maxMsgBytes != 0:
		return c.maxMsgBytes
	case c.batchSet:
		return c.batchBytes
	}
	return DefaultMaxMessageBytes
}

// WithNackHandler sets the function called, from a producer goroutine, for
// every message an intermediate handed back for good (processing failed,
// handler failed, invalid). Transient hand-backs are sent again instead.
func WithNackHandler(f func(msg *messagev1.Message, reason messagev1.NackReason, detail string)) ProducerOption {
	return producerOption(func(c *producerConfig) { c.nackHandler = f })
}

// WithGroup sets the consumer group (default "default"). Every group receives
// every message; within a group each message goes to one consumer.
func WithGroup(group string) ConsumerOption {
	return consumerOption(func(c *consumerConfig) { c.group = group })
}

// WithCredit sets how many deliveries each intermediate may send before the
// consumer answered them (default 1000 per stream), capped at the max_credit
// an intermediate's welcome states.
func WithCredit(n int) ConsumerOption {
	return consumerOption(func(c *consumerConfig) { c.credit = n })
}

// WithMaxReceiveBytes sets the largest delivery batch the consumer receives,
// encoded (default DefaultMaxReceiveBytes, at least MinMaxReceiveBytes, at
// most 2 GiB - 1): its gRPC receive limit, which its hello states.
// Intermediates send no batch larger, and hand a message that alone would
// not fit back to its producer for good (NACK_REASON_INVALID).
func WithMaxReceiveBytes(n int) ConsumerOption {
	return consumerOption(func(c *consumerConfig) { c.maxRecv = n })
}

// WithConcurrency sets how many handler calls run at once (default 1).
func WithConcurrency(n int) ConsumerOption {
	return consumerOption(func(c *consumerConfig) { c.concurrency = n })
}

// WithCreateGroup sets whether the consumer declares its group in etcd when
// it is not declared yet (default true). Without it, a consumer of a group
// nobody declared (`butterfly group create`) receives nothing and its
// streams are refused until the group is declared. A group is durable: it
// stays declared after its consumers stop, even one that stopped at once
// (refused, a TLS mismatch), and every message published while it is
// declared waits for it until a consumer returns or the group is deleted
// (registry.DeleteGroup, `butterfly group delete`).
func WithCreateGroup(create bool) ConsumerOption {
	return consumerOption(func(c *consumerConfig) { c.createGroup = create })
}

// WithLeaseTTL sets the TTL of the consumer's registration lease (default
// DefaultConsumerLeaseTTL): how long a crashed consumer keeps its keys, its
// messages waiting for it, before the group's other consumers own them.
func WithLeaseTTL(d time.Duration) ConsumerOption {
	return consumerOption(func(c *consumerConfig) { c.leaseTTL = d })
}

// WithVersion sets the software version the consumer's registration
// carries (the version field of its value in etcd, shown by etcdctl and
// `butterfly group ls --json`; default none).
func WithVersion(v string) ConsumerOption {
	return consumerOption(func(c *consumerConfig) { c.version = v })
}

// WithLimit makes the consumer stop once its handler has handled n messages
// without error (default 0: no limit). No message beyond the n reaches the
// handler: the consumer stops on its own (Done; Err is ErrLimitReached),
// marks its registration draining so that the group's other consumers own
// its keys, leaves what it received beyond the n unanswered and ends its
// streams: the intermediates hand those messages to the group's other
// consumers, or hold them for the group until one registers. The
// application then closes it, which removes its registration.
func WithLimit(n uint64) ConsumerOption {
	return consumerOption(func(c *consumerConfig) { c.limit = n })
}

// WithDedupWindow sets how many sequence numbers per producer incarnation a
// consumer remembers to drop duplicates when the producer's messages carry
// no low-water mark (default 1<<17, at least 64); with a mark, the consumer
// remembers exactly what lies above it. Memory is at most window/8 bytes
// plus one 1 KiB page per tracked producer incarnation (seqs are forgotten
// in pages of 8 192), whatever the number of messages.
func WithDedupWindow(n int) ConsumerOption {
	return consumerOption(func(c *consumerConfig) { c.dedupWindow = n })
}

// WithDedupProducers sets how many producer incarnations a consumer tracks for
// deduplication (default 1024); the least recently seen is forgotten first.
func WithDedupProducers(n int) ConsumerOption {
	return consumerOption(func(c *consumerConfig) { c.dedupProds = n })
}

// WithProcessor sets a processing step a stage runs on every message before
// forwarding it (default: none). The result is forwarded under the original
// id.
func WithProcessor(p Processor) StageOption {
	return stageOption(func(c *stageConfig) { c.processor = p })
}

// WithProducerOptions configures the producer side of a stage.
func WithProducerOptions(opts ...ProducerOption) StageOption {
	return stageOption(func(c *stageConfig) { c.producer = append(c.producer, opts...) })
}

// WithConsumerOptions configures the consumer side of a stage.
func WithConsumerOptions(opts ...ConsumerOption) StageOption {
	return stageOption(func(c *stageConfig) { c.consumer = append(c.consumer, opts...) })
}

// observeOption sets a field of commonConfig for producers and consumers,
// and for both sides of a stage.
type observeOption func(*commonConfig)

func (f observeOption) applyProducer(c *producerConfig) { f(&c.commonConfig) }
func (f observeOption) applyConsumer(c *consumerConfig) { f(&c.commonConfig) }
func (f observeOption) applyStage(c *stageConfig) {
	c.producer = append(c.producer, f)
	c.consumer = append(c.consumer, f)
}

// WithMetrics registers the metrics of producers and consumers on reg:
// butterfly_producer_* and butterfly_consumer_* (labeled with the service
// and the component's id), those of its connection's resolver and balancer
// (butterfly_resolver_*, butterfly_balancer_*, labeled with the service; see
// butterfly.WithMetrics) and the gRPC client metrics of go-grpc-middleware
// (grpc_client_*). Default: none.
func WithMetrics(reg prometheus.Registerer) Option {
	return observeOption(func(c *commonConfig) { c.metrics = reg })
}

// WithTracerProvider turns tracing on (default off): a producer starts a
// span for every Send, child of the span in Send's context, and carries its
// context in Message.trace; a consumer runs its handler in a span, child of
// the span the message carries (the intermediate's), so one message's way
// is one trace. otelgrpc traces the RPCs.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return observeOption(func(c *commonConfig) { c.tracer = tp })
}
