package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// listTimeout bounds one listing of a service, so that an unreachable etcd
// is reported to the error handler instead of blocking silently.
const listTimeout = 5 * time.Second

// View is the full, current membership of one service.
type View struct {
	// Service is the watched service.
	Service string
	// Instances are the valid instances, sorted by Name.
	Instances []Instance
	// Revision is the etcd revision the view reflects.
	Revision int64
}

// Equal reports whether o is an Instance equal to i, comparing times by
// instant. It makes Instance usable as a gRPC attribute value.
func (i Instance) Equal(o any) bool {
	j, ok := o.(Instance)
	if !ok {
		return false
	}
	a, b := i.Metadata, j.Metadata
	if !a.Started.Equal(b.Started) {
		return false
	}
	a.Started, b.Started = time.Time{}, time.Time{}
	return i.Service == j.Service && i.Name == j.Name && i.Addr == j.Addr &&
		i.ModRevision == j.ModRevision && a == b
}

// Watch lists the instances of service, calls update with the view, then
// watches from the listed revision+1 (with clientv3.WithRequireLeader) and
// calls update with the full view after every change. update is called from
// Watch's goroutine, never concurrently, and not again for a view whose
// instances equal the last one.
//
// A malformed value is left out of the view, with one warning per value.
// When the watch halts (compaction, cancellation, leader loss) or a listing
// fails, Watch calls the error handler (see WithErrorHandler), keeps the last
// view in force and lists and watches again with backoff; an error never
// makes it report an empty view. Watch returns ctx.Err() when ctx is done.
func Watch(ctx context.Context, cli *clientv3.Client, service string, update func(View), opts ...Option) error {
	o := newOptions(opts)
	if err := ValidateName("prefix", o.prefix); err != nil {
		return err
	}
	if err := ValidateName("service", service); err != nil {
		return err
	}
	if update == nil {
		return errors.New("registry: Watch needs an update function")
	}
	w := &watcher{
		cli:     cli,
		o:       o,
		logger:  o.logger.With("service", service),
		service: service,
		prefix:  ServicesPrefix(o.prefix, service),
		update:  update,
		members: make(map[string]Instance),
		warned:  make(map[string]int64),
	}
	return w.run(ctx)
}

// watcher is the state of one Watch call; it is used by one goroutine.
type watcher struct {
	cli     *clientv3.Client
	o       options
	logger  *slog.Logger
	service string
	prefix  string
	update  func(View)

	members   map[string]Instance // by instance name
	warned    map[string]int64    // key -> ModRevision of a malformed value already warned about
	delivered []Instance          // the instances of the last view passed to update
	started   bool                // update was called at least once
}

func (w *watcher) run(ctx context.Context) error {
	return listWatch(ctx, w.o, w.logger, w.list, w.deliver, w.watch)
}

// listWatch lists, delivers the listed view and watches from the listed
// revision+1, again and again: after a resync at once, after an error (a
// halted watch, a failed listing) with backoff, reporting it to the error
// handler. It returns ctx.Err() when ctx is done.
func listWatch(ctx context.Context, o options, logger *slog.Logger,
	list func(context.Context) (int64, error), deliver func(int64),
	watch func(context.Context, int64) (bool, error)) error {
	bo := newBackoff(50*time.Millisecond, 2*time.Second)
	for {
		rev, err := list(ctx)
		if err == nil {
			deliver(rev)
			var progressed bool
			progressed, err = watch(ctx, rev)
			if progressed {
				bo.reset()
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			logger.Warn("registry: watch halted; listing again", "err", err)
			if o.onError != nil {
				o.onError(err)
			}
			if !bo.wait(ctx) {
				return ctx.Err()
			}
		}
	}
}

// list replaces the membership with the service's current keys.
func (w *watcher) list(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	resp, err := w.cli.Get(lctx, w.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("registry: list %s: %w", w.prefix, err)
	}
	clear(w.members)
	listed := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		listed[string(kv.Key)] = true
		w.apply(mvccpb.PUT, kv)
	}
	// Forget the warnings about keys deleted while the watch was down.
	for key := range w.warned {
		if !listed[key] {
			delete(w.warned, key)
		}
	}
	return resp.Header.Revision, nil
}

// watch applies changes from rev+1 until the watch halts (an error), a
// resync is requested (nil) or ctx is done. It reports whether it delivered
// any change.
func (w *watcher) watch(ctx context.Context, rev int64) (progressed bool, err error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := w.cli.Watch(clientv3.WithRequireLeader(wctx), w.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		select {
		case <-ctx.Done():
			return progressed, ctx.Err()
		case <-w.o.resync:
			w.logger.Debug("registry: resync requested; listing again")
			return progressed, nil
		case wr, ok := <-wch:
			if ctx.Err() != nil {
				return progressed, ctx.Err()
			}
			if !ok {
				return progressed, fmt.Errorf("registry: watch %s closed", w.prefix)
			}
			if err := wr.Err(); err != nil {
				return progressed, fmt.Errorf("registry: watch %s: %w", w.prefix, err)
			}
			if len(wr.Events) == 0 {
				continue
			}
			for _, ev := range wr.Events {
				w.apply(ev.Type, ev.Kv)
			}
			progressed = true
			w.deliver(wr.Header.Revision)
		}
	}
}

// apply records one key's change in the membership.
func (w *watcher) apply(typ mvccpb.Event_EventType, kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	name := strings.TrimPrefix(key, w.prefix)
	if typ == mvccpb.DELETE {
		delete(w.members, name)
		delete(w.warned, key)
		return
	}
	v, err := ParseValue(name, kv.Value)
	if err != nil {
		delete(w.members, name)
		if w.warned[key] != kv.ModRevision {
			w.warned[key] = kv.ModRevision
			w.logger.Warn("registry: skipping malformed instance", "key", key, "err", err)
		}
		return
	}
	delete(w.warned, key)
	w.members[name] = Instance{
		Service:     w.service,
		Name:        name,
		Addr:        v.Addr,
		Metadata:    v.Metadata,
		ModRevision: kv.ModRevision,
	}
}

// deliver calls update with the current view unless its instances equal the
// last view's.
func (w *watcher) deliver(rev int64) {
	insts := make([]Instance, 0, len(w.members))
	for _, inst := range w.members {
		insts = append(insts, inst)
	}
	slices.SortFunc(insts, func(a, b Instance) int { return strings.Compare(a.Name, b.Name) })
	if w.started && slices.EqualFunc(insts, w.delivered, func(a, b Instance) bool { return a.Equal(b) }) {
		return
	}
	w.started = true
	w.delivered = insts
	w.update(View{Service: w.service, Instances: slices.Clone(insts), Revision: rev})
}
