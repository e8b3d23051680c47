package components

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/seqrange"
	"github.com/butterfly-mesh/butterfly/registry"
)

// subLink is a consumer's link (see link.go): it keeps one subscribe
// stream open to one incarnation of an instance.
type subLink struct {
	link
	c *Consumer

	// Guarded by Consumer.mu.
	stream *subStream
	prev   *subLink // the link this one replaced when the instance moved, until this one is welcomed
	// cutSince is when the link last had no welcomed stream while others
	// did, zero while it has one; cutSaid when that was last warned of.
	cutSince, cutSaid time.Time
}

// subStream is one open subscribe stream.
type subStream struct {
	streamLife
	link *subLink

	// Guarded by Consumer.mu.
	welcomed    bool
	dead        bool
	retireBy    time.Time // when set: the end of the grace of a retired stream
	retireWhy   string    // why it was retired, for the warning when its grace ends
	acks        []uint64
	nacks       []*messagev1.Nack
	credit      uint32
	inHand      int  // deliveries received and not answered
	drainWanted bool // the consumer leaves: send SubscribeDrain
	drainSent   bool
	closeSent   bool
}

// welcomeWait bounds how long a stream waits for its welcome before it is
// counted as silent. It is longer than an intermediate's own wait for the
// consumer's registration (two seconds), so that the refusal it then sends
// (a group not declared, a registration it never saw) arrives.
const welcomeWait = 3 * time.Second

// welcomeInterval is the peer interval a stream is given until its
// welcome: heartbeatMisses of it make welcomeWait, or the consumer's own
// heartbeat if that is longer.
func (c *Consumer) welcomeInterval() time.Duration {
	return max(c.cfg.heartbeat, welcomeWait/heartbeatMisses)
}

// reconcile follows the membership: one link per instance, draining ones
// included, since they still deliver what they hold. A moved instance gets a
// new link; the old one keeps its stream until that ends, or until
// retireGraceBeats heartbeat intervals after the new one was welcomed. The
// stream of an instance gone from the membership gets the same grace from
// then: an old process that cannot reach etcd would hold it forever. A
// consumer that stopped on its own opens no stream to an instance that
// joins or moves: it takes nothing more.
func (c *Consumer) reconcile(v registry.View) {
	c.mu.Lock()
	c.viewed = true
	if c.leaving || c.stopped || c.ctx.Err() != nil {
		c.mu.Unlock()
		return
	}
	reconcileLinks(c.links, v, linkHooks[*subLink]{
		start: func(inst registry.Instance) *subLink {
			l := &subLink{c: c}
			l.init(c.ctx, inst, c.log)
			c.wg.Add(1)
			go l.run()
			return l
		},
		moved: func(old, nl *subLink) {
			c.log.Info("instance moved", "instance", nl.inst.Name, "addr", nl.inst.Addr, "epoch", nl.inst.Metadata.Epoch)
			c.retireLocked(old)
			nl.prev = old
		},
		drop: func(l *subLink, _ bool) { // only gone: every instance is wanted
			c.retireLocked(l)
			c.endRetiredLocked(l, time.Now().Add(c.retireGrace()), "its instance left the registry")
		},
	})
	// The instances that took it may be gone, and those left refused it.
	refused := allRefused(c.links)
	c.mu.Unlock()
	if refused != nil {
		c.stopRefused(refused)
	}
}

// retireGrace is how long a retired stream may still deliver.
func (c *Consumer) retireGrace() time.Duration {
	return retireGraceBeats * c.cfg.heartbeat
}

// endRetiredLocked sets when the watchdog cancels the streams of retired
// link l and of the links it replaced, if they are still open by then.
func (c *Consumer) endRetiredLocked(l *subLink, by time.Time, why string) {
	for l != nil {
		if st := l.stream; st != nil && !st.dead && st.retireBy.IsZero() {
			st.retireBy, st.retireWhy = by, why
		}
		prev := l.prev
		l.prev = nil
		l = prev
	}
}

// retireLocked stops a link from reopening its stream; an open stream runs
// until the intermediate ends it, it misses its heartbeats or its grace runs
// out (see reconcile), so that what the instance still delivers is handled
// and acknowledged.
func (c *Consumer) retireLocked(l *subLink) {
	l.retired = true
	if l.stream == nil {
		l.cancel()
	}
}

func (l *subLink) run() {
	defer l.c.wg.Done()
	l.keepOpen(&l.c.mu, func() bool { return l.retired || l.c.leaving }, l.once)
}

