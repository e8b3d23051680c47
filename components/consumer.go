package components

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/butterfly-mesh/butterfly"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/ctxgrace"
	"github.com/butterfly-mesh/butterfly/internal/etcdclient"
	"github.com/butterfly-mesh/butterfly/internal/telemetry"
	"github.com/butterfly-mesh/butterfly/registry"
)

// Delivery is one message handed to a consumer's handler.
type Delivery struct {
	// Message is the processed message, under the id its producer gave it.
	Message *messagev1.Message
	// Instance is the intermediate instance it came through.
	Instance string
	// Redeliveries is how many times that intermediate delivered it before
	// to a consumer of this consumer's group.
	Redeliveries uint32
}

// Handler handles one delivery. nil acknowledges it; an error hands it back
// to its producer (NACK_REASON_HANDLER_FAILED) with the error's text, unless
// it was made by Stop: then the consumer stops and the message goes to the
// group's other consumers.
type Handler func(ctx context.Context, d *Delivery) error

// ConsumerStats are a consumer's counters.
type ConsumerStats struct {
	// Delivered is how many messages the handler handled without error,
	// acknowledged or not: a handler that returns nil after Close's
	// context ended is counted, and its message, not acknowledged, goes to
	// the group's other consumers.
	Delivered uint64
	// DuplicatesDropped is how many deliveries of an already handled (or
	// being handled) message were acknowledged without calling the handler.
	DuplicatesDropped uint64
	// Nacked is how many handler calls returned an error.
	Nacked uint64
}

// deliveryRef names one delivery on one stream.
type deliveryRef struct {
	st *subStream
	id uint64
}

// job is one message to hand to the handler, with the duplicates that
// arrived while it runs.
type job struct {
	key   msgKey
	keyed bool // the message has a complete id and takes part in dedup
	// d is handed to the handler; finish clears it. A batch's jobs share one
	// array, so the Delivery is an allocation of its own: a handled message
	// must not stay reachable while another job of its batch is in hand.
	d       *Delivery
	origin  deliveryRef
	waiters []deliveryRef
}

// Consumer receives messages from every intermediate of a service (one
// pinned stream per instance, draining ones included), drops duplicates and
// hands the rest to its handler.
type Consumer struct {
	cli         *clientv3.Client
	id          string
	handler     Handler
	cfg         consumerConfig
	log         *slog.Logger
	conn        *grpc.ClientConn
	client      deliveryv1.SubscribeServiceClient
	ctx         context.Context // handler context; canceled at the end of Close
	cancel      context.CancelFunc
	watchCancel context.CancelFunc // stops the registration's retries (Close)
	wg          sync.WaitGroup
	workReady   chan struct{} // poked when a job is queued
	changed     chan struct{} // poked when a stream ends, and when a job ends once Close waits
	closeOnce   sync.Once
	closeErr    error
	// creditCapOnce logs the first credit capped at an intermediate's
	// max_credit.
	creditCapOnce sync.Once
	metrics       *telemetry.ConsumerMetrics // nil without WithMetrics
	tracer        trace.Tracer               // nil without WithTracerProvider
	done          chan struct{}              // closed when the consumer stops on its own; see Done
	stopOnce      sync.Once
	stopErr       error // why it stopped; set before done is closed
	// stopMark ends the background mark of a consumer that stopped
	// (leaveStoppedLocked); Close calls it before it marks its registration
	// itself. Guarded by mu.
	stopMark context.CancelFunc

	delivered  atomic.Uint64
	dups       atomic.Uint64
	nacked     atomic.Uint64
	unanswered atomic.Uint64 // messages whose handler was stopped, left for another consumer (abandon)

	// mu guards the fields below and the guarded fields of subLink and
	// subStream. It is never held across gRPC or etcd calls or the handler.
	mu         sync.Mutex
	closing    bool                   // set by Close before the drain mark: queued jobs from ended streams are released, not handled
	leaving    bool                   // set by Close once the drain mark is written: links stop opening streams
	stopped    bool                   // it stopped on its own (stop): no new link is started
	reg        *registry.Registration // nil until registered
	epoch      uint64                 // the registration's epoch; 0 until registered
	links      map[string]*subLink
	viewed     bool // a view of the registry came: etcd answered its read
	streams    map[*subStream]struct{}
	dedup      *dedupSet
	inProgress *inProgress
	queue      []*job
	pending    int // jobs queued or running
	// claimed counts the jobs handed to the handler that did not fail:
	// with WithLimit, no job is taken once it reaches the limit.
	claimed uint64
	// idleWorkers counts the workers waiting for workReady.
	idleWorkers int
	// idle says when the membership has been empty.
	idle idleLog
}

