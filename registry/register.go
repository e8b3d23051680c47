package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/internal/ctxgrace"
)

var (
	// ErrReplaced is returned by SetDraining once another incarnation of the
	// instance took the key over.
	ErrReplaced = errors.New("registry: replaced by another incarnation")
	// ErrClosed is returned by SetDraining after Close.
	ErrClosed = errors.New("registry: registration closed")
)

// maxTxnAttempts bounds the compare-and-put retries of one write when the
// key keeps changing under it.
const maxTxnAttempts = 8

// Registration keeps one instance registered in etcd until Close. See
// Register.
type Registration struct {
	cli         *clientv3.Client
	logger      *slog.Logger
	rec         record
	key         string
	ctlKey      string // "" when the key has no control key
	ttl         int64
	callTimeout time.Duration

	replaced     chan struct{}
	replacedOnce sync.Once
	takenBy      atomic.Value // string: the value of the incarnation that took the key, once classified so
	drain        chan struct{}
	drainOnce    sync.Once
	leaseLost    chan struct{}
	lostOnce     sync.Once
	closing      atomic.Bool
	// rewrite is poked when a write of our value failed (SetDraining): the
	// keeper's session ends and its resync writes the value.
	rewrite chan struct{}

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	startRev int64  // revision of the first put; set before the goroutines start
	epoch    uint64 // set by claimLocked in Register, then fixed
	// Set by Register, then the keeper's alone: leaseTTL is the TTL etcd
	// granted lease (it may raise the one asked for), lk keeps lease alive.
	leaseTTL time.Duration
	lk       *leaseKeep

	// opMu serialises every write to the key and to the lease. It is held
	// across etcd calls, each bounded by a timeout; SetDraining waits for it
	// only as long as its context allows.
	opMu        opLock
	lease       clientv3.LeaseID
	staleLeases []clientv3.LeaseID // granted before lease; revoked once the key is on lease
	lastValue   []byte             // what our last successful write stored
	draining    bool
	drainAsked  atomic.Bool // SetDraining was called: every write marks the key draining
}

// Register puts <prefix>/services/<service>/<instance> with the value
// {Addr: addr, Metadata: ...} on a lease of the configured TTL, with an epoch
// one above the one the key holds now (or 1), and keeps it there until Close:
// the lease is kept alive, a lost lease is re-granted and the key put back, a
// deleted key is put back. A stale control key of the instance is removed in
// the same transaction. Register returns once the key is in etcd.
//
// ctx bounds Register only; the registration lives until Close.
func Register(ctx context.Context, cli *clientv3.Client, service, instance, addr string, opts ...Option) (*Registration, error) {
	o := newOptions(opts)
	for _, n := range [][2]string{{"prefix", o.prefix}, {"service", service}, {"instance", instance}} {
		if err := ValidateName(n[0], n[1]); err != nil {
			return nil, err
		}
	}
	if err := ValidateAddr(addr); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	rec := &instanceRecord{addr: addr, meta: Metadata{
		Instance: instance,
		Weight:   o.weight,
		Zone:     o.zone,
		Started:  time.Now().UTC(),
		Version:  o.version,
	}}
	return registerKey(ctx, cli, ServiceKey(o.prefix, service, instance), ControlKey(o.prefix, service, instance), rec, o,
		"registry: registered", "addr", addr)
}

