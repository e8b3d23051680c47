package components

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly"
	"github.com/butterfly-mesh/butterfly/registry"
)

// The link manager both components use: a link keeps one stream open to
// one incarnation of an instance (name, address, epoch), reopening it with
// backoff until it is retired, and the links follow the membership. A
// producer's links carry publish streams (pubLink, pubStream), a
// consumer's subscribe streams (subLink, subStream). What they share is
// here: the links' reconciliation with a view, the reconnect loop, the
// handshake and its checks of the welcome, a stream's liveness and the
// watchdog's beat. What a stream carries, and how a retired one ends, is
// the role's.

// link is the part of a pubLink or subLink that the manager runs.
type link struct {
	inst   registry.Instance
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger // with the instance's name, address and epoch

	// Guarded by the owner's mutex.
	retired bool   // the instance drains, moved or left the membership, or the owner closes: do not reopen
	failure string // why its last stream ended before a welcome, "" once one is welcomed
	// notRegistered: failure is the instance refusing a consumer not
	// registered (as yet) or of a group not declared.
	notRegistered bool
	// refused is the TLS mismatch (a RefusedError) that ended its last
	// stream before a welcome, nil once one is welcomed; refusedSaid is
	// when it was last warned of.
	refused     *RefusedError
	refusedSaid time.Time
}

// lastRefusal returns the refusal for good that ended l's last stream
// before a welcome, nil when it was welcomed. The owner's mutex is held.
func (l *link) lastRefusal() *RefusedError { return l.refused }

// welcomedLocked records that l's stream was welcomed: its earlier failure
// and refusal are over. The owner's mutex is held.
func (l *link) welcomedLocked() {
	if l.refused != nil {
		l.log.Info("instance welcomes this client again", "was", l.refused.Reason)
	}
	l.failure, l.notRegistered, l.refused = "", false, nil
}

// stopsOwner judges r, a refusal for good of l's stream at its open, and
// returns the refusal its owner stops on, nil while it goes on. An
// intermediate's refusal of the client itself (ErrRefused) is the mesh's
// word on it, and stops the owner at once. A TLS mismatch is recorded on l
// and stops the owner only when every one of its links has one, since no
// instance takes it then; while another instance may, the owner goes on
// without this one, which is tried again and warned of (every
// waitingLogEvery) by who: a misconfigured replica (a certificate from
// another CA, a plaintext listener) must not stop every client of the
// mesh. mu is the owner's mutex, which guards links.
func stopsOwner[L interface{ lastRefusal() *RefusedError }](mu *sync.Mutex, links map[string]L, l *link, r *RefusedError, who string) *RefusedError {
	if !errors.Is(r, ErrTLSMismatch) {
		return r
	}
	mu.Lock()
	defer mu.Unlock()
	l.refused = r
	if r := allRefused(links); r != nil {
		return r
	}
	if now := time.Now(); now.Sub(l.refusedSaid) >= waitingLogEvery {
		l.refusedSaid = now
		l.log.Warn("TLS mismatch with this instance; "+who+" going on with the other instances, trying it again", "err", r)
	}
	return nil
}

// allRefused returns a TLS mismatch when every one of links met one at its
// last open, nil otherwise (or when there is no link).
func allRefused[L interface{ lastRefusal() *RefusedError }](links map[string]L) *RefusedError {
	var r *RefusedError
	for _, l := range links {
		if r = l.lastRefusal(); r == nil {
			return nil
		}
	}
	return r
}

// lastFailure returns why l's last stream ended before a welcome, "" when
// it was welcomed. The owner's mutex is held.
func (l *link) lastFailure() string { return l.failure }

// linkFailures returns "name: why" for each of names whose link's last
// stream ended before a welcome, for the owner's "answers" warning.
func linkFailures[L interface{ lastFailure() string }](links map[string]L, names []string) []string {
	out := make([]string, 0, len(names))
	for _, name := range names {
		if why := links[name].lastFailure(); why != "" {
			out = append(out, name+": "+why)
		}
	}
	return out
}

// init makes l a link to inst under parent, logging to log.
func (l *link) init(parent context.Context, inst registry.Instance, log *slog.Logger) {
	l.inst = inst
	l.ctx, l.cancel = context.WithCancel(parent)
	l.log = log.With("instance", inst.Name, "addr", inst.Addr, "epoch", inst.Metadata.Epoch)
}

// serves reports whether l is a link to inst's incarnation: the same
// address and epoch.
func (l *link) serves(inst registry.Instance) bool {
	return l.inst.Addr == inst.Addr && l.inst.Metadata.Epoch == inst.Metadata.Epoch
}

