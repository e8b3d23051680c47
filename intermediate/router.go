package intermediate

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/butterfly-mesh/butterfly"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/registry"
)

// Routing follows the subscriptions in etcd, never the streams that happen to
// be connected: a message admitted gets one delivery per group declared at
// that moment, and within a group the owner of its routing key is the
// registered, non-draining consumer with the highest rendezvous score. Every
// intermediate reads the same registrations, so a message sent again through
// another intermediate reaches the same consumer, whose dedup drops it.
//
// A delivery whose owner has no open stream here waits (parked) for a
// bounded time and then goes back to its producer with OWNER_UNREACHABLE, to
// travel through an intermediate that reaches the owner; it never goes to
// another consumer while the owner's registration lives. A group with no
// registered consumer holds its deliveries the same way (NO_CONSUMER). The
// owner changes only when the registrations change (lease expiry, drain,
// takeover): then queued and parked deliveries are assigned again, and the
// unacknowledged ones of a stream that ends go to the new owner.

// DefaultGroup is the consumer group of a consumer that names none.
const DefaultGroup = "default"

// held is one message received on a publish stream and not yet acknowledged
// or handed back. Its fields are guarded by Server.mu, except those fixed at
// creation (pub, seq, size). msg, routeKey and routes are set at creation
// and cleared under Server.mu when it is done: the held structs of a batch
// share one array, so a finished message must not keep its payload or key
// reachable while another of its batch is still held. msg is cleared, and
// given back to the codec, only once no delivery batch that carries it is
// being encoded any more (sending).
type held struct {
	pub      *pubStream
	seq      uint64 // stream sequence number
	msg      *messagev1.Message
	size     int
	charge   int // bytes counted against the memory budget (the message as received)
	routeKey []byte
	routes   []*messagev1.Route // what earlier attempts learned (Message.routes)

	order      uint64    // admission order in the server
	done       bool      // acknowledged, handed back or abandoned
	sending    int32     // delivery batches with msg that a stream is sending (subStream.sending)
	pending    int       // deliveries not yet acknowledged
	deadline   time.Time // while unrouted
	deliveries []*delivery
}

// delivery is the copy of a held message for one consumer group. Its fields
// are guarded by Server.mu.
type delivery struct {
	h        *held
	group    string
	sub      *subStream // the consumer stream it is queued on or sent to; nil while parked
	id       uint64     // the delivery id on sub once sent, 0 while queued
	acked    bool       // acknowledged, or released by the group's deletion
	sends    uint32     // times sent to the group's consumers by this server: the next one's Delivery.redeliveries
	owner    string     // while parked: the owner it waits for ("" for none)
	sentTo   string     // the consumer it was last sent to, here or (Message.routes) on an earlier attempt
	deadline time.Time  // while parked
}

// liveOn reports whether d is still meant for sub: its message is not
// finished, it was not moved to another stream or released, and it was not
// acknowledged. Queue and unacknowledged entries that fail it are skipped.
func (d *delivery) liveOn(sub *subStream) bool {
	return !d.h.done && d.sub == sub && !d.acked
}

// group is one consumer group: its registrations as etcd has them, and its
// streams on this server. Its fields are guarded by Server.mu.
type group struct {
	name     string
	declared bool
	owners   []string          // registered consumers not draining, sorted: the rendezvous candidates
	epochs   map[string]uint64 // the registered epoch of every registered consumer
	unleased map[string]bool   // registered consumers whose key has no lease: written by hand, it never lapses
	roles    map[string]string // the role each registered consumer's value names, when it names one
	subs     []*subStream      // open streams, in the order they subscribed
	// lastKey and lastOwner remember the last owner picked, while
	// lastKnown: a rendezvous pick hashes the key with every candidate, and
	// the messages of a batch mostly share their key (their producer's id
	// when they have none). Forgotten when owners change.
	lastKey   []byte
	lastOwner string
	lastKnown bool
}

// ownerLocked returns the consumer id that owns key in the group, "" when
// the group has no candidate.
func (g *group) ownerLocked(key []byte) string {
	if g.lastKnown && bytes.Equal(key, g.lastKey) {
		return g.lastOwner
	}
	var (
		best      string
		bestScore uint64
	)
	for i, id := range g.owners {
		if score := rendezvousScore(id, key); i == 0 || score > bestScore || (score == bestScore && id > best) {
			best, bestScore = id, score
		}
	}
	g.lastKey, g.lastOwner, g.lastKnown = append(g.lastKey[:0], key...), best, true
	return best
}

