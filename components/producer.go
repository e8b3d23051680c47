package components

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/registry"
)

// Producer sends messages through every live intermediate of a service: one
// pinned stream per instance, each batch on the least loaded stream, every
// message kept until acknowledged end to end and sent again when its stream
// breaks, drains or moves.
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
	settled     chan struct{} // poked when unsettled reaches 0

	sent   atomic.Uint64
	acked  atomic.Uint64
	resent atomic.Uint64
	nacked atomic.Uint64

	// mu guards the fields below, the guarded fields of outMsg, pubLink and
	// pubStream. Lock order: mu is taken alone; it is never held across gRPC
	// or etcd calls or callbacks.
	mu        sync.Mutex
	closed    bool
	nextSeq   uint64
	outbox    outQueue
	links     map[string]*pubLink // current link per instance name
	streams   map[*pubStream]struct{}
	unsettled int
	failed    int
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
	conn, err := dial(cli, cfg.service, cfg.commonConfig)
	if err != nil {
		return nil, fmt.Errorf("components: producer %s: %w", id, err)
	}
	ctx, cancel := context.WithCancel(cli.Ctx())
	p := &Producer{
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
		links:       make(map[string]*pubLink),
		streams:     make(map[*pubStream]struct{}),
	}
	p.log = cfg.logger.With("producer", id, "incarnation", p.incarnation, "service", cfg.service)
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		follow(ctx, cli, cfg.service, cfg.commonConfig, p.reconcile)
	}()
	go p.watchdog(ctx)
	return p, nil
}

