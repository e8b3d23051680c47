package intermediate

import (
	"context"
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

// maxViewReads bounds the reads of subscription keys under way at once: a
// producer could otherwise make an intermediate read etcd once for every
// route it forges.
const maxViewReads = 64

// viewCheck is one read of a subscription key. It answers for the messages
// admitted before it began: those up to after, once started.
type viewCheck struct {
	started bool
	after   uint64
	done    bool
	present bool // the key exists (set when done without error)
	failed  bool // the read failed: nothing is known
}

// viewWait is a message waiting for the view, or for etcd, to answer for its
// routes.
type viewWait struct {
	h        *held
	deadline time.Time
}

// unvouchedLocked returns the keys of h's routes that the view cannot answer
// for and no check has found gone: a group it does not declare, a consumer
// it does not know as registered in a group it declares. Routes of groups
// that handled h are left alone: they get no copy either way.
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
		keys = append(keys, key)
	}
	return keys
}

// waitViewLocked makes h, whose routes name keys the view cannot answer
// for, wait, and reads each key from etcd unless a read begun after h
// arrived is under way.
func (s *Server) waitViewLocked(h *held, keys []string) {
	s.viewWaits = append(s.viewWaits, viewWait{h: h, deadline: time.Now().Add(s.opts.ownerWait)})
	s.checkKeysLocked(h, keys)
}

// checkKeysLocked reads each of keys from etcd for h unless a read that
// answers for h is under way, or found the key: then the watch will.
func (s *Server) checkKeysLocked(h *held, keys []string) {
	for _, key := range keys {
		if c := s.viewChecks[key]; c != nil && (!c.started || c.after >= h.order) && (!c.done || c.present) {
			continue
		}
		if s.viewReads >= maxViewReads || !s.trackLocked(1) {
			// Routes naming that many unknown keys at once are not an
			// intermediate's (a producer only sends back what one wrote),
			// or Serve is ending: h goes back at its deadline.
			continue
		}
		s.viewReads++
		c := &viewCheck{}
		if s.viewChecks == nil {
			s.viewChecks = make(map[string]*viewCheck)
		}
		s.viewChecks[key] = c
		go s.checkKey(key, c)
	}
}

// checkKey reads whether key exists, for at most the owner wait, and routes
// the messages the answer releases.
func (s *Server) checkKey(key string, c *viewCheck) {
	defer s.wg.Done()
	s.mu.Lock()
	c.started, c.after = true, s.admitted
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.ownerWait)
	resp, err := s.cli.Get(ctx, key, clientv3.WithCountOnly())
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.viewReads--
	c.done = true
	if err != nil {
		c.failed = true
		s.log.Warn("intermediate: cannot read a subscription key that a message's routes name and this intermediate's view does not know; the message waits for the view",
			"key", key, "err", err)
		return
	}
	c.present = resp.Count > 0
	s.reviewViewWaitsLocked()
}

// reviewViewWaitsLocked routes the waiting messages whose routes the view,
// or a check, now answers for.
func (s *Server) reviewViewWaitsLocked() {
	if len(s.viewWaits) == 0 {
		s.pruneViewChecksLocked()
		return
	}
	waits := s.viewWaits
	s.viewWaits = nil
	var still []viewWait
	for _, w := range waits {
		if w.h.done {
			continue
		}
		if keys := s.unvouchedLocked(w.h); len(keys) > 0 {
			// Reads the bound on reads held back, or that began before h
			// arrived, begin now.
			s.checkKeysLocked(w.h, keys)
			still = append(still, w)
			continue
		}
		s.routeOrHoldLocked(w.h)
	}
	// Routing a message makes none wait again: the view answers for it.
	s.viewWaits = append(still, s.viewWaits...)
	s.pruneViewChecksLocked()
}

// expireViewWaitsLocked hands back the messages that waited for the view
// longer than the owner wait.
func (s *Server) expireViewWaitsLocked(now time.Time) {
	kept := s.viewWaits[:0]
	for _, w := range s.viewWaits {
		switch {
		case w.h.done:
		case now.After(w.deadline):
			s.finishLocked(w.h, &messagev1.Nack{
				Reason: messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE,
				Detail: "its routes name a group or consumer this intermediate's view of etcd does not know yet",
			})
		default:
			kept = append(kept, w)
		}
	}
	clear(s.viewWaits[len(kept):])
	s.viewWaits = kept
	s.pruneViewChecksLocked()
}

// pruneViewChecksLocked forgets the finished checks once no message waits.
func (s *Server) pruneViewChecksLocked() {
	if len(s.viewWaits) > 0 {
		return
	}
	for key, c := range s.viewChecks {
		if c.done {
			delete(s.viewChecks, key)
		}
	}
}