// streamForLocked returns the stream deliveries to consumer id go to: its
// newest open stream of the registered epoch that does not drain, or nil.
func (g *group) streamForLocked(id string) *subStream {
	epoch, ok := g.epochs[id]
	if !ok {
		return nil
	}
	for _, sub := range slices.Backward(g.subs) {
		if sub.consumerID == id && sub.epoch == epoch && !sub.draining && !sub.closed {
			return sub
		}
	}
	return nil
}

// rendezvousScore is the highest-random-weight score of a consumer id for a
// routing key. It is the same in every process, so every intermediate sends a
// key to the same consumer.
func rendezvousScore(consumerID string, key []byte) uint64 {
	h := fnv.New64a()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(consumerID)))
	h.Write(n[:])
	h.Write([]byte(consumerID))
	h.Write(key)
	return mix64(h.Sum64())
}

// mix64 is the murmur3 finaliser; it spreads FNV's weak low bits.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// routeKey is what a message is routed on: its key, or its producer id.
func routeKey(msg *messagev1.Message) []byte {
	if len(msg.GetKey()) > 0 {
		return msg.GetKey()
	}
	return []byte(msg.GetId().GetProducerId())
}

// routeKey is routeKey(msg) without a copy of the producer id when it is
// the stream's own: the routing key is only read.
func (p *pubStream) routeKey(msg *messagev1.Message) []byte {
	if len(msg.GetKey()) == 0 && string(p.producerKey) == msg.GetId().GetProducerId() {
		return p.producerKey
	}
	return routeKey(msg)
}

// deliverySlab hands out the deliveries of one admitted batch, one per
// message and declared group, from two allocations instead of two per
// delivery. A delivery in it lives as long as any of the batch does.
type deliverySlab struct {
	ds   []delivery
	ptrs []*delivery
	per  int // deliveries per message: the declared groups
}

// newDeliverySlabLocked returns a slab for n messages routed to the groups
// declared now.
func (s *Server) newDeliverySlabLocked(n int) deliverySlab {
	per := len(s.declared)
	return deliverySlab{ds: make([]delivery, 0, n*per), ptrs: make([]*delivery, 0, n*per), per: per}
}

// deliveries returns an empty slice for a message's deliveries, with room
// for one per group declared when the slab was made.
func (sl *deliverySlab) deliveries() []*delivery {
	if sl == nil || len(sl.ptrs)+sl.per > cap(sl.ptrs) {
		return nil
	}
	n := len(sl.ptrs)
	sl.ptrs = sl.ptrs[:n+sl.per]
	return sl.ptrs[n : n : n+sl.per]
}

// newDelivery returns a delivery from the slab, or a new one once the slab
// is used up (or nil).
func (sl *deliverySlab) newDelivery() *delivery {
	if sl == nil || len(sl.ds) == cap(sl.ds) {
		return new(delivery)
	}
	sl.ds = sl.ds[:len(sl.ds)+1]
	return &sl.ds[len(sl.ds)-1]
}

// groupLocked returns the group named name, adding an undeclared one.
func (s *Server) groupLocked(name string) *group {
	g := s.groups[name]
	if g == nil {
		g = &group{name: name}
		s.groups[name] = g
	}
	return g
}

// declaredLocked reports whether any group is declared.
func (s *Server) declaredLocked() bool { return len(s.declared) > 0 }

// setDeclaredLocked lists the declared groups in s.declared, by name, for
// routing to go over without the map.
func (s *Server) setDeclaredLocked() {
	s.declared = s.declared[:0]
	for _, g := range s.groups {
		if g.declared {
			s.declared = append(s.declared, g)
		}
	}
	slices.SortFunc(s.declared, func(a, b *group) int { return strings.Compare(a.name, b.name) })
}

// admitLocked takes a processed message into the server's care and routes it
// to every declared group, its deliveries taken from slab; with none, it
// waits for one.
func (s *Server) admitLocked(h *held, slab *deliverySlab) {
	s.heldTotal++
	s.admitted++
	h.order = s.admitted
	h.pub.held.Push(h.seq, h)
	h.pub.inFlight = h.pub.held.Len()
	if !s.declaredLocked() {
		s.holdUnroutedLocked(h)
		return
	}
	s.routeHeldLocked(h, slab)
}

