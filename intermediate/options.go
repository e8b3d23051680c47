package intermediate

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/butterfly-mesh/butterfly/registry"
)

// Defaults of the options.
const (
	DefaultDrainTimeout      = 10 * time.Second
	DefaultHeartbeatInterval = 200 * time.Millisecond
	DefaultMaxInFlight       = 10000
	DefaultMaxBatchMessages  = 256
	DefaultMaxBatchBytes     = 1 << 20
	DefaultNoConsumerTimeout = 5 * time.Second
	DefaultLeaseTTL          = 5 * time.Second
	DefaultStopTimeout       = 2 * time.Second
	DefaultOwnerWait         = time.Second
	DefaultMaxHeaders        = 64
	DefaultMaxHeaderBytes    = 16 << 10
	DefaultMaxStreamsPerPeer = 1000
	DefaultMaxInFlightBytes  = 64 << 20
	DefaultMemoryBudget      = 256 << 20
	DefaultBudgetWait        = time.Second
	DefaultMaxStreams        = 10000
	DefaultConnectionTimeout = 5 * time.Second
	// DefaultMaxPeerHeartbeat is the longest heartbeat interval a client may
	// declare: a silent stream ends within five of it.
	DefaultMaxPeerHeartbeat = 2 * time.Second
	// DefaultMaxCredit is the most unspent credit a consumer may hold on a
	// subscribe stream.
	DefaultMaxCredit          = 1 << 20
	heartbeatMisses           = 5
	defaultDrainFlushTimeout  = time.Second
	minHeartbeatInterval      = time.Millisecond
	maxHeartbeatIntervalMilli = 60_000
	// maxAckRanges is the most ranges and nacks one DeliveryAck may carry
	// (SubscribeWelcome.max_ack_ranges): it bounds the work one frame does
	// under the server's lock.
	maxAckRanges = 4096
)

// Option configures a Server.
type Option func(*options)

type options struct {
	prefix            string
	logger            *slog.Logger
	processor         Processor
	leaseTTL          time.Duration
	drainTimeout      time.Duration
	stopTimeout       time.Duration
	heartbeatInterval time.Duration
	advertiseAddr     string
	maxInFlight       int
	maxBatchMessages  int
	maxBatchBytes     int
	noConsumerTimeout time.Duration
	ownerWait         time.Duration
	fenceOnLeaseLoss  bool
	serverOptions     []grpc.ServerOption
	observe           observeOptions
	maxMessageBytes   int // 0: the batch byte limit
	maxHeaders        int
	maxHeaderBytes    int
	maxStreamsPerPeer int // 0: no limit
	registryOptions   []registry.Option
	version           string
	trustUnbound      bool
	forwarders        map[string]bool // stage ids that may forward others' ids; nil: every stage
	maxInFlightBytes  int
	memoryBudget      int
	budgetWait        time.Duration
	maxStreams        int // 0: no limit
	connectionTimeout time.Duration
	maxPeerHeartbeat  time.Duration
	maxCredit         int
	// advertiseCheck dials advertiseAddr before the registration; nil: no
	// check.
	advertiseCheck credentials.TransportCredentials
	// advertiseCheckSet: WithAdvertiseCheck was given.
	advertiseCheckSet bool
	// advertiseCheckTimeout bounds the check; tests set it.
	advertiseCheckTimeout time.Duration
	// ackObserver, set by tests, hears how long every ack frame of a
	// consumer's subscribe stream held the server's lock and took in all.
	ackObserver func(consumer string, held, total time.Duration)
}

