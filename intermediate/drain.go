package intermediate

import (
	"context"
	"time"

	"github.com/butterfly-mesh/butterfly/registry"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// drain runs the drain to its end:
//
//  1. mark the registration draining (unless fenced) and send a DrainNotice on
//     every publish stream; new batches are handed back with DRAINING;
//  2. keep delivering what is held until nothing is or the timeout expires,
//     then hand the rest back with DRAINING;
//  3. let publish streams flush and end, then send a DrainNotice on every
//     subscribe stream and let those end;
//  4. remove the registration (a fenced one leaves the key alone);
//  5. GracefulStop bounded by a timer, then Stop.
//
// Stop cuts it short at any step.
func (s *Server) drain(ctx context.Context, reg *registry.Registration, req drainRequest, serveErr <-chan error) {
	if req.timeout <= 0 {
		req.timeout = s.opts.drainTimeout
	}
	fenced := req.reason == messagev1.DrainReason_DRAIN_REASON_FENCED
	deadline := time.Now().Add(req.timeout)
	s.mu.Lock()
	s.draining = true
	s.drainHeld = uint64(s.heldTotal)
	s.drainNotice = &messagev1.DrainNotice{
		Instance:         s.instance,
		Reason:           req.reason,
		DeadlineUnixNano: deadline.UnixNano(),
	}
	held := s.drainHeld
	for p := range s.pubs {
		p.wakeUp()
	}
	s.mu.Unlock()
	if req.started != nil {
		req.started <- drainStarted{held: held}
	}
	log := s.log.With("reason", req.reason.String())
	log.Info("intermediate: draining", "held", held, "timeout", req.timeout)

	if !fenced {
		sctx, cancel := context.WithTimeout(ctx, s.opts.stopTimeout)
		if err := reg.SetDraining(sctx); err != nil {
			log.Warn("intermediate: mark draining in etcd", "err", err)
		}
		cancel()
	}

	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	if !s.waitFor(timer.C, func() bool { return s.heldTotal == 0 }) {
		if s.stopped() {
			s.crash(ctx, reg, serveErr)
			return
		}
		s.mu.Lock()
		n := 0
		for p := range s.pubs {
			// finishLocked removes each from p.held: walk a copy.
			for _, h := range p.held.AppendTo(nil) {
				s.finishLocked(h, &messagev1.Nack{
					Reason: messagev1.NackReason_NACK_REASON_DRAINING,
					Detail: "intermediate drain timed out",
				})
				n++
			}
		}
		s.mu.Unlock()
		log.Warn("intermediate: drain timed out; handed messages back", "count", n)
	}

	pubFlush := time.NewTimer(defaultDrainFlushTimeout)
	defer pubFlush.Stop()
	s.waitFor(pubFlush.C, func() bool { return len(s.pubs) == 0 })
	s.mu.Lock()
	s.leaving = true
	for sub := range s.subs {
		sub.wakeUp()
	}
	s.mu.Unlock()
	subFlush := time.NewTimer(defaultDrainFlushTimeout)
	defer subFlush.Stop()
	s.waitFor(subFlush.C, func() bool { return len(s.subs) == 0 })
	if s.stopped() {
		s.crash(ctx, reg, serveErr)
		return
	}

	cctx, cancel := context.WithTimeout(ctx, s.opts.stopTimeout)
	if err := reg.Close(cctx); err != nil {
		log.Warn("intermediate: remove registration", "err", err)
	}
	cancel()

	s.endHealthWatches()
	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	grace := time.NewTimer(s.opts.stopTimeout)
	defer grace.Stop()
	select {
	case <-stopped:
	case <-grace.C:
		log.Warn("intermediate: graceful stop timed out; stopping")
		s.grpc.Stop()
		<-stopped
	case <-s.stopCh:
		s.grpc.Stop()
		<-stopped
	}
	<-serveErr //nolint:errcheck // Serve ends because of the stop above: its error says nothing more
	log.Info("intermediate: drained")
}

// waitFor waits until cond, checked under s.mu, holds; it returns false when
// expired fires first or Stop is called.
func (s *Server) waitFor(expired <-chan time.Time, cond func() bool) bool {
	for {
		s.mu.Lock()
		ok := cond()
		s.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-s.changed:
		case <-expired:
			return false
		case <-s.stopCh:
			return false
		}
	}
}

// janitor checks heartbeats and waiting messages at every heartbeat interval.
func (s *Server) janitor(ctx context.Context) {
	defer s.wg.Done()
	interval := min(s.opts.heartbeatInterval, s.opts.noConsumerTimeout/10, s.opts.ownerWait/5)
	ticker := time.NewTicker(max(interval, time.Millisecond))
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			s.mu.Lock()
			for p := range s.pubs {
				if p.expired(now) {
					p.cancel(errHeartbeat)
				}
			}
			for sub := range s.subs {
				if sub.expired(now) {
					sub.cancel(errHeartbeat)
				}
			}
			s.expireLocked(now)
			s.mu.Unlock()
		}
	}
}