// NewConsumer returns a consumer named id that hands every message routed to
// it to h, and starts it.
func NewConsumer(cli *clientv3.Client, id string, h Handler, opts ...ConsumerOption) (*Consumer, error) {
	cfg := consumerConfig{
		commonConfig: defaultCommon(),
		service:      DefaultService,
		credit:       DefaultCredit,
		maxRecv:      DefaultMaxReceiveBytes,
		concurrency:  DefaultConcurrency,
		dedupWindow:  DefaultDedupWindow,
		dedupProds:   DefaultDedupProducers,
		group:        DefaultGroup,
		createGroup:  true,
		leaseTTL:     DefaultConsumerLeaseTTL,
	}
	for _, o := range opts {
		o.applyConsumer(&cfg)
	}
	if err := cfg.validate(cli, id, h); err != nil {
		return nil, err
	}
	// c is set before conn.Connect, after which the views come.
	var c *Consumer
	conn, err := dial(cli, cfg.service, cfg.commonConfig, func(v registry.View) {
		c.metrics.MembershipUpdate()
		c.reconcile(v)
	})
	if err != nil {
		return nil, fmt.Errorf("components: consumer %s: %w", id, err)
	}
	ctx, cancel := context.WithCancel(cli.Ctx())
	wctx, wcancel := context.WithCancel(ctx)
	c = &Consumer{
		cli:         cli,
		id:          id,
		handler:     h,
		cfg:         cfg,
		log:         cfg.logger.With("consumer", id, "group", cfg.group, "service", cfg.service),
		conn:        conn,
		client:      deliveryv1.NewSubscribeServiceClient(conn),
		ctx:         ctx,
		cancel:      cancel,
		watchCancel: wcancel,
		workReady:   make(chan struct{}, 1),
		changed:     make(chan struct{}, 1),
		done:        make(chan struct{}),
		links:       make(map[string]*subLink),
		streams:     make(map[*subStream]struct{}),
		dedup:       newDedupSet(cfg.dedupWindow, cfg.dedupProds),
		inProgress:  newInProgress(),
	}
	c.tracer = telemetry.Tracer(cfg.tracer)
	c.metrics, err = telemetry.NewConsumerMetrics(cfg.metrics, cfg.service, cfg.group, id, c.inHand)
	if err != nil {
		wcancel()
		cancel()
		conn.Close()
		return nil, fmt.Errorf("components: consumer %s: %w", id, err)
	}
	c.wg.Add(2 + cfg.concurrency)
	go func() {
		defer c.wg.Done()
		if c.register(wctx) {
			// Streams open once the consumer is registered: an
			// intermediate refuses a consumer it does not know.
			conn.Connect()
		}
	}()
	go c.watchdog(ctx)
	for range cfg.concurrency {
		go c.worker()
	}
	return c, nil
}

