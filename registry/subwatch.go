package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Subscriptions is the full, current set of groups and consumers of one
// service.
type Subscriptions struct {
	// Service is the watched service.
	Service string
	// Groups are the declared groups and the groups that have registered
	// consumers, sorted by name.
	Groups []Group
	// Revision is the etcd revision the view reflects.
	Revision int64
}

// Group returns the group named name, if it is declared or has consumers.
func (s Subscriptions) Group(name string) (Group, bool) {
	i, ok := slices.BinarySearchFunc(s.Groups, name, func(g Group, n string) int { return strings.Compare(g.Name, n) })
	if !ok {
		return Group{}, false
	}
	return s.Groups[i], true
}

// Consumer returns the registration of consumer id in the group, if any.
func (g Group) Consumer(id string) (Consumer, bool) {
	i, ok := slices.BinarySearchFunc(g.Consumers, id, func(c Consumer, n string) int { return strings.Compare(c.ID, n) })
	if !ok {
		return Consumer{}, false
	}
	return g.Consumers[i], true
}

// WatchSubscriptions lists the groups and consumers of service in one
// transaction, calls update with the view, then watches both from the
// listed revision+1 (with clientv3.WithRequireLeader) and calls update with
// the full view after every change, like Watch: never concurrently, never
// twice in a row with the same view, never with an empty view because of an
// error (it re-lists with backoff, calling the error handler). A malformed
// value is left out, with one warning per value. It returns ctx.Err() when
// ctx is done.
func WatchSubscriptions(ctx context.Context, cli *clientv3.Client, service string, update func(Subscriptions), opts ...Option) error {
	o := newOptions(opts)
	if err := validateNames(o.prefix, service); err != nil {
		return err
	}
	if update == nil {
		return errors.New("registry: WatchSubscriptions needs an update function")
	}
	w := &subWatcher{
		cli:       cli,
		o:         o,
		logger:    o.logger.With("service", service),
		service:   service,
		groupsPfx: GroupsPrefix(o.prefix, service),
		consPfx:   ConsumersPrefix(o.prefix, service),
		update:    update,
		groups:    make(map[string]GroupValue),
		consumers: make(map[string]Consumer),
		warned:    make(map[string]int64),
	}
	return w.run(ctx)
}

// subWatcher is the state of one WatchSubscriptions call; it is used by one
// goroutine.
type subWatcher struct {
	cli       *clientv3.Client
	o         options
	logger    *slog.Logger
	service   string
	groupsPfx string
	consPfx   string
	update    func(Subscriptions)

	groups    map[string]GroupValue // by group name
	consumers map[string]Consumer   // by "<group>/<consumer>"
	warned    map[string]int64      // key -> ModRevision of a malformed value already warned about
	delivered []Group
	started   bool
}

func (w *subWatcher) run(ctx context.Context) error {
	return listWatch(ctx, w.o, w.logger, w.list, w.deliver, w.watch)
}

// list replaces the view with the current keys, read at one revision.
func (w *subWatcher) list(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	resp, err := w.cli.Txn(lctx).Then(
		clientv3.OpGet(w.groupsPfx, clientv3.WithPrefix()),
		clientv3.OpGet(w.consPfx, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return 0, fmt.Errorf("registry: list %s and %s: %w", w.groupsPfx, w.consPfx, err)
	}
	clear(w.groups)
	clear(w.consumers)
	listed := make(map[string]bool)
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().GetKvs() {
			listed[string(kv.Key)] = true
			w.apply(mvccpb.PUT, kv)
		}
	}
	for key := range w.warned {
		if !listed[key] {
			delete(w.warned, key)
		}
	}
	return resp.Header.Revision, nil
}

// watch applies changes of both prefixes from rev+1 until a watch halts (an
// error), a resync is requested (nil) or ctx is done.
func (w *subWatcher) watch(ctx context.Context, rev int64) (progressed bool, err error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	gch := w.cli.Watch(wctx, w.groupsPfx, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	cch := w.cli.Watch(wctx, w.consPfx, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		var (
			wr clientv3.WatchResponse
			ok bool
		)
		select {
		case <-ctx.Done():
			return progressed, ctx.Err()
		case <-w.o.resync:
			return progressed, nil
		case wr, ok = <-gch:
		case wr, ok = <-cch:
		}
		if ctx.Err() != nil {
			return progressed, ctx.Err()
		}
		if !ok {
			return progressed, errors.New("registry: subscriptions watch closed")
		}
		if err := wr.Err(); err != nil {
			return progressed, fmt.Errorf("registry: subscriptions watch: %w", err)
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

// apply records one key's change.
func (w *subWatcher) apply(typ mvccpb.Event_EventType, kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	if name, ok := strings.CutPrefix(key, w.groupsPfx); ok {
		if typ == mvccpb.DELETE {
			delete(w.groups, name)
			delete(w.warned, key)
			return
		}
		if err := ValidateName("group", name); err != nil {
			delete(w.groups, name)
			w.warn(key, kv.ModRevision, skipWarning, err)
			return
		}
		// The key declares the group; a value that does not parse only
		// loses its details, never the group's messages.
		v, err := ParseGroupValue(kv.Value)
		if err != nil {
			w.warn(key, kv.ModRevision, "registry: malformed group value; the key declares the group all the same", err)
		} else {
			delete(w.warned, key)
		}
		w.groups[name] = v
		return
	}
	rest := strings.TrimPrefix(key, w.consPfx)
	if typ == mvccpb.DELETE {
		delete(w.consumers, rest)
		delete(w.warned, key)
		return
	}
	group, id, ok := strings.Cut(rest, "/")
	var (
		v   ConsumerValue
		err error
	)
	if !ok {
		err = fmt.Errorf("%w: key is not <group>/<consumer>", ErrInvalidValue)
	} else {
		v, err = ParseConsumerValue(group, id, kv.Value)
	}
	if err != nil {
		delete(w.consumers, rest)
		w.warn(key, kv.ModRevision, skipWarning, err)
		return
	}
	delete(w.warned, key)
	w.consumers[rest] = Consumer{ID: id, Value: v, ModRevision: kv.ModRevision, Lease: kv.Lease}
}

// skipWarning says a key is left out of the view.
const skipWarning = "registry: skipping malformed subscription key"

// warn logs msg about key once per revision of its value.
func (w *subWatcher) warn(key string, rev int64, msg string, err error) {
	if w.warned[key] != rev {
		w.warned[key] = rev
		w.logger.Warn(msg, "key", key, "err", err)
	}
}

// deliver calls update with the current view unless it equals the last one.
func (w *subWatcher) deliver(rev int64) {
	byName := make(map[string]*Group)
	get := func(name string) *Group {
		g := byName[name]
		if g == nil {
			g = &Group{Name: name}
			byName[name] = g
		}
		return g
	}
	for name, v := range w.groups {
		g := get(name)
		g.Declared, g.Value = true, v
	}
	for _, c := range w.consumers {
		g := get(c.Value.Group)
		g.Consumers = append(g.Consumers, c)
	}
	groups := make([]Group, 0, len(byName))
	for _, g := range byName {
		slices.SortFunc(g.Consumers, func(a, b Consumer) int { return strings.Compare(a.ID, b.ID) })
		groups = append(groups, *g)
	}
	slices.SortFunc(groups, func(a, b Group) int { return strings.Compare(a.Name, b.Name) })
	if w.started && reflect.DeepEqual(groups, w.delivered) {
		return
	}
	w.started = true
	w.delivered = groups
	w.update(Subscriptions{Service: w.service, Groups: slices.Clone(groups), Revision: rev})
}
