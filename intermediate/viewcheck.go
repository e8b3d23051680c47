package intermediate

import (
	"context"
	"slices"
	"strings"
	"time"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/registry"
)

// A message sent again carries what its earlier attempts learned
// (Message.routes), from the intermediates that routed it then, by their own
// view of the subscriptions. This one's view can lag theirs (a watch behind,
// or this intermediate cut off from etcd while the components still reach
// it). A route naming a group this view does not declare, or a consumer it
// does not know as registered in its group, is then not evidence that the
// group was deleted or the consumer left: routing past it would skip a
// group that exists (its copy acknowledged without it) or give another
// consumer a message the one named may have handled (twice while both stay
// registered). Such a message waits: for the view to learn the names, or for
// etcd to say, in a read begun after the message arrived, that the keys are
// gone; then it is routed. One that waits longer than the owner wait goes
// back to its producer (NACK_REASON_OWNER_UNREACHABLE), which sends it
// through another intermediate.
//
// Producers only send back the routes intermediates wrote, but one could
// forge them, so what a message may make this intermediate do is bounded:
// it waits on at most maxUnknownRoutes names at a time and is looked at
// again once all of them are answered; one publish stream has at most
// maxStreamViewReads reads under way and the intermediate maxViewReads; a
// check is forgotten once no message waits on its key; the janitor looks
// only at messages past their deadline or whose reads the bounds held back.
// A route etcd found gone is dropped from the message (a consumer's name
// from its route), so what a message learned stays learned when it goes
// back and comes again. A key whose value the view would skip (malformed,
// written by hand) counts as gone, as it does for routing.

const (
	// maxUnknownRoutes is the most names a message waits on at a time; the
	// next ones are read once those are answered.
	maxUnknownRoutes = 16
	// maxStreamViewReads bounds the reads under way for one publish stream.
	maxStreamViewReads = 8
	// maxViewReads bounds the reads under way at once.
	maxViewReads = 64
)

// viewCheck is the reads of one subscription key, and the messages that
// wait on it. A read answers for the messages admitted before it began.
type viewCheck struct {
	group, consumer string // the key's names ("" consumer: a group's key)

	reading bool        // a read is under way
	done    bool        // a read finished: the fields below are its answer
	after   uint64      // the answer is for the messages admitted up to after
	present bool        // the key exists with a value the view takes
	failed  bool        // the read failed: nothing is known
	waits   []*viewWait // may hold ended ones until the key's next answer
	live    int         // of waits, those not ended
}

// viewWait is a message waiting for the view, or for etcd, to answer for its
// routes. It ends (h nil) when the message is routed or handed back.
type viewWait struct {
	h        *held
	deadline time.Time
	keys     []string // what it waits on now, listed in viewChecks
	heldBack bool     // a read it needs was held back by its stream's bound: the janitor starts it
	queued   bool     // in its stream's viewQueue (queueReadLocked): a read it needs was held back by maxViewReads
}

// viewName is one name of a route the view does not know.
type viewName struct {
	key, group, consumer string
}

// sortRoutesLocked drops from h's routes what a read begun since h arrived
// found gone (a group's route, or a consumer's name from its route), and
// returns the first maxUnknownRoutes names of the rest that the view cannot
// answer for: a group it does not declare, a consumer it does not know as
// registered in a group it declares. Routes of groups that handled h are
// left alone: they get no copy either way. It stops at the last name it
// returns: the routes after it wait for the next call, so a call costs
// about as many routes as names, not all of h's.
func (s *Server) sortRoutesLocked(h *held) []viewName {
	var names []viewName
	gone := func(key string) bool {
		c := s.viewChecks[key]
		return c != nil && c.done && !c.failed && !c.present && c.after >= h.order
	}
	kept := h.routes[:0]
	for i, r := range h.routes {
		if len(names) == maxUnknownRoutes {
			kept = append(kept, h.routes[i:]...)
			break
		}
		if !r.GetHandled() {
			var n viewName
			g := s.groups[r.GetGroup()]
			switch {
			case g == nil || !g.declared:
				n = viewName{key: registry.GroupKey(s.opts.prefix, s.service, r.GetGroup()), group: r.GetGroup()}
			case r.GetConsumer() != "":
				if _, ok := g.epochs[r.GetConsumer()]; !ok {
					n = viewName{key: registry.ConsumerKey(s.opts.prefix, s.service, r.GetGroup(), r.GetConsumer()), group: r.GetGroup(), consumer: r.GetConsumer()}
				}
			}
			switch {
			case n.key == "":
			case gone(n.key):
				if n.consumer == "" {
					continue // the group is gone: no copy, no route
				}
				r = &messagev1.Route{Group: r.GetGroup()} // the consumer is gone: its group picks anew
			case !slices.ContainsFunc(names, func(m viewName) bool { return m.key == n.key }):
				names = append(names, n)
			}
		}
		kept = append(kept, r)
	}
	clear(h.routes[len(kept):])
	h.routes = kept
	return names
}