// once opens one stream and runs it until it ends; it reports whether the
// stream was welcomed.
func (l *subLink) once() (welcomed bool) {
	c := l.c
	ctx, cancel := context.WithCancelCause(l.ctx)
	st := &subStream{link: l}
	st.init(cancel, c.welcomeInterval())
	c.mu.Lock()
	if c.leaving || l.retired {
		c.mu.Unlock()
		cancel(nil)
		return false
	}
	epoch := c.epoch
	l.stream = st
	c.streams[st] = struct{}{}
	c.mu.Unlock()

	var sender sync.WaitGroup
	defer func() {
		cancel(nil)
		sender.Wait()
		c.mu.Lock()
		st.dead = true
		st.acks, st.nacks = nil, nil
		delete(c.streams, st)
		if l.stream == st {
			l.stream = nil
		}
		c.mu.Unlock()
		c.poke()
	}()
	log := l.log

	hello := &deliveryv1.SubscribeHello{
		ConsumerId:          c.id,
		Group:               c.cfg.group,
		Instance:            l.inst.Name,
		HeartbeatIntervalMs: uint32(max(c.cfg.heartbeat/time.Millisecond, 1)),
		// The credit goes in a Credit frame once the welcome stated the
		// intermediate's max_credit, which it may not exceed.
		InitialCredit:     0,
		RegistrationEpoch: epoch,
		MaxReceiveBytes:   uint32(c.cfg.maxRecv),
	}
	stream, w, failed := handshake(ctx, &l.link, "subscribe", &st.streamLife, c.cfg.heartbeat,
		func(ctx context.Context) (deliveryv1.SubscribeService_SubscribeClient, error) {
			return c.client.Subscribe(pin(ctx, l.inst), grpc.MaxCallRecvMsgSize(c.cfg.maxRecv))
		},
		&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Hello{Hello: hello}},
		func(r *deliveryv1.SubscribeResponse) (*deliveryv1.SubscribeWelcome, bool) {
			w := r.GetWelcome()
			return w, w != nil
		})
	if failed != nil {
		// Recorded for the "answers" warning; a refusal that retrying
		// cannot mend stops the consumer.
		l.noteFailure(ctx, &c.mu, failed, fmt.Sprintf("no welcome within %v", heartbeatMisses*c.welcomeInterval()))
		if err := failed.refusal(); err != nil {
			if failed.step == stepWelcome {
				c.refused(err) // the group deleted, the id taken over
			}
			c.refusedAtOpen(l, err)
		}
		return false
	}
	credit := c.initialCredit(w.GetMaxCredit())
	c.mu.Lock()
	st.welcomed = true
	l.welcomedLocked()
	if prev := l.prev; prev != nil {
		l.prev = nil
		c.endRetiredLocked(prev, time.Now().Add(c.retireGrace()), "its instance moved, and the new incarnation welcomed this consumer")
	}
	st.credit += credit // the sender's first frame
	c.mu.Unlock()
	log.Debug("subscribe stream open")

	beat := beatInterval(c.cfg.heartbeat, w.GetPeerHeartbeatIntervalMs())
	maxAck, ackCredit := int(w.GetMaxAckRanges()), w.GetAckCredit()
	sender.Add(1)
	go func() {
		defer sender.Done()
		if err := st.sendLoop(ctx, stream, beat, maxAck, ackCredit); err != nil {
			cancel(err)
		}
	}()
	for {
		resp, err := stream.Recv()
		if err != nil {
			c.refused(err)
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				err = cause
			}
			log.Debug("subscribe stream ended", "err", err)
			return true
		}
		st.touch()
		switch k := resp.GetKind().(type) {
		case *deliveryv1.SubscribeResponse_Batch:
			c.receive(st, k.Batch)
		case *deliveryv1.SubscribeResponse_Drain:
			log.Info("instance drains", "reason", k.Drain.GetReason().String())
			c.mu.Lock()
			l.retired = true
			c.mu.Unlock()
		case *deliveryv1.SubscribeResponse_Heartbeat, *deliveryv1.SubscribeResponse_Welcome:
		}
	}
}

// initialCredit is the credit a new stream grants: the configured credit,
// capped at the max_credit the welcome states (0: none stated). The first
// cap is logged.
func (c *Consumer) initialCredit(maxCredit uint32) uint32 {
	credit := uint32(c.cfg.credit)
	if maxCredit == 0 || credit <= maxCredit {
		return credit
	}
	c.creditCapOnce.Do(func() {
		c.log.Warn("credit capped at the intermediate's max_credit", "credit", credit, "max_credit", maxCredit)
	})
	return maxCredit
}

