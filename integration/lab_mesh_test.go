package integration

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	labMessages = 8000 // messages per producer in a fixed scenario
	labRate     = 1500 // per producer per second
	labTimeout  = 120 * time.Second
)

// labSpec is the processes of a lab mesh, each on a host of its own named
// after it: etcd members e1…, intermediates, consumers (id and group),
// producers.
type labSpec struct {
	etcd          int
	intermediates []string
	consumers     [][2]string
	producers     []string
	// intermediateArgs are more flags for every intermediate.
	intermediateArgs []string
}

// labMesh is a lab running a mesh: what runs where.
type labMesh struct {
	*lab
	etcdHosts []*host
	at        map[string]*host // process id or instance name -> its host now
	procs     map[string]*proc // process id or instance name -> its process now
	groups    map[string]string
	epoch     int // hosts added for moves
}

// twoGroups is the usual mesh: one etcd, two intermediates, group A of c1
// and c2, group B of c3, producers p1 and p2.
var twoGroups = labSpec{
	etcd:          1,
	intermediates: []string{"i1", "i2"},
	consumers:     [][2]string{{"c1", "A"}, {"c2", "A"}, {"c3", "B"}},
	producers:     []string{"p1", "p2"},
}

// buildLabMesh starts spec's etcd, intermediates and consumers, each on a
// host of its own; producers get their hosts now and start with produce.
func buildLabMesh(t *testing.T, spec labSpec) *labMesh {
	t.Helper()
	labLeakCheck(t)
	lm := &labMesh{lab: newLab(t), at: map[string]*host{}, procs: map[string]*proc{}, groups: map[string]string{}}
	lm.intermediateArgs = spec.intermediateArgs
	for i := 1; i <= spec.etcd; i++ {
		lm.etcdHosts = append(lm.etcdHosts, lm.addHost(fmt.Sprintf("e%d", i)))
	}
	for _, name := range spec.intermediates {
		lm.at[name] = lm.addHost(name)
	}
	for _, c := range spec.consumers {
		lm.at[c[0]] = lm.addHost(c[0])
		lm.groups[c[0]] = c[1]
	}
	for _, p := range spec.producers {
		lm.at[p] = lm.addHost(p)
	}
	lm.startEtcd(lm.etcdHosts...)
	for _, name := range spec.intermediates {
		lm.procs[name], _ = lm.startIntermediate(lm.at[name], name)
	}
	for _, c := range spec.consumers {
		lm.procs[c[0]] = lm.startConsumer(lm.at[c[0]], c[0], c[1])
	}
	for _, c := range spec.consumers {
		lm.waitSubscribed(c[0], c[1])
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("lab events:\n%s", lm.hist.around([]time.Time{lm.hist.start, time.Now()}))
		}
	})
	return lm
}

// waitSubscribed waits until consumer id of group is registered in etcd
// (<prefix>/consumers/<service>/<group>/<id>), which it does after it
// declared its group: a message admitted before a group is declared is not
// owed to it.
func (lm *labMesh) waitSubscribed(id, group string) {
	lm.t.Helper()
	key := "butterfly/consumers/intermediate/" + group + "/" + id
	waitUntil(lm.t, 15*time.Second, "consumer "+id+" registered at "+key, func() bool {
		return slices.Contains(lm.etcdKeys(lm.etcdHosts[0], key), key)
	})
}

// produce starts every producer of the spec: count messages at rate.
func (lm *labMesh) produce(spec labSpec, count, rate int) {
	lm.t.Helper()
	for _, p := range spec.producers {
		lm.procs[p] = lm.startProducer(lm.at[p], p, count, rate)
	}
}

// handledLines is how many lines the consumers of group wrote so far.
func (lm *labMesh) handledLines(group string) int {
	lm.hist.mu.Lock()
	defer lm.hist.mu.Unlock()
	n := 0
	for _, inc := range lm.hist.incs {
		if inc.group == group {
			n += countLines(inc.file)
		}
	}
	return n
}

// waitHandled waits until every group handled n messages.
func (lm *labMesh) waitHandled(n int) {
	lm.t.Helper()
	seen := map[string]bool{}
	for _, g := range lm.groups {
		if !seen[g] {
			seen[g] = true
			waitUntil(lm.t, labTimeout, fmt.Sprintf("group %s handled %d", g, n), func() bool { return lm.handledLines(g) >= n })
		}
	}
}

// hold lets a fault last d: the pace of the nemesis, not synchronisation.
func (lm *labMesh) hold(d time.Duration) {
	lm.hist.event("hold", "%v", d)
	time.Sleep(d)
}

// newHost adds a fresh host for name to move to.
func (lm *labMesh) newHost(name string) *host {
	lm.epoch++
	return lm.addHost(fmt.Sprintf("%s-%d", name, lm.epoch))
}

// move starts intermediate or consumer name on a new host (same name, new
// address) and returns the new host; the old process is left alone.
func (lm *labMesh) move(name string) *host {
	lm.t.Helper()
	h := lm.newHost(name)
	lm.at[name] = h
	if g, ok := lm.groups[name]; ok {
		lm.procs[name] = lm.startConsumer(h, name, g)
	} else {
		lm.procs[name], _ = lm.startIntermediate(h, name)
	}
	return h
}

// etcdMajorityCut reports whether h is cut from a majority of the etcd
// members (its leases can expire).
func (lm *labMesh) etcdMajorityCut(h *host) bool {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	cut := 0
	for _, e := range lm.etcdHosts {
		if lm.cuts[pairKey(h, e)] {
			cut++
		}
	}
	return cut > len(lm.etcdHosts)/2
}

// loseConsumersOn records every consumer on hosts as lost (its lease may
// have expired), with why.
func (lm *labMesh) loseConsumersOn(why string, hosts ...*host) {
	for _, h := range hosts {
		for id := range lm.groups {
			if lm.at[id] == h && !lm.procs[id].exited() {
				lm.hist.lose(lm.procs[id], why)
			}
		}
	}
}

// consumerHosts is the hosts consumers run on now.
func (lm *labMesh) consumerHosts() []*host {
	var hs []*host
	for id := range lm.groups {
		hs = append(hs, lm.at[id])
	}
	return hs
}

// names lists hosts' names.
func names(hs []*host) string {
	var s []string
	for _, h := range hs {
		s = append(s, h.name)
	}
	return strings.Join(s, ",")
}
