package intermediate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The memory an intermediate holds for its producers is bounded in bytes as
// well as in messages: per publish stream (max-in-flight-bytes) and for the
// whole process (memory-budget), counting every held message at its size
// as received plus MessageOverhead, and the routes it carries back at what
// they hold decoded (routesCharge). A batch that does not fit waits, its
// stream reading nothing more meanwhile (HTTP/2 flow control holds its
// producer back), until acks free enough or the budget wait passes; then its messages are handed back with
// NACK_REASON_UNAVAILABLE, and the producer, which keeps them, sends them
// again. A consumer that grants no credit can therefore hold at most the
// budget, not grow the process. A batch waits encoded, at its size on the
// wire, and the routes a nack hands back stay counted until the nack is
// sent, so neither what a producer sends nor a producer that stops reading
// its stream can make what is held outside the budget outgrow it.

// errOverBudget is wrapped by the error of a batch that did not fit in time.
var errOverBudget = errors.New("over the memory budget")

// reserveBytes counts n bytes of a batch against the stream's and the
// process's byte limits, waiting up to the budget wait for room. It returns
// an error wrapping errOverBudget when there was none in time, or the
// status that ends the stream when it or the server ends first. A batch
// larger than a limit, which only its routes can make it (the limits are at
// least max-batch-bytes), fits that limit when nothing else is counted
// against it, so every batch fits once enough is freed.
//
// pack, when not nil, is called once, without the lock, before the batch
// first waits: a batch waits encoded (see admit).
func (p *pubStream) reserveBytes(ctx context.Context, n int, pack func()) error {
	s := p.srv
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if (p.heldBytes+n <= s.opts.maxInFlightBytes || p.heldBytes == 0) && (s.heldBytes+n <= s.opts.memoryBudget || s.heldBytes == 0) {
			p.heldBytes += n
			s.heldBytes += n
			return nil
		}
		if s.draining || p.closed {
			// Nothing held is waited for any more: hand the batch back.
			return fmt.Errorf("intermediate: batch of %d bytes: %w", n, errOverBudget)
		}
		if pack != nil {
			s.mu.Unlock()
			pack()
			pack = nil
			s.mu.Lock()
			continue // room may have come meanwhile
		}
		if timer == nil {
			timer = time.NewTimer(s.opts.budgetWait)
		}
		if s.bytesFreed == nil {
			s.bytesFreed = make(chan struct{})
		}
		freed := s.bytesFreed
		s.mu.Unlock()
		var err error
		select {
		case <-freed:
		case <-timer.C:
			s.mu.Lock()
			return fmt.Errorf("intermediate: batch of %d bytes does not fit: the stream holds %d of max-in-flight-bytes %d, the process %d of memory-budget %d: %w",
				n, p.heldBytes, s.opts.maxInFlightBytes, s.heldBytes, s.opts.memoryBudget, errOverBudget)
		case <-ctx.Done():
			err = status.FromContextError(ctx.Err()).Err()
		case <-s.stopCh:
			err = status.Error(codes.Unavailable, "intermediate: stopping")
		}
		s.mu.Lock()
		if err != nil {
			return err
		}
	}
}

// releaseBytesLocked gives back n bytes of p's and wakes the batches waiting
// for room.
func (s *Server) releaseBytesLocked(p *pubStream, n int) {
	if n == 0 {
		return
	}
	p.heldBytes -= n
	s.heldBytes -= n
	if s.bytesFreed != nil {
		close(s.bytesFreed)
		s.bytesFreed = nil
	}
}

// holdNackLocked counts n bytes of the routes of a nack p has not sent
// against its and the process's byte limits, without waiting: they are the
// routes the message came with and those of this intermediate's own
// groups. sendLoop gives them back once the nack is sent, abandonLocked
// when the stream ends first.
func (p *pubStream) holdNackLocked(n int) {
	p.nackBytes += n
	p.heldBytes += n
	p.srv.heldBytes += n
}

// HeldBytes returns the bytes of the messages the server holds, counted
// against the memory budget.
func (s *Server) HeldBytes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.heldBytes
}