// waitViewLocked makes h, whose routes name what the view cannot answer
// for, wait, and reads the names from etcd.
func (s *Server) waitViewLocked(h *held, names []viewName) {
	w := &viewWait{h: h, deadline: time.Now().Add(s.opts.ownerWait)}
	s.viewWaits = append(s.viewWaits, w)
	s.listViewWaitLocked(w, names)
}

// listViewWaitLocked makes w wait on names, and no longer on what it waited
// on before, and starts the reads that answer for it.
func (s *Server) listViewWaitLocked(w *viewWait, names []viewName) {
	old := w.keys
	w.keys = make([]string, 0, len(names))
	for _, n := range names {
		w.keys = append(w.keys, n.key)
	}
	for _, key := range old {
		if !slices.Contains(w.keys, key) {
			s.unlistLocked(w, key)
		}
	}
	for _, n := range names {
		c := s.viewChecks[n.key]
		if c == nil {
			c = &viewCheck{group: n.group, consumer: n.consumer}
			if s.viewChecks == nil {
				s.viewChecks = make(map[string]*viewCheck)
			}
			s.viewChecks[n.key] = c
		}
		if !slices.Contains(old, n.key) {
			c.waits = append(c.waits, w)
			c.live++
		}
	}
	s.startReadsLocked(w)
}

// unlistLocked takes w off key's check, which is forgotten once no message
// waits on it and no read of it is under way.
func (s *Server) unlistLocked(w *viewWait, key string) {
	c := s.viewChecks[key]
	if c == nil {
		return
	}
	if i := slices.Index(c.waits, w); i >= 0 {
		c.waits = slices.Delete(c.waits, i, i+1)
	}
	c.live--
	if c.live <= 0 && !c.reading {
		delete(s.viewChecks, key)
	}
}

// readKeyLocked starts a read of key for h unless one under way will answer
// for it (having begun before h arrived, its end looks at h again), or one
// begun since h arrived answered (present: the watch will tell more;
// failed: h waits for the view). It says whether a bound held the read
// back.
func (s *Server) readKeyLocked(key string, c *viewCheck, h *held) readStart {
	switch {
	case c.reading:
		return readStarted
	case c.done && c.after >= h.order:
		return readStarted
	case s.viewReads >= maxViewReads:
		return readHeldBack
	case h.pub.viewReads >= maxStreamViewReads:
		return readStreamHeldBack
	}
	if !s.trackLocked(1) {
		return readStarted // Serve is ending: h goes back with its stream
	}
	s.viewReads++
	h.pub.viewReads++
	c.reading = true
	go s.readKey(key, c, h.pub)
	return readStarted
}

// readStart is what readKeyLocked did.
type readStart int

const (
	readStarted        readStart = iota // started, under way or not needed
	readHeldBack                        // held back by maxViewReads
	readStreamHeldBack                  // held back by maxStreamViewReads
)

// startReadsLocked starts the reads w needs that the bounds allow, and
// queues it for a free read (queueReadLocked) or marks it for the janitor
// (its stream's bound) when they hold one back.
func (s *Server) startReadsLocked(w *viewWait) {
	w.heldBack = false
	for _, key := range w.keys {
		c := s.viewChecks[key]
		if c == nil {
			continue
		}
		switch s.readKeyLocked(key, c, w.h) {
		case readHeldBack:
			if !w.queued {
				w.queued = true
				s.queueReadLocked(w)
			}
			return
		case readStreamHeldBack:
			w.heldBack = true
		}
	}
}

// viewPeer is a client with streams whose messages are queued for a read
// maxViewReads holds back.
type viewPeer struct {
	key     string       // peerKey of its streams
	streams []*pubStream // in turn
}

// queueReadLocked queues w for a free read: under its stream, the stream
// under its client (peerKey), the client in the server's viewQueue.
func (s *Server) queueReadLocked(w *viewWait) {
	p := w.h.pub
	p.viewQueue = append(p.viewQueue, w)
	if p.viewQueued {
		return
	}
	p.viewQueued = true
	c := s.viewPeers[p.client]
	if c == nil {
		c = &viewPeer{key: p.client}
		if s.viewPeers == nil {
			s.viewPeers = make(map[string]*viewPeer)
		}
		s.viewPeers[p.client] = c
		s.viewQueue = append(s.viewQueue, c)
	}
	c.streams = append(c.streams, p)
}

// startQueuedReadsLocked gives the reads free under maxViewReads to the
// clients whose messages are queued for them in turn, and within a client
// to its streams in turn, oldest message first within a stream: a client
// with many streams, or a stream with many messages waiting, takes no more
// of them than one with a single message.
func (s *Server) startQueuedReadsLocked() {
	for len(s.viewQueue) > 0 && s.viewReads < maxViewReads {
		c := s.viewQueue[0]
		s.viewQueue[0] = nil
		s.viewQueue = s.viewQueue[1:]
		p := c.streams[0]
		c.streams[0] = nil
		c.streams = c.streams[1:]
		var w *viewWait
		for w == nil && len(p.viewQueue) > 0 {
			w = p.viewQueue[0]
			p.viewQueue[0] = nil
			p.viewQueue = p.viewQueue[1:]
			w.queued = false
			if w.h == nil || w.h.done {
				w = nil
			}
		}
		if len(p.viewQueue) > 0 {
			c.streams = append(c.streams, p)
		} else {
			p.viewQueue, p.viewQueued = nil, false
		}
		if len(c.streams) > 0 {
			s.viewQueue = append(s.viewQueue, c)
		} else {
			delete(s.viewPeers, c.key)
		}
		if w != nil {
			s.startReadsLocked(w)
		}
	}
	if len(s.viewQueue) == 0 {
		s.viewQueue = nil
	}
}

