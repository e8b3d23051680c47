package intermediate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/registry"
)

// subscribeService serves SubscribeService.
type subscribeService struct {
	deliveryv1.UnimplementedSubscribeServiceServer
	s *Server
}

var _ deliveryv1.SubscribeServiceServer = (*subscribeService)(nil)

// subStream is one consumer's subscribe stream.
type subStream struct {
	streamBase
	srv        *Server
	consumerID string
	group      string
	epoch      uint64 // the consumer's registration epoch
	maxFrame   int    // the largest delivery batch the consumer receives, encoded

	// Guarded by Server.mu.
	credit     uint64 // unspent: at most the server's max credit
	queue      deliveryQueue
	unacked    outstanding
	nextID     uint64 // the highest delivery id sent on the stream
	draining   bool   // the consumer announced it leaves
	closed     bool
	noticeSent bool
	delivered  uint64
	ackedN     uint64
	// sending holds the messages of the batch sendLoop is encoding, each
	// counted in its held.sending, until the send returns (sentLocked).
	sending []*held
}

// Subscribe serves one subscribe stream, with the same goroutine layout as
// Publish.
func (ss *subscribeService) Subscribe(stream deliveryv1.SubscribeService_SubscribeServer) error {
	s := ss.s
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	first, err := firstFrame(s, ctx, stream.Recv)
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if err := s.checkHello(hello != nil, "consumer_id", hello.GetConsumerId(), hello.GetInstance()); err != nil {
		return err
	}
	if g := hello.GetGroup(); !utf8.ValidString(g) {
		return status.Errorf(codes.InvalidArgument, "intermediate: hello group %q is not valid UTF-8", g)
	}
	access := s.accessOf(ctx)
	if err := access.subscribe(hello.GetConsumerId()); err != nil {
		return err
	}
	sub := &subStream{
		srv:        s,
		consumerID: hello.GetConsumerId(),
		group:      hello.GetGroup(),
		epoch:      hello.GetRegistrationEpoch(),
		credit:     uint64(hello.GetInitialCredit()),
		maxFrame:   grpcDefaultMaxRecv,
		unacked:    newOutstanding(),
	}
	if n := hello.GetMaxReceiveBytes(); n != 0 {
		sub.maxFrame = int(min(n, math.MaxInt32))
	}
	if sub.credit > uint64(s.opts.maxCredit) {
		return status.Errorf(codes.ResourceExhausted, "intermediate: hello initial_credit %d exceeds max-credit %d", sub.credit, s.opts.maxCredit)
	}
	if sub.group == "" {
		sub.group = DefaultGroup
	}
	if err := s.checkRegistration(ctx, access, sub.group, sub.consumerID, sub.epoch); err != nil {
		return err
	}
	sub.init(ctx, cancel, hello.GetHeartbeatIntervalMs(), &s.opts)
	s.mu.Lock()
	if s.leaving {
		s.mu.Unlock()
		return status.Error(codes.Unavailable, "intermediate: leaving")
	}
	if !s.trackLocked(2) {
		s.mu.Unlock()
		return errStopped
	}
	s.joinLocked(sub)
	epoch := s.epoch
	s.mu.Unlock()
	log := s.log.With("consumer", sub.consumerID, "group", sub.group, "peer", sub.peer)
	log.Debug("intermediate: subscribe stream opened")

	welcome := &deliveryv1.SubscribeWelcome{
		Instance:                s.instance,
		Epoch:                   epoch,
		HeartbeatIntervalMs:     millis(s.opts.heartbeatInterval),
		PeerHeartbeatIntervalMs: millis(sub.peerInterval),
		PeerTimeoutMs:           millis(sub.peerTimeout()),
		MaxHeartbeatIntervalMs:  millis(s.opts.maxPeerHeartbeat),
		MaxCredit:               uint32(s.opts.maxCredit),
		MaxAckRanges:            maxAckRanges,
		AckCredit:               true,
	}
	go func() {
		defer s.wg.Done()
		sub.sendLoop(ctx, stream, welcome)
	}()
	go func() {
		defer s.wg.Done()
		sub.recvLoop(stream)
	}()
	select {
	case <-ctx.Done():
	case <-s.stopCh:
		cancel(errServerStopping)
	}
	s.mu.Lock()
	s.leaveLocked(sub)
	s.mu.Unlock()
	err = endStatus(ctx)
	log.Debug("intermediate: subscribe stream closed", "cause", context.Cause(ctx))
	return err
}

