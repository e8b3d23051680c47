package integration

import (
	"slices"
	"testing"
	"time"
)

// oneGroup is a mesh with group A only (c1, c2).
var oneGroup = labSpec{
	etcd:          1,
	intermediates: []string{"i1", "i2"},
	consumers:     [][2]string{{"c1", "A"}, {"c2", "A"}},
	producers:     []string{"p1", "p2"},
}

// runLabScenario builds spec's mesh, starts the producers, runs fault once a
// quarter of the messages were handled, then checks the whole history.
func runLabScenario(t *testing.T, spec labSpec, fault func(lm *labMesh)) *labMesh {
	t.Helper()
	lm := buildLabMesh(t, spec)
	lm.produce(spec, labMessages, labRate)
	lm.waitHandled(len(spec.producers) * labMessages / 4)
	fault(lm)
	lm.hist.check(labTimeout)
	return lm
}

// TestLab_ConsumerCutFromIntermediate cuts c1 from i1 only: c1 stays
// registered and reachable through i2, so it keeps its messages.
func TestLab_ConsumerCutFromIntermediate(t *testing.T) {
	runLabScenario(t, twoGroups, func(lm *labMesh) {
		lm.cut(lm.at["c1"], lm.at["i1"])
		lm.hold(5 * time.Second)
		lm.heal(lm.at["c1"], lm.at["i1"])
	})
}

// TestLab_ProducerCutFromIntermediate cuts p1 from i1 only: p1 goes on
// through i2.
func TestLab_ProducerCutFromIntermediate(t *testing.T) {
	runLabScenario(t, oneGroup, func(lm *labMesh) {
		lm.cut(lm.at["p1"], lm.at["i1"])
		lm.hold(5 * time.Second)
		lm.heal(lm.at["p1"], lm.at["i1"])
	})
}

// TestLab_IntermediateCutFromEtcd cuts i1 from etcd but not from the
// components for three lease TTLs: once its lease is gone it must fence
// itself, and nothing is handled twice.
func TestLab_IntermediateCutFromEtcd(t *testing.T) {
	runLabScenario(t, oneGroup, func(lm *labMesh) {
		lm.cut(lm.at["i1"], lm.etcdHosts[0])
		waitUntil(lm.t, 6*time.Second, "i1's lease expired", func() bool {
			entries, err := lm.registered(lm.etcdHosts[0], "intermediate")
			return err == nil && !slices.ContainsFunc(entries, func(e lsEntry) bool { return e.Instance == "i1" })
		})
		lm.hist.event("expired", "i1's registration is gone")
		lm.hold(4 * time.Second)
		lm.heal(lm.at["i1"], lm.etcdHosts[0])
		lm.waitRegistered(lm.etcdHosts[0], "i1", lm.at["i1"], 15*time.Second)
	})
}

// TestLab_EtcdPartition splits a 3-member etcd for three lease TTLs: the
// leader isolated from every host, or a follower with c1 and i1 in the
// minority.
func TestLab_EtcdPartition(t *testing.T) {
	spec := oneGroup
	spec.etcd = 3
	for _, tc := range []struct {
		name     string
		minority func(lm *labMesh, leader *host) []*host
	}{
		{"LeaderIsolated", func(lm *labMesh, leader *host) []*host { return []*host{leader} }},
		{"MinorityWithComponents", func(lm *labMesh, leader *host) []*host {
			follower := lm.etcdHosts[0]
			if follower == leader {
				follower = lm.etcdHosts[1]
			}
			return []*host{follower, lm.at["c1"], lm.at["i1"]}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runLabScenario(t, spec, func(lm *labMesh) {
				minority := tc.minority(lm, lm.etcdLeader(lm.at["c1"]))
				lm.hist.event("split", "minority %s", names(minority))
				lm.partition(minority...)
				lm.holdCut(6 * time.Second)
			})
		})
	}
}

// TestLab_KillIntermediateConsumerFrozen SIGKILLs i1 while c1 is frozen for
// two lease TTLs.
func TestLab_KillIntermediateConsumerFrozen(t *testing.T) {
	runLabScenario(t, twoGroups, func(lm *labMesh) {
		c1 := lm.at["c1"]
		c1.freeze()
		lm.hold(time.Second)
		lm.at["i1"].kill()
		lm.hold(3 * time.Second)
		c1.thaw()
		lm.loseConsumersOn("frozen 4s", c1)
	})
}

// TestLab_MoveOldHostUnreachable starts i2 on a new host while the old host
// still runs i2 but is cut off from everyone; once healed, the old process
// sees its key taken and fences itself.
func TestLab_MoveOldHostUnreachable(t *testing.T) {
	lm := runLabScenario(t, oneGroup, func(lm *labMesh) {
		old, oldProc := lm.at["i2"], lm.procs["i2"]
		lm.partition(old)
		moved := lm.move("i2")
		lm.waitRegistered(lm.etcdHosts[0], "i2", moved, labTimeout)
		lm.hold(4 * time.Second)
		lm.healAll()
		select {
		case <-oldProc.done:
			lm.hist.event("exit", "old i2 on %s: %v", old.name, oldProc.err)
		case <-time.After(30 * time.Second):
			lm.t.Errorf("old i2 on %s still runs 30s after the partition healed", old.name)
		}
	})
	lm.waitRegistered(lm.etcdHosts[0], "i2", lm.at["i2"], 10*time.Second)
}