func (c *consumerConfig) validate(cli *clientv3.Client, id string, h Handler) error {
	var errs []error
	if cli == nil {
		errs = append(errs, errors.New("etcd client is nil"))
	}
	if h == nil {
		errs = append(errs, errors.New("handler is nil"))
	}
	if err := registry.ValidateName("consumer id", id); err != nil {
		errs = append(errs, err)
	}
	if err := registry.ValidateName("service", c.service); err != nil {
		errs = append(errs, err)
	}
	if err := c.commonConfig.validate(); err != nil {
		errs = append(errs, err)
	}
	if c.credit < 1 || c.credit > 1<<20 {
		errs = append(errs, fmt.Errorf("credit %d is out of range [1, %d]", c.credit, 1<<20))
	}
	if c.maxRecv < MinMaxReceiveBytes || c.maxRecv > math.MaxInt32 {
		errs = append(errs, fmt.Errorf("max receive bytes %d is out of range [%d, %d]", c.maxRecv, MinMaxReceiveBytes, math.MaxInt32))
	}
	if c.concurrency < 1 {
		errs = append(errs, fmt.Errorf("concurrency %d is under 1", c.concurrency))
	}
	if c.dedupWindow < 64 {
		errs = append(errs, fmt.Errorf("dedup window %d is under 64", c.dedupWindow))
	}
	if err := registry.ValidateName("group", c.group); err != nil {
		errs = append(errs, err)
	}
	if c.leaseTTL < time.Second {
		errs = append(errs, fmt.Errorf("lease TTL %v is under 1s", c.leaseTTL))
	}
	if c.dedupProds < 1 {
		errs = append(errs, fmt.Errorf("dedup producers %d is under 1", c.dedupProds))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("components: invalid consumer options: %w", err)
	}
	return nil
}

// ID returns the consumer's name.
func (c *Consumer) ID() string { return c.id }

// Stats returns the consumer's counters.
func (c *Consumer) Stats() ConsumerStats {
	return ConsumerStats{
		Delivered:         c.delivered.Load(),
		DuplicatesDropped: c.dups.Load(),
		Nacked:            c.nacked.Load(),
	}
}

// inHand is how many messages are queued for or in the handler.
func (c *Consumer) inHand() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return float64(c.pending)
}

// receive takes a batch of deliveries from st: a duplicate of a handled
// message is acknowledged at once, a duplicate of a message being handled
// waits for the original's outcome, the rest are queued for the handler.
func (c *Consumer) receive(st *subStream, batch *deliveryv1.DeliveryBatch) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.dead {
		return
	}
	// A consumer that leaves, handled its limit or stopped takes nothing
	// new: a message it did not handle is left unanswered, and the
	// intermediate hands it to another consumer when this stream ends. A
	// copy of one it handled (or is handling) is still answered as a
	// duplicate: another consumer would handle it again.
	takesNew := !st.drainWanted && !c.atLimit() && !c.stopped
	queued := false
	dups := 0
	defer func() { c.metrics.Duplicates(dups) }()
	var slab []job // the batch's jobs: one allocation
	for i, d := range batch.GetDeliveries() {
		ref := deliveryRef{st: st, id: d.GetDeliveryId()}
		id := d.GetMessage().GetId()
		key := msgKey{producerKey{id.GetProducerId(), id.GetIncarnation()}, id.GetSeq()}
		keyed := key.producer != "" && key.seq != 0
		if keyed {
			c.dedup.observe(key.producerKey, d.GetMessage().GetLowWaterSeq())
			if j := c.inProgress.get(key); j != nil {
				j.waiters = append(j.waiters, ref)
				st.inHand++
				continue
			}
			if c.dedup.seen(key) {
				st.acks = append(st.acks, ref.id)
				st.credit++
				c.dups.Add(1)
				dups++
				st.wakeUp()
				continue
			}
		}
		if !takesNew {
			continue
		}
		if len(slab) == cap(slab) {
			slab = make([]job, 0, len(batch.GetDeliveries())-i)
		}
		slab = append(slab, job{
			key:    key,
			keyed:  keyed,
			d:      &Delivery{Message: d.GetMessage(), Instance: st.link.inst.Name, Redeliveries: d.GetRedeliveries()},
			origin: ref,
		})
		j := &slab[len(slab)-1]
		if keyed {
			c.inProgress.put(key, j)
		}
		st.inHand++
		c.queue = append(c.queue, j)
		c.pending++
		queued = true
	}
	if queued && c.idleWorkers > 0 {
		c.pokeWork()
	}
}

func (c *Consumer) pokeWork() {
	select {
	case c.workReady <- struct{}{}:
	default:
	}
}