func defaultOptions() options {
	return options{
		prefix:            registry.DefaultPrefix,
		logger:            slog.New(slog.DiscardHandler),
		processor:         Passthrough(),
		leaseTTL:          DefaultLeaseTTL,
		drainTimeout:      DefaultDrainTimeout,
		stopTimeout:       DefaultStopTimeout,
		heartbeatInterval: DefaultHeartbeatInterval,
		maxInFlight:       DefaultMaxInFlight,
		maxBatchMessages:  DefaultMaxBatchMessages,
		maxBatchBytes:     DefaultMaxBatchBytes,
		noConsumerTimeout: DefaultNoConsumerTimeout,
		ownerWait:         DefaultOwnerWait,
		maxHeaders:        DefaultMaxHeaders,
		maxHeaderBytes:    DefaultMaxHeaderBytes,
		maxStreamsPerPeer: DefaultMaxStreamsPerPeer,
		maxInFlightBytes:  DefaultMaxInFlightBytes,
		memoryBudget:      DefaultMemoryBudget,
		budgetWait:        DefaultBudgetWait,
		maxStreams:        DefaultMaxStreams,
		connectionTimeout: DefaultConnectionTimeout,
		maxPeerHeartbeat:  DefaultMaxPeerHeartbeat,
		maxCredit:         DefaultMaxCredit,

		advertiseCheck:        insecure.NewCredentials(),
		advertiseCheckTimeout: defaultAdvertiseCheckTimeout,
	}
}

