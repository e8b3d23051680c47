package components

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/butterfly-mesh/butterfly"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/seqindex"
	"github.com/butterfly-mesh/butterfly/internal/seqrange"
	"github.com/butterfly-mesh/butterfly/internal/telemetry"
	"github.com/butterfly-mesh/butterfly/registry"
)

// ErrMessageTooLarge is returned, wrapped with the sizes, by Send for a
// message whose encoding is larger than the message limit
// (WithMaxMessageBytes, else WithBatch's byte limit, else 1 MiB) or than the
// max_batch_bytes a connected intermediate advertised. Such a
// message is never queued. Before any intermediate has welcomed the
// producer, Send knows only its own limit: a message within it but over
// the limit an instance then advertises is handed back for good
// (NACK_REASON_INVALID, through SendWait and the nack handler), not sent.
var ErrMessageTooLarge = errors.New("components: message too large")

// Producer sends messages through every live intermediate of a service: one
// pinned stream per instance, each batch on the least loaded stream, every
// message kept until acknowledged end to end and sent again when its stream
// breaks or its instance moves or drains. A stream whose instance moves or
// drains gets nothing new but stays open until what it was sent is answered,
// so that a draining intermediate finishes what it holds.
//
// The nack handler (WithNackHandler) runs on a goroutine of its own, never
// on a stream's: it may block or call Send, though not Close.
type Producer struct {
	cli         *clientv3.Client
	id          string
	incarnation uint64
	cfg         producerConfig
	log         *slog.Logger
	conn        *grpc.ClientConn
	client      deliveryv1.PublishServiceClient
	ctx         context.Context // canceled by Close once everything is settled
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	window      chan struct{} // one token per unsettled message
	closeOnce   sync.Once
	closeErr    error
	settled     chan struct{}              // poked when unsettled reaches 0
	nackWake    chan struct{}              // poked when nacks grows; nil without a nack handler
	nackStop    chan struct{}              // closed by Close once the streams stopped
	nackDone    chan struct{}              // closed when deliverNacks returns
	metrics     *telemetry.ProducerMetrics // nil without WithMetrics
	tracer      trace.Tracer               // nil without WithTracerProvider

	// done is closed by stop, after stopErr is set under mu.
	done     chan struct{}
	stopOnce sync.Once
	stopErr  error

	// mu guards the fields below, the guarded fields of outMsg, pubLink and
	// pubStream. Lock order: mu is taken alone; it is never held across gRPC
	// or etcd calls or callbacks.
	mu sync.Mutex
	// closed is set under mu, once, by Close; Send reads it without mu
	// before it waits for a window slot.
	closed    atomic.Bool
	nextSeq   uint64
	outbox    outQueue
	slab      sendSlab            // where Send takes its outMsgs and ids from
	links     map[string]*pubLink // current link per instance name
	viewed    bool                // a view of the registry came: etcd answered its read
	draining  []string            // the view's draining instances, which get no link
	streams   []*pubStream        // in the order they opened; a slice, see leastLoadedLocked
	filling   *pubStream          // the stream whose next batch dispatchLocked fills
	unsettled int
	failed    int
	msgLimit  int         // the largest message Send accepts, encoded
	nacks     []nackEvent // handed back for good, waiting for the nack handler
	// Stats' counters: sent is acked + nacked + unsettled.
	sent, acked, resent, nacked uint64
	// own holds the seqs this producer gave that are not settled yet: its
	// lowest is the low-water mark. A settled message leaves it, so one
	// message held long (a frozen intermediate's, a consumer's slow one)
	// keeps nothing of those sent after it.
	own      seqindex.Index[struct{}]
	spanWait chan struct{} // closed when the low-water mark rises; nil when nobody waits
	waitLog  time.Time     // when the last "waiting for a consumer" warning was logged
	// waitDetail is the last NO_CONSUMER or OWNER_UNREACHABLE hand-back's
	// detail, at waitAt.
	waitDetail string
	waitAt     time.Time
	// idle says when messages have waited with no stream to take them.
	idle idleLog
}

// seqSpan is how far a new seq may lie above the low-water mark:
// butterfly.MaxSeqSpan, the window intermediates hold producers to.
var seqSpan uint64 = butterfly.MaxSeqSpan

// nackEvent is a message handed back for good, waiting for the nack handler.
type nackEvent struct {
	msg    *messagev1.Message
	reason messagev1.NackReason
	detail string
}

// incarnations makes incarnations of producers in one process distinct even
// when they start in the same nanosecond.
var incarnations atomic.Uint64