// holdUnroutedLocked holds h with the messages admitted while no group is
// declared, until one is or its no-consumer timeout.
func (s *Server) holdUnroutedLocked(h *held) {
	h.deadline = time.Now().Add(s.opts.noConsumerTimeout)
	s.unrouted = append(s.unrouted, h)
}

// routeHeldLocked makes one delivery of h per declared group, from slab
// (nil for none), and assigns each; a group that handled h on an earlier
// attempt (Message.routes) gets none. A message whose routes name a group
// or consumer the view does not know waits first (viewcheck.go).
func (s *Server) routeHeldLocked(h *held, slab *deliverySlab) {
	if len(h.routes) > 0 {
		if names := s.sortRoutesLocked(h); len(names) > 0 {
			s.waitViewLocked(h, names)
			return
		}
	}
	s.routeCheckedLocked(h, slab)
}

// routeOrHoldLocked routes h, whose routes the view answers for, or holds
// it with the messages admitted while no group is declared.
func (s *Server) routeOrHoldLocked(h *held) {
	if !s.declaredLocked() {
		s.holdUnroutedLocked(h)
		return
	}
	s.routeCheckedLocked(h, nil)
}

// routeCheckedLocked is routeHeldLocked for h whose routes the view answers
// for.
func (s *Server) routeCheckedLocked(h *held, slab *deliverySlab) {
	h.deliveries = slab.deliveries()
	for _, g := range s.declared {
		var sentTo string
		if i := routeIndex(h.routes, g.name); i >= 0 {
			if h.routes[i].GetHandled() {
				continue
			}
			sentTo = h.routes[i].GetConsumer()
		}
		d := slab.newDelivery()
		d.h, d.group, d.sentTo = h, g.name, sentTo
		h.deliveries = append(h.deliveries, d)
		h.pending++
		s.assignToLocked(d, g)
	}
	if h.pending == 0 {
		// Every group handled it on earlier attempts.
		s.finishLocked(h, nil)
	}
}

// assignLocked queues d on its owner's stream, or parks it until the owner
// (or, in a group without consumers, any consumer) is there. A delivery of a
// group that was deleted is released.
func (s *Server) assignLocked(d *delivery) {
	g := s.groups[d.group]
	if g == nil || !g.declared {
		d.id = 0
		s.releaseLocked(d)
		return
	}
	s.assignToLocked(d, g)
}

// assignToLocked is assignLocked for d of g, a declared group.
func (s *Server) assignToLocked(d *delivery, g *group) {
	d.id = 0
	owner := g.ownerLocked(d.h.routeKey)
	if d.sentTo != "" && d.sentTo != owner && slices.Contains(g.owners, d.sentTo) {
		// The consumer it went to may have handled it: it keeps it while it
		// stays registered, even if a consumer that joined since owns its
		// key now.
		owner = d.sentTo
	}
	if owner != "" {
		if sub := g.streamForLocked(owner); sub != nil {
			d.sub, d.owner = sub, ""
			sub.queue.push(d)
			sub.wakeUp()
			return
		}
	}
	now := time.Now()
	if d.deadline.IsZero() || d.deadline.Before(now) || (d.owner == "" && owner != "") {
		wait := s.opts.noConsumerTimeout
		if owner != "" {
			wait = s.opts.ownerWait
		}
		d.deadline = now.Add(wait)
	}
	d.sub, d.owner = nil, owner
	s.parked[d.group] = append(s.parked[d.group], d)
}

// releaseLocked counts d as handled: its group was deleted.
func (s *Server) releaseLocked(d *delivery) {
	d.sub = nil
	if d.acked || d.h.done {
		return
	}
	d.acked = true
	d.h.pending--
	if d.h.pending == 0 {
		s.finishLocked(d.h, nil)
	}
}