// registerKey claims key for rec (see Register), logs msg with attrs and
// the lease, and starts keeping the key.
func registerKey(ctx context.Context, cli *clientv3.Client, key, ctlKey string, rec record, o options, msg string, attrs ...any) (*Registration, error) {
	r := &Registration{
		cli:         cli,
		logger:      o.logger.With("key", key),
		rec:         rec,
		key:         key,
		ctlKey:      ctlKey,
		ttl:         o.leaseTTL(),
		callTimeout: max(time.Duration(o.leaseTTL())*time.Second, 2*time.Second),
		replaced:    make(chan struct{}),
		leaseLost:   make(chan struct{}),
		drain:       make(chan struct{}),
		rewrite:     make(chan struct{}, 1),
	}
	r.opMu.Lock()
	defer r.opMu.Unlock()
	grant, err := cli.Grant(ctx, r.ttl)
	if err != nil {
		return nil, fmt.Errorf("registry: grant lease for %s: %w", key, err)
	}
	r.lease = grant.ID
	r.leaseTTL = time.Duration(grant.TTL) * time.Second
	rev, err := r.claimLocked(ctx)
	if err != nil {
		rctx, cancel := ctxgrace.WithGrace(ctx, r.callTimeout, CleanupGrace)
		defer cancel()
		if _, rerr := cli.Revoke(rctx, r.lease); rerr != nil {
			r.logger.Warn("registry: revoke lease after failed register", "err", rerr)
		}
		return nil, err
	}
	r.startRev = rev
	r.logger = r.logger.With("epoch", r.epoch)
	r.ctx, r.cancel = context.WithCancel(context.WithoutCancel(ctx))
	// Before the keeper starts: it may grant another lease.
	r.logger.Info(msg, append(attrs, "lease", leaseHex(r.lease))...)
	r.wg.Add(1)
	go r.keep()
	if ctlKey != "" {
		r.wg.Add(1)
		go r.watchControl()
	}
	return r, nil
}

// Epoch returns the epoch of this incarnation.
func (r *Registration) Epoch() uint64 { return r.epoch }

// Key returns the etcd key of the registration.
func (r *Registration) Key() string { return r.key }

// Replaced is closed when another incarnation overwrote the key (a higher
// epoch or another Addr). From then on the registration never writes or
// deletes the key again: the process should stop serving and hand back what
// it holds.
func (r *Registration) Replaced() <-chan struct{} { return r.replaced }

// LeaseLost is closed the first time the registration's lease is lost: its
// keep-alive went unanswered for the lease's TTL (etcd unreachable from
// here, or down), or etcd said the lease is gone. etcd may then have
// deleted the key, and the components that follow etcd stopped using the
// instance. The registration goes on: it grants a new lease and puts the
// key back once etcd answers. A process that must not serve without its
// lease (it cannot tell a cut from an etcd outage) stops on it.
func (r *Registration) LeaseLost() <-chan struct{} { return r.leaseLost }

// DrainRequested is closed when the instance's control key holds
// {"drain":true} (see RequestDrain).
func (r *Registration) DrainRequested() <-chan struct{} { return r.drain }

// CleanupGrace is how long clean-up on behalf of a caller whose context
// ended may still take: revoking the lease of a registration that failed,
// removing the key of a consumer that closes. A lease not revoked lapses
// with its TTL.
const CleanupGrace = 250 * time.Millisecond

// opLock is a mutex whose Lock can give up when a context ends. Its zero
// value is unlocked.
type opLock struct {
	once sync.Once
	ch   chan struct{}
}

func (l *opLock) sem() chan struct{} {
	l.once.Do(func() { l.ch = make(chan struct{}, 1) })
	return l.ch
}

// Lock waits for the lock.
func (l *opLock) Lock() { l.sem() <- struct{}{} }