func (c *Consumer) poke() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// worker runs the handler on queued jobs until the consumer stops. It
// answers a job and takes the next one under one lock, and waits for a
// poke only when the queue is empty: receive pokes only while a worker
// waits.
func (c *Consumer) worker() {
	defer c.wg.Done()
	var j *job
	for {
		if j == nil {
			c.mu.Lock()
			if j = c.nextJobLocked(); j == nil {
				c.idleWorkers++
			}
			c.mu.Unlock()
			if j == nil {
				select {
				case <-c.ctx.Done():
					return
				case <-c.workReady:
				}
				c.mu.Lock()
				c.idleWorkers--
				c.mu.Unlock()
				continue
			}
		}
		j = c.finish(j, c.handle(j), true)
	}
}

// nextJobLocked takes the next queued job: nil when none is queued or the
// consumer stops. A job taken is always handled and answered. While jobs
// remain queued it wakes a waiting worker for them.
//
// A closing or stopped consumer hands its handler no message whose every
// delivery came on a stream that has ended: no answer can reach the
// intermediates, which hand it to the group's other consumers now that this
// one drains, and handling it here as well would handle it twice.
func (c *Consumer) nextJobLocked() *job {
	for {
		if len(c.queue) == 0 || c.ctx.Err() != nil || (c.cfg.limit > 0 && c.claimed >= c.cfg.limit) {
			return nil
		}
		j := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		if len(c.queue) == 0 {
			c.queue = nil
		}
		if (c.closing || c.stopped) && j.unanswerable() {
			c.releaseJobLocked(j)
			c.poke() // Close waits for pending
			continue
		}
		if len(c.queue) > 0 && c.idleWorkers > 0 {
			c.pokeWork()
		}
		c.claimed++
		return j
	}
}

// unanswerable reports whether every stream j's deliveries came on has
// ended.
func (j *job) unanswerable() bool {
	if !j.origin.st.dead {
		return false
	}
	for _, r := range j.waiters {
		if !r.st.dead {
			return false
		}
	}
	return true
}

// handle runs the handler, turning a panic into an error.
func (c *Consumer) handle(j *job) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	if c.tracer == nil {
		return c.handler(c.ctx, j.d)
	}
	id := j.d.Message.GetId()
	ctx, span := c.tracer.Start(telemetry.Extract(c.ctx, j.d.Message), "butterfly.consume "+c.cfg.service,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("butterfly.service", c.cfg.service),
			attribute.String("butterfly.consumer_id", c.id),
			attribute.String("butterfly.group", c.cfg.group),
			attribute.String("butterfly.instance", j.d.Instance),
			attribute.String("butterfly.producer_id", id.GetProducerId()),
			attribute.Int64("butterfly.seq", int64(id.GetSeq())),
		))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(otelcodes.Error, err.Error())
		}
		span.End()
	}()
	return c.handler(ctx, j.d)
}

// answerLocked acknowledges one delivery of a handled message, or nacks it
// with the handler's error, and gives its stream the credit back. A stream
// that ended is not answered: its intermediate hands the delivery on.
func answerLocked(r deliveryRef, err error, detail string) {
	r.st.inHand--
	if r.st.dead {
		return
	}
	if err == nil {
		r.st.acks = append(r.st.acks, r.id)
	} else {
		r.st.nacks = append(r.st.nacks, &messagev1.Nack{Seq: r.id, Reason: messagev1.NackReason_NACK_REASON_HANDLER_FAILED, Detail: detail})
	}
	r.st.credit++
	r.st.wakeUp()
}

// errUnanswered marks a handler error that says nothing of the message: the
// handler could not finish it because its consumer stops (a stage whose
// downstream side stopped or was closed). The message is left unanswered,
// for another consumer, not handed back for good.
var errUnanswered = errors.New("components: not handled: the consumer stops")