// finishLocked ends h: an acknowledgement to its producer when nack is nil,
// else the nack (whose Seq it sets).
func (s *Server) finishLocked(h *held, nack *messagev1.Nack) {
	if h.done {
		return
	}
	h.done = true
	s.dropMessageLocked(h)
	s.staleLocked(h)
	p := h.pub
	p.held.Remove(h.seq)
	p.inFlight = p.held.Len()
	s.heldTotal--
	if nack == nil {
		p.acks = append(p.acks, h.seq)
	} else {
		nack.Seq = h.seq
		if butterfly.Transient(nack.GetReason()) {
			routes := routesOf(h, s.opts.maxBatchBytes)
			if err := checkRoutesFit(routes, s.opts.maxBatchBytes); err != nil {
				// What the message learned of its groups is more than a
				// message sent again may carry, which checkRoutes would
				// refuse; sent back, so large a nack could be over what
				// its producer receives. It fails here instead.
				nack = &messagev1.Nack{
					Seq:    h.seq,
					Reason: messagev1.NackReason_NACK_REASON_INVALID,
					Detail: butterfly.NackDetail(fmt.Sprintf("handed back (%s: %s) with routes that are more than a message sent again may carry: %v",
						nack.GetReason(), nack.GetDetail(), err)),
				}
			} else {
				nack.Routes = routes
				// The routes stay counted until the nack is sent (sendLoop).
				p.holdNackLocked(routesChargeOf(nack.Routes))
			}
		}
		p.nacks = append(p.nacks, nack)
	}
	s.releaseBytesLocked(p, h.charge)
	h.routeKey, h.routes = nil, nil
	p.wakeUp()
	if s.heldTotal == 0 {
		s.poke()
	}
}

// dropMessageLocked lets go of the message of h, which is done, unless a
// stream is sending a batch with it: the stream lets go of it then
// (subStream.sentLocked). The message goes back to the codec when the
// processor kept none of it.
func (s *Server) dropMessageLocked(h *held) {
	if h.sending > 0 || h.msg == nil {
		return
	}
	if s.releaseMessages {
		s.released.Release(h.msg)
	}
	h.msg = nil
}

// staleLocked counts h's deliveries still queued, now stale since h is
// done, against their queues, and prunes a queue whose stale entries are
// over half of it: a queue sheds them only as its consumer's credit
// reaches them, so a consumer that holds its credit (a slow handler, a
// stream that stopped reading) would keep every message its group did not
// finish, for as long as others finish them.
func (s *Server) staleLocked(h *held) {
	for _, d := range h.deliveries {
		if sub := d.sub; sub != nil && d.id == 0 && !d.acked {
			sub.queue.stale++
			if sub.queue.stale > pruneMin && sub.queue.stale*2 > sub.queue.len() {
				sub.queue.prune(sub)
			}
		}
	}
}

// routeIndex returns the index of group's route in routes, -1 for none.
func routeIndex(routes []*messagev1.Route, group string) int {
	for i, r := range routes {
		if r.GetGroup() == group {
			return i
		}
	}
	return -1
}

// routesOf returns where h's group copies went, for the producer to send
// back with the message (Message.routes): the groups that handled it, the
// consumers it was sent to in the others, and the groups it was not sent to
// yet, these as long as the routes stay within MaxRoutes and maxBytes
// encoded (checkRoutes). What earlier attempts learned about groups with no
// delivery here is kept.
func routesOf(h *held, maxBytes int) []*messagev1.Route {
	var routes, unsent []*messagev1.Route
	seen := map[string]bool{}
	for _, d := range h.deliveries {
		seen[d.group] = true
		switch {
		case d.acked:
			// The group gets no copy again, whoever handled it: its
			// consumer's name would only take room.
			routes = append(routes, &messagev1.Route{Group: d.group, Handled: true})
		case d.sentTo != "":
			routes = append(routes, &messagev1.Route{Group: d.group, Consumer: d.sentTo})
		default:
			// Not sent yet: the group exists in this view, which another
			// intermediate's may not know yet.
			unsent = append(unsent, &messagev1.Route{Group: d.group})
		}
	}
	for _, r := range h.routes {
		if !seen[r.GetGroup()] {
			routes = append(routes, r)
		}
	}
	size := butterfly.RoutesSize(routes)
	for _, r := range unsent {
		n := butterfly.RouteSize(r)
		if len(routes) >= MaxRoutes || size+n > maxBytes {
			break
		}
		routes = append(routes, r)
		size += n
	}
	return routes
}

// abandonLocked forgets every message held for a publish stream that ended:
// its producer sends them again, so no new copy of them is delivered.
func (s *Server) abandonLocked(p *pubStream) {
	for _, h := range p.held.All() {
		h.done = true
		s.dropMessageLocked(h)
		h.routeKey, h.routes = nil, nil
		s.heldTotal--
		s.releaseBytesLocked(p, h.charge)
	}
	p.held.Clear()
	p.inFlight = 0
	s.releaseBytesLocked(p, p.nackBytes)
	p.acks, p.nacks, p.nackBytes = nil, nil, 0
	p.closed = true
	delete(s.pubs, p)
	s.poke()
}

