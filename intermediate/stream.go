package intermediate

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// Causes with which a stream's context is canceled.
var (
	// errStreamEnded ends a stream without an error: the drain is over.
	errStreamEnded = errors.New("intermediate: stream ended")
	// errPeerClosed ends a stream whose peer closed its side.
	errPeerClosed = errors.New("intermediate: peer closed the stream")
	// errServerStopping ends streams when the server stops.
	errServerStopping = status.Error(codes.Unavailable, "intermediate: server stopping")
)

// streamBase is what publish and subscribe streams share: liveness and the
// wake-up of their send goroutine.
type streamBase struct {
	peer         string
	peerInterval time.Duration // the peer's heartbeat interval
	cancel       context.CancelCauseFunc
	lastRecv     atomic.Int64 // unix nanoseconds of the last frame received
	// busy is set while the receive loop works on a frame (a publish batch
	// in the processor): the peer's heartbeats then wait unread in the
	// stream, so silence is not judged.
	busy atomic.Bool
	wake chan struct{}
}

// init sets the stream up. The peer is held to the heartbeat interval it
// declared (intervalMs; 0 for the server's own), lowered to the server's
// max-peer-heartbeat, so that no client can lift the deadline after which a
// silent stream ends.
func (b *streamBase) init(ctx context.Context, cancel context.CancelCauseFunc, intervalMs uint32, o *options) {
	b.peerInterval = min(o.heartbeatInterval, o.maxPeerHeartbeat)
	if intervalMs > 0 {
		b.peerInterval = min(time.Duration(intervalMs)*time.Millisecond, o.maxPeerHeartbeat)
	}
	b.cancel = cancel
	b.wake = make(chan struct{}, 1)
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		b.peer = p.Addr.String()
	}
	b.touch()
}

func (b *streamBase) wakeUp() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// peerTimeout is how long the stream may stay silent before it ends.
func (b *streamBase) peerTimeout() time.Duration { return heartbeatMisses * b.peerInterval }

// millis is d in whole milliseconds for a welcome.
func millis(d time.Duration) uint32 { return uint32(d / time.Millisecond) }

func (b *streamBase) touch() { b.lastRecv.Store(time.Now().UnixNano()) }

// expired reports whether nothing arrived for heartbeatMisses of the peer's
// intervals.
func (b *streamBase) expired(now time.Time) bool {
	return !b.busy.Load() && now.UnixNano()-b.lastRecv.Load() > int64(b.peerTimeout())
}

func heartbeat() *messagev1.Heartbeat {
	return &messagev1.Heartbeat{SendTimeUnixNano: time.Now().UnixNano()}
}

// firstFrame waits until the server is registered, then receives the first
// frame of a stream, giving up when nothing arrived for heartbeatMisses of
// the server's intervals. The receiving
// goroutine is owned by the server; it ends when the stream ends, which the
// handler's return causes.
func firstFrame[T any](s *Server, ctx context.Context, recv func() (*T, error)) (*T, error) {
	if err := s.waitReady(ctx); err != nil {
		return nil, err
	}
	type result struct {
		req *T
		err error
	}
	ch := make(chan result, 1)
	s.mu.Lock()
	tracked := s.trackLocked(1)
	s.mu.Unlock()
	if !tracked {
		return nil, errStopped
	}
	go func() {
		defer s.wg.Done()
		req, err := recv()
		ch <- result{req, err}
	}()
	t := time.NewTimer(heartbeatMisses * s.opts.heartbeatInterval)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.req, r.err
	case <-t.C:
		return nil, status.Error(codes.DeadlineExceeded, "intermediate: no hello received in time")
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-s.stopCh:
		return nil, errServerStopping
	}
}

// checkHello checks what every hello must: that the first frame was one
// (present), that it names its sender (the field what), and that it is meant
// for this instance when it names one.
func (s *Server) checkHello(present bool, what, sender, instance string) error {
	switch {
	case !present:
		return status.Error(codes.InvalidArgument, "intermediate: the first frame must be a hello")
	case sender == "":
		return status.Errorf(codes.InvalidArgument, "intermediate: hello without %s", what)
	case !utf8.ValidString(sender):
		return status.Errorf(codes.InvalidArgument, "intermediate: hello %s %q is not valid UTF-8", what, sender)
	case !utf8.ValidString(instance):
		return status.Errorf(codes.InvalidArgument, "intermediate: hello instance %q is not valid UTF-8", instance)
	case instance != "" && instance != s.instance:
		return status.Errorf(codes.FailedPrecondition, "intermediate: this is instance %q, not %q", s.instance, instance)
	}
	return nil
}

// waitReady waits until the server is registered, so that welcomes carry the
// epoch, and read the subscriptions, so that it routes from the first
// message.
func (s *Server) waitReady(ctx context.Context) error {
	for _, c := range []<-chan struct{}{s.ready, s.subsReady} {
		select {
		case <-c:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-s.stopCh:
			return errServerStopping
		}
	}
	return nil
}

// endStatus turns the cause that ended a stream into the handler's result.
func endStatus(ctx context.Context) error {
	cause := context.Cause(ctx)
	switch {
	case cause == nil, errors.Is(cause, errStreamEnded), errors.Is(cause, errPeerClosed), errors.Is(cause, io.EOF):
		return nil
	case errors.Is(cause, context.Canceled), errors.Is(cause, context.DeadlineExceeded):
		return status.FromContextError(cause).Err()
	}
	if _, ok := status.FromError(cause); ok {
		return cause
	}
	return status.Error(codes.Unavailable, cause.Error())
}

// deliveryQueue is a FIFO of deliveries waiting for a consumer's credit.
// It is guarded by Server.mu.
type deliveryQueue struct {
	items []*delivery
	head  int
	stale int // entries counted stale since the last prune (Server.staleLocked); may overcount
}

func (q *deliveryQueue) len() int { return len(q.items) - q.head }

func (q *deliveryQueue) push(d *delivery) { q.items = append(q.items, d) }

func (q *deliveryQueue) front() *delivery { return q.items[q.head] }

func (q *deliveryQueue) pop() {
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		q.items = q.items[:0]
		q.head, q.stale = 0, 0
	} else if q.head > 1024 && q.head*2 > len(q.items) {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items = q.items[:n]
		q.head = 0
	}
}

// drain empties the queue and returns the deliveries still meant for sub.
func (q *deliveryQueue) drain(sub *subStream) []*delivery {
	var out []*delivery
	for _, d := range q.items[q.head:] {
		if !d.h.done && d.sub == sub {
			out = append(out, d)
		}
	}
	clear(q.items)
	q.items, q.head, q.stale = nil, 0, 0
	return out
}

// errHeartbeat ends a stream on which nothing arrived for too long.
var errHeartbeat = status.Error(codes.Unavailable, "intermediate: peer missed its heartbeats")
