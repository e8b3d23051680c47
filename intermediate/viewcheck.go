package intermediate

import (
	"context"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

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
// it waits on at most maxUnknownRoutes names at a time, one publish stream
// has at most maxStreamViewReads reads under way and the intermediate
// maxViewReads; a finished read revisits only the messages that wait on its
// key, and is forgotten once none does. A route etcd found gone is dropped
// from the message (a consumer's name from its route), so what a message
// learned stays learned when it goes back and comes again.

const (
	// maxUnknownRoutes is the most names a message waits on at a time; the
	// next ones are read once those are answered.
	maxUnknownRoutes = 16
	// maxStreamViewReads bounds the reads under way for one publish stream.
	maxStreamViewReads = 8
	// maxViewReads bounds the reads under way at once.
	maxViewReads = 64
)

// viewCheck is the reads of a subscription key, and the messages that wait
// on the key. A read answers for the messages admitted before it began.
type viewCheck struct {
	reading bool        // a read is under way
	done    bool        // a read finished: the fields below are its answer
	after   uint64      // the answer is for the messages admitted up to after
	present bool        // the key exists (set when done without error)
	failed  bool        // the read failed: nothing is known
	waits   []*viewWait // may hold ended ones until the next review
	live    int         // of waits, those not ended
}

// viewWait is a message waiting for the view, or for etcd, to answer for its
// routes. It ends (h nil) when the message is routed or handed back.
type viewWait struct {
	h        *held
	deadline time.Time
	keys     []string // the keys it is listed under in viewChecks
}

// unvouchedLocked returns the keys of h's routes that the view cannot answer
// for and no read found gone: a group it does not declare, a consumer it
// does not know as registered in a group it declares. Routes of groups that
// handled h are left alone: they get no copy either way. It stops counting
// at maxUnknownRoutes.
func (s *Server) unvouchedLocked(h *held) []string {
	var keys []string
	for _, r := range h.routes {
		if r.GetHandled() {
			continue
		}
		var key string
		g := s.groups[r.GetGroup()]
		switch {
		case g == nil || !g.declared:
			key = registry.GroupKey(s.opts.prefix, s.service, r.GetGroup())
		case r.GetConsumer() == "":
			continue
		default:
			if _, ok := g.epochs[r.GetConsumer()]; ok {
				continue
			}
			key = registry.ConsumerKey(s.opts.prefix, s.service, r.GetGroup(), r.GetConsumer())
		}
		if c := s.viewChecks[key]; c != nil && c.done && !c.failed && !c.present && c.after >= h.order {
			continue // gone, read since h arrived
		}
		if !slices.Contains(keys, key) {
			keys = append(keys, key)
			if len(keys) == maxUnknownRoutes {
				break
			}
		}
	}
	return keys
}

// waitViewLocked makes h, whose routes name keys the view cannot answer
// for, wait, and reads the keys from etcd.
func (s *Server) waitViewLocked(h *held, keys []string) {
	w := &viewWait{h: h, deadline: time.Now().Add(s.opts.ownerWait)}
	s.viewWaits = append(s.viewWaits, w)
	s.listViewWaitLocked(w, keys)
}

// listViewWaitLocked lists w under each of keys and starts the reads that
// answer for it.
func (s *Server) listViewWaitLocked(w *viewWait, keys []string) {
	for _, key := range keys {
		c := s.viewChecks[key]
		if c == nil {
			c = &viewCheck{}
			if s.viewChecks == nil {
				s.viewChecks = make(map[string]*viewCheck)
			}
			s.viewChecks[key] = c
		}
		if !slices.Contains(w.keys, key) {
			w.keys = append(w.keys, key)
			c.waits = append(c.waits, w)
			c.live++
		}
		s.readKeyLocked(key, c, w.h)
	}
}

// readKeyLocked starts a read of key for h unless one under way will answer
// for it when it ends (having begun before h arrived, it revisits h when it
// ends), or one begun since h arrived answered (present: the watch will
// tell more; failed: h waits for the view). A read the bounds hold back is
// tried again at the janitor's next tick.
func (s *Server) readKeyLocked(key string, c *viewCheck, h *held) {
	switch {
	case c.reading:
		return
	case c.done && c.after >= h.order:
		return
	case s.viewReads >= maxViewReads, h.pub.viewReads >= maxStreamViewReads:
		return
	}
	if !s.trackLocked(1) {
		return // Serve is ending: h goes back with its stream
	}
	s.viewReads++
	h.pub.viewReads++
	c.reading = true
	go s.readKey(key, c, h.pub)
}

// readKey reads whether key exists, for at most the owner wait, and routes
// the messages the answer releases.
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
	resp, err := s.cli.Get(ctx, key, clientv3.WithCountOnly())
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.viewReads--
	p.viewReads--
	c.reading, c.done, c.after = false, true, after
	c.failed = err != nil
	c.present = err == nil && resp.Count > 0
	if err != nil && parent.Err() == nil {
		s.log.Debug("intermediate: cannot read a subscription key that a message's routes name and this intermediate's view does not know; the message waits for the view",
			"key", key, "err", err)
	}
	waits := c.waits
	c.waits = nil
	for _, w := range waits {
		if w.h != nil {
			c.waits = append(c.waits, w)
		}
	}
	s.reviewViewWaitsLocked(slices.Clone(c.waits))
	if c.live == 0 && s.viewChecks[key] == c {
		delete(s.viewChecks, key)
	}
}

