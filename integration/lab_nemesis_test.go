package integration

import (
	"math/rand"
	"os"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// nemesis is one kind of fault of a random schedule: run applies it, lets
// it last hold, and undoes it.
type nemesis struct {
	name string
	run  func(lm *labMesh, r *rand.Rand, hold time.Duration)
}

// nemeses are the faults a random schedule draws from.
var nemeses = []nemesis{
	{"cut-pair", func(lm *labMesh, r *rand.Rand, hold time.Duration) {
		hs := lm.liveHosts()
		i := r.Intn(len(hs))
		j := (i + 1 + r.Intn(len(hs)-1)) % len(hs)
		lm.cut(hs[i], hs[j])
		lm.holdCut(hold)
	}},
	{"isolate", func(lm *labMesh, r *rand.Rand, hold time.Duration) {
		hs := lm.liveHosts()
		lm.partition(hs[r.Intn(len(hs))])
		lm.holdCut(hold)
	}},
	{"etcd-split", func(lm *labMesh, r *rand.Rand, hold time.Duration) {
		// One etcd member (a minority of three) and about a third of the
		// other hosts on one side, the rest on the other.
		minority := []*host{lm.etcdHosts[r.Intn(len(lm.etcdHosts))]}
		for _, h := range lm.liveHosts() {
			if !lm.isEtcd(h) && r.Intn(3) == 0 {
				minority = append(minority, h)
			}
		}
		lm.hist.event("split", "minority %s", names(minority))
		lm.partition(minority...)
		lm.holdCut(hold)
	}},
	{"freeze", func(lm *labMesh, r *rand.Rand, hold time.Duration) {
		var hs []*host
		for _, h := range lm.liveHosts() {
			if !lm.isEtcd(h) {
				hs = append(hs, h)
			}
		}
		h := hs[r.Intn(len(hs))]
		h.freeze()
		lm.hold(hold)
		h.thaw()
		if hold >= time.Second { // half the lease TTL: the lease may be gone
			lm.loseConsumersOn("frozen "+hold.String(), h)
		}
	}},
	{"kill-move", func(lm *labMesh, r *rand.Rand, hold time.Duration) {
		name := lm.movable()[r.Intn(len(lm.movable()))]
		lm.at[name].kill()
		lm.hold(hold)
		lm.move(name)
	}},
	{"drain-move", func(lm *labMesh, r *rand.Rand, hold time.Duration) {
		name := lm.movable()[r.Intn(len(lm.movable()))]
		p := lm.procs[name]
		if _, consumer := lm.groups[name]; consumer {
			lm.hist.event("sigterm", "%s", name)
			lm.hist.lose(p, "drained")
			p.signal(syscall.SIGTERM)
		} else {
			// An earlier step (an etcd split) may have cost the
			// intermediate its lease: drain names a registration, so wait
			// until it has registered again.
			lm.waitRegistered(lm.etcdHosts[0], name, lm.at[name], 15*time.Second)
			lm.drain(lm.etcdHosts[0], name)
		}
		select {
		case <-p.done:
		case <-time.After(45 * time.Second):
			lm.t.Errorf("%s still runs 45s after it was told to drain", name)
			lm.at[name].kill()
		}
		lm.hold(hold)
		lm.move(name)
	}},
}

// liveHosts is the hosts with running processes, by name.
func (lm *labMesh) liveHosts() []*host {
	lm.mu.Lock()
	all := append([]*host(nil), lm.hosts...)
	lm.mu.Unlock()
	var hs []*host
	for _, h := range all {
		if len(h.running()) > 0 {
			hs = append(hs, h)
		}
	}
	sort.Slice(hs, func(i, j int) bool { return hs[i].name < hs[j].name })
	return hs
}

func (lm *labMesh) isEtcd(h *host) bool {
	for _, e := range lm.etcdHosts {
		if e == h {
			return true
		}
	}
	return false
}

// movable is the intermediates and consumers, by name.
func (lm *labMesh) movable() []string {
	var ns []string
	for name := range lm.at {
		if _, consumer := lm.groups[name]; consumer || lm.at[name].name[0] == 'i' {
			ns = append(ns, name)
		}
	}
	sort.Strings(ns)
	return ns
}

// holdCut lets the cuts last hold; consumers cut from the etcd majority
// for half a lease TTL or more are recorded as lost; then it heals all.
func (lm *labMesh) holdCut(hold time.Duration) {
	lm.hold(hold)
	if hold >= time.Second {
		for _, h := range lm.consumerHosts() {
			if lm.etcdMajorityCut(h) {
				lm.loseConsumersOn("cut from etcd for "+hold.String(), h)
			}
		}
	}
	lm.healAll()
}

// labSeed is BUTTERFLY_LAB_SEED, or a new seed.
func labSeed(t *testing.T) int64 {
	if s := os.Getenv("BUTTERFLY_LAB_SEED"); s != "" {
		seed, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("BUTTERFLY_LAB_SEED=%q: %v", s, err)
		}
		return seed
	}
	return time.Now().UnixNano()
}

// TestLab_RandomSchedule runs a random schedule of nemeses (5 steps, 40
// with BUTTERFLY_SOAK=1) over two groups and a 3-member etcd.
func TestLab_RandomSchedule(t *testing.T) {
	seed := labSeed(t)
	replay := func() {
		t.Logf("seed %d; replay: BUTTERFLY_LAB_SEED=%d go test -race -run TestLab_RandomSchedule ./integration/", seed, seed)
	}
	replay()
	t.Cleanup(func() {
		if t.Failed() {
			replay()
		}
	})
	r := rand.New(rand.NewSource(seed))
	steps := 5
	if os.Getenv("BUTTERFLY_SOAK") != "" {
		steps = 40
	}
	spec := twoGroups
	spec.etcd = 3
	lm := buildLabMesh(t, spec)
	const rate = 1000
	lm.produce(spec, rate*(4*steps+4), rate)
	lm.waitHandled(len(spec.producers) * rate)
	for i := 0; i < steps; i++ {
		n := nemeses[r.Intn(len(nemeses))]
		hold := time.Second + time.Duration(r.Intn(2000))*time.Millisecond
		pause := 500*time.Millisecond + time.Duration(r.Intn(1000))*time.Millisecond
		lm.hist.event("nemesis", "step %d: %s for %v", i+1, n.name, hold)
		n.run(lm, r, hold)
		lm.hold(pause)
	}
	lm.hist.event("nemesis", "schedule done")
	lm.hist.check(labTimeout + time.Duration(steps)*5*time.Second)
}