// NewProducer returns a producer named id that sends through the instances
// of the configured service. It starts following the service's membership
// at once; Send may be called before any instance is known.
func NewProducer(cli *clientv3.Client, id string, opts ...ProducerOption) (*Producer, error) {
	cfg := producerConfig{
		commonConfig: defaultCommon(),
		service:      DefaultService,
		window:       DefaultWindow,
		batchMsgs:    DefaultBatchMessages,
		batchBytes:   DefaultBatchBytes,
		linger:       DefaultLinger,
	}
	for _, o := range opts {
		o.applyProducer(&cfg)
	}
	if err := cfg.validate(cli, id); err != nil {
		return nil, err
	}
	// p is set before conn.Connect, after which the views come.
	var p *Producer
	conn, err := dial(cli, cfg.service, cfg.commonConfig, func(v registry.View) {
		p.metrics.MembershipUpdate()
		p.reconcile(v)
	})
	if err != nil {
		return nil, fmt.Errorf("components: producer %s: %w", id, err)
	}
	ctx, cancel := context.WithCancel(cli.Ctx())
	p = &Producer{
		cli:         cli,
		id:          id,
		incarnation: uint64(time.Now().UnixNano()) + incarnations.Add(1),
		cfg:         cfg,
		conn:        conn,
		client:      deliveryv1.NewPublishServiceClient(conn),
		ctx:         ctx,
		cancel:      cancel,
		window:      make(chan struct{}, cfg.window),
		settled:     make(chan struct{}, 1),
		done:        make(chan struct{}),
		links:       make(map[string]*pubLink),
		msgLimit:    cfg.maxMessageBytes(),
	}
	p.log = cfg.logger.With("producer", id, "incarnation", p.incarnation, "service", cfg.service)
	p.tracer = telemetry.Tracer(cfg.tracer)
	p.metrics, err = telemetry.NewProducerMetrics(cfg.metrics, cfg.service, id, func() float64 { return float64(p.Stats().InFlight) }, cfg.window)
	if err != nil {
		cancel()
		conn.Close()
		return nil, fmt.Errorf("components: producer %s: %w", id, err)
	}
	p.wg.Add(1)
	go p.watchdog(ctx)
	if cfg.nackHandler != nil {
		p.nackWake = make(chan struct{}, 1)
		p.nackStop = make(chan struct{})
		p.nackDone = make(chan struct{})
		go p.deliverNacks()
	}
	conn.Connect()
	return p, nil
}

func (c *producerConfig) validate(cli *clientv3.Client, id string) error {
	var errs []error
	if cli == nil {
		errs = append(errs, errors.New("etcd client is nil"))
	}
	if err := registry.ValidateName("producer id", id); err != nil {
		errs = append(errs, err)
	} else if len(id) > butterfly.MaxProducerIDBytes {
		// Every intermediate would refuse its streams at their hello.
		errs = append(errs, fmt.Errorf("producer id of %d bytes is longer than %d, the most an intermediate takes", len(id), butterfly.MaxProducerIDBytes))
	}
	if err := registry.ValidateName("service", c.service); err != nil {
		errs = append(errs, err)
	}
	if err := c.commonConfig.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.window < 1 {
		errs = append(errs, fmt.Errorf("window %d is under 1", c.window))
	}
	if c.batchMsgs < 1 || c.batchBytes < 1 || c.linger < 0 {
		errs = append(errs, fmt.Errorf("batch (%d messages, %d bytes, linger %v) is invalid", c.batchMsgs, c.batchBytes, c.linger))
	}
	if c.maxMsgBytes < 0 {
		errs = append(errs, fmt.Errorf("max message bytes %d is negative", c.maxMsgBytes))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("components: invalid producer options: %w", err)
	}
	return nil
}

// ID returns the producer's name.
func (p *Producer) ID() string { return p.id }

// Incarnation returns the incarnation of this producer: the second element of
// the ids it gives messages.
func (p *Producer) Incarnation() uint64 { return p.incarnation }

// Stats returns the producer's counters, read together: Sent is always
// Acked + Nacked + InFlight.
func (p *Producer) Stats() ProducerStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return ProducerStats{Sent: p.sent, Acked: p.acked, Resent: p.resent, Nacked: p.nacked, InFlight: uint64(p.unsettled)}
}

// Send accepts msg for delivery and returns its id. Unless msg.Id is already
// set (a stage forwarding a message under its original id), it sets msg.Id to
// {producer id, incarnation, next seq}, and msg.LowWaterSeq; a message of
// this producer sent again (after a hand-back for good) gets the next seq,
// as a new message. It sets msg.CreateTimeUnixNano when
// zero. msg must not be modified afterwards. Send blocks while the window of
// unacknowledged messages is full, until ctx is done. A message larger than
// the message limit (WithMaxMessageBytes) is refused with ErrMessageTooLarge,
// and a caller-set id that no intermediate takes with an error that
// errors.Is butterfly.ErrInvalidMessageID (butterfly.CheckMessageID).
func (p *Producer) Send(ctx context.Context, msg *messagev1.Message) (*messagev1.MessageId, error) {
	return p.send(ctx, msg, nil)
}

