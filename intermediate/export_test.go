package intermediate

import "time"

// WithAckObserver makes the server report, for every ack frame of a
// subscribe stream, how long it held the server's lock and how long the
// frame took in all.
func WithAckObserver(f func(consumer string, held, total time.Duration)) Option {
	return func(o *options) { o.ackObserver = f }
}

// GroupQueue returns how many deliveries wait in the queues of group's
// subscribe streams, how many those streams sent unacknowledged, and how
// many messages the server holds.
func (s *Server) GroupQueue(group string) (queued, unacked, held int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.subs {
		if sub.group == group {
			queued += sub.queue.len()
			unacked += sub.unacked.len()
		}
	}
	return queued, unacked, s.heldTotal
}

// RouteOverhead is what each route a published message carries is charged
// beside its encoded size.
const RouteOverhead = routeOverhead

// ViewState returns how many messages wait for the view, how many keys'
// checks are kept and how many reads are under way (viewcheck.go).
func (s *Server) ViewState() (waits, checks, reads int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	live := 0
	for _, w := range s.viewWaits {
		if w.h != nil {
			live++
		}
	}
	return live, len(s.viewChecks), s.viewReads
}

// ViewQueueState returns what waits for reads held back by the bound on
// all reads: clients and streams queued, and their messages; and the reads
// counted against the open publish streams.
func (s *Server) ViewQueueState() (clients, streams, queued, streamReads int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.viewQueue {
		streams += len(c.streams)
		for _, p := range c.streams {
			queued += len(p.viewQueue)
		}
	}
	for p := range s.pubs {
		streamReads += p.viewReads
	}
	return len(s.viewPeers), streams, queued, streamReads
}

// WithAdvertiseCheckTimeout bounds the check of the advertised address
// (WithAdvertiseCheck) by d.
func WithAdvertiseCheckTimeout(d time.Duration) Option {
	return func(o *options) { o.advertiseCheckTimeout = d }
}
