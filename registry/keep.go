package registry

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The keeper of a registration keeps its lease alive (leaseKeep: from when
// Register returns, and a lease granted again from its grant, until a new
// lease replaces it), and runs sessions: a session watches the key from the
// revision of our last write. Anything that ends a session (lost lease,
// deleted or stale key, halted watch) is followed by a resync, which
// re-grants the lease if it was lost and makes sure the key holds our
// value, then a new session. The lease is kept alive through all of it: a
// slow resync does not let it lapse, and it is lost when etcd has not
// answered its keep-alive for its TTL, whatever the keeper is doing then. A
// key taken by another incarnation ends it all: the registration is fenced.

// sessionEnd says why a session ended.
type sessionEnd int

const (
	endClosed   sessionEnd = iota // the registration is closing
	endReplaced                   // another incarnation took the key
	endResync                     // the lease, the key or the watch needs a resync
)

// leaseKeep keeps one lease alive until it is stopped or the lease is lost.
type leaseKeep struct {
	id       clientv3.LeaseID
	cancel   context.CancelFunc
	done     chan struct{} // the goroutine returned
	lost     chan struct{} // closed when the lease is lost
	lostOnce sync.Once
}

// keepLease starts keeping lease id, granted for ttl, alive.
func (r *Registration) keepLease(id clientv3.LeaseID, ttl time.Duration) *leaseKeep {
	ctx, cancel := context.WithCancel(r.ctx)
	lk := &leaseKeep{id: id, cancel: cancel, done: make(chan struct{}), lost: make(chan struct{})}
	go func() {
		defer close(lk.done)
		// A lease called lost is no longer renewed.
		defer cancel()
		ka, err := r.cli.KeepAlive(ctx, id)
		if err != nil {
			r.loseLease(lk, "the keep-alive failed: "+err.Error())
			return
		}
		// The first keep-alive has the lease's TTL to be answered, from
		// now: the grant (and Register's claim) may have taken longer, and
		// its answer says whether etcd still has the lease (one of TTL 0
		// closes ka). Each answer then gives it its TTL again. etcd expires
		// a lease a TTL after it renewed it, which is before its answer is
		// read: once the timer fires, the lease is gone or about to go.
		expiry := time.NewTimer(ttl)
		defer expiry.Stop()
		answered := func(resp *clientv3.LeaseKeepAliveResponse, ok bool) bool {
			if !ok {
				if ctx.Err() == nil {
					r.loseLease(lk, "the keep-alive stopped")
				}
				return false
			}
			expiry.Reset(time.Duration(resp.TTL) * time.Second)
			return true
		}
		for {
			select {
			case <-ctx.Done():
				return
			case resp, ok := <-ka:
				if !answered(resp, ok) {
					return
				}
			case <-expiry.C:
				// An answer read late (this goroutine kept off its core)
				// still counts.
				select {
				case resp, ok := <-ka:
					if !answered(resp, ok) {
						return
					}
					continue
				default:
				}
				r.loseLease(lk, "no answer from etcd for the lease TTL")
				return
			}
		}
	}()
	return lk
}

// stop stops keeping the lease alive and waits for its goroutine.
func (lk *leaseKeep) stop() {
	lk.cancel()
	<-lk.done
}

func (lk *leaseKeep) isLost() bool { return isClosed(lk.lost) }

// loseLease marks lk's lease lost, and LeaseLost closed: the next resync
// grants a new lease and puts the key back on it.
func (r *Registration) loseLease(lk *leaseKeep, why string) {
	lk.lostOnce.Do(func() {
		if r.ctx.Err() != nil {
			return
		}
		r.logger.Warn("registry: lease lost; granting a new one", "lease", leaseHex(lk.id), "why", why)
		close(lk.lost)
		r.lostOnce.Do(func() { close(r.leaseLost) })
	})
}

// keep owns the lease and the key for the life of the registration.
func (r *Registration) keep() {
	defer r.wg.Done()
	r.lk = r.keepLease(r.lease, r.leaseTTL)
	defer func() { r.lk.stop() }()
	bo := newBackoff(50*time.Millisecond, min(time.Second, time.Duration(r.ttl)*time.Second/3))
	rev := r.startRev
	for {
		if rev == 0 {
			if !bo.wait(r.ctx) {
				return
			}
			var err error
			rev, err = r.resync()
			switch {
			case r.ctx.Err() != nil:
				return
			case errors.Is(err, ErrReplaced):
				r.fence()
				return
			case err != nil:
				r.logger.Warn("registry: resync failed; retrying", "err", err)
				continue
			}
		}
		start := time.Now()
		end := r.session(rev)
		if time.Since(start) > bo.max {
			bo.reset()
		}
		switch end {
		case endClosed:
			return
		case endReplaced:
			r.fence()
			return
		}
		rev = 0
	}
}

// session watches the key from rev+1 until something needs the keeper's
// attention.
func (r *Registration) session(rev int64) sessionEnd {
	ctx, cancel := context.WithCancel(r.ctx)
	// clientv3's Watch returns once etcd confirmed the watch: it is opened
	// aside, so that a lost lease or a rewrite ends the session meanwhile.
	opened := make(chan clientv3.WatchChan, 1)
	go func() { opened <- r.cli.Watch(clientv3.WithRequireLeader(ctx), r.key, clientv3.WithRev(rev+1)) }()
	var wch clientv3.WatchChan
	defer func() {
		cancel()
		if wch == nil {
			<-opened
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return endClosed
		case <-r.rewrite:
			// A SetDraining whose write did not finish (etcd slow, or its
			// caller gave up): routine, the keeper writes the value.
			r.logger.Debug("registry: a write of the key did not finish; writing it again")
			return endResync
		case <-r.lk.lost:
			return endResync // which grants a new lease
		case wch = <-opened:
		case wr, ok := <-wch:
			if ctx.Err() != nil {
				return endClosed
			}
			if !ok || wr.Canceled || wr.Err() != nil {
				r.logger.Warn("registry: watch of own key halted", "err", wr.Err())
				return endResync
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					r.logger.Warn("registry: key deleted; putting it back")
					return endResync
				}
				switch r.classify(ev.Kv.Value) {
				case keyTaken:
					return endReplaced
				case keyStale:
					r.logger.Warn("registry: key overwritten with a stale value; putting ours back")
					return endResync
				case keyOurs:
					// Our claim and epoch on no lease: written by hand
					// (etcdctl put without --lease), it would outlive this
					// process, and may say what we do not (draining). On
					// another lease it is another writer's, a process with
					// our claim and epoch: putting ours back would start a
					// fight that lasts as long as both live.
					if ev.Kv.Lease == 0 {
						r.logger.Warn("registry: key rewritten without a lease; putting ours back on ours", "lease", leaseHex(r.lease))
						return endResync
					}
				}
			}
		}
	}
}