// joinLocked adds a subscribe stream to its group and assigns again what
// waited for its consumer or was queued on the consumer's older streams.
func (s *Server) joinLocked(sub *subStream) {
	g := s.groupLocked(sub.group)
	g.subs = append(g.subs, sub)
	s.subs[sub] = struct{}{}
	s.reassignGroupLocked(g)
}

// reassignGroupLocked assigns again, in admission order, every delivery of
// g that is queued on a stream or parked.
func (s *Server) reassignGroupLocked(g *group) {
	var ds []*delivery
	for _, sub := range g.subs {
		ds = append(ds, sub.queue.drain(sub)...)
	}
	for _, d := range s.parked[g.name] {
		if !d.h.done && d.sub == nil && !d.acked {
			ds = append(ds, d)
		}
	}
	delete(s.parked, g.name)
	s.assignAllLocked(ds)
}

// assignAllLocked assigns ds in admission order.
func (s *Server) assignAllLocked(ds []*delivery) {
	slices.SortFunc(ds, func(a, b *delivery) int {
		switch {
		case a.h.order < b.h.order:
			return -1
		case a.h.order > b.h.order:
			return 1
		}
		return 0
	})
	for _, d := range ds {
		s.assignLocked(d)
	}
}

// leaveLocked removes a subscribe stream that ended from its group and
// assigns its queued and unacknowledged deliveries again: to the same
// consumer's other stream, to wait for it, or to the new owner once its
// registration is gone.
func (s *Server) leaveLocked(sub *subStream) {
	sub.closed = true
	delete(s.subs, sub)
	g := s.groups[sub.group]
	if g != nil {
		if i := slices.Index(g.subs, sub); i >= 0 {
			g.subs = slices.Delete(g.subs, i, i+1)
		}
	}
	var moved []*delivery
	for _, d := range sub.unacked.takeAll() {
		if d.liveOn(sub) {
			d.deadline = time.Time{}
			moved = append(moved, d)
		}
	}
	moved = append(moved, sub.queue.drain(sub)...)
	s.assignAllLocked(moved)
	if g != nil && !g.declared && len(g.subs) == 0 && len(g.epochs) == 0 {
		delete(s.groups, g.name)
	}
	s.poke()
}

// consumerDrainLocked marks a subscribe stream draining: it gets nothing new,
// and what is queued for it is assigned again (it waits until the
// consumer's registration says it drains, then goes to the new owner).
func (s *Server) consumerDrainLocked(sub *subStream) {
	if sub.draining {
		return
	}
	sub.draining = true
	s.assignAllLocked(sub.queue.drain(sub))
}

// applySubscriptionsLocked makes v the registrations routing follows. A
// group whose registrations changed has its queued and parked deliveries
// assigned again; a group that is no longer declared releases its
// deliveries and ends its streams.
func (s *Server) applySubscriptionsLocked(v registry.Subscriptions) {
	seen := make(map[string]bool, len(v.Groups))
	for _, vg := range v.Groups {
		seen[vg.Name] = true
		g := s.groupLocked(vg.Name)
		var owners []string
		epochs := make(map[string]uint64, len(vg.Consumers))
		g.unleased, g.roles = nil, nil
		for _, c := range vg.Consumers {
			epochs[c.ID] = c.Value.Epoch
			if c.Value.Role != "" {
				if g.roles == nil {
					g.roles = make(map[string]string)
				}
				g.roles[c.ID] = c.Value.Role
			}
			if !c.Value.Draining {
				owners = append(owners, c.ID)
			}
			if c.Lease == 0 {
				if g.unleased == nil {
					g.unleased = make(map[string]bool)
				}
				g.unleased[c.ID] = true
			}
		}
		s.updateGroupLocked(g, vg.Declared, owners, epochs)
	}
	for name, g := range s.groups {
		if !seen[name] {
			s.updateGroupLocked(g, false, nil, nil)
			if len(g.subs) == 0 {
				delete(s.groups, name)
			}
		}
	}
	s.reviewViewWaitsLocked()
	if len(s.unrouted) > 0 && s.declaredLocked() {
		unrouted := s.unrouted
		s.unrouted = nil
		for _, h := range unrouted {
			if !h.done {
				s.routeHeldLocked(h, nil)
			}
		}
	}
}