func (sub *subStream) recvLoop(stream deliveryv1.SubscribeService_SubscribeServer) {
	s := sub.srv
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errPeerClosed
			}
			sub.cancel(err)
			return
		}
		sub.touch()
		switch k := req.GetKind().(type) {
		case *deliveryv1.SubscribeRequest_Credit:
			if err := sub.addCredit(k.Credit.GetMessages()); err != nil {
				sub.cancel(err)
				return
			}
			sub.wakeUp()
		case *deliveryv1.SubscribeRequest_Ack:
			s.frames.deliveryAcks.Add(1)
			if err := sub.ack(k.Ack); err != nil {
				sub.cancel(err)
				return
			}
			if k.Ack.GetCredit() > 0 {
				sub.wakeUp()
			}
		case *deliveryv1.SubscribeRequest_Drain:
			s.mu.Lock()
			s.consumerDrainLocked(sub)
			s.mu.Unlock()
		case *deliveryv1.SubscribeRequest_Heartbeat:
		case *deliveryv1.SubscribeRequest_Hello:
			sub.cancel(status.Error(codes.InvalidArgument, "intermediate: second hello on a subscribe stream"))
			return
		default:
			sub.cancel(status.Error(codes.InvalidArgument, "intermediate: subscribe frame without a kind"))
			return
		}
	}
}

