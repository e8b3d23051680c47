package components

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/seqindex"
	"github.com/butterfly-mesh/butterfly/registry"
)

// Causes with which a stream's context is canceled.
var (
	errHeartbeat = errors.New("components: peer missed its heartbeats")
	errDrained   = errors.New("components: instance drains")
	errRetired   = errors.New("components: stream retired")
	errGone      = errors.New("components: instance left the membership")
	errGrace     = errors.New("components: retired stream outlived its grace")
)

// Bounds on how long a retired stream stays open for the answers to what it
// carried.
const (
	// retireGraceBeats is the grace of a retired stream, in heartbeat
	// intervals, when no drain notice names a deadline: its instance moved,
	// left the membership or shows draining in the registry. 60 intervals
	// are 12s at the default interval: the default drain timeout of an
	// intermediate (10s) and the time for its last answers to arrive. A
	// producer counts it from the retirement, a consumer from the welcome of
	// the stream that replaced it.
	retireGraceBeats = 60
	// drainGraceSlack is added to a drain notice's deadline, by which the
	// intermediate has finished or handed back everything: time for its last
	// answers to arrive.
	drainGraceSlack = 2 * time.Second
	// maxDrainGrace caps the wait for a drain notice's deadline, which comes
	// from another host's clock.
	maxDrainGrace = 5 * time.Minute
)

// pubLink is a producer's link (see link.go): it keeps one publish stream
// open to one incarnation of an instance.
type pubLink struct {
	link
	p *Producer

	// Guarded by Producer.mu.
	stream *pubStream
}

// pubStream is one open publish stream.
type pubStream struct {
	streamLife
	link *pubLink

	// Guarded by Producer.mu.
	ready       bool      // welcomed
	retired     bool      // gets nothing new; ends once what it was sent is answered
	retireBy    time.Time // when retired: the end of its grace
	retireCause error     // why it was retired: errDrained, errGone or errRetired (moved)
	dead        bool      // abandoned; its messages went back to the outbox
	maxInFlight int
	maxBatch    int
	maxBytes    int
	maxMsg      int // the largest message it takes: ours, or its max_batch_bytes
	maxRoutes   int // the most bytes of routes a message sent again may carry: its max_batch_bytes
	nextSeq     uint64
	sendq       []*outMsg
	sendqBytes  int                     // the sizes of sendq's messages, added up
	unacked     seqindex.Index[*outMsg] // assigned: queued or sent, not acknowledged; by seq
	lingering   bool                    // its sender waits for its batch to fill (sendLoop); take clears it
	leftover    bool                    // the queue was not empty after the last take: its messages waited already
	queuedAt    time.Time               // when the queue's first message was queued: its linger runs from then
}

func (st *pubStream) dispatchable() bool {
	return st.ready && !st.retired && !st.dead &&
		st.unacked.Len() < st.maxInFlight && len(st.sendq) < 2*st.maxBatch
}

// batchFullLocked reports whether the stream's queue holds a full batch: as
// many messages as a batch takes, or as many bytes.
func (st *pubStream) batchFullLocked() bool {
	return len(st.sendq) >= st.maxBatch || st.sendqBytes >= st.maxBytes
}

// awaitingAckLocked reports whether a message sent on the stream waits for
// its acknowledgement: unacked holds what is queued and what was sent.
func (st *pubStream) awaitingAckLocked() bool {
	return st.unacked.Len() > len(st.sendq)
}

// reconcile follows the membership: one link per live, non-draining
// instance. A moved instance gets a new link, opened first; the old one is
// retired, like the link of an instance that drains or left: its stream
// gets nothing new but stays open for the answers to what it was sent.
func (p *Producer) reconcile(v registry.View) {
	p.mu.Lock()
	p.viewed = true
	p.draining = p.draining[:0]
	for _, inst := range v.Instances {
		if inst.Metadata.Draining {
			p.draining = append(p.draining, inst.Name)
		}
	}
	slices.Sort(p.draining)
	if p.ctx.Err() != nil || p.Err() != nil {
		p.mu.Unlock()
		return
	}
	reconcileLinks(p.links, v, linkHooks[*pubLink]{
		want:  func(inst registry.Instance) bool { return !inst.Metadata.Draining },
		start: p.startLinkLocked,
		moved: func(old, nl *pubLink) {
			p.log.Info("instance moved", "instance", nl.inst.Name, "addr", nl.inst.Addr, "epoch", nl.inst.Metadata.Epoch, "old_addr", old.inst.Addr, "old_epoch", old.inst.Metadata.Epoch)
			p.retireLinkLocked(old, errRetired)
		},
		drop: func(l *pubLink, gone bool) {
			cause := errDrained
			if gone {
				cause = errGone
			}
			p.retireLinkLocked(l, cause)
		},
	})
	// The instances that took it may be gone, and those left refused it.
	refused := allRefused(p.links)
	p.mu.Unlock()
	if refused != nil {
		p.stop(refused)
	}
}

