package balancer

import (
	"fmt"
	"math/rand/v2"

	gbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// entry is one instance in a picker snapshot.
type entry struct {
	name   string
	state  connectivity.State
	picker gbalancer.Picker // the child's pick_first picker
	stats  *endpointStats
	done   func(gbalancer.DoneInfo)
	weight uint64
}

// picker is an immutable snapshot of the balancer's children. Pick reads it
// and the instances' atomic counters only: it never blocks and never takes
// a lock, and allocates nothing on success.
type picker struct {
	service string
	byName  map[string]*entry
	cands   []*entry // candidates of unpinned picks
	cum     []uint64 // cum[i] is the total weight of cands[:i+1]
	err     error    // the unpinned pick error when cands is empty
}

// newPicker builds the snapshot. Unpinned picks go, by the first non-empty
// tier: to READY, non-draining, non-ejected instances (those in localZone
// only, when any of them is there); else to READY draining ones; else to
// READY ejected ones.
func newPicker(service, localZone string, children []*child, noneErr error) *picker {
	p := &picker{service: service, byName: make(map[string]*entry, len(children))}
	var zone, ready, draining, ejected []*entry
	waiting := false
	for _, c := range children {
		w := uint64(c.inst.Metadata.Weight)
		if w == 0 {
			w = 1
		}
		e := &entry{
			name:   c.name,
			state:  c.state.ConnectivityState,
			picker: c.state.Picker,
			stats:  c.stats,
			done:   c.done,
			weight: w,
		}
		p.byName[c.name] = e
		switch {
		case e.state == connectivity.Connecting || e.state == connectivity.Idle:
			waiting = true
		case e.state != connectivity.Ready:
		case !c.ejectedUntil.IsZero():
			ejected = append(ejected, e)
		case c.inst.Metadata.Draining:
			draining = append(draining, e)
		default:
			ready = append(ready, e)
			if localZone != "" && c.inst.Metadata.Zone == localZone {
				zone = append(zone, e)
			}
		}
	}
	switch {
	case len(zone) > 0:
		p.cands = zone
	case len(ready) > 0:
		p.cands = ready
	case len(draining) > 0:
		p.cands = draining
	case len(ejected) > 0:
		p.cands = ejected
	case noneErr != nil:
		p.err = noneErr
	case waiting:
		p.err = gbalancer.ErrNoSubConnAvailable
	default:
		// Not a status error: a wait-for-ready RPC waits for a new picker,
		// any other fails with Unavailable and this message.
		p.err = fmt.Errorf("butterfly: no ready instance of service %q: all %d in TRANSIENT_FAILURE", service, len(children))
	}
	p.cum = make([]uint64, len(p.cands))
	var total uint64
	for i, e := range p.cands {
		total += e.weight
		p.cum[i] = total
	}
	return p
}

// Pick routes a pinned RPC to its instance and any other to the less loaded
// (outstanding RPCs over weight) of two instances drawn by weight.
func (p *picker) Pick(info gbalancer.PickInfo) (gbalancer.PickResult, error) {
	if name, ok := InstanceFromContext(info.Ctx); ok {
		return p.pickPinned(info, name)
	}
	switch len(p.cands) {
	case 0:
		return gbalancer.PickResult{}, p.err
	case 1:
		return p.use(p.cands[0], info)
	}
	a, b := p.cands[p.draw()], p.cands[p.draw()]
	// Compare outstanding/weight; a wins ties, so with no load (or equal
	// load per weight) picks follow the weights of the draws.
	if uint64(max(a.stats.outstanding.Load(), 0))*b.weight <= uint64(max(b.stats.outstanding.Load(), 0))*a.weight {
		return p.use(a, info)
	}
	return p.use(b, info)
}

// draw returns the index of a candidate drawn with probability proportional
// to its weight.
func (p *picker) draw() int {
	r := rand.Uint64N(p.cum[len(p.cum)-1])
	lo, hi := 0, len(p.cum)-1
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if p.cum[mid] > r {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

func (p *picker) pickPinned(info gbalancer.PickInfo, name string) (gbalancer.PickResult, error) {
	e := p.byName[name]
	if e == nil {
		return gbalancer.PickResult{}, instanceUnavailable(name, "not an instance of service "+p.service)
	}
	switch e.state {
	case connectivity.Ready:
		return p.use(e, info)
	case connectivity.TransientFailure:
		// The child's picker fails with why the connection failed (refused,
		// a TLS handshake error): the caller may tell a lasting cause.
		reason := "connection in TRANSIENT_FAILURE"
		if _, err := e.picker.Pick(info); err != nil {
			reason += ": " + status.Convert(err).Message()
		}
		return gbalancer.PickResult{}, instanceUnavailable(name, reason)
	default:
		// CONNECTING (new or moved) or IDLE (being reconnected): wait for
		// the picker that has its new connection READY.
		return gbalancer.PickResult{}, gbalancer.ErrNoSubConnAvailable
	}
}

// use picks e's connection and counts the RPC until its Done.
func (p *picker) use(e *entry, info gbalancer.PickInfo) (gbalancer.PickResult, error) {
	res, err := e.picker.Pick(info)
	if err != nil {
		return res, err
	}
	e.stats.outstanding.Add(1)
	if childDone := res.Done; childDone != nil {
		res.Done = func(di gbalancer.DoneInfo) {
			childDone(di)
			e.done(di)
		}
	} else {
		res.Done = e.done
	}
	return res, nil
}