// reviewViewWaitsLocked routes those of waits whose routes the view, or a
// read, now answers for; the others wait on, listed under what they now
// wait for. nil reviews every waiting message (the view changed).
func (s *Server) reviewViewWaitsLocked(waits []*viewWait) {
	if waits == nil {
		waits = slices.Clone(s.viewWaits)
	}
	for _, w := range waits {
		switch {
		case w.h == nil:
		case w.h.done:
			s.endViewWaitLocked(w)
		default:
			s.dropGoneRoutesLocked(w.h)
			keys := s.unvouchedLocked(w.h)
			if len(keys) == 0 {
				h := w.h
				s.endViewWaitLocked(w)
				s.routeOrHoldLocked(h)
				continue
			}
			s.listViewWaitLocked(w, keys)
		}
	}
}

// endViewWaitLocked ends w; a key's check that no message waits on any more
// is forgotten, unless its read is under way. viewWaits sheds w at the
// janitor's next tick.
func (s *Server) endViewWaitLocked(w *viewWait) {
	w.h = nil
	for _, key := range w.keys {
		c := s.viewChecks[key]
		if c == nil {
			continue
		}
		c.live--
		if c.live == 0 && !c.reading {
			delete(s.viewChecks, key)
		}
	}
	w.keys = nil
}

// expireViewWaitsLocked hands back the messages that waited for the view
// longer than the owner wait, and starts the reads the bounds held back for
// the others.
func (s *Server) expireViewWaitsLocked(now time.Time) {
	kept := s.viewWaits[:0]
	for _, w := range s.viewWaits {
		if w.h == nil {
			continue
		}
		h := w.h
		if h.done {
			s.endViewWaitLocked(w)
			continue
		}
		s.dropGoneRoutesLocked(h)
		keys := s.unvouchedLocked(h)
		switch {
		case len(keys) == 0:
			s.endViewWaitLocked(w)
			s.routeOrHoldLocked(h)
		case now.After(w.deadline):
			s.endViewWaitLocked(w)
			s.finishLocked(h, &messagev1.Nack{
				Reason: messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE,
				Detail: "its routes name what this intermediate's view of etcd does not know yet: " + strings.Join(keys, ", "),
			})
		default:
			kept = append(kept, w)
			s.listViewWaitLocked(w, keys)
		}
	}
	clear(s.viewWaits[len(kept):])
	s.viewWaits = kept
}

// dropGoneRoutesLocked drops from h's routes what a read begun since h
// arrived found gone: a group's route, or the consumer's name from a route
// of a group the view declares. The message carries its routes on when it
// goes back, so that another intermediate need not read them again.
func (s *Server) dropGoneRoutesLocked(h *held) {
	gone := func(key string) bool {
		c := s.viewChecks[key]
		return c != nil && c.done && !c.failed && !c.present && c.after >= h.order
	}
	kept := h.routes[:0]
	for _, r := range h.routes {
		if !r.GetHandled() {
			g := s.groups[r.GetGroup()]
			switch {
			case g == nil || !g.declared:
				if gone(registry.GroupKey(s.opts.prefix, s.service, r.GetGroup())) {
					continue
				}
			case r.GetConsumer() != "":
				if _, ok := g.epochs[r.GetConsumer()]; !ok && gone(registry.ConsumerKey(s.opts.prefix, s.service, r.GetGroup(), r.GetConsumer())) {
					r = &messagev1.Route{Group: r.GetGroup()}
				}
			}
		}
		kept = append(kept, r)
	}
	clear(h.routes[len(kept):])
	h.routes = kept
}