// keepOpen calls once until the link is retired (stopped, called with the
// owner's mutex mu held, says so) or its context ends, backing off between
// attempts; an attempt that was welcomed resets the backoff. It cancels
// the link's context when it returns.
func (l *link) keepOpen(mu *sync.Mutex, stopped func() bool, once func() (welcomed bool)) {
	defer l.cancel()
	var bo backoff
	for {
		welcomed := once()
		mu.Lock()
		stop := stopped()
		mu.Unlock()
		if stop || l.ctx.Err() != nil {
			return
		}
		if welcomed {
			bo.reset()
		}
		if !sleepCtx(l.ctx, bo.next()) {
			return
		}
	}
}

// linker is a role's link type: *pubLink or *subLink.
type linker interface {
	serves(registry.Instance) bool
}

// linkHooks is what a role does as its links follow the membership.
type linkHooks[L linker] struct {
	// want reports whether the role keeps a link to inst; nil: to every
	// instance.
	want func(inst registry.Instance) bool
	// start starts a link to inst.
	start func(inst registry.Instance) L
	// moved retires old, whose instance moved to the incarnation of nl.
	moved func(old, nl L)
	// drop retires l, whose instance is no longer wanted or, with gone,
	// left the membership.
	drop func(l L, gone bool)
}

// reconcileLinks makes links (by instance name) follow v: a link to every
// wanted instance, a new one when an instance moved (started before the
// old one is retired), none to an instance that is not wanted or gone.
func reconcileLinks[L linker](links map[string]L, v registry.View, h linkHooks[L]) {
	seen := make(map[string]bool, len(v.Instances))
	for _, inst := range v.Instances {
		seen[inst.Name] = true
		l, ok := links[inst.Name]
		if h.want != nil && !h.want(inst) {
			if ok {
				h.drop(l, false)
				delete(links, inst.Name)
			}
			continue
		}
		if ok && l.serves(inst) {
			continue
		}
		nl := h.start(inst)
		if ok {
			h.moved(l, nl)
		}
		links[inst.Name] = nl
	}
	for name, l := range links {
		if !seen[name] {
			h.drop(l, true)
			delete(links, name)
		}
	}
}

// streamLife is what a stream keeps of its peer's liveness, its cancel
// and its sender's wake-up.
type streamLife struct {
	cancel       context.CancelCauseFunc
	lastRecv     atomic.Int64 // when a frame last arrived, in Unix nanoseconds
	peerInterval atomic.Int64 // the peer's heartbeat interval, in nanoseconds
	wake         chan struct{}
}

// init starts the stream's life: heard from now, its peer held to
// interval until its welcome says otherwise.
func (s *streamLife) init(cancel context.CancelCauseFunc, interval time.Duration) {
	s.cancel = cancel
	s.wake = make(chan struct{}, 1)
	s.touch()
	s.peerInterval.Store(int64(interval))
}

// wakeUp wakes the stream's sender without blocking.
func (s *streamLife) wakeUp() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// touch records that a frame arrived.
func (s *streamLife) touch() { s.lastRecv.Store(time.Now().UnixNano()) }

// expired reports whether nothing arrived for heartbeatMisses of the
// peer's intervals.
func (s *streamLife) expired(now time.Time) bool {
	return now.UnixNano()-s.lastRecv.Load() > heartbeatMisses*s.peerInterval.Load()
}

// welcomer is a welcome as the handshake checks it: both services' welcomes
// have these fields.
type welcomer interface {
	GetInstance() string
	GetEpoch() uint64
	GetHeartbeatIntervalMs() uint32
}

// openStep is the step of a handshake that failed.
type openStep int

const (
	stepOpen    openStep = iota // opening the stream
	stepHello                   // sending the hello
	stepWelcome                 // receiving the first frame
	stepCheck                   // the first frame is not a welcome to go on with
)

// openFailure is why a handshake failed: at step, the RPC's err (nil at
// stepCheck), or why the welcome is not kept.
type openFailure struct {
	step openStep
	err  error
	why  string
}

// noteFailure records on l, under the owner's mutex mu, what f says of its
// stream that ended before its welcome (said), for the owner's "answers"
// warning.
func (l *link) noteFailure(ctx context.Context, mu *sync.Mutex, f *openFailure, silent string) {
	if why, ok := f.said(ctx, silent); ok {
		mu.Lock()
		l.failure = why
		l.notRegistered = f.step != stepCheck && butterfly.RefusalReason(f.err) == butterfly.ReasonNotRegistered
		mu.Unlock()
	}
}