// finish answers a job's delivery and the duplicates that waited for it.
// A handler error while the consumer's context is canceled (Close ran out
// of time) or one marked errUnanswered leaves them unanswered instead: the
// handler was stopped, the message did not fail, and its intermediate hands
// it on when the stream ends. With next it also takes the next queued job
// (nextJobLocked) under the same lock and returns it.
func (c *Consumer) finish(j *job, err error, next bool) *job {
	if err != nil && (errors.Is(err, errUnanswered) || c.ctx.Err() != nil) {
		return c.abandon(j, err, next)
	}
	if err != nil {
		if cause, ok := stoppedBy(err); ok {
			c.stopByHandler(cause)
			return c.abandon(j, err, next)
		}
	}
	// The detail is made before the lock: an error's text may be long,
	// and the stream's frames and heartbeats wait on the lock.
	var detail string
	if err != nil {
		detail = butterfly.NackDetail(err.Error())
	}
	c.mu.Lock()
	if j.keyed {
		c.inProgress.remove(j.key)
		if err == nil {
			c.dedup.mark(j.key)
		}
	}
	// Counted before the answers go out: whoever hears of the
	// acknowledgement finds the message counted.
	dups := len(j.waiters)
	limitReached := false // by this job: delivered never passes the claims
	if err != nil {
		c.nacked.Add(1)
		c.claimed--
	} else {
		limitReached = c.delivered.Add(1) == c.cfg.limit
		c.dups.Add(uint64(dups))
	}
	answerLocked(j.origin, err, detail)
	for _, r := range j.waiters {
		answerLocked(r, err, detail)
	}
	c.pending--
	if limitReached {
		c.releaseQueueLocked()
	}
	nj := c.unlockTakingNext(next)
	if limitReached {
		c.stop(ErrLimitReached)
	}
	d := j.d
	j.d, j.waiters = nil, nil
	if err != nil {
		c.metrics.Nacked()
		id := d.Message.GetId()
		c.log.Warn("handler failed", "producer", id.GetProducerId(), "seq", id.GetSeq(), "err", err)
		return nj
	}
	c.metrics.Delivered(d.Message.GetCreateTimeUnixNano())
	c.metrics.Duplicates(dups)
	return nj
}

// stopByHandler stops the consumer with the cause of a handler's Stop and
// takes back what it queued, unhandled and unanswered: the intermediates
// hand it to the group's other consumers when its streams end.
func (c *Consumer) stopByHandler(cause error) {
	c.stop(fmt.Errorf("%w: %w", ErrHandlerStopped, cause))
	c.mu.Lock()
	c.releaseQueueLocked()
	c.mu.Unlock()
	c.poke() // Close waits for pending
}

// atLimit reports whether the handler handled WithLimit's messages: nothing
// more is taken or handed to it. Its count moves under c.mu.
func (c *Consumer) atLimit() bool {
	return c.cfg.limit > 0 && c.delivered.Load() >= c.cfg.limit
}

// releaseQueueLocked takes back the queued jobs, none of which will be
// handled, without answering their deliveries: each intermediate hands them
// to another consumer of the group when the stream ends.
func (c *Consumer) releaseQueueLocked() {
	for _, j := range c.queue {
		c.releaseJobLocked(j)
	}
	c.queue = nil
}

// unlockTakingNext ends a job's bookkeeping under mu: with next it takes the
// next queued job (nextJobLocked), then it unlocks mu and pokes Close when
// it waits. It returns the job taken, or nil.
func (c *Consumer) unlockTakingNext(next bool) *job {
	// Only Close waits for pending to reach 0, and only once closing is
	// set: before, it finds the count under this lock.
	closing := c.closing
	var nj *job
	if next {
		nj = c.nextJobLocked()
	}
	c.mu.Unlock()
	if closing {
		c.poke()
	}
	return nj
}

// abandon forgets j, whose handler was stopped with err, without answering
// its deliveries, and takes the next job as finish does.
func (c *Consumer) abandon(j *job, err error, next bool) *job {
	d := j.d
	c.mu.Lock()
	c.claimed--
	c.releaseJobLocked(j)
	nj := c.unlockTakingNext(next)
	c.unanswered.Add(1)
	id := d.Message.GetId()
	c.log.Debug("handler stopped; message left unanswered for another consumer", "producer", id.GetProducerId(), "seq", id.GetSeq(), "err", err)
	return nj
}

// releaseJobLocked forgets j, taken from the queue, without answering its
// deliveries.
func (c *Consumer) releaseJobLocked(j *job) {
	if j.keyed {
		c.inProgress.remove(j.key)
	}
	for _, r := range append(j.waiters, j.origin) {
		r.st.inHand--
		r.st.wakeUp()
	}
	j.d, j.waiters = nil, nil
	c.pending--
}