func (p *Producer) startLinkLocked(inst registry.Instance) *pubLink {
	l := &pubLink{p: p}
	l.init(p.ctx, inst, p.log)
	p.wg.Add(1)
	go l.run()
	return l
}

// retireLinkLocked stops l from reopening its stream and retires the
// stream it has.
func (p *Producer) retireLinkLocked(l *pubLink, cause error) {
	l.retired = true
	if st := l.stream; st != nil {
		p.retireLocked(st, cause, time.Now().Add(p.retireGrace()))
		return
	}
	l.cancel()
}

// retireGrace is how long a retired stream waits for answers when no drain
// notice names a deadline.
func (p *Producer) retireGrace() time.Duration {
	return retireGraceBeats * p.cfg.heartbeat
}

// retireLocked stops dispatching to st, keeping it open for the answers to
// what it was sent: what is queued on it and not yet sent goes back to the
// outbox at once; what was sent stays assigned to it until acknowledged or
// handed back. st ends once nothing sent on it is left unanswered, or when
// the intermediate ends it, its heartbeats stop or by passes (the watchdog);
// what is left then goes back to the outbox. A stream never welcomed, or
// with nothing unanswered, ends at once. A later call changes nothing but
// the reason, to errDrained: the grace of a retired stream is set once, save
// by a drain notice.
func (p *Producer) retireLocked(st *pubStream, cause error, by time.Time) {
	if st.dead {
		return
	}
	if st.retireCause == nil || errors.Is(cause, errDrained) {
		st.retireCause = cause
	}
	if !st.retired {
		st.retired = true
		st.retireBy = by
		p.takeBackLocked(st)
		p.updateMsgLimitLocked()
	}
	if !st.ready || st.unacked.Len() == 0 {
		st.cancel(cause)
		p.requeueLocked(st)
	}
	p.dispatchLocked()
}

// takeBackLocked puts what is queued on st and not yet sent back at the
// head of the outbox. The queue holds the highest sequence numbers of st, so
// what was sent stays contiguous.
func (p *Producer) takeBackLocked(st *pubStream) {
	if len(st.sendq) == 0 {
		return
	}
	back := st.sendq
	st.sendq, st.sendqBytes = nil, 0
	for _, m := range back {
		st.unacked.Remove(m.seq)
		m.stream, m.seq, m.sent = nil, 0, false
	}
	p.outbox.pushFront(back)
}

// endIfAnsweredLocked ends a retired stream once nothing sent on it is left
// unanswered.
func (p *Producer) endIfAnsweredLocked(st *pubStream) {
	if st.retired && !st.dead && st.unacked.Len() == 0 {
		st.cancel(errRetired)
		p.requeueLocked(st)
	}
}

// updateMsgLimitLocked sets the largest message Send accepts: the message
// limit (WithMaxMessageBytes), lowered to the smallest max_batch_bytes a
// stream that takes messages was welcomed with, so that any intermediate a
// message may reach takes it.
func (p *Producer) updateMsgLimitLocked() {
	lim := p.cfg.maxMessageBytes()
	for _, st := range p.streams {
		if st.ready && !st.retired && !st.dead {
			lim = min(lim, st.maxMsg)
		}
	}
	p.msgLimit = lim
}

// drainDeadline is when a stream whose instance sent n stops waiting for
// answers: the notice's deadline plus drainGraceSlack, within maxDrainGrace
// of now; the default grace when the notice names none.
func (p *Producer) drainDeadline(n *messagev1.DrainNotice, now time.Time) time.Time {
	if n.GetDeadlineUnixNano() == 0 {
		return now.Add(p.retireGrace())
	}
	left := min(max(time.Unix(0, n.GetDeadlineUnixNano()).Sub(now), 0), maxDrainGrace)
	return now.Add(left + drainGraceSlack)
}

func (l *pubLink) run() {
	defer l.p.wg.Done()
	l.keepOpen(&l.p.mu, func() bool { return l.retired }, l.once)
}