// readKey reads key, for at most the owner wait, and looks again at the
// messages waiting on it whose every name is answered.
func (s *Server) readKey(key string, c *viewCheck, p *pubStream) {
	defer s.wg.Done()
	s.mu.Lock()
	after := s.admitted // the answer is for the messages admitted so far
	parent := s.viewCtx
	s.mu.Unlock()
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithTimeout(parent, s.opts.ownerWait)
	resp, err := s.cli.Get(ctx, key)
	cancel()
	present := false
	if err == nil && len(resp.Kvs) > 0 {
		// Present as the view would take it: a group's key whatever its
		// value, a consumer's key only with a value that parses.
		present = true
		if c.consumer != "" {
			_, perr := registry.ParseConsumerValue(c.group, c.consumer, resp.Kvs[0].Value)
			present = perr == nil
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.viewReads--
	p.viewReads--
	c.reading, c.done, c.after = false, true, after
	c.failed, c.present = err != nil, present
	if err != nil && parent.Err() == nil {
		s.log.Debug("intermediate: cannot read a subscription key that a message's routes name and this intermediate's view does not know; the message waits for the view",
			"key", key, "err", err)
	}
	// The read this one held goes to the next stream queued for one,
	// before the messages this answer releases ask for more.
	s.startQueuedReadsLocked()
	waits := c.waits
	c.waits = nil
	for _, w := range waits {
		if w.h != nil {
			c.waits = append(c.waits, w)
		}
	}
	for _, w := range slices.Clone(c.waits) {
		if w.h != nil && !s.readingForLocked(w) {
			s.reviewLocked(w)
		}
	}
	if c.live <= 0 && s.viewChecks[key] == c {
		delete(s.viewChecks, key)
	}
}

// readingForLocked reports whether a read w needs is under way: one of a
// key that no answer since w's message arrived answers for.
func (s *Server) readingForLocked(w *viewWait) bool {
	for _, key := range w.keys {
		if c := s.viewChecks[key]; c != nil && c.reading && !(c.done && c.after >= w.h.order) {
			return true
		}
	}
	return false
}

// reviewLocked routes w's message if its routes are now answered for, and
// otherwise makes it wait on the names still open.
func (s *Server) reviewLocked(w *viewWait) {
	h := w.h
	if h.done {
		s.endViewWaitLocked(w)
		return
	}
	names := s.sortRoutesLocked(h)
	if len(names) == 0 {
		s.endViewWaitLocked(w)
		s.routeOrHoldLocked(h)
		return
	}
	s.listViewWaitLocked(w, names)
}

// reviewViewWaitsLocked looks again at every waiting message whose reads
// are not under way: the view changed.
func (s *Server) reviewViewWaitsLocked() {
	for _, w := range slices.Clone(s.viewWaits) {
		if w.h != nil && !s.readingForLocked(w) {
			s.reviewLocked(w)
		}
	}
}

// endViewWaitLocked ends w. viewWaits sheds it at the janitor's next tick.
func (s *Server) endViewWaitLocked(w *viewWait) {
	w.h = nil
	for _, key := range w.keys {
		s.unlistLocked(w, key)
	}
	w.keys = nil
}

// expireViewWaitsLocked hands back the messages that waited for the view
// longer than the owner wait, and starts the reads the bounds held back.
func (s *Server) expireViewWaitsLocked(now time.Time) {
	kept := s.viewWaits[:0]
	for _, w := range s.viewWaits {
		h := w.h
		switch {
		case h == nil:
			continue
		case h.done:
			s.endViewWaitLocked(w)
			continue
		case now.After(w.deadline):
			names := s.sortRoutesLocked(h)
			s.endViewWaitLocked(w)
			if len(names) == 0 {
				s.routeOrHoldLocked(h)
				continue
			}
			keys := make([]string, len(names))
			for i, n := range names {
				keys[i] = n.key
			}
			s.finishLocked(h, &messagev1.Nack{
				Reason: messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE,
				Detail: "its routes name what this intermediate's view of etcd does not know yet: " + strings.Join(keys, ", "),
			})
			continue
		case w.heldBack && !w.queued:
			// Start what its stream's bound allows now; the reads' ends
			// look at h.
			s.startReadsLocked(w)
		}
		kept = append(kept, w)
	}
	clear(s.viewWaits[len(kept):])
	s.viewWaits = kept
}