// said returns what the owner's "answers" warning says of a stream that
// ended before its welcome: why the first frame was not kept, the
// intermediate's refusal or the connection's error, or silent when the
// welcome did not come in time; false when the owner ended the stream
// itself (it closes).
func (f *openFailure) said(ctx context.Context, silent string) (string, bool) {
	if f.step == stepCheck {
		return f.why, true
	}
	if cause := context.Cause(ctx); errors.Is(cause, errHeartbeat) {
		return silent, true
	} else if cause != nil && !errors.Is(cause, context.Canceled) {
		return "", false
	}
	return status.Convert(f.err).Message(), true
}

// refusal returns the RPC's error where it may be the intermediate's
// refusal or a TLS mismatch (opening the stream, receiving the first
// frame), for the role to judge; nil at the other steps (a failed Send
// says nothing: the answer comes with Recv).
func (f *openFailure) refusal() error {
	if f.step == stepOpen || f.step == stepWelcome {
		return f.err
	}
	return nil
}

// handshake opens a stream to l's instance (open pins it there), sends
// hello and waits for the welcome, which welcomeOf finds in the first
// frame. It checks that the welcome comes from l's instance and from its
// incarnation or a newer one, and holds life's peer to the welcome's
// heartbeat interval, interval when it states none. kind names the stream
// in the log ("publish", "subscribe"). It returns why it failed, or nil.
func handshake[Req, Resp any, W welcomer](ctx context.Context, l *link, kind string, life *streamLife, interval time.Duration,
	open func(context.Context) (grpc.BidiStreamingClient[Req, Resp], error), hello *Req, welcomeOf func(*Resp) (W, bool),
) (grpc.BidiStreamingClient[Req, Resp], W, *openFailure) {
	var none W
	stream, err := open(ctx)
	if err != nil {
		l.log.Debug("open "+kind+" stream", "err", err)
		return nil, none, &openFailure{step: stepOpen, err: err}
	}
	if err := stream.Send(hello); err != nil {
		l.log.Debug("send hello", "err", err)
		if errors.Is(err, io.EOF) {
			// The stream ended before the hello went (an intermediate
			// refuses a stream over its limits at once, and a busy client
			// may send after that): its status, the refusal, comes with
			// Recv (grpc.ClientStream's SendMsg).
			if _, rerr := stream.Recv(); rerr != nil {
				return nil, none, &openFailure{step: stepWelcome, err: rerr}
			}
		}
		return nil, none, &openFailure{step: stepHello, err: err}
	}
	first, err := stream.Recv()
	if err != nil {
		l.log.Debug("receive welcome", "err", err, "cause", context.Cause(ctx))
		return nil, none, &openFailure{step: stepWelcome, err: err}
	}
	life.touch()
	w, ok := welcomeOf(first)
	switch {
	case !ok:
		l.log.Warn(kind + " stream: first frame is not a welcome")
		return nil, none, &openFailure{step: stepCheck, why: "first frame is not a welcome"}
	case w.GetInstance() != l.inst.Name:
		l.log.Warn(kind+" stream reached another instance", "got", w.GetInstance())
		return nil, none, &openFailure{step: stepCheck, why: "its address answers as instance " + w.GetInstance()}
	case w.GetEpoch() < l.inst.Metadata.Epoch:
		l.log.Debug(kind+" stream reached an older incarnation", "got_epoch", w.GetEpoch())
		return nil, none, &openFailure{step: stepCheck, why: fmt.Sprintf("its address answers with epoch %d, an older incarnation than the registered %d", w.GetEpoch(), l.inst.Metadata.Epoch)}
	}
	if ms := w.GetHeartbeatIntervalMs(); ms > 0 {
		interval = time.Duration(ms) * time.Millisecond
	}
	life.peerInterval.Store(int64(interval))
	return stream, w, nil
}

// everyBeat calls check with the time every interval until ctx ends: the
// watchdog's beat.
func everyBeat(ctx context.Context, interval time.Duration, check func(now time.Time)) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			check(now)
		}
	}
}

// unreadRegistry says that etcd has not answered the read of the registry
// yet, naming its endpoints: what instances are registered is not known.
// An etcd member that accepts connections but has no leader (its cluster
// lost its quorum) answers no read.
func unreadRegistry(cli *clientv3.Client) string {
	return "etcd has not answered a read of the registry yet at " + strings.Join(cli.Endpoints(), ",") + " (no leader? a cluster that lost its quorum answers no read)"
}
