package intermediate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc/peer"

	"github.com/butterfly-mesh/butterfly"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/registry"
)

// MaxProducerIDBytes is the longest producer id an intermediate accepts, in
// hellos and in message ids (butterfly.MaxProducerIDBytes).
const MaxProducerIDBytes = butterfly.MaxProducerIDBytes

// MaxRoutes is the most routes (Message.routes) a published message may
// carry: one per consumer group of the service, written by intermediates
// when they hand the message back. More is refused INVALID.
const MaxRoutes = 1024

// routeOverhead is what a decoded route holds beside its encoded bytes (the
// Route struct, its two string headers, its pointer in the message's
// slice): a message's routes are charged their encoded size plus this much
// each against max-in-flight-bytes and the memory budget, as held.
const routeOverhead = 96

// MessageOverhead is what every held message is charged against
// max-in-flight-bytes and the memory budget beside its size: its decoded
// form and what the intermediate keeps to route it and answer for it (for
// one group; each further group adds a little). Without it, a producer of
// messages of a few bytes made an intermediate hold about 40 times what
// the budget counted.
const MessageOverhead = 640

// Errors that name a limit. A refused message or frame wraps one of them, so
// errors.Is tells the limits apart; the text names the option (and the
// butterfly intermediate flag of the same name).
var (
	// ErrMessageTooLarge: a message is larger than max-message-bytes.
	ErrMessageTooLarge = errors.New("exceeds max-message-bytes")
	// ErrTooManyHeaders: a message has more headers than max-headers.
	ErrTooManyHeaders = errors.New("exceeds max-headers")
	// ErrHeadersTooLarge: a message's header names and values add up to
	// more than max-header-bytes.
	ErrHeadersTooLarge = errors.New("exceeds max-header-bytes")
	// ErrBatchTooLarge: a batch has more messages than max-batch-messages or
	// more bytes than max-batch-bytes.
	ErrBatchTooLarge = errors.New("exceeds the batch limit")
	// ErrInvalidEnvelope: a message's id is missing or malformed.
	ErrInvalidEnvelope = errors.New("invalid envelope")
	// ErrInvalidRoutes: a message's routes are more than MaxRoutes, larger
	// than max-batch-bytes, or name a group or consumer no registry key
	// could.
	ErrInvalidRoutes = errors.New("invalid routes")
)

// limits bound what one peer may send.
type limits struct {
	maxMessageBytes  int
	maxHeaders       int
	maxHeaderBytes   int
	maxBatchMessages int
	maxBatchBytes    int
}

func (o *options) limits() limits {
	return limits{
		maxMessageBytes:  o.effectiveMaxMessageBytes(),
		maxHeaders:       o.maxHeaders,
		maxHeaderBytes:   o.maxHeaderBytes,
		maxBatchMessages: o.maxBatchMessages,
		maxBatchBytes:    o.maxBatchBytes,
	}
}

// effectiveMaxMessageBytes is max-message-bytes, or the batch byte limit when
// it is not set.
func (o *options) effectiveMaxMessageBytes() int {
	if o.maxMessageBytes == 0 {
		return o.maxBatchBytes
	}
	return o.maxMessageBytes
}

// envelopeSize is the encoded size of m without its routes: what its
// producer is limited on (payload, headers, id and the rest of its own
// fields). Routes are what intermediates learned on an earlier attempt and
// the producer sends back with the message; a message at max-message-bytes
// must not be refused for carrying them. The size and batch limits count
// this size; max-in-flight-bytes and the memory budget count it plus
// routesCharge and MessageOverhead.
func envelopeSize(m *messagev1.Message) int {
	return m.SizeVT() - butterfly.RoutesSize(m.GetRoutes())
}

// routesCharge is what m's routes cost held: their encoded size and
// routeOverhead each.
func routesCharge(m *messagev1.Message) int {
	return routesChargeOf(m.GetRoutes())
}

// routesChargeOf is what routes cost held (see routesCharge).
func routesChargeOf(routes []*messagev1.Route) int {
	if len(routes) == 0 {
		return 0
	}
	return butterfly.RoutesSize(routes) + routeOverhead*len(routes)
}

// checkRoutes checks the routes of a published message: at most MaxRoutes,
// at most max-batch-bytes encoded (not max-message-bytes, which a small
// setting would let the routes an intermediate wrote exceed), each naming a
// group (and the consumer, when it names one) as registry keys do.
// Intermediates write them; a producer only sends them back.
func checkRoutes(m *messagev1.Message, l limits) error {
	routes := m.GetRoutes()
	if len(routes) == 0 {
		return nil
	}
	if err := checkRoutesFit(routes, l.maxBatchBytes); err != nil {
		return err
	}
	for i, r := range routes {
		if err := registry.ValidateName("group", r.GetGroup()); err != nil {
			return fmt.Errorf("%w: route %d: %w", ErrInvalidRoutes, i+1, err)
		}
		if c := r.GetConsumer(); c != "" {
			if err := registry.ValidateName("consumer", c); err != nil {
				return fmt.Errorf("%w: route %d: %w", ErrInvalidRoutes, i+1, err)
			}
		}
	}
	return nil
}