// Done is closed when the consumer stops receiving on its own: another
// process took its id over (ErrReplaced), its group was deleted
// (ErrGroupDeleted), its handler handled WithLimit's messages
// (ErrLimitReached), its handler returned an error made by Stop
// (ErrHandlerStopped), its client certificate may not subscribe as its id
// (ErrPermissionDenied), an intermediate refused it for good (ErrRefused,
// as a *RefusedError), or every one disagrees with it on TLS
// (ErrTLSMismatch, as a *RefusedError; while one takes it, it goes on
// without those that do not, warning of them). Err says which. From then on it takes
// nothing new; unless taken over, its registration is marked draining, so
// the group's other consumers own its keys; and its streams end once what it
// has in hand is answered, so they get what it was sent and did not answer.
// The application should then Close it.
func (c *Consumer) Done() <-chan struct{} { return c.done }

// Err returns why Done was closed, nil before.
func (c *Consumer) Err() error {
	select {
	case <-c.done:
		return c.stopErr
	default:
		return nil
	}
}

// idleLocked reports, while the consumer has no welcomed stream to receive
// from, what it waits for: an instance of the service to register, or one
// of those registered to welcome it (with why each did not). After
// idleLogAfter, then every waitingLogEvery; while an instance has not yet
// answered at all, the first warning waits for it (a refusal, or silence
// for the welcome's wait) so that it can say why.
func (c *Consumer) idleLocked(now time.Time) {
	receiving := c.stopped || c.closing // stopped or closing: it waits for nothing
	for st := range c.streams {
		if st.welcomed && !st.dead {
			receiving = true
			break
		}
	}
	if receiving {
		c.idle.due(now, false, 0)
		return
	}
	names := slices.Sorted(maps.Keys(c.links))
	failures := linkFailures(c.links, names)
	after := idleLogAfter
	if len(failures) < len(names) {
		// A beat past the welcome's wait: by then a silent instance's
		// stream has ended and said so.
		after = max(after, heartbeatMisses*c.welcomeInterval()+c.cfg.heartbeat)
	}
	if !c.idle.due(now, true, after) {
		return
	}
	if !c.viewed {
		c.log.Warn(unreadRegistry(c.cli)+" (waiting)", "key", registry.ServicesPrefix(c.cfg.prefix, c.cfg.service))
		return
	}
	if len(c.links) == 0 {
		c.log.Warn("no instance of service "+c.cfg.service+" is registered (waiting)", "key", registry.ServicesPrefix(c.cfg.prefix, c.cfg.service))
		return
	}
	if refusal := sameRefusal(c.links, names); refusal != "" {
		// Every instance answers, and each refuses it for the same
		// reason: a group nobody declared (WithCreateGroup(false)), most
		// likely; "no instance answers" would send its reader to the
		// network.
		c.log.Warn("every instance of service "+c.cfg.service+" refuses the consumer: "+refusal+" (waiting)", "instances", names)
		return
	}
	c.log.Warn("no instance of service "+c.cfg.service+" answers (waiting)", "instances", names, "errors", failures)
}

// sameRefusal returns, when every link of names last failed on a refusal
// of a consumer not registered or of a group not declared, and all for the
// same reason, that reason; "" otherwise.
func sameRefusal(links map[string]*subLink, names []string) string {
	why := ""
	for i, name := range names {
		l := links[name]
		if !l.notRegistered || i > 0 && l.failure != why {
			return ""
		}
		why = l.failure
	}
	return why
}

// refusedAtOpen stops the consumer when err, from opening a stream to l's
// instance or from its first receive, is a refusal that retrying cannot
// mend and stopsOwner says it stops on.
func (c *Consumer) refusedAtOpen(l *subLink, err error) {
	r := refusal(l.ctx, "consumer "+c.id, l.inst.Name, l.inst.Addr, c.cfg.creds, err)
	if r == nil {
		return
	}
	if r = stopsOwner(&c.mu, c.links, &l.link, r, "consumer"); r != nil {
		c.stopRefused(r)
	}
}

