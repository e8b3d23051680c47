package balancer

import (
	"slices"
	"sync"

	"google.golang.org/grpc/connectivity"

	"github.com/butterfly-mesh/butterfly/registry"
)

// Member is one instance as a balancer sees it.
type Member struct {
	// Instance is the instance as last resolved: name, address, metadata
	// (Metadata.Draining, Metadata.Epoch, ...).
	Instance registry.Instance
	// State is the state of the balancer's connection to the instance's
	// current address.
	State connectivity.State
	// Ejected reports that the instance is ejected for failing RPCs.
	Ejected bool
	// Moves counts the times this balancer saw the instance change its Addr
	// or Epoch. A subscriber that sees it grow knows the instance moved, even
	// when intermediate lists were coalesced.
	Moves uint64
}

// Ready reports whether the member can take RPCs now.
func (m Member) Ready() bool { return m.State == connectivity.Ready }

// Draining reports whether the member asked for no new work.
func (m Member) Draining() bool { return m.Instance.Metadata.Draining }

// Subscribe returns a channel that receives the members (sorted by instance
// name) of the balancer of channel, at once if one exists and after every
// change. channel is the policy config's "channel" or, by default, the dial
// target (e.g. "butterfly:///intermediate"). The channel holds one list;
// an unread list is replaced by a newer one, so a slow reader only misses
// intermediate lists. cancel stops the subscription and closes the channel;
// it is safe to call twice.
func Subscribe(channel string) (<-chan []Member, func()) {
	return hubs.subscribe(channel)
}

// hubs is the process-wide membership publication, keyed by channel.
var hubs = &hubSet{m: make(map[string]*hub)}

// hubSet holds one hub per channel.
type hubSet struct {
	mu sync.Mutex // lock order: balancer.mu, then hubSet.mu
	m  map[string]*hub
}

// hub is the publication point of one channel.
type hub struct {
	subs       map[*subscriber]struct{}
	publishers int
	last       []Member
	hasLast    bool
}

// subscriber is one Subscribe call.
type subscriber struct {
	ch chan []Member
}

func (hs *hubSet) getLocked(channel string) *hub {
	h := hs.m[channel]
	if h == nil {
		h = &hub{subs: make(map[*subscriber]struct{})}
		hs.m[channel] = h
	}
	return h
}

func (hs *hubSet) dropIfUnusedLocked(channel string, h *hub) {
	if len(h.subs) == 0 && h.publishers == 0 {
		delete(hs.m, channel)
	}
}

func (hs *hubSet) subscribe(channel string) (<-chan []Member, func()) {
	s := &subscriber{ch: make(chan []Member, 1)}
	hs.mu.Lock()
	h := hs.getLocked(channel)
	h.subs[s] = struct{}{}
	if h.hasLast {
		s.ch <- slices.Clone(h.last)
	}
	hs.mu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			hs.mu.Lock()
			defer hs.mu.Unlock()
			delete(h.subs, s)
			close(s.ch)
			hs.dropIfUnusedLocked(channel, h)
		})
	}
}

// register adds a publisher of channel; the returned func removes it.
func (hs *hubSet) register(channel string) func() {
	hs.mu.Lock()
	h := hs.getLocked(channel)
	h.publishers++
	hs.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			hs.mu.Lock()
			defer hs.mu.Unlock()
			h.publishers--
			hs.dropIfUnusedLocked(channel, h)
		})
	}
}

// publish sends members to every subscriber of channel, replacing what a
// subscriber has not read yet. It never blocks.
func (hs *hubSet) publish(channel string, members []Member) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	h := hs.m[channel]
	if h == nil {
		return
	}
	h.last, h.hasLast = members, true
	for s := range h.subs {
		select {
		case <-s.ch:
		default:
		}
		s.ch <- slices.Clone(members)
	}
}
