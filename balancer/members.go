package balancer

import (
	"slices"
	"sync"

	"google.golang.org/grpc/attributes"
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

// Members is where the balancer of one client connection publishes its
// members (sorted by instance name) after every change. Create one with
// NewMembers, attach it to the connection's resolver state with
// AttachMembers (butterfly.WithMembers does this), and Subscribe to it.
// It belongs to the connection it is attached to: nothing is shared
// between connections. When the balancer closes (the connection closes,
// or goes idle), its subscribers get an empty list and the members are
// forgotten: a later Subscribe gets nothing until a balancer publishes
// again.
type Members struct {
	mu      sync.Mutex
	subs    map[*subscriber]struct{}
	last    []Member
	hasLast bool
}

// subscriber is one Subscribe call.
type subscriber struct {
	ch chan []Member
}

// NewMembers returns a publication point with no members yet.
func NewMembers() *Members {
	return &Members{subs: make(map[*subscriber]struct{})}
}

// membersKey is the resolver state attribute holding the connection's
// Members.
type membersKey struct{}

// AttachMembers returns attrs with m attached: the balancer of the
// connection whose resolver states carry it publishes its members to m.
func AttachMembers(attrs *attributes.Attributes, m *Members) *attributes.Attributes {
	return attrs.WithValue(membersKey{}, m)
}

// membersOf returns the Members attached to attrs, or nil.
func membersOf(attrs *attributes.Attributes) *Members {
	m, _ := attrs.Value(membersKey{}).(*Members)
	return m
}

// Subscribe returns a channel that receives the members, at once if the
// balancer has published them and after every change. The channel holds
// one list; an unread list is replaced by a newer one, so a slow reader
// only misses intermediate lists. cancel stops the subscription and closes
// the channel; it is safe to call twice.
func (m *Members) Subscribe() (<-chan []Member, func()) {
	s := &subscriber{ch: make(chan []Member, 1)}
	m.mu.Lock()
	m.subs[s] = struct{}{}
	if m.hasLast {
		s.ch <- slices.Clone(m.last)
	}
	m.mu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			m.mu.Lock()
			defer m.mu.Unlock()
			delete(m.subs, s)
			close(s.ch)
		})
	}
}

// publish sends members to every subscriber, replacing what a subscriber
// has not read yet. It never blocks.
func (m *Members) publish(members []Member) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.last, m.hasLast = members, true
	m.sendLocked(members)
}

// forget publishes an empty list, the members of a closed balancer, and
// keeps nothing for later subscribers.
func (m *Members) forget() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.last, m.hasLast = nil, false
	m.sendLocked([]Member{})
}

// sendLocked hands members to every subscriber, in place of a list it has
// not read.
func (m *Members) sendLocked(members []Member) {
	for s := range m.subs {
		select {
		case <-s.ch:
		default:
		}
		s.ch <- slices.Clone(members)
	}
}