// stopRefused stops the consumer on r, a refusal for good; a
// PERMISSION_DENIED one is also ErrPermissionDenied, and the consumer
// withdraws.
func (c *Consumer) stopRefused(r *RefusedError) {
	if r.Code == codes.PermissionDenied {
		c.stop(fmt.Errorf("%w: %w", ErrPermissionDenied, r))
		return
	}
	c.stop(r)
}

// stop ends the consumer's reception on its own, with err.
func (c *Consumer) stop(err error) {
	c.stopOnce.Do(func() {
		atLimit := errors.Is(err, ErrLimitReached)
		if atLimit {
			c.log.Info("consumer stops", "reason", err, "limit", c.cfg.limit)
		} else {
			c.log.Warn("consumer stops", "err", err)
		}
		c.stopErr = err
		c.mu.Lock()
		c.stopped = true
		for _, l := range c.links {
			l.retired = true
			if l.stream == nil {
				l.cancel()
			}
		}
		if c.reg != nil {
			// A consumer taken over leaves its key to the process that
			// took it, and its streams all the same.
			c.leaveStoppedLocked(c.reg, !errors.Is(err, ErrReplaced))
		}
		c.mu.Unlock()
		close(c.done)
	})
}

// leaveStoppedLocked gives up, in the background, the share of a consumer
// that stopped on its own: it takes nothing more, so it owns nothing more.
// With mark it marks reg draining, so the group's others own its keys at
// once (should the group be declared again, they own them too); a consumer
// taken over does not, the process that took its id owns the key. Then it
// ends its streams, so the intermediates give the others what it was sent
// and did not answer (on a stream of an epoch taken over too), once what it
// has in hand is answered. Both happen whether or not the application
// closes it; Close, which marks and leaves on its own, cancels the mark
// rather than wait for it.
func (c *Consumer) leaveStoppedLocked(reg *registry.Registration, mark bool) {
	ctx, cancel := context.WithTimeout(c.ctx, registerTimeout)
	c.stopMark = cancel
	go func() {
		defer cancel()
		if mark {
			if err := reg.SetDraining(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, registry.ErrReplaced) && !errors.Is(err, registry.ErrClosed) {
				c.log.Warn("mark registration draining", "err", err)
			}
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.closing {
			c.leaveStreamsLocked()
		}
	}()
}

// leaveStreamsLocked asks every stream to end: a welcomed one sends its
// Drain frame and ends once what it holds is answered; one still waiting
// for its welcome ends at once, since nothing was received on it and
// nothing is owed (an instance that does not answer would otherwise hold
// the consumer until the stream is counted as silent).
func (c *Consumer) leaveStreamsLocked() {
	for st := range c.streams {
		if !st.welcomed {
			st.cancel(ErrClosed)
			continue
		}
		st.drainWanted = true
		st.wakeUp()
	}
}

// register declares the group (WithCreateGroup) and registers the consumer
// in it, retrying with backoff until it succeeds or ctx is done; it reports
// whether it registered.
func (c *Consumer) register(ctx context.Context) bool {
	opts := []registry.Option{registry.WithPrefix(c.cfg.prefix), registry.WithLogger(c.cfg.logger), registry.WithTTL(c.cfg.leaseTTL), registry.WithVersion(c.cfg.version)}
	if c.cfg.stage {
		opts = append(opts, registry.WithStageRole())
	}
	var bo backoff
	for {
		err := c.registerOnce(ctx, opts)
		if err == nil {
			return true
		}
		if ctx.Err() != nil || errors.Is(err, errStoppedUnregistered) {
			return false
		}
		if etcdclient.Refused(err) {
			// Retrying mends neither a user nor its roles.
			c.stop(fmt.Errorf("components: consumer %s: etcd refused its registration: %w", c.id, err))
			return false
		}
		c.log.Warn("consumer registration failed; retrying", "err", err)
		if !sleepCtx(ctx, bo.next()) {
			return false
		}
	}
}

// errStoppedUnregistered: the consumer stopped before it registered, and
// registers no more.
var errStoppedUnregistered = errors.New("components: consumer stopped before it registered")

func (c *Consumer) registerOnce(ctx context.Context, opts []registry.Option) error {
	c.mu.Lock()
	stopped := c.stopped
	c.mu.Unlock()
	if stopped {
		return errStoppedUnregistered
	}
	rctx, cancel := context.WithTimeout(ctx, registerTimeout)
	defer cancel()
	if c.cfg.createGroup {
		created, err := registry.CreateGroup(rctx, c.cli, c.cfg.service, c.cfg.group, c.id, opts...)
		if err != nil {
			return err
		}
		if created {
			c.log.Info("consumer group declared", "key", registry.GroupKey(c.cfg.prefix, c.cfg.service, c.cfg.group))
		}
	}
	reg, err := registry.RegisterConsumer(rctx, c.cli, c.cfg.service, c.cfg.group, c.id, opts...)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return errors.Join(reg.Close(rctx), ErrClosed)
	}
	c.reg, c.epoch = reg, reg.Epoch()
	if c.stopped {
		// It stopped while it registered, and stop found no
		// registration to mark: it gives up its share now.
		c.leaveStoppedLocked(reg, true)
	}
	c.mu.Unlock()
	c.log.Info("consumer registered", "key", reg.Key(), "epoch", reg.Epoch())
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		select {
		case <-reg.Replaced():
			c.stop(fmt.Errorf("%w: %s", ErrReplaced, reg.Key()))
		case <-c.ctx.Done():
		}
	}()
	return nil
}