// resync grants a new lease if the old one was lost, makes sure the key
// holds our value on the current lease, and returns the revision to watch
// the key from.
func (r *Registration) resync() (int64, error) {
	r.opMu.Lock()
	defer r.opMu.Unlock()
	if r.closing.Load() {
		return 0, ErrClosed
	}
	ctx, cancel := context.WithTimeout(r.ctx, r.callTimeout)
	defer cancel()
	if r.lk.isLost() {
		if err := r.regrantLocked(ctx); err != nil {
			return 0, err
		}
	}
	rev, err := r.ensureLocked(ctx)
	if isLeaseNotFound(err) {
		r.loseLease(r.lk, "etcd has no such lease")
		if err := r.regrantLocked(ctx); err != nil {
			return 0, err
		}
		rev, err = r.ensureLocked(ctx)
	}
	if err != nil {
		return 0, err
	}
	for _, id := range r.staleLeases {
		// The key is on the current lease now; an old lease that survived
		// (leases outlive an etcd restart) holds nothing of ours.
		if _, err := r.cli.Revoke(ctx, id); err != nil && !isLeaseNotFound(err) {
			r.logger.Debug("registry: revoke old lease", "lease", leaseHex(id), "err", err)
		}
	}
	r.staleLeases = nil
	return rev, nil
}

// regrantLocked grants a new lease and keeps it alive in place of the old
// one, which the next successful resync revokes.
func (r *Registration) regrantLocked(ctx context.Context) error {
	grant, err := r.cli.Grant(ctx, r.ttl)
	if err != nil {
		return err
	}
	r.lk.stop()
	r.staleLeases = append(r.staleLeases, r.lease)
	r.lease = grant.ID
	r.leaseTTL = time.Duration(grant.TTL) * time.Second
	r.lk = r.keepLease(grant.ID, r.leaseTTL)
	r.logger.Info("registry: granted a new lease", "lease", leaseHex(grant.ID))
	return nil
}

// ensureLocked leaves the key alone if it already holds our current value on
// our current lease, and writes it otherwise.
func (r *Registration) ensureLocked(ctx context.Context) (int64, error) {
	get, err := r.cli.Get(ctx, r.key)
	if err != nil {
		return 0, err
	}
	if len(get.Kvs) > 0 {
		kv := get.Kvs[0]
		switch r.classify(kv.Value) {
		case keyTaken:
			return 0, ErrReplaced
		case keyOurs:
			want, err := r.valueLocked()
			if err != nil {
				return 0, err
			}
			if kv.Lease == int64(r.lease) && bytes.Equal(kv.Value, want) {
				r.lastValue = want
				return get.Header.Revision, nil
			}
		}
	}
	rev, err := r.writeLocked(ctx)
	if err == nil {
		r.logger.Info("registry: key put back", "lease", leaseHex(r.lease))
	}
	return rev, err
}

// leaseHex is a lease id as etcdctl prints and takes it.
func leaseHex(id clientv3.LeaseID) string { return strconv.FormatInt(int64(id), 16) }