// updateGroupLocked sets the registrations of g.
func (s *Server) updateGroupLocked(g *group, declared bool, owners []string, epochs map[string]uint64) {
	wasDeclared := g.declared
	ownersChanged := !slices.Equal(owners, g.owners)
	changed := declared != wasDeclared || ownersChanged || !maps.Equal(epochs, g.epochs)
	if ownersChanged {
		g.lastKnown = false
	}
	g.declared, g.owners, g.epochs = declared, owners, epochs
	if declared != wasDeclared {
		s.setDeclaredLocked()
	}
	switch {
	case wasDeclared && !declared:
		s.deleteGroupLocked(g)
	case changed:
		s.reassignGroupLocked(g)
	}
}

// deleteGroupLocked releases every delivery of a group that is no longer
// declared and ends its streams.
func (s *Server) deleteGroupLocked(g *group) {
	for _, d := range s.parked[g.name] {
		s.releaseLocked(d)
	}
	delete(s.parked, g.name)
	for _, sub := range g.subs {
		for _, d := range sub.queue.drain(sub) {
			s.releaseLocked(d)
		}
		for _, d := range sub.unacked.takeAll() {
			s.releaseLocked(d)
		}
		sub.cancel(errGroupDeleted(s.service, g.name))
	}
	s.log.Info("intermediate: group deleted; its deliveries are released", "group", g.name)
}

// expireLocked hands back the messages that waited too long: for a group, an
// owner, or any group at all.
func (s *Server) expireLocked(now time.Time) {
	unrouted := s.unrouted[:0]
	for _, h := range s.unrouted {
		switch {
		case h.done:
		case now.After(h.deadline):
			s.finishLocked(h, &messagev1.Nack{
				Reason: messagev1.NackReason_NACK_REASON_NO_CONSUMER,
				Detail: "no consumer group of service " + s.service + " is declared",
			})
		default:
			unrouted = append(unrouted, h)
		}
	}
	clear(s.unrouted[len(unrouted):])
	s.unrouted = unrouted
	s.expireViewWaitsLocked(now)
	var away map[[2]string]int // owners registered, not connected: messages handed back
	for name, list := range s.parked {
		kept := list[:0]
		for _, d := range list {
			switch {
			case d.h.done || d.sub != nil || d.acked:
			case now.After(d.deadline):
				if d.owner != "" {
					if away == nil {
						away = make(map[[2]string]int)
					}
					away[[2]string{name, d.owner}]++
				}
				s.finishLocked(d.h, parkedNack(name, d.owner))
			default:
				kept = append(kept, d)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(s.parked, name)
		} else {
			s.parked[name] = kept
		}
	}
	s.warnAwayLocked(now, away)
}

// awayWarnEvery is how often the server says, per group and consumer, that
// it hands back messages whose owner is registered but not connected here.
const awayWarnEvery = 5 * time.Second

// warnAwayLocked logs, at most every awayWarnEvery per group and owner,
// that messages went back to their producers because their owner is
// registered in etcd but has no stream here: a consumer frozen, cut off
// from this intermediate, or never started. The producers send them through
// another intermediate, which may reach it.
func (s *Server) warnAwayLocked(now time.Time, away map[[2]string]int) {
	for k, n := range away {
		if now.Sub(s.awayWarned[k]) < awayWarnEvery {
			continue
		}
		s.awayWarned[k] = now
		if g := s.groups[k[0]]; g != nil && g.unleased[k[1]] {
			// No consumer process writes its key without its lease.
			s.log.Warn("intermediate: consumer registered by a key without a lease, which never lapses, and not connected here; its messages went back to their producers: delete the key if no such consumer runs",
				"group", k[0], "consumer", k[1], "key", registry.ConsumerKey(s.opts.prefix, s.service, k[0], k[1]), "count", n, "owner_wait", s.opts.ownerWait)
			continue
		}
		s.log.Warn("intermediate: consumer registered but not connected here; its messages went back to their producers",
			"group", k[0], "consumer", k[1], "count", n, "owner_wait", s.opts.ownerWait)
	}
	for k, at := range s.awayWarned {
		if now.Sub(at) >= awayWarnEvery && away[k] == 0 {
			delete(s.awayWarned, k)
		}
	}
}

// parkedNack is the nack of a delivery of group that waited too long for
// owner ("" when the group had no consumer).
func parkedNack(group, owner string) *messagev1.Nack {
	if owner == "" {
		return &messagev1.Nack{
			Reason: messagev1.NackReason_NACK_REASON_NO_CONSUMER,
			Detail: "group " + group + " has no registered consumer",
		}
	}
	return &messagev1.Nack{
		Reason: messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE,
		Detail: "consumer " + owner + " of group " + group + " owns the message but is not connected to this intermediate",
	}
}