// Close drains the consumer: it marks its registration draining (the
// group's other consumers own its keys from then on), tells every
// intermediate it leaves, finishes and acknowledges the messages in hand,
// closes its streams, removes its registration and stops. It returns an
// error when ctx ended first (the handlers' context is then canceled);
// it gives the registration's removal 250 ms past ctx at most
// (registry.CleanupGrace), and a key it could not remove lapses with its
// lease. Close is safe to call twice.
func (c *Consumer) Close(ctx context.Context) error {
	// Closing is set before the registration is marked draining: from
	// that mark on the intermediates hand what this consumer has not
	// answered to the group's other consumers, and a message queued from a
	// stream that has ended must not reach the handler after it. Leaving
	// is set after the mark: until then the consumer still owns its
	// messages, and a link whose stream broke opens another, on which the
	// intermediate sends again what was not answered, to be answered
	// there.
	c.mu.Lock()
	reg := c.reg
	c.closing = true
	if c.stopMark != nil {
		c.stopMark()
	}
	c.mu.Unlock()
	if reg != nil {
		sctx, cancel := context.WithTimeout(ctx, registerTimeout)
		err := reg.SetDraining(sctx)
		cancel()
		if err != nil && !errors.Is(err, registry.ErrReplaced) && !errors.Is(err, registry.ErrClosed) {
			c.log.Warn("mark registration draining", "err", err)
		}
	}
	c.mu.Lock()
	c.leaving = true
	c.leaveStreamsLocked()
	for _, l := range c.links {
		l.retired = true
	}
	c.mu.Unlock()
	c.watchCancel()
	var waitErr error
	for {
		c.mu.Lock()
		done := len(c.streams) == 0 && c.pending == 0
		c.mu.Unlock()
		if done {
			break
		}
		select {
		case <-c.changed:
			continue
		case <-ctx.Done():
			waitErr = fmt.Errorf("components: consumer close: %w", ctx.Err())
		case <-c.ctx.Done():
		}
		break
	}
	c.closeOnce.Do(func() {
		c.cancel()
		c.wg.Wait()
		if c.reg != nil {
			// Within ctx and registry.CleanupGrace after it: a key not
			// removed lapses with its lease, marked draining if the mark
			// was written.
			rctx, cancel := ctxgrace.WithGrace(ctx, registerTimeout, registry.CleanupGrace)
			if err := c.reg.Close(rctx); err != nil {
				c.log.Warn("remove registration", "err", err)
			}
			cancel()
		}
		if err := c.conn.Close(); err != nil {
			c.log.Debug("close connection", "err", err)
		}
		c.metrics.Close()
		c.closeErr = waitErr
		c.log.Info("consumer closed", "delivered", c.delivered.Load(), "duplicates", c.dups.Load(), "nacked", c.nacked.Load(), "left_unanswered", c.unanswered.Load())
	})
	return c.closeErr
}
