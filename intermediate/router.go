package intermediate

import (
	"encoding/binary"
	"hash/fnv"
	"time"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// DefaultGroup is the consumer group of a consumer that names none.
const DefaultGroup = "default"

// held is one message received on a publish stream and not yet acknowledged
// or handed back. Its fields are guarded by Server.mu, except those fixed at
// creation (pub, seq, msg, size, routeKey).
type held struct {
	pub      *pubStream
	seq      uint64 // stream sequence number
	msg      *messagev1.Message
	size     int
	routeKey []byte

	done       bool // acknowledged, handed back or abandoned
	pending    int  // deliveries not yet acknowledged
	sends      uint32
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
	acked    bool
	deadline time.Time // while parked
}

// group is the set of subscribe streams of one consumer group. Its fields
// are guarded by Server.mu.
type group struct {
	name    string
	settled time.Time    // routing in the group starts then
	subs    []*subStream // in the order they subscribed
	// ghosts are consumer ids whose last stream ended without a drain, until
	// they come back or their grace time passes. They keep their place in
	// the rendezvous, so that their keys wait for them instead of going to
	// another consumer, which would handle again what they already handled.
	ghosts map[string]time.Time
	// keepUntil is when a group with neither streams nor ghosts is
	// forgotten. Until then its deliveries park (and go back to their
	// producers when no consumer comes), so a group whose only consumer
	// restarts misses no message.
	keepUntil time.Time
}

// ghostGrace is how long a consumer id whose stream ended without a drain
// keeps its place in the rendezvous. It covers the time the consumer needs
// to notice the break (heartbeats, about a second) and reconnect (its
// backoff reaches one second), so a consumer that is still alive gets its
// keys back instead of another consumer handling them again.
const ghostGrace = 3 * time.Second

// ghostGraceLocked is ghostGrace, kept below the no-consumer timeout so a
// ghost never outlives the deliveries waiting for it.
func (s *Server) ghostGraceLocked() time.Duration {
	return min(max(ghostGrace, s.opts.routingSettle), s.opts.noConsumerTimeout/2)
}

// vacantLocked reports whether g has no stream and no ghost.
func (g *group) vacantLocked() bool { return len(g.subs) == 0 && len(g.ghosts) == 0 }

// pickLocked returns the stream of the group that key's deliveries go to: the
// consumer id with the highest rendezvous score among the consumers that are
// not draining and the ghosts, and of that id its newest stream. It returns
// nil when the winner is a ghost or there is no candidate: the delivery then
// waits.
func (g *group) pickLocked(key []byte) *subStream {
	var (
		best      *subStream
		bestID    string
		bestScore uint64
		found     bool
	)
	consider := func(id string, sub *subStream) {
		score := rendezvousScore(id, key)
		if !found || score > bestScore || (score == bestScore && id >= bestID) {
			best, bestID, bestScore, found = sub, id, score, true
		}
	}
	for _, sub := range g.subs {
		if !sub.draining && !sub.closed {
			consider(sub.consumerID, sub)
		}
	}
	for id := range g.ghosts {
		consider(id, nil)
	}
	return best
}

// hasLive reports whether a stream of consumer id, other than except, is in
// the group.
func (g *group) hasLive(id string, except *subStream) bool {
	for _, sub := range g.subs {
		if sub != except && sub.consumerID == id && !sub.closed {
			return true
		}
	}
	return false
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

// admitLocked takes a processed message into the server's care and routes it
// to every group.
func (s *Server) admitLocked(h *held) {
	s.heldTotal++
	h.pub.held[h.seq] = h
	h.pub.inFlight = len(h.pub.held)
	if len(s.groups) == 0 {
		h.deadline = time.Now().Add(s.opts.noConsumerTimeout)
		s.unrouted = append(s.unrouted, h)
		return
	}
	s.routeHeldLocked(h)
}

// routeHeldLocked makes one delivery of h per group and assigns each.
func (s *Server) routeHeldLocked(h *held) {
	for name := range s.groups {
		d := &delivery{h: h, group: name}
		h.deliveries = append(h.deliveries, d)
		h.pending++
		s.assignLocked(d)
	}
}

// assignLocked queues d on the stream its group's rendezvous picks, or parks
// it until a consumer of the group is there.
func (s *Server) assignLocked(d *delivery) {
	d.id = 0
	now := time.Now()
	if g := s.groups[d.group]; g != nil && !now.Before(g.settled) {
		if sub := g.pickLocked(d.h.routeKey); sub != nil {
			d.sub = sub
			sub.queue.push(d)
			sub.wakeUp()
			return
		}
	}
	d.sub = nil
	if d.deadline.IsZero() || d.deadline.Before(now) {
		d.deadline = now.Add(s.opts.noConsumerTimeout)
	}
	s.parked[d.group] = append(s.parked[d.group], d)
}

// finishLocked ends h: an acknowledgement to its producer when nack is nil,
// else the nack (whose Seq it sets).
func (s *Server) finishLocked(h *held, nack *messagev1.Nack) {
	if h.done {
		return
	}
	h.done = true
	p := h.pub
	delete(p.held, h.seq)
	p.inFlight = len(p.held)
	s.heldTotal--
	if nack == nil {
		p.acks = append(p.acks, h.seq)
	} else {
		nack.Seq = h.seq
		p.nacks = append(p.nacks, nack)
	}
	p.wakeUp()
	if s.heldTotal == 0 {
		s.poke()
	}
}

// abandonLocked forgets every message held for a publish stream that ended:
// its producer sends them again, so no new copy of them is delivered.
func (s *Server) abandonLocked(p *pubStream) {
	for seq, h := range p.held {
		h.done = true
		delete(p.held, seq)
		s.heldTotal--
	}
	p.inFlight = 0
	p.acks, p.nacks = nil, nil
	p.closed = true
	delete(s.pubs, p)
	s.poke()
}

// joinLocked adds a subscribe stream to its group and hands it, or the
// group's other consumers, whatever waited for a consumer.
func (s *Server) joinLocked(sub *subStream) {
	g := s.groups[sub.group]
	if g == nil {
		g = &group{name: sub.group, settled: time.Now().Add(s.opts.routingSettle)}
		s.groups[sub.group] = g
	} else if g.vacantLocked() {
		// The group's consumers come back: wait for the others as for a
		// new group, so the first one does not take every key.
		g.settled = time.Now().Add(s.opts.routingSettle)
	}
	g.subs = append(g.subs, sub)
	delete(g.ghosts, sub.consumerID)
	s.subs[sub] = struct{}{}
	s.rerouteParkedLocked(g.name)
	if len(s.unrouted) > 0 {
		unrouted := s.unrouted
		s.unrouted = nil
		for _, h := range unrouted {
			if !h.done {
				s.routeHeldLocked(h)
			}
		}
	}
}

// rerouteParkedLocked assigns the parked deliveries of a group again.
func (s *Server) rerouteParkedLocked(name string) {
	parked := s.parked[name]
	if len(parked) == 0 {
		return
	}
	delete(s.parked, name)
	for _, d := range parked {
		if !d.h.done && d.sub == nil {
			s.assignLocked(d)
		}
	}
}

// leaveLocked removes a subscribe stream that ended from its group, and
// assigns its queued and unacknowledged deliveries to the group's other
// consumers.
func (s *Server) leaveLocked(sub *subStream) {
	sub.closed = true
	delete(s.subs, sub)
	if g := s.groups[sub.group]; g != nil {
		for i, x := range g.subs {
			if x == sub {
				g.subs = append(g.subs[:i], g.subs[i+1:]...)
				break
			}
		}
		if !sub.draining && s.opts.routingSettle > 0 && !g.hasLive(sub.consumerID, nil) {
			if g.ghosts == nil {
				g.ghosts = make(map[string]time.Time)
			}
			g.ghosts[sub.consumerID] = time.Now().Add(s.ghostGraceLocked())
		}
		if g.vacantLocked() {
			g.keepUntil = time.Now().Add(s.opts.noConsumerTimeout)
		}
	}
	var moved []*delivery
	for id, d := range sub.unacked {
		delete(sub.unacked, id)
		if !d.h.done && d.sub == sub && !d.acked {
			moved = append(moved, d)
		}
	}
	sortDeliveries(moved)
	moved = append(moved, sub.queue.drain(sub)...)
	for _, d := range moved {
		s.assignLocked(d)
	}
	s.poke()
}

// consumerDrainLocked marks a subscribe stream draining: it gets nothing new,
// and what is queued for it goes to the group's other consumers.
func (s *Server) consumerDrainLocked(sub *subStream) {
	if sub.draining {
		return
	}
	sub.draining = true
	for _, d := range sub.queue.drain(sub) {
		s.assignLocked(d)
	}
}

// settleLocked forgets the ghosts whose grace time passed and routes the
// parked deliveries of groups that are settled.
func (s *Server) settleLocked(now time.Time) {
	for name, g := range s.groups {
		for id, until := range g.ghosts {
			if now.After(until) {
				delete(g.ghosts, id)
				if g.vacantLocked() {
					g.keepUntil = now.Add(s.opts.noConsumerTimeout)
				}
			}
		}
		if g.vacantLocked() && now.After(g.keepUntil) {
			delete(s.groups, name)
		}
	}
	var ready []string
	for name := range s.parked {
		if g := s.groups[name]; g != nil && !now.Before(g.settled) {
			ready = append(ready, name)
		}
	}
	for _, name := range ready {
		s.rerouteParkedLocked(name)
	}
}

// expireLocked hands back, with NACK_REASON_UNAVAILABLE, the messages that
// waited too long for a consumer, and forgets stale waiting entries.
func (s *Server) expireLocked(now time.Time) {
	unrouted := s.unrouted[:0]
	for _, h := range s.unrouted {
		switch {
		case h.done:
		case now.After(h.deadline):
			s.finishLocked(h, &messagev1.Nack{
				Reason: messagev1.NackReason_NACK_REASON_UNAVAILABLE,
				Detail: "no consumer took the message in time",
			})
		default:
			unrouted = append(unrouted, h)
		}
	}
	clear(s.unrouted[len(unrouted):])
	s.unrouted = unrouted
	for name, list := range s.parked {
		kept := list[:0]
		for _, d := range list {
			switch {
			case d.h.done || d.sub != nil:
			case now.After(d.deadline):
				s.finishLocked(d.h, &messagev1.Nack{
					Reason: messagev1.NackReason_NACK_REASON_UNAVAILABLE,
					Detail: "no consumer of group " + name + " took the message in time",
				})
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
}