func (c *producerConfig) validate(cli *clientv3.Client, id string) error {
	var errs []error
	if cli == nil {
		errs = append(errs, errors.New("etcd client is nil"))
	}
	if err := registry.ValidateName("producer id", id); err != nil {
		errs = append(errs, err)
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

// Stats returns the producer's counters.
func (p *Producer) Stats() ProducerStats {
	p.mu.Lock()
	inFlight := p.unsettled
	p.mu.Unlock()
	return ProducerStats{
		Sent:     p.sent.Load(),
		Acked:    p.acked.Load(),
		Resent:   p.resent.Load(),
		Nacked:   p.nacked.Load(),
		InFlight: uint64(inFlight),
	}
}

// Send accepts msg for delivery and returns its id. Unless msg.Id is already
// set (a stage forwarding a message under its original id), it sets msg.Id to
// {producer id, incarnation, next seq}; it sets msg.CreateTimeUnixNano when
// zero. msg must not be modified afterwards. Send blocks while the window of
// unacknowledged messages is full, until ctx is done.
func (p *Producer) Send(ctx context.Context, msg *messagev1.Message) (*messagev1.MessageId, error) {
	return p.send(ctx, msg, nil)
}

// SendWait sends msg and waits until it is acknowledged end to end (nil) or
// handed back for good (a *NackError), or ctx is done.
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
	if p.isClosed() {
		return nil, ErrClosed
	}
	select {
	case p.window <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("components: send: %w", ctx.Err())
	case <-p.ctx.Done():
		return nil, ErrClosed
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.window
		return nil, ErrClosed
	}
	if msg.Id == nil {
		p.nextSeq++
		msg.Id = &messagev1.MessageId{ProducerId: p.id, Incarnation: p.incarnation, Seq: p.nextSeq}
	}
	if msg.CreateTimeUnixNano == 0 {
		msg.CreateTimeUnixNano = time.Now().UnixNano()
	}
	m := &outMsg{msg: msg, size: msgSize(msg), done: done}
	p.outbox.pushBack(m)
	p.unsettled++
	p.dispatchLocked()
	p.mu.Unlock()
	p.sent.Add(1)
	return msg.Id, nil
}

func (p *Producer) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// settleLocked ends m: acknowledged (err nil) or handed back for good.
func (p *Producer) settleLocked(m *outMsg, err error) {
	m.stream = nil
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
// A stream whose sends do not keep up (its queue is two batches deep) gets
// nothing more, so a stalled stream does not collect messages.
func (p *Producer) dispatchLocked() {
	for p.outbox.len() > 0 {
		var best *pubStream
		for st := range p.streams {
			if !st.dispatchable() {
				continue
			}
			if best == nil || len(st.unacked) < len(best.unacked) {
				best = st
			}
		}
		if best == nil {
			return
		}
		n := min(p.outbox.len(), best.maxInFlight-len(best.unacked), 2*best.maxBatch-len(best.sendq), best.maxBatch)
		for range n {
			m := p.outbox.popFront()
			best.nextSeq++
			m.stream, m.seq, m.sent = best, best.nextSeq, false
			best.unacked[m.seq] = m
			best.sendq = append(best.sendq, m)
		}
		best.wakeUp()
	}
}

// requeueLocked puts the messages of a stream that is abandoned back at the
// head of the outbox, in their order, and sends them through the others.
func (p *Producer) requeueLocked(st *pubStream) {
	if st.dead {
		return
	}
	st.dead = true
	delete(p.streams, st)
	if len(st.unacked) == 0 {
		return
	}
	back := make([]*outMsg, 0, len(st.unacked))
	for _, m := range st.unacked {
		back = append(back, m)
	}
	clear(st.unacked)
	st.sendq = nil
	slices.SortFunc(back, func(a, b *outMsg) int { return compareSeq(a.seq, b.seq) })
	resent := 0
	for _, m := range back {
		if m.sent {
			resent++
		}
		m.stream, m.seq, m.sent = nil, 0, false
	}
	p.outbox.pushFront(back)
	p.resent.Add(uint64(resent))
	p.dispatchLocked()
}

// handleAck applies a PublishAck received on st; acks from a stream already
// abandoned find nothing and are ignored.
func (p *Producer) handleAck(st *pubStream, a *deliveryv1.PublishAck) {
	type permanent struct {
		m    *outMsg
		nack *messagev1.Nack
	}
	var failed []permanent
	p.mu.Lock()
	acked := 0
	forEachInRanges(a.GetAcked(), func(seq uint64) {
		m := st.unacked[seq]
		if m == nil {
			return
		}
		delete(st.unacked, seq)
		p.settleLocked(m, nil)
		acked++
	})
	var transient []*outMsg
	for _, n := range a.GetNacked() {
		m := st.unacked[n.GetSeq()]
		if m == nil {
			continue
		}
		delete(st.unacked, n.GetSeq())
		switch n.GetReason() {
		case messagev1.NackReason_NACK_REASON_DRAINING, messagev1.NackReason_NACK_REASON_UNAVAILABLE:
			m.stream, m.seq, m.sent = nil, 0, false
			transient = append(transient, m)
		default:
			p.settleLocked(m, &NackError{ID: m.msg.GetId(), Reason: n.GetReason(), Detail: n.GetDetail()})
			failed = append(failed, permanent{m, n})
		}
	}
	if len(transient) > 0 {
		p.outbox.pushFront(transient)
		p.resent.Add(uint64(len(transient)))
	}
	p.dispatchLocked()
	p.mu.Unlock()
	p.acked.Add(uint64(acked))
	p.nacked.Add(uint64(len(failed)))
	for _, f := range failed {
		p.log.Warn("message handed back", "seq", f.m.msg.GetId().GetSeq(), "reason", f.nack.GetReason().String(), "detail", f.nack.GetDetail())
		if p.cfg.nackHandler != nil {
			p.cfg.nackHandler(f.m.msg, f.nack.GetReason(), f.nack.GetDetail())
		}
	}
}

// Close stops taking messages and waits until every message sent was
// acknowledged or handed back for good, or ctx is done; then it closes the
// streams. It returns nil only when every message was acknowledged, else a
// *CloseError. Close is safe to call twice; the second call returns the
// first call's result.
func (p *Producer) Close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	var waitErr error
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
		case <-p.ctx.Done():
		}
		break
	}
	p.closeOnce.Do(func() {
		p.cancel()
		p.wg.Wait()
		if err := p.conn.Close(); err != nil {
			p.log.Debug("close connection", "err", err)
		}
		p.mu.Lock()
		unsettled, failed := p.unsettled, p.failed
		p.mu.Unlock()
		if unsettled > 0 || failed > 0 || waitErr != nil {
			p.closeErr = &CloseError{Unacked: unsettled, Failed: failed, Err: waitErr}
		}
		p.log.Info("producer closed", "sent", p.sent.Load(), "acked", p.acked.Load(), "resent", p.resent.Load(), "nacked", p.nacked.Load(), "unacked", unsettled)
	})
	return p.closeErr
}