// once opens one stream and runs it until it ends; it reports whether the
// stream was welcomed.
func (l *pubLink) once() (welcomed bool) {
	p := l.p
	ctx, cancel := context.WithCancelCause(l.ctx)
	st := &pubStream{link: l}
	st.init(cancel, p.cfg.heartbeat)
	p.mu.Lock()
	if l.retired || l.ctx.Err() != nil {
		p.mu.Unlock()
		cancel(nil)
		return false
	}
	l.stream = st
	p.addStreamLocked(st)
	p.mu.Unlock()

	var sender sync.WaitGroup
	defer func() {
		cancel(nil)
		sender.Wait()
		p.mu.Lock()
		p.requeueLocked(st)
		if l.stream == st {
			l.stream = nil
		}
		p.mu.Unlock()
	}()
	log := l.log

	hello := &deliveryv1.PublishHello{
		ProducerId:          p.id,
		Incarnation:         p.incarnation,
		Instance:            l.inst.Name,
		HeartbeatIntervalMs: uint32(max(p.cfg.heartbeat/time.Millisecond, 1)),
	}
	stream, w, failed := handshake(ctx, &l.link, "publish", &st.streamLife, p.cfg.heartbeat,
		func(ctx context.Context) (deliveryv1.PublishService_PublishClient, error) {
			return p.client.Publish(pin(ctx, l.inst))
		},
		&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: hello}},
		func(r *deliveryv1.PublishResponse) (*deliveryv1.PublishWelcome, bool) {
			w := r.GetWelcome()
			return w, w != nil
		})
	if failed != nil {
		// Recorded for the "answers" warning and Close's error: the
		// intermediate's refusal (a stream limit, say) or the
		// connection's error, or silence.
		l.noteFailure(ctx, &p.mu, failed, "no welcome in time")
		// A refusal of the hello may stop the producer (stopsOwner);
		// anything else is tried again.
		if err := failed.refusal(); err != nil {
			p.refusedAtOpen(l, err)
		}
		return false
	}
	p.mu.Lock()
	l.welcomedLocked()
	st.ready = true
	st.maxInFlight = limit(p.cfg.window, w.GetMaxInFlight())
	st.maxBatch = limit(p.cfg.batchMsgs, w.GetMaxBatchMessages())
	st.maxBytes = limit(p.cfg.batchBytes, w.GetMaxBatchBytes())
	st.maxMsg = limit(p.cfg.maxMessageBytes(), w.GetMaxBatchBytes())
	st.maxRoutes = limit(math.MaxInt32, w.GetMaxBatchBytes())
	p.updateMsgLimitLocked()
	p.dispatchLocked()
	p.mu.Unlock()
	log.Debug("publish stream open")

	beat := beatInterval(p.cfg.heartbeat, w.GetPeerHeartbeatIntervalMs())
	sender.Add(1)
	go func() {
		defer sender.Done()
		if err := st.sendLoop(ctx, stream, beat); err != nil {
			cancel(err)
		}
	}()
	for {
		resp, err := stream.Recv()
		if err != nil {
			if r := refusalAfterWelcome("producer "+p.id, l.inst.Name, l.inst.Addr, err); r != nil {
				p.stop(r)
			}
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				err = cause
			}
			log.Debug("publish stream ended", "err", err)
			return true
		}
		st.touch()
		switch k := resp.GetKind().(type) {
		case *deliveryv1.PublishResponse_Ack:
			p.handleAck(st, k.Ack)
		case *deliveryv1.PublishResponse_Drain:
			// Finish what the instance holds: nothing new goes to it, and
			// the stream stays open for its answers until it ends the
			// stream, by the notice's deadline at the latest. The
			// deadline is the instance's own word: it replaces a grace
			// set before, when the registry showed the drain first.
			log.Info("instance drains", "reason", k.Drain.GetReason().String(), "deadline", time.Unix(0, k.Drain.GetDeadlineUnixNano()))
			p.mu.Lock()
			l.retired = true
			by := p.drainDeadline(k.Drain, time.Now())
			p.retireLocked(st, errDrained, by)
			st.retireBy = by
			p.mu.Unlock()
		case *deliveryv1.PublishResponse_Heartbeat, *deliveryv1.PublishResponse_Welcome:
		}
	}
}

// limit is the smaller of ours and a positive advertised limit.
func limit(ours int, theirs uint32) int {
	if theirs > 0 && int(theirs) < ours {
		return int(theirs)
	}
	return ours
}