// SendWait sends msg and waits until it is acknowledged end to end (nil),
// handed back for good (a *NackError) or given up by Close (ErrClosed), or
// ctx is done.
func (p *Producer) SendWait(ctx context.Context, msg *messagev1.Message) error {
	done := make(chan error, 1)
	if _, err := p.send(ctx, msg, done); err != nil {
		return err
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("components: waiting for the acknowledgement: %w", ctx.Err())
	}
}

func (p *Producer) send(ctx context.Context, msg *messagev1.Message, done chan error) (*messagev1.MessageId, error) {
	if msg == nil {
		return nil, errors.New("components: Send of a nil message")
	}
	// An id the caller set (a stage forwarding a message) is checked as
	// every intermediate checks it, and first, as they do, so that one
	// none would take is refused here, not handed back for good once sent.
	// An id of this producer's incarnation is replaced below.
	if id := msg.Id; id != nil && !p.ownID(id) {
		if err := butterfly.CheckMessageID(id, msg.LowWaterSeq); err != nil {
			return nil, fmt.Errorf("components: Send: the message's id: %w", err)
		}
	}
	if err := butterfly.CheckMessage(msg); err != nil {
		return nil, fmt.Errorf("components: Send: %w", err)
	}
	if p.isClosed() {
		return nil, ErrClosed
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	if p.tracer != nil {
		var span trace.Span
		ctx, span = p.tracer.Start(ctx, "butterfly.produce "+p.cfg.service, trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(attribute.String("butterfly.service", p.cfg.service), attribute.String("butterfly.producer_id", p.id)))
		defer span.End()
		telemetry.Inject(ctx, msg)
	}
	// The id and the creation time Send may add are counted below, exactly.
	size := msgSize(msg)
	if lim := p.cfg.maxMessageBytes(); size > lim {
		return nil, fmt.Errorf("%w: %d bytes encoded, over the limit of %d", ErrMessageTooLarge, size, lim)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("components: send: %w", err)
	}
	if p.ctx.Err() != nil { // its etcd client was closed
		return nil, ErrClosed
	}
	// A free window slot is taken without the four-channel select, which
	// locks every channel it waits on: that was a twentieth of the CPU of a
	// saturated mesh.
	select {
	case p.window <- struct{}{}:
	default:
		select {
		case p.window <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("components: send: %w", ctx.Err())
		case <-p.ctx.Done():
			return nil, ErrClosed
		case <-p.done:
			return nil, p.stopErr
		}
	}
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		<-p.window
		return nil, ErrClosed
	}
	if err := p.waitSpanLocked(ctx, msg); err != nil {
		p.mu.Unlock()
		<-p.window
		return nil, err
	}
	// A message of this producer handed back for good and sent again is a
	// new message: its old seq lies below the low-water mark consumers
	// track, so it gets the next seq.
	own := msg.Id != nil && p.ownID(msg.Id)
	if own {
		msg.Id, msg.LowWaterSeq, msg.Routes = nil, 0, nil
		size = msgSize(msg)
	}
	setID, setTime := msg.Id == nil, msg.CreateTimeUnixNano == 0
	if setID {
		p.nextSeq++
		msg.Id = p.slab.newID()
		msg.Id.ProducerId, msg.Id.Incarnation, msg.Id.Seq = p.id, p.incarnation, p.nextSeq
		msg.LowWaterSeq = p.lowWaterLocked()
		size += protowire.SizeTag(messageIDField) + protowire.SizeBytes(msg.Id.SizeVT())
		if msg.LowWaterSeq != 0 {
			size += protowire.SizeTag(messageLowWaterField) + protowire.SizeVarint(msg.LowWaterSeq)
		}
	}
	if setTime {
		msg.CreateTimeUnixNano = time.Now().UnixNano()
		size += protowire.SizeTag(messageCreateTimeField) + protowire.SizeVarint(uint64(msg.CreateTimeUnixNano))
	}
	if size > p.msgLimit {
		if setID {
			p.nextSeq--
			msg.Id, msg.LowWaterSeq = nil, 0
		}
		if setTime {
			msg.CreateTimeUnixNano = 0
		}
		lim := p.msgLimit
		p.mu.Unlock()
		<-p.window
		return nil, fmt.Errorf("%w: %d bytes encoded, over the limit of %d", ErrMessageTooLarge, size, lim)
	}
	m := p.slab.newOutMsg()
	m.msg, m.size, m.done = msg, size, done
	if setID {
		m.ownSeq = msg.Id.Seq
		p.own.Push(m.ownSeq, struct{}{})
	}
	p.outbox.pushBack(m)
	p.unsettled++
	p.sent++
	p.dispatchLocked()
	p.mu.Unlock()
	p.metrics.Published(1)
	return msg.Id, nil
}

func (p *Producer) isClosed() bool { return p.closed.Load() }

// ownID reports whether id is of this producer's incarnation: Send gives
// such a message the next seq (a message handed back for good and sent
// again is a new one), where it keeps an id its caller set for another.
func (p *Producer) ownID(id *messagev1.MessageId) bool {
	return id.GetProducerId() == p.id && id.GetIncarnation() == p.incarnation
}

