package registry

import (
	"bytes"
	"context"
	"errors"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// The keeper of a registration runs sessions: a session keeps the lease alive
// and watches the key from the revision of our last write. Anything that
// ends a session (lost lease, deleted or stale key, halted watch) is followed
// by a resync, which re-grants the lease if needed and makes sure the key
// holds our value, then a new session. A key taken by another incarnation
// ends it all: the registration is fenced.

// sessionEnd says why a session ended.
type sessionEnd int

const (
	endClosed    sessionEnd = iota // the registration is closing
	endReplaced                    // another incarnation took the key
	endLeaseLost                   // the keep-alive stopped: re-grant, re-put
	endResync                      // the key or the watch needs a resync
)

// keep owns the lease and the key for the life of the registration.
func (r *Registration) keep() {
	defer r.wg.Done()
	bo := newBackoff(50*time.Millisecond, min(time.Second, time.Duration(r.ttl)*time.Second/3))
	rev := r.startRev
	for {
		if rev == 0 {
			if !bo.wait(r.ctx) {
				return
			}
			if !r.leaseUntil.IsZero() && !time.Now().Before(r.leaseUntil) {
				// Nothing kept the lease alive while the keeper retried
				// (its session ended for another reason, and etcd has not
				// answered since): it is lost as surely as when the
				// keep-alive goes unanswered.
				r.opMu.Lock()
				r.loseLeaseLocked("no answer from etcd for the lease TTL")
				r.opMu.Unlock()
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
		case endLeaseLost:
			r.opMu.Lock()
			r.loseLeaseLocked("the keep-alive stopped")
			r.opMu.Unlock()
		}
		rev = 0
	}
}

// session keeps the lease alive and watches the key from rev+1 until
// something needs the keeper's attention.
func (r *Registration) session(rev int64) sessionEnd {
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	r.opMu.Lock()
	lease := r.lease
	r.opMu.Unlock()
	ka, err := r.cli.KeepAlive(ctx, lease)
	if err != nil {
		r.logger.Warn("registry: keep-alive failed", "lease", int64(lease), "err", err)
		return endLeaseLost
	}
	wch := r.cli.Watch(clientv3.WithRequireLeader(ctx), r.key, clientv3.WithRev(rev+1))
	for {
		select {
		case <-ctx.Done():
			return endClosed
		case <-r.rewrite:
			// A SetDraining whose write did not finish (etcd slow, or its
			// caller gave up): routine, the keeper writes the value.
			r.logger.Debug("registry: a write of the key did not finish; writing it again")
			return endResync
		case resp, ok := <-ka:
			if !ok {
				if ctx.Err() != nil {
					return endClosed
				}
				return endLeaseLost
			}
			r.leaseUntil = time.Now().Add(time.Duration(resp.TTL) * time.Second)
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
						r.logger.Warn("registry: key rewritten without a lease; putting ours back on ours", "lease", int64(lease))
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
	deadline := time.Now().Add(r.callTimeout)
	if !r.needLease && r.leaseUntil.Before(deadline) {
		// Past it the lease may be gone: the keeper stops waiting and
		// calls it lost.
		deadline = r.leaseUntil
	}
	ctx, cancel := context.WithDeadline(r.ctx, deadline)
	defer cancel()
	if r.needLease {
		if err := r.regrantLocked(ctx); err != nil {
			return 0, err
		}
	}
	rev, err := r.ensureLocked(ctx)
	if isLeaseNotFound(err) {
		r.loseLeaseLocked("etcd has no such lease")
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
			r.logger.Debug("registry: revoke old lease", "lease", int64(id), "err", err)
		}
	}
	r.staleLeases = nil
	return rev, nil
}

// loseLeaseLocked marks the lease lost: the next resync grants a new one,
// and LeaseLost is closed.
func (r *Registration) loseLeaseLocked(why string) {
	r.logger.Warn("registry: lease lost; granting a new one", "lease", int64(r.lease), "why", why)
	r.needLease = true
	r.leaseUntil = time.Time{}
	if r.ctx.Err() == nil {
		r.lostOnce.Do(func() { close(r.leaseLost) })
	}
}

func (r *Registration) regrantLocked(ctx context.Context) error {
	asked := time.Now()
	grant, err := r.cli.Grant(ctx, r.ttl)
	if err != nil {
		return err
	}
	r.staleLeases = append(r.staleLeases, r.lease)
	r.lease = grant.ID
	r.leaseUntil = asked.Add(time.Duration(grant.TTL) * time.Second)
	r.needLease = false
	r.logger.Info("registry: granted a new lease", "lease", int64(grant.ID))
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
		r.logger.Info("registry: key put back", "lease", int64(r.lease))
	}
	return rev, err
}
