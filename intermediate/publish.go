package intermediate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/seqindex"
	"github.com/butterfly-mesh/butterfly/internal/seqrange"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/internal/vtcodec"
)

// publishService serves PublishService.
type publishService struct {
	deliveryv1.UnimplementedPublishServiceServer
	s *Server
}

var _ deliveryv1.PublishServiceServer = (*publishService)(nil)

// pubStream is one producer's publish stream.
type pubStream struct {
	streamBase
	srv         *Server
	producerID  string
	producerKey []byte      // producerID, the routing key of a message without a key
	forwards    bool        // may carry messages of other producer ids
	viewReads   int         // reads of subscription keys under way for its messages (viewcheck.go); guarded by Server.mu
	viewQueue   []*viewWait // its messages waiting for a read maxViewReads holds back, oldest first; guarded by Server.mu
	viewQueued  bool        // in its client's streams in Server.viewQueue; guarded by Server.mu
	client      string      // peerKey: reads held back by maxViewReads are shared out by client
	notForward  bool        // a stage's certificate that WithForwarders does not allow to forward
	incarnation uint64
	expectSeq   uint64 // next stream sequence number; receive goroutine only

	// Guarded by Server.mu.
	held       seqindex.Index[*held] // by stream sequence number
	inFlight   int
	heldBytes  int // bytes of held, against max-in-flight-bytes
	acks       []uint64
	nacks      []*messagev1.Nack
	nackBytes  int // what the routes in nacks hold, counted as heldBytes until sent
	noticeSent bool
	closed     bool
	received   uint64
	ackedN     uint64
	nackedN    uint64
}

// Publish serves one publish stream: a receive goroutine admits batches, a
// send goroutine sends acknowledgements, notices and heartbeats, and the
// handler itself only waits for the stream to end, so that a send blocked on
// a frozen peer never keeps the handler from returning.
func (ps *publishService) Publish(stream deliveryv1.PublishService_PublishServer) error {
	s := ps.s
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	first, err := firstFrame(s, ctx, stream.Recv)
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if err := s.checkHello(hello != nil, "producer_id", hello.GetProducerId(), hello.GetInstance()); err != nil {
		return err
	}
	// A verified client certificate binds the stream to its producer id,
	// and the messages of a producer's stream to it too; a stage forwards
	// messages under their original ids (see authz.go).
	access := s.accessOf(ctx)
	forwards, err := access.publish(hello.GetProducerId(), s.opts.forwarders)
	if err != nil {
		return err
	}
	p := &pubStream{
		srv:         s,
		forwards:    forwards,
		notForward:  !forwards && s.opts.forwarders != nil && access.id.Role == tlsutil.RoleStage,
		producerID:  hello.GetProducerId(),
		producerKey: []byte(hello.GetProducerId()),
		incarnation: hello.GetIncarnation(),
		expectSeq:   1,
		client:      peerKey(ctx),
	}
	p.init(ctx, cancel, hello.GetHeartbeatIntervalMs(), &s.opts)
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		return status.Error(codes.Unavailable, "intermediate: draining")
	}
	if !s.trackLocked(2) {
		s.mu.Unlock()
		return errStopped
	}
	s.pubs[p] = struct{}{}
	epoch := s.epoch
	s.mu.Unlock()
	log := s.log.With("producer", p.producerID, "incarnation", p.incarnation, "peer", p.peer)
	log.Debug("intermediate: publish stream opened")

	welcome := &deliveryv1.PublishWelcome{
		Instance:                s.instance,
		Epoch:                   epoch,
		HeartbeatIntervalMs:     millis(s.opts.heartbeatInterval),
		MaxBatchMessages:        uint32(s.opts.maxBatchMessages),
		MaxBatchBytes:           uint32(s.opts.maxBatchBytes),
		MaxInFlight:             uint32(s.opts.maxInFlight),
		PeerHeartbeatIntervalMs: millis(p.peerInterval),
		PeerTimeoutMs:           millis(p.peerTimeout()),
		MaxHeartbeatIntervalMs:  millis(s.opts.maxPeerHeartbeat),
	}
	go func() {
		defer s.wg.Done()
		p.sendLoop(ctx, stream, welcome)
	}()
	go func() {
		defer s.wg.Done()
		p.recvLoop(ctx, stream)
	}()
	select {
	case <-ctx.Done():
	case <-s.stopCh:
		cancel(errServerStopping)
	}
	s.mu.Lock()
	abandoned := p.held.Len()
	s.abandonLocked(p)
	if abandoned > 0 {
		s.pruneQueuesLocked()
	}
	s.mu.Unlock()
	err = endStatus(ctx)
	log.Debug("intermediate: publish stream closed", "cause", context.Cause(ctx))
	return err
}