// sendLoop sends the stream's queued messages in batches and heartbeats
// every beat while idle. A batch that is not full goes at once when nothing
// the producer sent is waiting for its acknowledgement; otherwise it waits
// until one linger has passed since its first message was queued (however
// long the sender took to come back from the batch before), until the batch
// fills (by count or by bytes), or until nothing sent is left waiting,
// whichever comes first. So a message sent while nothing is outstanding
// pays no linger, none waits more than one, messages sent faster than they
// are acknowledged go in batches that grow with the round trip, and under
// load batches fill within the linger. The sender is woken when its
// queue gets a first message or fills (dispatchLocked), and while it
// lingers when the last message waited for is answered or taken back from
// a stream that ended (wakeLingeringLocked); it needs nothing else, and a
// wake-up for every message sent would cost a goroutine switch each.
func (st *pubStream) sendLoop(ctx context.Context, stream deliveryv1.PublishService_PublishClient, beat time.Duration) error {
	p := st.link.p
	ticker := time.NewTicker(beat)
	defer ticker.Stop()
	var linger *time.Timer
	if p.cfg.linger > 0 {
		linger = time.NewTimer(p.cfg.linger)
		defer linger.Stop()
	}
	var sentAt time.Time // the last batch: a heartbeat is due only when it is half a beat old
	tick := func() error {
		if time.Since(sentAt) < beat/2 {
			return nil
		}
		hb := &messagev1.Heartbeat{SendTimeUnixNano: time.Now().UnixNano()}
		if err := stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Heartbeat{Heartbeat: hb}}); err != nil {
			return fmt.Errorf("send heartbeat: %w", err)
		}
		return nil
	}
	for {
		p.mu.Lock()
		var left time.Duration // of the linger of the queue's first message
		if len(st.sendq) > 0 && !st.batchFullLocked() && !st.leftover && linger != nil && p.awaitingAckLocked() {
			left = p.cfg.linger - time.Since(st.queuedAt)
		}
		wait := left > 0
		st.lingering = wait
		p.mu.Unlock()
		if wait {
			// Wait for the rest of the linger, or less if the batch fills
			// or nothing is left to wait for first.
			linger.Reset(left)
		wait:
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-linger.C:
					break wait
				case <-ticker.C:
					// A linger longer than the heartbeat interval must not
					// cost the stream its deadline.
					if err := tick(); err != nil {
						return err
					}
				case <-st.wake:
					p.mu.Lock()
					done := st.batchFullLocked() || !p.awaitingAckLocked()
					p.mu.Unlock()
					if done {
						break wait
					}
				}
			}
			linger.Stop()
		}
		if batch := st.take(); batch != nil {
			if err := stream.Send(&deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: batch}}); err != nil {
				return fmt.Errorf("send batch: %w", err)
			}
			sentAt = time.Now()
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-st.wake:
		case <-ticker.C:
			if err := tick(); err != nil {
				return err
			}
		}
	}
}

// take removes the next batch from the stream's queue.
func (st *pubStream) take() *deliveryv1.PublishBatch {
	p := st.link.p
	p.mu.Lock()
	defer p.mu.Unlock()
	st.lingering = false
	if st.dead || len(st.sendq) == 0 {
		st.leftover = false
		return nil
	}
	var (
		n     int
		bytes int
	)
	for n < len(st.sendq) && n < st.maxBatch {
		m := st.sendq[n]
		if n > 0 && bytes+m.size > st.maxBytes {
			break
		}
		bytes += m.size
		n++
	}
	b := &deliveryv1.PublishBatch{FirstSeq: st.sendq[0].seq, Messages: make([]*messagev1.Message, n)}
	for i, m := range st.sendq[:n] {
		b.Messages[i] = m.msg
		m.sent = true
	}
	clear(st.sendq[:n])
	st.sendq = st.sendq[n:]
	st.sendqBytes -= bytes
	if len(st.sendq) == 0 {
		st.sendq = nil
	}
	p.dispatchLocked()
	// What is queued now was queued before this batch was taken (here or
	// in the outbox): it goes next without waiting again. A message queued
	// after an emptying take is new and may wait, however long the sender
	// took to come back for it.
	st.leftover = len(st.sendq) > 0
	return b
}

// watchdog cancels every stream on which nothing arrived for
// heartbeatMisses of the peer's intervals, and every retired stream whose
// grace ran out; their messages go back to the outbox.
func (p *Producer) watchdog(ctx context.Context) {
	defer p.wg.Done()
	everyBeat(ctx, p.cfg.heartbeat, func(now time.Time) {
		p.mu.Lock()
		defer p.mu.Unlock()
		// requeueLocked takes a stream out of p.streams: walk a copy.
		for _, st := range slices.Clone(p.streams) {
			switch {
			case st.expired(now):
				st.link.log.Warn("stream missed its heartbeats")
				st.cancel(errHeartbeat)
				p.requeueLocked(st)
			case st.retired && now.After(st.retireBy):
				p.log.Warn("retired stream outlived its grace", "instance", st.link.inst.Name, "unanswered", st.unacked.Len())
				st.cancel(errGrace)
				p.requeueLocked(st)
			}
		}
		p.idleLocked(now)
	})
}

// Field numbers of the Message fields Send may set (message.proto).
const (
	messageIDField         protowire.Number = 1
	messageCreateTimeField protowire.Number = 5
	messageLowWaterField   protowire.Number = 7
)

// msgSize is the wire size of a message, as batches count it.
func msgSize(m *messagev1.Message) int { return m.SizeVT() }