// LockCtx waits for the lock until ctx ends, and returns ctx's error then.
func (l *opLock) LockCtx(ctx context.Context) error {
	select {
	case l.sem() <- struct{}{}:
		return nil
	default:
	}
	select {
	case l.sem() <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Unlock releases the lock.
func (l *opLock) Unlock() { <-l.sem() }

// SetDraining sets Metadata.draining in the key, keeping lease and epoch, if
// the key is still ours. Later re-puts keep the flag. When the write fails
// (etcd unreachable, ctx done, or another write of the key, such as the
// keeper's, held it until ctx ended), the error is returned and the
// registration still drains: its keeper writes the flag once etcd answers.
func (r *Registration) SetDraining(ctx context.Context) error {
	r.drainAsked.Store(true)
	if err := r.opMu.LockCtx(ctx); err != nil {
		select {
		case r.rewrite <- struct{}{}:
		default:
		}
		return fmt.Errorf("registry: mark draining: %w", err)
	}
	defer r.opMu.Unlock()
	if r.closing.Load() {
		return ErrClosed
	}
	if r.isReplaced() {
		return ErrReplaced
	}
	r.draining = true
	if _, err := r.writeLocked(ctx); err != nil {
		if errors.Is(err, ErrReplaced) {
			r.fence()
		} else {
			select {
			case r.rewrite <- struct{}{}:
			default:
			}
		}
		return err
	}
	r.logger.Info("registry: draining")
	return nil
}

// Close stops keeping the registration, deletes the key and the control key
// if the key is still ours, and revokes the lease. It is safe to call twice;
// the second call returns nil at once.
func (r *Registration) Close(ctx context.Context) error {
	if !r.closing.CompareAndSwap(false, true) {
		return nil
	}
	r.cancel()
	r.wg.Wait()
	r.opMu.Lock()
	defer r.opMu.Unlock()
	var errs []error
	if !r.isReplaced() {
		if err := r.removeLocked(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for _, id := range append(r.staleLeases, r.lease) {
		if _, err := r.cli.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			errs = append(errs, fmt.Errorf("registry: revoke lease %x: %w", int64(id), err))
		}
	}
	r.staleLeases = nil
	r.logger.Info("registry: closed")
	return errors.Join(errs...)
}

func (r *Registration) isReplaced() bool { return isClosed(r.replaced) }

// isClosed reports whether c is closed.
func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// fence marks the registration replaced; it never touches the key again.
func (r *Registration) fence() {
	r.replacedOnce.Do(func() {
		// The value at the key says who: an address, a host and start
		// time; a name reused by mistake shows there.
		by, _ := r.takenBy.Load().(string)
		r.logger.Warn("registry: replaced by another incarnation; no longer touching the key", "by", by)
		close(r.replaced)
	})
}

// keyState is what a value found at the key means to this registration.
type keyState int

const (
	keyOurs  keyState = iota // our epoch and address
	keyTaken                 // another incarnation: higher epoch or other address
	keyStale                 // malformed or older: ours to overwrite
)

func (r *Registration) classify(data []byte) keyState {
	claim, epoch, err := r.rec.decode(data)
	switch {
	case err != nil:
		return keyStale
	case claim != r.rec.claim() || epoch > r.epoch:
		r.takenBy.Store(string(data))
		return keyTaken
	case epoch == r.epoch:
		return keyOurs
	default:
		return keyStale
	}
}

// valueLocked returns the JSON the key should hold now.
func (r *Registration) valueLocked() ([]byte, error) {
	b, err := r.rec.encode(r.epoch, r.draining || r.drainAsked.Load())
	if err != nil {
		return nil, fmt.Errorf("registry: encode value of %s: %w", r.key, err)
	}
	return b, nil
}

// claimLocked raises the epoch over the key's current value and puts the key,
// in a transaction on the key's revision, so that of two racing incarnations
// only one wins a given epoch. It returns the revision of the put.
func (r *Registration) claimLocked(ctx context.Context) (int64, error) {
	for range maxTxnAttempts {
		get, err := r.cli.Get(ctx, r.key)
		if err != nil {
			return 0, fmt.Errorf("registry: get %s: %w", r.key, err)
		}
		cmp := clientv3.Compare(clientv3.CreateRevision(r.key), "=", 0)
		// A new incarnation's epoch is above the key's and above the
		// store's revision, which only grows: every incarnation before it
		// claimed no more than the revision its put was written at (a
		// put-back keeps its epoch), so the new one is above them all,
		// whatever became of the key in between. An incarnation whose lease
		// lapsed while it still runs (cut off from etcd) keeps streams open
		// at its epoch, and intermediates must not take them for a later
		// one's: they route by (id, epoch).
		r.epoch = uint64(max(get.Header.Revision, 0)) + 1
		if len(get.Kvs) > 0 {
			kv := get.Kvs[0]
			cmp = clientv3.Compare(clientv3.ModRevision(r.key), "=", kv.ModRevision)
			epoch := r.rec.epochOf(kv.Value)
			if epoch >= MaxEpoch {
				return 0, fmt.Errorf("registry: put %s: epoch %d of the current value is at the limit %d", r.key, epoch, uint64(MaxEpoch))
			}
			r.epoch = max(r.epoch, epoch+1)
		}
		val, err := r.valueLocked()
		if err != nil {
			return 0, err
		}
		resp, err := r.cli.Txn(ctx).If(cmp).Then(r.withControlDelete(
			clientv3.OpPut(r.key, string(val), clientv3.WithLease(r.lease)))...,
		).Commit()
		if err != nil {
			return 0, fmt.Errorf("registry: put %s: %w", r.key, err)
		}
		if resp.Succeeded {
			r.lastValue = val
			return resp.Header.Revision, nil
		}
	}
	return 0, fmt.Errorf("registry: put %s: key changed %d times in a row", r.key, maxTxnAttempts)
}

// withControlDelete returns ops followed by the deletion of the control key,
// if the registration has one.
func (r *Registration) withControlDelete(ops ...clientv3.Op) []clientv3.Op {
	if r.ctlKey != "" {
		ops = append(ops, clientv3.OpDelete(r.ctlKey))
	}
	return ops
}

// writeLocked puts the current value on the current lease if the key is
// absent, ours or stale, and returns the revision of the put. It returns
// ErrReplaced, writing nothing, if another incarnation holds the key.
func (r *Registration) writeLocked(ctx context.Context) (int64, error) {
	val, err := r.valueLocked()
	if err != nil {
		return 0, err
	}
	cmp := clientv3.Compare(clientv3.CreateRevision(r.key), "=", 0)
	if r.lastValue != nil {
		cmp = clientv3.Compare(clientv3.Value(r.key), "=", string(r.lastValue))
	}
	for range maxTxnAttempts {
		resp, err := r.cli.Txn(ctx).If(cmp).
			Then(clientv3.OpPut(r.key, string(val), clientv3.WithLease(r.lease))).
			Else(clientv3.OpGet(r.key)).Commit()
		if err != nil {
			return 0, fmt.Errorf("registry: put %s: %w", r.key, err)
		}
		if resp.Succeeded {
			r.lastValue = val
			return resp.Header.Revision, nil
		}
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			cmp = clientv3.Compare(clientv3.CreateRevision(r.key), "=", 0)
			continue
		}
		if r.classify(kvs[0].Value) == keyTaken {
			return 0, ErrReplaced
		}
		cmp = clientv3.Compare(clientv3.ModRevision(r.key), "=", kvs[0].ModRevision)
	}
	return 0, fmt.Errorf("registry: put %s: key changed %d times in a row", r.key, maxTxnAttempts)
}

// removeLocked deletes the key and the control key unless another
// incarnation holds the key.
func (r *Registration) removeLocked(ctx context.Context) error {
	cmp := clientv3.Compare(clientv3.Value(r.key), "=", string(r.lastValue))
	for range maxTxnAttempts {
		resp, err := r.cli.Txn(ctx).If(cmp).
			Then(r.withControlDelete(clientv3.OpDelete(r.key))...).
			Else(clientv3.OpGet(r.key)).Commit()
		if err != nil {
			return fmt.Errorf("registry: delete %s: %w", r.key, err)
		}
		if resp.Succeeded {
			return nil
		}
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			cmp = clientv3.Compare(clientv3.CreateRevision(r.key), "=", 0)
			continue
		}
		if r.classify(kvs[0].Value) == keyTaken {
			r.fence()
			return nil
		}
		cmp = clientv3.Compare(clientv3.ModRevision(r.key), "=", kvs[0].ModRevision)
	}
	return fmt.Errorf("registry: delete %s: key changed %d times in a row", r.key, maxTxnAttempts)
}

// isLeaseNotFound reports whether err says the lease no longer exists.
func isLeaseNotFound(err error) bool {
	return errors.Is(err, rpctypes.ErrLeaseNotFound)
}