func (o *options) validate() error {
	var errs []error
	if err := registry.ValidateName("prefix", o.prefix); err != nil {
		errs = append(errs, err)
	}
	if o.processor == nil {
		errs = append(errs, errors.New("processor is nil"))
	}
	if o.leaseTTL < time.Second {
		errs = append(errs, fmt.Errorf("lease TTL %v is under 1s", o.leaseTTL))
	}
	if o.drainTimeout < 0 {
		errs = append(errs, fmt.Errorf("drain timeout %v is negative", o.drainTimeout))
	}
	if o.heartbeatInterval < minHeartbeatInterval || o.heartbeatInterval > maxHeartbeatIntervalMilli*time.Millisecond {
		errs = append(errs, fmt.Errorf("heartbeat interval %v is out of range [%v, %v]", o.heartbeatInterval, minHeartbeatInterval, maxHeartbeatIntervalMilli*time.Millisecond))
	}
	if o.maxPeerHeartbeat < minHeartbeatInterval || o.maxPeerHeartbeat > maxHeartbeatIntervalMilli*time.Millisecond {
		errs = append(errs, fmt.Errorf("max peer heartbeat %v is out of range [%v, %v]", o.maxPeerHeartbeat, minHeartbeatInterval, maxHeartbeatIntervalMilli*time.Millisecond))
	}
	if o.maxCredit < 1 || o.maxCredit > 1<<31 {
		errs = append(errs, fmt.Errorf("max credit %d is out of range [1, %d]", o.maxCredit, 1<<31))
	}
	if o.maxInFlight < 1 {
		errs = append(errs, fmt.Errorf("max in flight %d is under 1", o.maxInFlight))
	}
	if o.maxBatchMessages < 1 || o.maxBatchBytes < 1 {
		errs = append(errs, fmt.Errorf("max batch (%d messages, %d bytes) must be positive", o.maxBatchMessages, o.maxBatchBytes))
	}
	if o.maxMessageBytes < 0 || o.maxMessageBytes > o.maxBatchBytes {
		errs = append(errs, fmt.Errorf("max message bytes %d must be in [0, max batch bytes %d]", o.maxMessageBytes, o.maxBatchBytes))
	}
	if o.maxHeaders < 0 || o.maxHeaderBytes < 0 || o.maxStreamsPerPeer < 0 {
		errs = append(errs, fmt.Errorf("max headers (%d, %d bytes) and max streams per peer %d must not be negative", o.maxHeaders, o.maxHeaderBytes, o.maxStreamsPerPeer))
	}
	if o.maxInFlightBytes < o.maxBatchBytes || o.memoryBudget < o.maxInFlightBytes {
		errs = append(errs, fmt.Errorf("max in flight bytes %d must be at least max batch bytes %d, and memory budget %d at least max in flight bytes", o.maxInFlightBytes, o.maxBatchBytes, o.memoryBudget))
	}
	if o.maxStreams < 0 || o.connectionTimeout <= 0 {
		errs = append(errs, fmt.Errorf("max streams %d must not be negative and connection timeout %v must be positive", o.maxStreams, o.connectionTimeout))
	}
	if o.budgetWait <= 0 {
		errs = append(errs, fmt.Errorf("budget wait %v is not positive", o.budgetWait))
	}
	if o.noConsumerTimeout <= 0 {
		errs = append(errs, fmt.Errorf("no-consumer timeout %v is not positive", o.noConsumerTimeout))
	}
	if o.ownerWait <= 0 {
		errs = append(errs, fmt.Errorf("owner wait %v is not positive", o.ownerWait))
	}
	if o.advertiseAddr != "" {
		if err := registry.ValidateAddr(o.advertiseAddr); err != nil {
			errs = append(errs, fmt.Errorf("advertise address: %w", err))
		} else if host, _, _ := net.SplitHostPort(o.advertiseAddr); EveryAddress(host) {
			// The check would reach this server there, and every
			// client would dial its own host.
			errs = append(errs, fmt.Errorf("advertise address %q names every address of the host, which others cannot dial", o.advertiseAddr))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("intermediate: invalid options: %w", err)
	}
	return nil
}

// EveryAddress reports whether host, of a host:port, names every address of
// the machine (empty, 0.0.0.0 or ::, with or without a zone or the IPv4
// mapping), which a listener may take and no client can dial.
func EveryAddress(host string) bool {
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.WithZone("").Unmap().IsUnspecified()
}

// WithPrefix sets the etcd key prefix (default registry.DefaultPrefix).
func WithPrefix(prefix string) Option { return func(o *options) { o.prefix = prefix } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}

// WithProcessor sets the processing step (default Passthrough).
func WithProcessor(p Processor) Option { return func(o *options) { o.processor = p } }

// WithLeaseTTL sets the TTL of the registration lease (default 5s): how long
// the key outlives a crashed server.
func WithLeaseTTL(d time.Duration) Option { return func(o *options) { o.leaseTTL = d } }

// WithDrainTimeout sets how long a drain keeps delivering what the server
// holds before it hands the rest back to the producers (default 10s).
func WithDrainTimeout(d time.Duration) Option { return func(o *options) { o.drainTimeout = d } }

// WithStopTimeout bounds the graceful stop of the gRPC server at the end of a
// drain (default 2s); open streams are then cut.
func WithStopTimeout(d time.Duration) Option { return func(o *options) { o.stopTimeout = d } }

// WithHeartbeatInterval sets the heartbeat interval of every stream (default
// 200ms). A stream on which nothing arrived for five of the peer's intervals
// is dead.
func WithHeartbeatInterval(d time.Duration) Option {
	return func(o *options) { o.heartbeatInterval = d }
}

// WithMaxPeerHeartbeat sets the longest heartbeat interval a client may
// declare in its hello (default 2s): a longer one is lowered to it, so a
// stream on which nothing arrives ends within five of it whatever the client
// declared. The welcome states it, the interval the client is held to and
// the deadline (peer_timeout_ms).
func WithMaxPeerHeartbeat(d time.Duration) Option {
	return func(o *options) { o.maxPeerHeartbeat = d }
}

// WithMaxCredit sets the most unspent credit a consumer may hold on a
// subscribe stream (default 1<<20). The welcome states it; a hello or a
// Credit frame above it fails with RESOURCE_EXHAUSTED.
func WithMaxCredit(n int) Option { return func(o *options) { o.maxCredit = n } }

// WithAdvertiseAddr sets the address registered in etcd (default: the
// listener's address). Before it registers there, Serve checks that the
// address reaches this server (see WithAdvertiseCheck).
func WithAdvertiseAddr(addr string) Option { return func(o *options) { o.advertiseAddr = addr } }

// WithAdvertiseCheck sets the transport credentials with which Serve, once
// its gRPC server serves and before it registers at the address of
// WithAdvertiseAddr, dials that address once, within a few seconds, and asks
// who answers (AdminService.GetStatus). This server is known by its
// service, instance and start time, which no other process shares. Another
// server answering there means the address is wrong (one copied from a
// neighbour's command line, say): the components would send this
// instance's share of the work to that server, and registering under the
// name of the instance that answers would fence it. Serve then returns an
// *AdvertiseError without registering. So it does when the server that
// answers is not a Butterfly intermediate (it does not serve AdminService:
// a proxy in front of this server must pass AdminService on), or answers in
// plaintext a check made with TLS. An address it cannot read from its own
// host (refused, no answer, no hairpin NAT, a TLS handshake that cannot be
// completed) is logged as one warning and Serve registers.
//
// The check identifies the server by its answer, not by its certificate,
// so TLS credentials need not verify the server's chain or name
// (InsecureSkipVerify); under mutual TLS they present a certificate the
// server accepts from clients, such as the server's own when it is valid
// for client authentication. The default, insecure.NewCredentials, fits a
// server without TLS. nil turns the check off. Without WithAdvertiseAddr
// the registered address is the listener's, and nothing is checked.
func WithAdvertiseCheck(creds credentials.TransportCredentials) Option {
	return func(o *options) { o.advertiseCheck, o.advertiseCheckSet = creds, true }
}

// WithMaxInFlight sets how many unacknowledged messages one publish stream
// may hold (default 10000). It is advertised in the welcome; a producer that
// exceeds it gets RESOURCE_EXHAUSTED.
func WithMaxInFlight(n int) Option { return func(o *options) { o.maxInFlight = n } }

// WithMaxBatch sets the largest batch accepted from producers and sent to
// consumers, in messages and in bytes (defaults 256 and 1 MiB). A single
// message larger than bytes is refused with NACK_REASON_INVALID. Below
// 64 KiB (components.MinMaxReceiveBytes, the least a consumer receives)
// this instance hands back for good messages others take; the
// intermediate command refuses such a --max-batch-bytes, a library server
// may use one (a test of small batches).
func WithMaxBatch(messages, bytes int) Option {
	return func(o *options) {
		o.maxBatchMessages = messages
		o.maxBatchBytes = bytes
	}
}

// WithNoConsumerTimeout sets how long a message waits for a group with no
// registered consumer (or, before any group is declared, for a group) before
// it is handed back with NACK_REASON_NO_CONSUMER (default 5s); its producer
// keeps it and sends it again.
func WithNoConsumerTimeout(d time.Duration) Option {
	return func(o *options) { o.noConsumerTimeout = d }
}

// WithOwnerWait sets how long a message waits for the consumer that owns it
// in a group, registered in etcd but not connected to this intermediate,
// before it goes back to its producer with NACK_REASON_OWNER_UNREACHABLE to
// travel through another intermediate (default 1s; at most the no-consumer
// timeout). The message never goes to another consumer of the group while
// the owner's registration lives.
func WithOwnerWait(d time.Duration) Option {
	return func(o *options) { o.ownerWait = d }
}

// WithFenceOnLeaseLoss sets whether the server fences itself once its
// registration's lease is lost (registry.Registration.LeaseLost): its
// keep-alive went unanswered for the lease TTL, or etcd said the lease is
// gone (revoked), so etcd may have deleted its key and the components moved
// away. It then drains as a replaced
// instance does (its streams get a DrainNotice, what it holds goes back to
// the producers, the key is left alone) and Serve returns ErrLeaseLost, for
// a supervisor to start it again once etcd answers. Off by default: a
// server cannot tell a cut between it and etcd from an etcd outage, and
// with it every intermediate stops when etcd is down for longer than the
// TTL, where without it traffic goes on and the registrations come back
// with etcd.
func WithFenceOnLeaseLoss(fence bool) Option {
	return func(o *options) { o.fenceOnLeaseLoss = fence }
}

// WithGRPCServerOptions adds options to the gRPC server. With a built-in
// processor the server decodes the next publish frames into the messages
// it is done with, so an interceptor added here must not keep a publish or
// delivery frame, or its messages, past the RecvMsg or SendMsg that
// handed it over, and grpc.EnableTracing (whose /debug/requests page keeps
// them to format later) must stay off.
func WithGRPCServerOptions(opts ...grpc.ServerOption) Option {
	return func(o *options) { o.serverOptions = append(o.serverOptions, opts...) }
}

// WithRegistryOptions adds options to the registration (weight, zone,
// version). The prefix, logger and lease TTL come from the server's own
// options.
func WithRegistryOptions(opts ...registry.Option) Option {
	return func(o *options) { o.registryOptions = append(o.registryOptions, opts...) }
}

// WithVersion sets the software version reported by GetStatus.
func WithVersion(v string) Option { return func(o *options) { o.version = v } }

// WithMaxMessageBytes sets the largest message accepted, encoded (default 0:
// the batch byte limit of WithMaxBatch, which it may not exceed). A larger
// message is handed back with NACK_REASON_INVALID, a detail naming
// max-message-bytes, and the stream goes on; a Process call with one fails
// with RESOURCE_EXHAUSTED.
func WithMaxMessageBytes(n int) Option { return func(o *options) { o.maxMessageBytes = n } }

// WithMaxHeaders sets how many headers a message may carry and how many bytes
// their names and values may add up to (defaults 64 and 16 KiB). A message
// over either is handed back with NACK_REASON_INVALID naming max-headers or
// max-header-bytes.
func WithMaxHeaders(count, bytes int) Option {
	return func(o *options) { o.maxHeaders, o.maxHeaderBytes = count, bytes }
}

// WithMaxStreamsPerPeer sets how many streams (publish and subscribe) one
// peer may have open at once (default 1000, 0 for no limit). A peer is the
// identity of its verified client certificate (role and id, or CommonName),
// else its IP address: without mutual TLS, peers behind one address share
// the limit and a peer with several addresses has one per address, which is
// why WithMaxStreams caps the total too. A stream over the limit fails with
// RESOURCE_EXHAUSTED naming max-streams-per-peer.
func WithMaxStreamsPerPeer(n int) Option { return func(o *options) { o.maxStreamsPerPeer = n } }

// WithTrustUnboundCertificates trusts a verified client certificate that
// carries no role (no URI SAN butterfly://<role>/<id>, such as a
// CommonName-only certificate) with every role, as mutual TLS without roles
// did (default false: such a certificate may publish, subscribe, process and
// drain nothing, and sees no stream in GetStatus). See authz.go for the
// rules of each role.
func WithTrustUnboundCertificates(trust bool) Option {
	return func(o *options) { o.trustUnbound = trust }
}

// WithForwarders names the stages (by the id of their certificate,
// butterfly://stage/<id>) that may forward other producers' messages to
// this intermediate. By default every stage certificate may: a stage
// forwards messages under the ids and low-water marks they came with, and
// the intermediate cannot tell a forwarded message from a forged one, so a
// stage certificate can forge any producer's messages, or a mark that makes
// consumers drop that producer's messages below it. With WithForwarders,
// any other stage may publish only under its own id, as a producer; with
// no ids, no stage forwards. Roles hold only with mutual TLS.
func WithForwarders(stageIDs ...string) Option {
	return func(o *options) {
		o.forwarders = make(map[string]bool, len(stageIDs))
		for _, id := range stageIDs {
			o.forwarders[id] = true
		}
	}
}

// WithMaxInFlightBytes sets how many bytes of messages one publish stream may
// have held at once, each counted at its size as received plus
// MessageOverhead (default 64 MiB; at least the batch byte limit). See
// WithMemoryBudget for what happens to a batch over it.
func WithMaxInFlightBytes(n int) Option { return func(o *options) { o.maxInFlightBytes = n } }

// WithMemoryBudget sets how many bytes of messages the whole server may hold
// at once, counted as WithMaxInFlightBytes counts them (default 256 MiB; at
// least the in-flight byte limit). A batch that
// would exceed it, or its stream's in-flight byte limit, waits for room,
// reading nothing more from its stream meanwhile, for up to wait (default
// 1s); then its messages are handed back with NACK_REASON_UNAVAILABLE, which
// their producer sends again. Memory stays bounded under consumers that
// grant no credit.
func WithMemoryBudget(bytes int, wait time.Duration) Option {
	return func(o *options) { o.memoryBudget, o.budgetWait = bytes, wait }
}

// WithMaxStreams sets how many streams (publish and subscribe) the server
// has open at once, over all peers (default 10000, 0 for no limit). A
// stream over it fails with RESOURCE_EXHAUSTED naming max-streams.
func WithMaxStreams(n int) Option { return func(o *options) { o.maxStreams = n } }

// WithConnectionTimeout sets how long a new connection may take to finish
// its TLS handshake and send its HTTP/2 preface (default 5s); one that has
// not by then is closed, so idle half-open connections hold nothing.
func WithConnectionTimeout(d time.Duration) Option {
	return func(o *options) { o.connectionTimeout = d }
}