// ackLinger is how long acknowledgements wait for more while other messages
// of their stream are still in hand, unless ackFlush of them are ready:
// frames of many acknowledgements cost the consumer, the intermediate and
// the producer far less than one frame per message. It delays
// acknowledgements, never deliveries, and each of them by one linger at
// most. On a process with nothing else to do the runtime's timers fire to
// the millisecond, so the wait is then about a millisecond; under load it
// is the 200 µs asked for.
const (
	ackLinger = 200 * time.Microsecond
	ackFlush  = 64
)

// sendLoop sends acknowledgements (in frames of at most maxAck ranges and
// nacks, 0 for no limit), credit (in the last of them when the intermediate
// takes it there, ackCredit; in a Credit frame otherwise), the drain and
// heartbeats (every beat).
// Once the consumer drains and everything in hand is answered, it closes its
// side of the stream and the intermediate ends it.
func (st *subStream) sendLoop(ctx context.Context, stream deliveryv1.SubscribeService_SubscribeClient, beat time.Duration, maxAck int, ackCredit bool) error {
	c := st.link.c
	ticker := time.NewTicker(beat)
	defer ticker.Stop()
	linger := time.NewTimer(ackLinger)
	linger.Stop()
	defer linger.Stop()
	lingered := false
	var sentAt time.Time // the last frame: a heartbeat is due only when it is half a beat old
	for {
		c.mu.Lock()
		if !lingered && len(st.acks) > 0 && len(st.acks) < ackFlush && len(st.nacks) == 0 && st.inHand > 0 && !st.drainWanted {
			// More of the stream's messages are in hand and will be
			// answered soon: one frame for them all, not one each.
			c.mu.Unlock()
			lingered = true
			linger.Reset(ackLinger)
			select {
			case <-ctx.Done():
				return nil
			case <-linger.C:
			}
			continue
		}
		lingered = false
		acks, nacks, credit := st.acks, st.nacks, st.credit
		st.acks, st.nacks, st.credit = nil, nil, 0
		leaving := st.drainWanted
		drain := st.drainWanted && !st.drainSent
		if drain {
			st.drainSent = true
		}
		closeNow := st.drainSent && !drain && !st.closeSent && st.inHand == 0 && len(acks) == 0 && len(nacks) == 0
		if closeNow {
			st.closeSent = true
		}
		closed := st.closeSent && !closeNow
		c.mu.Unlock()
		frames := ackFrames(seqrange.Build(acks), nacks, maxAck)
		if ackCredit && credit > 0 && !leaving && len(frames) > 0 {
			// The credit the answered deliveries free rides with them.
			frames[len(frames)-1].Credit, credit = credit, 0
		}
		for _, a := range frames {
			if err := stream.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Ack{Ack: a}}); err != nil {
				return fmt.Errorf("send ack: %w", err)
			}
			sentAt = time.Now()
		}
		if credit > 0 && !leaving {
			if err := stream.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Credit{Credit: &deliveryv1.Credit{Messages: credit}}}); err != nil {
				return fmt.Errorf("send credit: %w", err)
			}
			sentAt = time.Now()
		}
		if drain {
			d := &deliveryv1.SubscribeDrain{Reason: messagev1.DrainReason_DRAIN_REASON_SHUTDOWN}
			if err := stream.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Drain{Drain: d}}); err != nil {
				return fmt.Errorf("send drain: %w", err)
			}
			continue
		}
		if closeNow {
			if err := stream.CloseSend(); err != nil {
				return fmt.Errorf("close send: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-st.wake:
		case <-ticker.C:
			if closed || closeNow {
				continue
			}
			if time.Since(sentAt) < beat/2 {
				continue
			}
			hb := &messagev1.Heartbeat{SendTimeUnixNano: time.Now().UnixNano()}
			if err := stream.Send(&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Heartbeat{Heartbeat: hb}}); err != nil {
				return fmt.Errorf("send heartbeat: %w", err)
			}
		}
	}
}

// watchdog cancels every stream on which nothing arrived for
// heartbeatMisses of the peer's intervals, and every retired stream whose
// grace ran out.
func (c *Consumer) watchdog(ctx context.Context) {
	defer c.wg.Done()
	everyBeat(ctx, c.cfg.heartbeat, func(now time.Time) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for st := range c.streams {
			switch {
			case st.expired(now) && !st.welcomed:
				// Said with the others in idleLocked's warning.
				c.log.Debug("no welcome in time", "instance", st.link.inst.Name, "wait", heartbeatMisses*c.welcomeInterval())
				st.cancel(errHeartbeat)
			case st.expired(now):
				st.link.log.Warn("stream missed its heartbeats")
				st.cancel(errHeartbeat)
			case !st.retireBy.IsZero() && now.After(st.retireBy):
				c.log.Warn("retired stream outlived its grace", "instance", st.link.inst.Name, "addr", st.link.inst.Addr, "retired", st.retireWhy, "in_hand", st.inHand)
				st.cancel(errGrace)
				st.retireBy = time.Time{}
			}
		}
		c.idleLocked(now)
		c.cutLocked(now)
	})
}