// waitingLogEvery is how often a producer whose messages wait for a
// consumer says so.
const waitingLogEvery = 5 * time.Second

// waitingLocked records why messages come back (no consumer can take them,
// or the one that owns them is not connected: they are kept and sent
// again), for Close to report, and with warn says so at most every
// waitingLogEvery.
func (p *Producer) waitingLocked(n *messagev1.Nack, warn bool) {
	now := time.Now()
	p.waitDetail, p.waitAt = n.GetDetail(), now
	if warn && now.Sub(p.waitLog) >= waitingLogEvery {
		p.waitLog = now
		p.log.Warn(n.GetDetail()+" (waiting)", "held", p.unsettled)
	}
}

// waitSpanLocked waits, unlocking mu meanwhile, while a new seq for msg
// would lie butterfly.MaxSeqSpan or more above the low-water mark: the
// oldest unsettled message holds the rest back, as intermediates refuse
// a message beyond the window.
func (p *Producer) waitSpanLocked(ctx context.Context, msg *messagev1.Message) error {
	needsID := msg.Id == nil || p.ownID(msg.Id)
	for needsID && p.nextSeq+1-p.lowWaterLocked() >= seqSpan {
		if p.spanWait == nil {
			p.spanWait = make(chan struct{})
		}
		ch := p.spanWait
		p.mu.Unlock()
		var err error
		select {
		case <-ch:
		case <-ctx.Done():
			err = fmt.Errorf("components: send: %w", ctx.Err())
		case <-p.ctx.Done():
			err = ErrClosed
		case <-p.done:
			err = p.stopErr
		}
		p.mu.Lock()
		if err == nil && p.closed.Load() {
			err = ErrClosed
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// idleLogAfter is how long messages wait with no stream to take them
// before the producer says so (then every waitingLogEvery): a start or a
// failover settles well within it.
const idleLogAfter = time.Second

// idleLog paces a "waiting" warning: due after a condition has held for a
// while (idleLogAfter, unless the caller waits longer), then every
// waitingLogEvery while it holds.
type idleLog struct {
	since, last time.Time // since is zero while the condition does not hold
}

// due records whether the condition holds at now and reports whether it is
// time to say so, once it has held for after.
func (l *idleLog) due(now time.Time, holds bool, after time.Duration) bool {
	if !holds {
		l.since = time.Time{}
		return false
	}
	if l.since.IsZero() {
		l.since = now
	}
	if now.Sub(l.since) < after || now.Sub(l.last) < waitingLogEvery {
		return false
	}
	l.last = now
	return true
}

// waitReasonLocked says what unsettled messages wait for, "" when it is
// not known: no stream takes them (no instance registered, or none
// answers), or they came back for want of a consumer lately.
func (p *Producer) waitReasonLocked(now time.Time) string {
	if p.unsettled == 0 {
		return ""
	}
	for _, st := range p.streams {
		if st.ready && !st.retired && !st.dead {
			if now.Sub(p.waitAt) < 2*waitingLogEvery {
				return p.waitDetail
			}
			return ""
		}
	}
	if !p.viewed {
		return unreadRegistry(p.cli)
	}
	if len(p.links) == 0 {
		return p.noInstanceLocked()
	}
	if failures := linkFailures(p.links, slices.Sorted(maps.Keys(p.links))); len(failures) > 0 {
		return "no instance of service " + p.cfg.service + " answers (" + strings.Join(failures, "; ") + ")"
	}
	return "no instance of service " + p.cfg.service + " answers"
}

// noInstanceLocked says why the producer has no link: no instance of its
// service is registered, or every one registered drains (an operator who
// sees the instances in the registry is not told there are none).
func (p *Producer) noInstanceLocked() string {
	if len(p.draining) > 0 {
		return "every instance of service " + p.cfg.service + " is draining (" + strings.Join(p.draining, ", ") + ")"
	}
	return "no instance of service " + p.cfg.service + " is registered"
}

// idleLocked reports, while messages wait with no stream to take them, what
// they wait for: an instance of the service to register, or one of those
// registered to answer.
func (p *Producer) idleLocked(now time.Time) {
	ready := false
	for _, st := range p.streams {
		if st.ready && !st.retired && !st.dead {
			ready = true
			break
		}
	}
	if !p.idle.due(now, !ready && p.unsettled > 0, idleLogAfter) {
		return
	}
	if !p.viewed {
		p.log.Warn(unreadRegistry(p.cli)+" (waiting)", "key", registry.ServicesPrefix(p.cfg.prefix, p.cfg.service), "held", p.unsettled)
		return
	}
	if len(p.links) == 0 {
		p.log.Warn(p.noInstanceLocked()+" (waiting)", "key", registry.ServicesPrefix(p.cfg.prefix, p.cfg.service), "held", p.unsettled)
		return
	}
	names := slices.Sorted(maps.Keys(p.links))
	p.log.Warn("no instance of service "+p.cfg.service+" answers (waiting)", "instances", names, "errors", linkFailures(p.links, names), "held", p.unsettled)
}

// lowWaterLocked returns the lowest seq this producer gave that is not
// settled yet, or the next seq when all are: every lower one was
// acknowledged end to end or handed back for good, and will never be sent
// again.
func (p *Producer) lowWaterLocked() uint64 {
	if seq, ok := p.own.Min(); ok {
		return seq
	}
	return p.nextSeq
}

// settleLocked ends m: acknowledged (err nil) or handed back for good.
func (p *Producer) settleLocked(m *outMsg, err error) {
	if m.ownSeq != 0 {
		p.own.Remove(m.ownSeq)
		if p.spanWait != nil {
			close(p.spanWait)
			p.spanWait = nil
		}
	}
	// A sendSlab chunk lives while any of its outMsgs does: a settled one
	// lets go of its message.
	m.stream, m.msg = nil, nil
	p.unsettled--
	if err != nil {
		p.failed++
	}
	if m.done != nil {
		m.done <- err
	}
	<-p.window
	if p.unsettled == 0 {
		select {
		case p.settled <- struct{}{}:
		default:
		}
	}
}

// dispatchLocked assigns outbox messages, in order, to the least loaded
// ready streams, a batch at a time, within each stream's in-flight limit.
// A stream whose next batch is being filled (its first messages wait for
// the linger) gets the following messages too, until the batch is full:
// messages sent one at a time make full batches however many
// intermediates there are, instead of one short batch per intermediate.
// A stream whose sends do not keep up (its queue is two batches deep) gets
// nothing more, so a stalled stream does not collect messages.
func (p *Producer) dispatchLocked() {
	for p.outbox.len() > 0 {
		avoid := p.outbox.front().avoid
		best := p.filling
		if best == nil || best.link == avoid || !best.dispatchable() || len(best.sendq) == 0 || len(best.sendq) >= best.maxBatch {
			best = p.leastLoadedLocked(avoid)
		}
		if best == nil {
			return
		}
		n := min(p.outbox.len(), best.maxInFlight-best.unacked.Len(), 2*best.maxBatch-len(best.sendq), best.maxBatch)
		queued, wasFull := len(best.sendq), best.batchFullLocked()
		if queued == 0 {
			best.queuedAt = time.Now()
		}
		for i := range n {
			if i > 0 && p.outbox.front().avoid != avoid {
				break // its own pick
			}
			m := p.outbox.popFront()
			m.avoid = nil
			if m.size > min(best.maxMsg, best.maxRoutes) && p.tooLargeLocked(m, best) {
				continue
			}
			best.nextSeq++
			m.stream, m.seq, m.sent = best, best.nextSeq, false
			best.unacked.Push(m.seq, m)
			best.sendq = append(best.sendq, m)
			best.sendqBytes += m.size
		}
		p.filling = best
		if queued == 0 || !wasFull && best.batchFullLocked() {
			// Its sender waits for a first message, or for a full batch
			// within the linger; other messages need no wake-up.
			best.wakeUp()
		}
	}
}

// tooLargeLocked hands m back for good, as the intermediate of st would
// (NACK_REASON_INVALID), and reports true, when m is larger than st's
// instance takes: a message Send took before that instance said its limit
// (none was connected), one handed back by an instance with a larger one,
// or one sent again whose routes exceed the instance's max-batch-bytes.
// Sent, a message over twice the limit would be refused by gRPC's frame
// limit instead, which ends the stream without a word on the message: sent
// again on the next stream, it would never be answered.
func (p *Producer) tooLargeLocked(m *outMsg, st *pubStream) bool {
	// The routes apart, as intermediates count them: what an
	// intermediate holds to its max-message-bytes is the rest.
	routes := butterfly.RoutesSize(m.msg.GetRoutes())
	size := m.size - routes
	var detail string
	switch {
	case size > st.maxMsg:
		detail = fmt.Sprintf("message of %d bytes encoded, over the %d bytes instance %s takes (its --max-batch-bytes): not sent", size, st.maxMsg, st.link.inst.Name)
	case routes > st.maxRoutes:
		// What the message learned of its groups on earlier attempts
		// does not fit: sent without it, a group that handled it could
		// get it again.
		detail = fmt.Sprintf("the routes of a message sent again, %d bytes encoded, exceed the %d bytes instance %s takes (its --max-batch-bytes): not sent", routes, st.maxRoutes, st.link.inst.Name)
	default:
		return false
	}
	n := &messagev1.Nack{Reason: messagev1.NackReason_NACK_REASON_INVALID, Detail: detail}
	p.saidHandedBack(p.handBackLocked(m, n), n)
	p.wakeNackHandler()
	return true
}

// handBackLocked ends m, handed back for good with n: counted, its SendWait
// answered with a NackError, and queued for the nack handler. It returns m's
// message, for the caller to say so (saidHandedBack) and wake the handler
// (wakeNackHandler).
func (p *Producer) handBackLocked(m *outMsg, n *messagev1.Nack) *messagev1.Message {
	msg := m.msg
	p.nacked++
	p.settleLocked(m, &NackError{ID: msg.GetId(), Reason: n.GetReason(), Detail: n.GetDetail()})
	if p.nackWake != nil {
		p.nacks = append(p.nacks, nackEvent{msg: msg, reason: n.GetReason(), detail: n.GetDetail()})
	}
	return msg
}

// saidHandedBack counts and logs msg, handed back for good with n.
func (p *Producer) saidHandedBack(msg *messagev1.Message, n *messagev1.Nack) {
	p.metrics.Nacked(n.GetReason())
	p.log.Warn("message handed back", "seq", msg.GetId().GetSeq(), "reason", n.GetReason().String(), "detail", n.GetDetail())
}

// wakeNackHandler tells the nack handler's goroutine that messages wait for
// it, when there is one.
func (p *Producer) wakeNackHandler() {
	if p.nackWake == nil {
		return
	}
	select {
	case p.nackWake <- struct{}{}:
	default:
	}
}

// awaitingAckLocked reports whether a message the producer sent on a stream
// it still dispatches to, or that still answers, waits for its
// acknowledgement: a batch that is not full waits for the linger only then
// (sendLoop).
func (p *Producer) awaitingAckLocked() bool {
	return slices.ContainsFunc(p.streams, (*pubStream).awaitingAckLocked)
}

// wakeLingeringLocked ends the linger of the streams whose senders wait for
// their batches to fill, once nothing the producer sent waits for its
// acknowledgement.
func (p *Producer) wakeLingeringLocked() {
	if p.awaitingAckLocked() {
		return
	}
	for _, st := range p.streams {
		if st.lingering {
			st.wakeUp()
		}
	}
}

// leastLoadedLocked returns the dispatchable stream with the fewest
// unacknowledged messages, not through avoid unless no other is there; nil
// when none is dispatchable. Under load it runs for three messages in four
// (each time a sender has taken its stream's queue), so the streams are a
// slice, not a map: a slice walks in a fraction of a map's time. Each walk
// starts at a random stream, so ties go to any of them, as they did in a
// map's random order. (Starting one stream further on each time instead
// would let ties follow the calls' pattern: with two streams and an even
// number of calls a burst, every burst's first batch would go to the same
// one.)
func (p *Producer) leastLoadedLocked(avoid *pubLink) *pubStream {
	var best, fallback *pubStream
	n := len(p.streams)
	if n == 0 {
		return nil
	}
	start := rand.IntN(n)
	for i := range n {
		st := p.streams[(start+i)%n]
		if !st.dispatchable() {
			continue
		}
		if st.link == avoid {
			fallback = st
			continue
		}
		if best == nil || st.unacked.Len() < best.unacked.Len() {
			best = st
		}
	}
	if best == nil {
		// Only the intermediate that could not reach the owner, or had no
		// room, is there: it may by now.
		return fallback
	}
	return best
}

// addStreamLocked makes st one of the producer's streams.
func (p *Producer) addStreamLocked(st *pubStream) {
	p.streams = append(p.streams, st)
}

// removeStreamLocked makes st no longer one of the producer's streams.
func (p *Producer) removeStreamLocked(st *pubStream) {
	p.streams = slices.DeleteFunc(p.streams, func(o *pubStream) bool { return o == st })
}

// requeueLocked puts the messages of a stream that is abandoned back at the
// head of the outbox, in their order, and sends them through the others.
func (p *Producer) requeueLocked(st *pubStream) {
	if st.dead {
		return
	}
	st.dead = true
	p.removeStreamLocked(st)
	if p.filling == st {
		p.filling = nil
	}
	if st.ready && !st.retired {
		p.updateMsgLimitLocked()
	}
	var reason string
	if p.metrics != nil {
		reason = p.streamEndReasonLocked(st)
		p.metrics.StreamEnded(reason)
	}
	if st.unacked.Len() == 0 {
		return
	}
	back := st.unacked.AppendTo(make([]*outMsg, 0, st.unacked.Len()))
	st.unacked.Clear()
	st.sendq, st.sendqBytes = nil, 0
	resent := 0
	for _, m := range back {
		if m.sent {
			resent++
		}
		m.stream, m.seq, m.sent = nil, 0, false
	}
	p.outbox.pushFront(back)
	if p.stopErr == nil && p.ctx.Err() == nil {
		// A producer that closes, or stopped on its own, sends nothing
		// again: what its streams held ends unacknowledged, not resent.
		p.resent += uint64(resent)
		p.metrics.Resent(reason, resent)
	}
	p.dispatchLocked()
	if resent > 0 {
		// What was sent on st waits for no acknowledgement any more.
		p.wakeLingeringLocked()
	}
}

// streamEndReasonLocked tells why st ended, for the metrics: the producer
// closes; the instance drains (in-band notice, or its link was dropped
// because the registry shows it draining or gone); it moved; nothing arrived
// for too long; the stream was never welcomed; else it broke.
func (p *Producer) streamEndReasonLocked(st *pubStream) string {
	switch {
	case p.ctx.Err() != nil:
		return telemetry.ReasonClose
	case errors.Is(st.retireCause, errDrained), errors.Is(st.retireCause, errGone):
		return telemetry.ReasonDrain
	case st.retired:
		return telemetry.ReasonMove
	case st.expired(time.Now()):
		return telemetry.ReasonHeartbeat
	case !st.ready:
		return telemetry.ReasonConnect
	}
	return telemetry.ReasonCrash
}

// handleAck applies a PublishAck received on st; acks from a stream already
// abandoned find nothing and are ignored.
func (p *Producer) handleAck(st *pubStream, a *deliveryv1.PublishAck) {
	type permanent struct {
		msg  *messagev1.Message
		nack *messagev1.Nack
	}
	var failed []permanent
	p.mu.Lock()
	acked := 0
	// Counted before settled: once a SendWait returns, Stats includes it.
	settle := func(_ uint64, m *outMsg) { p.acked++; p.settleLocked(m, nil) }
	for _, r := range a.GetAcked() {
		// A range is walked over what is unacknowledged in it, whatever
		// its width; a malformed one is skipped.
		if first, last, ok := seqrange.Bounds(r); ok {
			acked += st.unacked.RemoveRange(first, last, settle)
		}
	}
	var transient []*outMsg
	draining := false
	for _, n := range a.GetNacked() {
		m, ok := st.unacked.Remove(n.GetSeq())
		if !ok {
			continue
		}
		switch {
		case butterfly.Transient(n.GetReason()):
			again := m.back
			m.stream, m.seq, m.sent, m.back = nil, 0, false, true
			if routes := n.GetRoutes(); len(routes) > 0 {
				// What this attempt learned travels with the next one: the
				// groups that handled it get no copy, the others keep their
				// consumer. A copy, as the old one may still be read.
				c := proto.Clone(m.msg).(*messagev1.Message)
				c.Routes = routes
				m.msg, m.size = c, msgSize(c)
			}
			transient = append(transient, m)
			switch n.GetReason() {
			case messagev1.NackReason_NACK_REASON_DRAINING:
				draining = true
				p.metrics.Resent(telemetry.ReasonDrain, 1)
			case messagev1.NackReason_NACK_REASON_NO_CONSUMER:
				p.metrics.Resent(telemetry.ReasonNoConsumer, 1)
				p.waitingLocked(n, true)
			case messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE:
				// Another intermediate may reach the owner. Once is a
				// consumer's stream moving; a message back again waits.
				m.avoid = st.link
				p.metrics.Resent(telemetry.ReasonOwnerUnreachable, 1)
				p.waitingLocked(n, again)
			default:
				// UNAVAILABLE: this intermediate's memory budget is full;
				// another may have room.
				m.avoid = st.link
				p.metrics.Resent(telemetry.ReasonUnavailable, 1)
			}
		default:
			failed = append(failed, permanent{p.handBackLocked(m, n), n})
		}
	}
	if draining {
		// Only a draining instance hands messages back so: it gets nothing
		// more, these included, and answers what it holds.
		st.link.retired = true
		p.retireLocked(st, errDrained, time.Now().Add(p.retireGrace()))
	}
	if len(transient) > 0 {
		p.outbox.pushFront(transient)
		if p.stopErr == nil && p.ctx.Err() == nil {
			p.resent += uint64(len(transient)) // as requeueLocked counts
		}
	}
	p.endIfAnsweredLocked(st)
	p.dispatchLocked()
	if !st.awaitingAckLocked() {
		p.wakeLingeringLocked()
	}
	p.mu.Unlock()
	p.metrics.Acked(acked)
	for _, f := range failed {
		p.saidHandedBack(f.msg, f.nack)
	}
	if len(failed) > 0 {
		p.wakeNackHandler()
	}
}

// deliverNacks calls the nack handler for every message handed back for
// good, in the order the hand-backs arrived, until Close stops it once the
// streams stopped; it delivers everything queued before it returns. It runs
// apart from the streams, so a handler that blocks holds back no
// acknowledgement, and it may call Send: a message handed back frees its
// window slot at once, before its handler call. For the same reason the
// queue is not bounded by the window: while the handler lags, it grows by
// every message handed back meanwhile.
func (p *Producer) deliverNacks() {
	defer close(p.nackDone)
	stopping := false
	for {
		p.mu.Lock()
		batch := p.nacks
		p.nacks = nil
		p.mu.Unlock()
		for _, n := range batch {
			p.cfg.nackHandler(n.msg, n.reason, n.detail)
		}
		switch {
		case len(batch) > 0:
			continue
		case stopping:
			return
		}
		select {
		case <-p.nackWake:
		case <-p.nackStop:
			stopping = true
		}
	}
}

// Close stops taking messages and waits until every message sent was
// acknowledged or handed back for good, or ctx is done; then it closes the
// streams, waits for the nack handler's calls, and ends the SendWait of
// every message still unacknowledged with ErrClosed. It returns nil only
// when every message was acknowledged, else a *CloseError. Close is safe to
// call twice; the second call returns the first call's result.
func (p *Producer) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed.Store(true)
	p.mu.Unlock()
	var waitErr error
	var waiting string
	for {
		p.mu.Lock()
		n := p.unsettled
		p.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-p.settled:
			continue
		case <-ctx.Done():
			waitErr = ctx.Err()
			p.mu.Lock()
			waiting = p.waitReasonLocked(time.Now())
			p.mu.Unlock()
		case <-p.ctx.Done():
		case <-p.done:
		}
		// A producer that stopped (refused for good) says why, even when
		// ctx was done as well and the select took it: a stage closes its
		// producer with an ended ctx.
		select {
		case <-p.done:
			waitErr, waiting = p.stopErr, ""
		default:
		}
		break
	}
	p.closeOnce.Do(func() {
		p.stopGoroutines()
		if p.nackStop != nil {
			close(p.nackStop)
			<-p.nackDone
		}
		if err := p.conn.Close(); err != nil {
			p.log.Debug("close connection", "err", err)
		}
		p.metrics.Close()
		p.mu.Lock()
		unsettled, failed := p.unsettled, p.failed
		p.abandonLocked()
		p.mu.Unlock()
		if unsettled > 0 || failed > 0 || waitErr != nil {
			p.closeErr = &CloseError{Unacked: unsettled, Failed: failed, Err: waitErr, Waiting: waiting}
		}
		st := p.Stats()
		p.log.Info("producer closed", "sent", st.Sent, "acked", st.Acked, "resent", st.Resent, "nacked", st.Nacked, "unacked", unsettled)
	})
	return p.closeErr
}

// stopGoroutines cancels the producer's context and waits for its
// goroutines. It cancels under mu: a reconcile, which runs on the
// resolver's goroutine and is not counted in wg, either started its links
// (counted in wg) before the cancel or sees the context canceled and
// starts none.
func (p *Producer) stopGoroutines() {
	p.mu.Lock()
	p.cancel()
	p.mu.Unlock()
	p.wg.Wait()
}

// Done is closed when the producer stops on its own: an intermediate
// refused it for good (ErrRefused), or every one disagrees with it on TLS
// (ErrTLSMismatch; while one takes it, it goes on without those that do
// not, warning of them). Err says why, as a *RefusedError. Send then fails with
// that error and Close returns at once; the application should Close it.
func (p *Producer) Done() <-chan struct{} { return p.done }

// Err returns why Done was closed, nil before.
func (p *Producer) Err() error {
	select {
	case <-p.done:
		return p.stopErr
	default:
		return nil
	}
}

// stop ends the producer's sending on its own, with err: its streams end
// and none is opened again; what they held waits in the outbox for Close.
func (p *Producer) stop(err error) {
	p.stopOnce.Do(func() {
		p.log.Warn("producer stops", "err", err)
		p.mu.Lock()
		p.stopErr = err
		for _, l := range p.links {
			l.retired = true
			l.cancel()
		}
		// A retired stream (its instance drains, moved or left) is no
		// longer among the links and ends too.
		for _, st := range p.streams {
			st.link.retired = true
			st.link.cancel()
		}
		p.mu.Unlock()
		close(p.done)
	})
}

// refusedAtOpen stops the producer when err, from opening a stream to l's
// instance or from its first receive, is a refusal that retrying cannot
// mend and stopsOwner says it stops on. It reports whether it stopped.
func (p *Producer) refusedAtOpen(l *pubLink, err error) bool {
	r := refusal(l.ctx, "producer "+p.id, l.inst.Name, l.inst.Addr, p.cfg.creds, err)
	if r == nil {
		return false
	}
	if r = stopsOwner(&p.mu, p.links, &l.link, r, "producer"); r == nil {
		return false
	}
	p.stop(r)
	return true
}

// abandonLocked ends the SendWait of every message still unacknowledged once
// the streams stopped: their messages are all back in the outbox.
func (p *Producer) abandonLocked() {
	for p.outbox.len() > 0 {
		m := p.outbox.popFront()
		if m.done != nil {
			id := m.msg.GetId()
			m.done <- fmt.Errorf("%w: message %s/%d/%d not acknowledged", ErrClosed, id.GetProducerId(), id.GetIncarnation(), id.GetSeq())
		}
	}
}