// addCredit adds a Credit frame's messages to the unspent credit, refusing
// an empty grant and one that would raise it above max-credit.
func (sub *subStream) addCredit(n uint32) error {
	s := sub.srv
	if n == 0 {
		return status.Error(codes.InvalidArgument, "intermediate: credit of 0 messages")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := sub.checkCreditLocked(n); err != nil {
		return err
	}
	sub.credit += uint64(n)
	return nil
}

// checkCreditLocked refuses a grant of n that would raise the unspent credit
// above max-credit.
func (sub *subStream) checkCreditLocked(n uint32) error {
	if limit := sub.srv.opts.maxCredit; sub.credit+uint64(n) > uint64(limit) {
		return status.Errorf(codes.ResourceExhausted, "intermediate: credit of %d on top of %d unspent exceeds max-credit %d", n, sub.credit, limit)
	}
	return nil
}

// ack checks a consumer's DeliveryAck and applies it, with the credit it
// grants. A malformed frame, one naming ids never sent on the stream, or one
// whose credit would exceed max-credit, is refused before anything of it is
// applied. The form is checked, and the ranges sorted, outside the lock;
// under it the frame costs O(ranges) plus the ids it settles.
func (sub *subStream) ack(a *deliveryv1.DeliveryAck) error {
	s := sub.srv
	start := time.Now()
	f, err := parseAck(a)
	if err != nil {
		sub.observeAck(start, 0)
		return err
	}
	s.mu.Lock()
	locked := time.Now()
	err = f.checkSentLocked(sub)
	if n := a.GetCredit(); err == nil && n > 0 {
		err = sub.checkCreditLocked(n)
	}
	if err == nil {
		sub.ackLocked(f)
		sub.credit += uint64(a.GetCredit())
	}
	held := time.Since(locked)
	s.mu.Unlock()
	sub.observeAck(start, held)
	return err
}

// observeAck reports the handling of one ack frame to the test hook.
func (sub *subStream) observeAck(start time.Time, held time.Duration) {
	if f := sub.srv.opts.ackObserver; f != nil {
		f(sub.consumerID, held, time.Since(start))
	}
}

// ackLocked applies a consumer's acknowledgements: a message is acknowledged
// to its producer once every group's delivery was; a nack hands it back to
// the producer at once. Ids already settled are ignored.
func (sub *subStream) ackLocked(a *ackFrame) {
	s := sub.srv
	answered := sub.ackedN
	sub.unacked.takeRanges(a.acked, func(d *delivery) {
		sub.ackedN++
		if !d.liveOn(sub) {
			return
		}
		d.acked = true
		d.h.pending--
		if d.h.pending == 0 {
			s.finishLocked(d.h, nil)
		}
	})
	for _, n := range a.nacked {
		d := sub.unacked.take(n.GetSeq())
		if d == nil {
			continue
		}
		sub.ackedN++
		if d.h.done || d.sub != sub {
			continue
		}
		s.finishLocked(d.h, &messagev1.Nack{
			Reason: messagev1.NackReason_NACK_REASON_HANDLER_FAILED,
			Detail: butterfly.NackDetail("consumer " + sub.consumerID + ": " + n.GetDetail()),
		})
	}
	s.frames.deliveryAnswers.Add(sub.ackedN - answered)
	if sub.leavingDoneLocked() {
		sub.wakeUp()
	}
}

// takeLocked moves the next batch of queued deliveries, within the credit and
// the batch limits, to the unacknowledged set and returns them.
func (sub *subStream) takeLocked() []*deliveryv1.Delivery {
	s := sub.srv
	var (
		out   []*deliveryv1.Delivery
		slab  []deliveryv1.Delivery // the batch's deliveries, one allocation
		bytes int                   // the messages' encoded bytes
		frame = batchOverhead       // the batch's encoded bytes, at most
	)
	if n := min(sub.credit, uint64(s.opts.maxBatchMessages), uint64(sub.queue.len())); n > 0 {
		out, slab = make([]*deliveryv1.Delivery, 0, n), make([]deliveryv1.Delivery, n)
	}
	for sub.credit > 0 && len(out) < s.opts.maxBatchMessages && sub.queue.len() > 0 {
		d := sub.queue.front()
		if !d.liveOn(sub) {
			sub.queue.pop()
			continue
		}
		if frame+d.h.size+deliveryOverhead > sub.maxFrame {
			if len(out) > 0 {
				break
			}
			// Alone over what the consumer receives: sent, it would end
			// the stream, and come again on every new one.
			s.finishLocked(d.h, &messagev1.Nack{
				Reason: messagev1.NackReason_NACK_REASON_INVALID,
				Detail: butterfly.NackDetail(fmt.Sprintf("message of %d bytes encoded, over the %d bytes consumer %s of group %s receives (its max_receive_bytes)", d.h.size, sub.maxFrame, sub.consumerID, sub.group)),
			})
			continue
		}
		if len(out) > 0 && bytes+d.h.size > s.opts.maxBatchBytes {
			break
		}
		sub.queue.pop()
		sub.nextID++
		d.id = sub.nextID
		d.sentTo = sub.consumerID
		sub.unacked.add(d.id, d)
		sub.credit--
		sub.delivered++
		var wd *deliveryv1.Delivery
		if len(out) < len(slab) {
			wd = &slab[len(out)]
		} else {
			wd = new(deliveryv1.Delivery)
		}
		wd.DeliveryId, wd.Message, wd.Redeliveries = d.id, d.h.msg, d.sends
		out = append(out, wd)
		d.h.sending++
		sub.sending = append(sub.sending, d.h)
		d.sends++
		bytes += d.h.size
		frame += d.h.size + deliveryOverhead
	}
	return out
}

// sentLocked lets go of the messages of the batch sendLoop sent last (or
// failed to send): gRPC encoded it before Send returned. A message done
// meanwhile is let go of now (Server.dropMessageLocked).
func (sub *subStream) sentLocked() {
	for i, h := range sub.sending {
		h.sending--
		if h.done {
			sub.srv.dropMessageLocked(h) // once no other stream sends it
		}
		sub.sending[i] = nil
	}
	sub.sending = sub.sending[:0]
}

// What a delivery batch adds to its messages' bytes, encoded, at most: the
// SubscribeResponse and DeliveryBatch around them, and each Delivery's tag,
// length, delivery_id, message tag and length, and redeliveries.
const (
	batchOverhead    = 16
	deliveryOverhead = 32
)

// grpcDefaultMaxRecv is gRPC's default receive limit, a consumer's when its
// hello states none.
const grpcDefaultMaxRecv = 4 << 20

// leavingDoneLocked reports whether the server is leaving and this stream has
// nothing more to do: the notice is out.
func (sub *subStream) leavingDoneLocked() bool {
	return sub.srv.leaving && sub.noticeSent
}

// sendLoop sends the welcome, then deliveries within credit, the drain
// notice and heartbeats, until the stream ends.
func (sub *subStream) sendLoop(ctx context.Context, stream deliveryv1.SubscribeService_SubscribeServer, welcome *deliveryv1.SubscribeWelcome) {
	s := sub.srv
	if err := stream.Send(&deliveryv1.SubscribeResponse{Kind: &deliveryv1.SubscribeResponse_Welcome{Welcome: welcome}}); err != nil {
		sub.cancel(err)
		return
	}
	ticker := time.NewTicker(s.opts.heartbeatInterval)
	defer ticker.Stop()
	var sentAt time.Time // the last frame: a heartbeat is due only when it is half a beat old
	for {
		s.mu.Lock()
		sub.sentLocked()
		var batch []*deliveryv1.Delivery
		if !sub.draining && !s.leaving {
			batch = sub.takeLocked()
		}
		var notice *messagev1.DrainNotice
		if s.leaving && !sub.noticeSent {
			notice = s.drainNotice
			sub.noticeSent = true
		}
		end := notice == nil && sub.leavingDoneLocked()
		s.mu.Unlock()
		if end {
			sub.cancel(errStreamEnded)
			return
		}
		if len(batch) > 0 {
			s.delivered.Add(uint64(len(batch)))
			s.frames.deliveryBatches.Add(1)
			if err := stream.Send(&deliveryv1.SubscribeResponse{Kind: &deliveryv1.SubscribeResponse_Batch{Batch: &deliveryv1.DeliveryBatch{Deliveries: batch}}}); err != nil {
				s.mu.Lock()
				sub.sentLocked()
				s.mu.Unlock()
				sub.cancel(err)
				return
			}
			sentAt = time.Now()
			continue
		}
		if notice != nil {
			if err := stream.Send(&deliveryv1.SubscribeResponse{Kind: &deliveryv1.SubscribeResponse_Drain{Drain: notice}}); err != nil {
				sub.cancel(err)
				return
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-sub.wake:
		case <-ticker.C:
			if time.Since(sentAt) < s.opts.heartbeatInterval/2 {
				continue
			}
			if err := stream.Send(&deliveryv1.SubscribeResponse{Kind: &deliveryv1.SubscribeResponse_Heartbeat{Heartbeat: heartbeat()}}); err != nil {
				sub.cancel(err)
				return
			}
		}
	}
}

// registrationWait bounds how long a subscribe hello waits for the
// consumer's registration to reach this server's view of etcd.
const registrationWait = 2 * time.Second

// checkRegistration refuses a subscribe stream unless its group is declared
// and its consumer registered in it with epoch, by the role of the peer's
// certificate when it has one (a stage's certificate subscribes only under
// a stage's registration, a consumer's only under a consumer's). A
// registration this server has not seen yet is waited for, up to
// registrationWait.
func (s *Server) checkRegistration(ctx context.Context, a access, group, consumer string, epoch uint64) error {
	timer := time.NewTimer(registrationWait)
	defer timer.Stop()
	meta := map[string]string{"service": s.service, "group": group, "consumer": consumer}
	if epoch == 0 {
		return refusal(butterfly.ReasonNotRegistered, meta,
			"intermediate: hello without registration_epoch: consumer %q must register at %s first", consumer, registry.ConsumerKey(s.opts.prefix, s.service, group, consumer))
	}
	for {
		s.mu.Lock()
		g := s.groups[group]
		registered, ok, role := uint64(0), false, ""
		if g != nil {
			registered, ok = g.epochs[consumer]
			role = g.roles[consumer]
		}
		declared := g != nil && g.declared
		changed := s.subsChanged
		s.mu.Unlock()
		switch {
		case ok && registered > epoch:
			return refusal(butterfly.ReasonConsumerReplaced, meta,
				"intermediate: consumer %q of group %q was taken over: registered epoch %d, this stream's %d", consumer, group, registered, epoch)
		case ok && registered == epoch && declared:
			return a.registeredAs(group, consumer, role)
		}
		select {
		case <-changed:
		case <-timer.C:
			key := registry.ConsumerKey(s.opts.prefix, s.service, group, consumer)
			if !declared {
				return refusal(butterfly.ReasonNotRegistered, meta,
					"intermediate: group %q is not declared at %s", group, registry.GroupKey(s.opts.prefix, s.service, group))
			}
			return refusal(butterfly.ReasonNotRegistered, meta,
				"intermediate: consumer %q of group %q is not registered with epoch %d at %s", consumer, group, epoch, key)
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.stopCh:
			return errServerStopping
		}
	}
}