// cutLocked warns, while the consumer receives from some instances, of each
// registered one it has no welcomed stream to (cut off from it, or refused
// by it), after idleLogAfter and then every waitingLogEvery: what that
// instance routes to this consumer goes back to the producers, and around
// through the others, which an operator should know of. It says when the
// stream is open again. idleLocked speaks while no stream is open at all.
func (c *Consumer) cutLocked(now time.Time) {
	open := make(map[*subLink]bool, len(c.streams))
	for st := range c.streams {
		if st.welcomed && !st.dead {
			open[st.link] = true
		}
	}
	for _, l := range c.links {
		switch {
		case open[l] || c.stopped || c.closing || l.retired:
			if !l.cutSaid.IsZero() && open[l] {
				l.log.Info("stream open again", "cut_for", now.Sub(l.cutSince).Round(time.Millisecond))
			}
			l.cutSince, l.cutSaid = time.Time{}, time.Time{}
		case len(open) == 0:
			// idleLocked's to say.
		case l.cutSince.IsZero():
			l.cutSince = now
		case now.Sub(l.cutSince) >= idleLogAfter && now.Sub(l.cutSaid) >= waitingLogEvery:
			l.cutSaid = now
			l.log.Warn("no stream to this instance (waiting): what it routes to this consumer goes back to the producers, and around through the other instances", "since", l.cutSince.Format(time.RFC3339), "error", l.failure)
		}
	}
}

// refused stops the consumer when an intermediate ended a stream for good:
// the group was deleted or another process took the id over. Refusals of
// the hello are refusedAtOpen's. Other errors (a registration on its way, a
// broken connection) are retried.
func (c *Consumer) refused(err error) {
	switch butterfly.RefusalReason(err) {
	case butterfly.ReasonGroupDeleted:
		c.stop(fmt.Errorf("%w: %s/%s: %v", ErrGroupDeleted, c.cfg.service, c.cfg.group, status.Convert(err).Message()))
	case butterfly.ReasonConsumerReplaced:
		c.stop(fmt.Errorf("%w: %v", ErrReplaced, status.Convert(err).Message()))
	}
}

// ackFrameBytes bounds the encoded size of one acknowledgement frame,
// below any intermediate's receive limit (2 × max-batch-bytes + 64 KiB): a
// frame over it ends the stream, and the deliveries it answered come again.
// Nacks are what make frames large: each may carry a detail of up to
// butterfly.MaxNackDetail bytes.
const ackFrameBytes = 60 << 10

// ackEntryOverhead is what an entry adds to its own encoded size in a frame,
// at most: its tag and length.
const ackEntryOverhead = 6

// ackFrames splits acknowledged ranges and nacks into DeliveryAck frames of
// at most max entries together (0: no count limit), as the intermediate's
// welcome asks (max_ack_ranges), and of at most ackFrameBytes encoded. It
// returns none when there is nothing to answer.
func ackFrames(ranges []*messagev1.SeqRange, nacks []*messagev1.Nack, max int) []*deliveryv1.DeliveryAck {
	if len(ranges) == 0 && len(nacks) == 0 {
		return nil
	}
	if max <= 0 {
		max = math.MaxInt
	}
	bytes := 0
	for _, r := range ranges {
		bytes += r.SizeVT() + ackEntryOverhead
	}
	for _, n := range nacks {
		bytes += n.SizeVT() + ackEntryOverhead
	}
	if len(ranges)+len(nacks) <= max && bytes <= ackFrameBytes {
		return []*deliveryv1.DeliveryAck{{Acked: ranges, Nacked: nacks}}
	}
	var (
		out   []*deliveryv1.DeliveryAck
		a     = &deliveryv1.DeliveryAck{}
		n, sz int
	)
	// room makes a new frame when the next entry, of size e, does not fit.
	room := func(e int) {
		if n > 0 && (n >= max || sz+e > ackFrameBytes) {
			out = append(out, a)
			a, n, sz = &deliveryv1.DeliveryAck{}, 0, 0
		}
		n, sz = n+1, sz+e
	}
	for _, r := range ranges {
		room(r.SizeVT() + ackEntryOverhead)
		a.Acked = append(a.Acked, r)
	}
	for _, k := range nacks {
		room(k.SizeVT() + ackEntryOverhead)
		a.Nacked = append(a.Nacked, k)
	}
	return append(out, a)
}