// checkRoutesFit checks that routes are what a message sent again may
// carry: at most MaxRoutes, at most maxBatchBytes encoded.
func checkRoutesFit(routes []*messagev1.Route, maxBatchBytes int) error {
	if len(routes) > MaxRoutes {
		return fmt.Errorf("%w: %d routes, more than %d", ErrInvalidRoutes, len(routes), MaxRoutes)
	}
	if n := butterfly.RoutesSize(routes); n > maxBatchBytes {
		return fmt.Errorf("%w: routes of %d bytes exceed max-batch-bytes %d", ErrInvalidRoutes, n, maxBatchBytes)
	}
	return nil
}

// validateProducerID applies the rules of producer ids
// (butterfly.CheckProducerID).
func validateProducerID(id string) error {
	if err := butterfly.CheckProducerID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEnvelope, err)
	}
	return nil
}

// validateEnvelope checks one published message of size bytes (its
// envelopeSize): a well-formed id (butterfly.CheckMessageID), fields a
// protobuf decoder takes (butterfly.CheckMessage), and the routes, size and
// header limits.
func validateEnvelope(m *messagev1.Message, size int, l limits) error {
	if err := butterfly.CheckMessageID(m.GetId(), m.GetLowWaterSeq()); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEnvelope, err)
	}
	if err := butterfly.CheckMessage(m); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidEnvelope, err)
	}
	if err := checkRoutes(m, l); err != nil {
		return err
	}
	return checkMessageLimits(m, size, l)
}

// checkMessageLimits checks the size and the headers of a message of size
// bytes.
func checkMessageLimits(m *messagev1.Message, size int, l limits) error {
	if size > l.maxMessageBytes {
		return fmt.Errorf("message of %d bytes %w %d", size, ErrMessageTooLarge, l.maxMessageBytes)
	}
	h := m.GetHeaders()
	if len(h) == 0 {
		return nil // no iterator started for most messages
	}
	if len(h) > l.maxHeaders {
		return fmt.Errorf("%d headers %w %d", len(h), ErrTooManyHeaders, l.maxHeaders)
	}
	n := 0
	for k, v := range h {
		n += len(k) + len(v)
	}
	if n > l.maxHeaderBytes {
		return fmt.Errorf("headers of %d bytes %w %d", n, ErrHeadersTooLarge, l.maxHeaderBytes)
	}
	return nil
}

// peerKey names the peer of a stream for max-streams-per-peer: the identity
// of its verified client certificate, else its IP address.
func peerKey(ctx context.Context) string {
	if id, ok := tlsutil.Peer(ctx); ok {
		return "identity " + id.String()
	}
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown peer"
	}
	addr := p.Addr.String()
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// streamLimiter counts the open streams of every peer and of the server.
type streamLimiter struct {
	max      int // per peer; 0: no limit
	maxTotal int // 0: no limit

	mu    sync.Mutex
	open  map[string]int
	total int
}

func newStreamLimiter(max, maxTotal int) *streamLimiter {
	return &streamLimiter{max: max, maxTotal: maxTotal, open: make(map[string]int)}
}

// acquire counts a new stream of key, or reports how many are open, for key
// and in all, when a limit is reached.
func (l *streamLimiter) acquire(key string) (open, total int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.open[key]
	if (l.max > 0 && n >= l.max) || (l.maxTotal > 0 && l.total >= l.maxTotal) {
		return n, l.total, false
	}
	l.open[key] = n + 1
	l.total++
	return n + 1, l.total, true
}

// release forgets one stream of key.
func (l *streamLimiter) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.open[key] <= 1 {
		delete(l.open, key)
		return
	}
	l.open[key]--
}

// pruneMin is the number of stale entries below which a queue is not
// pruned: a short queue is not worth the pass.
const pruneMin = 64

// prune drops from sub's queue the deliveries it would skip: those of
// finished messages, and those moved to another stream or released. A
// queue only sheds them as its consumer's credit reaches them, so without
// pruning a consumer that grants no credit would keep every abandoned
// message alive.
func (q *deliveryQueue) prune(sub *subStream) {
	kept := q.items[:0]
	for _, d := range q.items[q.head:] {
		if d.liveOn(sub) {
			kept = append(kept, d)
		}
	}
	clear(q.items[len(kept):])
	q.items, q.head, q.stale = kept, 0, 0
}

// pruneQueuesLocked prunes the queue of every subscribe stream.
func (s *Server) pruneQueuesLocked() {
	for sub := range s.subs {
		sub.queue.prune(sub)
	}
}