func (p *pubStream) recvLoop(ctx context.Context, stream deliveryv1.PublishService_PublishServer) {
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errPeerClosed
			}
			p.cancel(err)
			return
		}
		p.touch()
		switch k := req.GetKind().(type) {
		case *deliveryv1.PublishRequest_Batch:
			p.busy.Store(true)
			err := p.admit(ctx, k.Batch)
			p.touch()
			p.busy.Store(false)
			if err != nil {
				p.cancel(err)
				return
			}
		case *deliveryv1.PublishRequest_Heartbeat:
		case *deliveryv1.PublishRequest_Hello:
			p.cancel(status.Error(codes.InvalidArgument, "intermediate: second hello on a publish stream"))
			return
		default:
			p.cancel(status.Error(codes.InvalidArgument, "intermediate: publish frame without a kind"))
			return
		}
	}
}

// admit validates, processes and routes one batch. A stream-level violation
// ends the stream with the returned status.
func (p *pubStream) admit(ctx context.Context, b *deliveryv1.PublishBatch) error {
	s := p.srv
	msgs := b.GetMessages()
	n := uint64(len(msgs))
	if n == 0 {
		return status.Errorf(codes.InvalidArgument, "intermediate: batch with first_seq %d has no messages", b.GetFirstSeq())
	}
	if b.GetFirstSeq() != p.expectSeq {
		return status.Errorf(codes.InvalidArgument, "intermediate: batch first_seq %d, want %d", b.GetFirstSeq(), p.expectSeq)
	}
	if !p.forwards {
		for i, m := range msgs {
			if id := m.GetId().GetProducerId(); id != p.producerID {
				why := ""
				if p.notForward {
					why = " (stage " + quote(p.producerID) + " is not among this intermediate's --forwarders)"
				}
				return status.Errorf(codes.PermissionDenied, "intermediate: message %d of the batch has producer_id %q; this stream's client certificate publishes only as %q%s", i+1, id, p.producerID, why)
			}
		}
	}
	first := p.expectSeq
	p.expectSeq += n
	s.received.Add(n)
	s.frames.publishBatches.Add(1)

	s.mu.Lock()
	p.received += n
	// What the producer has not heard back about: held, or answered in a
	// frame not yet sent. A producer within its limit never exceeds it.
	if inFlight := p.held.Len() + len(p.acks) + len(p.nacks); inFlight+len(msgs) > s.opts.maxInFlight {
		s.mu.Unlock()
		return status.Errorf(codes.ResourceExhausted, "intermediate: %d messages in flight plus a batch of %d exceed max-in-flight %d", inFlight, len(msgs), s.opts.maxInFlight)
	}
	if s.draining {
		for i := range msgs {
			p.nackLocked(first+uint64(i), messagev1.NackReason_NACK_REASON_DRAINING, "intermediate is draining")
		}
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	// Every message that may be held counts against the byte limits at its
	// envelope size, what its routes hold (routesCharge) and MessageOverhead;
	// one over max-message-bytes is handed back INVALID below and never
	// held, and so is one whose routes checkRoutes refuses, so every batch
	// fits once enough is freed.
	lim := s.opts.limits()
	// One allocation for the batch's sizes and charges, one for its held
	// messages (a slab the batch's messages share), one for the outcomes.
	sc := make([]int, 2*len(msgs))
	sizes, charges := sc[:len(msgs)], sc[len(msgs):]
	total := 0
	for i, m := range msgs {
		sizes[i] = envelopeSize(m)
		if sizes[i] <= lim.maxMessageBytes && checkRoutes(m, lim) == nil {
			charges[i] = sizes[i] + routesCharge(m) + MessageOverhead
			total += charges[i]
		}
	}
	// A batch that does not fit waits encoded, as it came (at most the
	// frame limit), not decoded: what is not yet checked (routes, headers)
	// may decode to many times its bytes, and every stream of every peer
	// may have a batch waiting. It is decoded again once it fits or is
	// handed back.
	var packed []byte
	pack := func() {
		if buf, err := b.MarshalVT(); err == nil {
			packed = buf
			clear(msgs) // b.Messages: nothing holds them decoded any more
		}
	}
	err := p.reserveBytes(ctx, total, pack)
	if packed != nil {
		// Decoded as the codec decoded the frame, it is what it was.
		again := &deliveryv1.PublishBatch{}
		derr := vtcodec.Decode(packed, again)
		if derr == nil && len(again.Messages) != len(msgs) {
			derr = fmt.Errorf("%d messages, not %d", len(again.Messages), len(msgs))
		}
		if derr != nil {
			if err == nil {
				s.mu.Lock()
				s.releaseBytesLocked(p, total)
				s.mu.Unlock()
			}
			// The stream ends, and its producer sends what it did not hear
			// back about again.
			return status.Errorf(codes.Internal, "intermediate: batch with first_seq %d, encoded while it waited for room, does not decode again: %v", first, derr)
		}
		packed = nil
		msgs = again.Messages
		b.Messages = msgs
	}
	if err != nil {
		if errors.Is(err, errOverBudget) {
			s.mu.Lock()
			for i := range msgs {
				p.nackLocked(first+uint64(i), messagev1.NackReason_NACK_REASON_UNAVAILABLE, err.Error())
			}
			s.mu.Unlock()
			return nil
		}
		return err
	}

	type outcome struct {
		h    *held
		nack *messagev1.Nack
	}
	out := make([]outcome, len(msgs))
	hs := make([]held, len(msgs))
	for i, m := range msgs {
		seq := first + uint64(i)
		if err := validateEnvelope(m, sizes[i], lim); err != nil {
			detail := fmt.Sprintf("message %d of the batch: %v", i+1, err)
			out[i].nack = &messagev1.Nack{Reason: messagev1.NackReason_NACK_REASON_INVALID, Detail: detail}
			continue
		}
		res, err := s.process(ctx, m)
		if err != nil {
			out[i].nack = &messagev1.Nack{Reason: messagev1.NackReason_NACK_REASON_PROCESSING_FAILED, Detail: butterfly.NackDetail(err.Error())}
			continue
		}
		routes := res.GetRoutes()
		res.Routes = nil // hop-local: consumers never see them
		size := sizes[i] // m without its routes, as res is when unchanged
		if res != m {
			size = res.SizeVT()
		}
		hs[i] = held{pub: p, seq: seq, msg: res, size: size, charge: charges[i], routeKey: p.routeKey(res), routes: routes}
		out[i].h = &hs[i]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.closed {
		s.releaseBytesLocked(p, total)
		return nil
	}
	if s.releaseMessages {
		for i, o := range out {
			if o.h != nil && o.h.msg != msgs[i] {
				s.released.Release(msgs[i]) // replaced: nothing reads it any more
			}
		}
	}
	slab := s.newDeliverySlabLocked(len(msgs))
	for i, o := range out {
		seq := first + uint64(i)
		switch {
		case o.nack != nil:
			s.releaseBytesLocked(p, charges[i])
			p.nackLocked(seq, o.nack.Reason, o.nack.Detail)
		case s.draining:
			s.releaseBytesLocked(p, charges[i])
			p.nackLocked(seq, messagev1.NackReason_NACK_REASON_DRAINING, "intermediate is draining")
		default:
			s.admitLocked(o.h, &slab)
		}
	}
	return nil
}

// maxAckFrameNackBytes bounds the encoded nacks of one acknowledgement
// frame (at least one nack a frame). gRPC takes a frame of any size into
// its buffers before flow control holds it back, so this is what a
// producer that stops reading its stream can make wait there outside the
// byte limits; it is also well under the 4 MiB gRPC clients receive by
// default. The rest waits in p.nacks, counted, for the next frame.
const maxAckFrameNackBytes = 1 << 20

// takeNacksLocked takes the nacks of the next acknowledgement frame, at
// most maxAckFrameNackBytes of them, and the bytes their routes are
// counted at.
func (p *pubStream) takeNacksLocked() (nacks []*messagev1.Nack, held int) {
	if len(p.nacks) == 0 {
		return nil, 0
	}
	n, size := 0, 0
	for _, nk := range p.nacks {
		size += nk.SizeVT()
		if n > 0 && size > maxAckFrameNackBytes {
			break
		}
		held += routesChargeOf(nk.GetRoutes())
		n++
	}
	nacks = p.nacks[:n:n]
	if n == len(p.nacks) {
		p.nacks = nil
	} else {
		p.nacks = p.nacks[n:]
	}
	p.nackBytes -= held
	return nacks, held
}

// nackLocked hands back a message that was never held.
func (p *pubStream) nackLocked(seq uint64, reason messagev1.NackReason, detail string) {
	p.nacks = append(p.nacks, &messagev1.Nack{Seq: seq, Reason: reason, Detail: detail})
	p.wakeUp()
}

// process runs the processor; the result keeps the message's id and its
// low-water mark, which consumers dedup by, and its routes, which are the
// intermediate's, not the processor's.
func (s *Server) process(ctx context.Context, m *messagev1.Message) (*messagev1.Message, error) {
	res, err := s.runProcessor(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.opts.processor.Name(), err)
	}
	if res == nil {
		return nil, fmt.Errorf("%s: processor returned no message", s.opts.processor.Name())
	}
	if res != m {
		butterfly.KeepIdentity(res, m)
		res.Routes = m.GetRoutes()
		// What the processor wrote goes to consumers: it must be what
		// their protobuf libraries read.
		if err := butterfly.CheckMessage(res); err != nil {
			return nil, fmt.Errorf("%s: result: %w", s.opts.processor.Name(), err)
		}
	}
	return res, nil
}

// sendLoop sends the welcome, then acknowledgements, the drain notice and
// heartbeats, until the stream ends. While the server drains it ends the
// stream once the notice is out and nothing is held or owed any more.
func (p *pubStream) sendLoop(ctx context.Context, stream deliveryv1.PublishService_PublishServer, welcome *deliveryv1.PublishWelcome) {
	s := p.srv
	if err := stream.Send(&deliveryv1.PublishResponse{Kind: &deliveryv1.PublishResponse_Welcome{Welcome: welcome}}); err != nil {
		p.cancel(err)
		return
	}
	ticker := time.NewTicker(s.opts.heartbeatInterval)
	defer ticker.Stop()
	// The acks of a frame are sent from one buffer while the next frame's
	// are gathered in the other: spare never shares an array with p.acks.
	var spare []uint64
	var sentAt time.Time // the last frame: a heartbeat is due only when it is half a beat old
	for {
		s.mu.Lock()
		var acks []uint64
		if len(p.acks) > 0 {
			acks, p.acks = p.acks, spare[:0]
		}
		nacks, nackBytes := p.takeNacksLocked()
		more := len(p.nacks) > 0
		var notice *messagev1.DrainNotice
		if s.draining && !p.noticeSent {
			notice = s.drainNotice
			p.noticeSent = true
		}
		end := s.draining && p.noticeSent && p.held.Len() == 0 && len(acks) == 0 && len(nacks) == 0 && notice == nil
		if len(acks) > 0 || len(nacks) > 0 {
			p.ackedN += uint64(len(acks))
			p.nackedN += uint64(len(nacks))
		}
		s.mu.Unlock()
		if end {
			p.cancel(errStreamEnded)
			return
		}
		if len(acks) > 0 || len(nacks) > 0 {
			s.acked.Add(uint64(len(acks)))
			s.nacked.add(nacks)
			s.frames.publishAcks.Add(1)
			ack := &deliveryv1.PublishAck{Acked: seqrange.Build(acks), Nacked: nacks}
			err := stream.Send(&deliveryv1.PublishResponse{Kind: &deliveryv1.PublishResponse_Ack{Ack: ack}})
			// The rest of p.nacks may share their array: what was sent must
			// not stay reachable through it.
			clear(nacks)
			if nackBytes > 0 {
				// Counted until Send returned: gRPC takes the frame, and the
				// next one waits in Send while the producer does not read
				// (HTTP/2 flow control).
				s.mu.Lock()
				s.releaseBytesLocked(p, nackBytes)
				s.mu.Unlock()
			}
			if err != nil {
				p.cancel(err)
				return
			}
			if len(acks) > 0 {
				spare = acks
			}
			sentAt = time.Now()
		}
		if notice != nil {
			if err := stream.Send(&deliveryv1.PublishResponse{Kind: &deliveryv1.PublishResponse_Drain{Drain: notice}}); err != nil {
				p.cancel(err)
				return
			}
			continue
		}
		if more {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-ticker.C:
			if time.Since(sentAt) < s.opts.heartbeatInterval/2 {
				continue
			}
			if err := stream.Send(&deliveryv1.PublishResponse{Kind: &deliveryv1.PublishResponse_Heartbeat{Heartbeat: heartbeat()}}); err != nil {
				p.cancel(err)
				return
			}
		}
	}
}
