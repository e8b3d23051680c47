package integration

import (
	"os"
	"slices"
	"strings"
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

// TestLab_ConsumerCutFromIntermediate cuts c1 from i1 only for 10s: c1
// stays registered and reachable through i2, so it keeps its messages and
// none is handled twice.
func TestLab_ConsumerCutFromIntermediate(t *testing.T) {
	runLabScenario(t, twoGroups, func(lm *labMesh) {
		lm.cut(lm.at["c1"], lm.at["i1"])
		lm.hold(10 * time.Second)
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
// components for three lease TTLs: its key goes with its lease, and the
// components, which follow etcd, stop using it, so nothing is handled twice;
// once healed it puts its key back. It does not stop serving by itself: it
// cannot tell this cut from an etcd outage, through which traffic must not
// stop (TestIntegration_EtcdOutage).
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

// TestLab_IntermediateFencesOnLeaseLoss cuts i1, started with
// --fence-on-lease-loss, from etcd but not from the components: once its
// lease is lost it drains, hands back what it holds and exits 1 naming the
// lease; started again on its host once healed, it serves again. Nothing is
// lost or handled twice.
func TestLab_IntermediateFencesOnLeaseLoss(t *testing.T) {
	spec := oneGroup
	spec.intermediateArgs = []string{"--fence-on-lease-loss"}
	runLabScenario(t, spec, func(lm *labMesh) {
		i1 := lm.procs["i1"]
		lm.cut(lm.at["i1"], lm.etcdHosts[0])
		// The lease TTL (2s), the client's deadline check (0.5s), the drain
		// (5s at most) and the graceful stop.
		if code := i1.wait(15 * time.Second); code != exitError {
			lm.t.Errorf("i1 cut from etcd with --fence-on-lease-loss exited %d, want %d", code, exitError)
		}
		if out := readFile(i1.stderr); !strings.Contains(lastLine(out), "registration lost its lease: fenced") {
			lm.t.Errorf("i1's last line = %q, want it to say its registration lost its lease", lastLine(out))
		}
		lm.hist.event("fenced", "i1 exited after its lease was lost")
		lm.heal(lm.at["i1"], lm.etcdHosts[0])
		lm.procs["i1"], _ = lm.startIntermediate(lm.at["i1"], "i1")
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

// TestLab_KillIntermediateConsumerFrozen SIGKILLs i1 and starts it on
// another host while c3, group B's only consumer, is frozen for 3s (within
// its lease): each group handles every message exactly once.
func TestLab_KillIntermediateConsumerFrozen(t *testing.T) {
	runLabScenario(t, twoGroups, func(lm *labMesh) {
		c3 := lm.at["c3"]
		c3.freeze()
		lm.hold(500 * time.Millisecond)
		lm.at["i1"].kill()
		lm.move("i1")
		lm.hold(2500 * time.Millisecond)
		c3.thaw()
	})
}

// TestLab_ConsumerLateToMovedIntermediate moves i1 to a new host that c1
// cannot reach for its first 3s: c1's messages wait or go through i2, and
// none is handled twice.
func TestLab_ConsumerLateToMovedIntermediate(t *testing.T) {
	runLabScenario(t, twoGroups, func(lm *labMesh) {
		h := lm.newHost("i1")
		lm.cut(lm.at["c1"], h)
		lm.at["i1"].kill()
		lm.at["i1"] = h
		lm.procs["i1"], _ = lm.startIntermediate(h, "i1")
		lm.hold(3 * time.Second)
		lm.heal(lm.at["c1"], h)
	})
}

// TestLab_GroupDeletedInFlight deletes group B while messages are in
// flight: group A still handles every message exactly once, the producers
// exit 0 (what waited for B was released), B's consumer stops with an error
// naming the deletion, and B handled nothing twice.
func TestLab_GroupDeletedInFlight(t *testing.T) {
	lm := runLabScenario(t, twoGroups, func(lm *labMesh) {
		if out, err := lm.etcdHosts[0].run("group", "delete", "B"); err != nil {
			lm.t.Fatalf("butterfly group delete B: %v (%s)", err, out)
		}
		lm.hist.deleteGroup("B")
	})
	c3 := lm.procs["c3"]
	if code := c3.wait(30 * time.Second); code != 1 {
		t.Errorf("c3 after its group was deleted: exit %d, want 1", code)
	}
	if errb, _ := os.ReadFile(c3.stderr); !strings.Contains(string(errb), "group deleted") {
		t.Errorf("c3's stderr does not say its group was deleted:\n%s", tail(errb, 5))
	}
}

// TestLab_ConsumerTakenOver starts a second c1 on another host: it takes
// the id over, the first one drains and exits 0, and only what the first
// had in hand may be handled again.
func TestLab_ConsumerTakenOver(t *testing.T) {
	var old *proc
	runLabScenario(t, oneGroup, func(lm *labMesh) {
		old = lm.procs["c1"]
		lm.hist.lose(old, "taken over")
		lm.move("c1")
		lm.waitLeft(old, "old c1", "it was taken over")
	})
	if code := old.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("the first c1 after the takeover: exit %d, want 0", code)
	}
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
		lm.waitLeft(oldProc, "old i2 on "+old.name, "the partition healed")
	})
	lm.waitRegistered(lm.etcdHosts[0], "i2", lm.at["i2"], 10*time.Second)
}

// TestLab_ConsumerBackAfterLapse cuts c1 from etcd until its lease lapses,
// starts c1 again on another host, then heals the cut: the first c1 finds
// its id held by another incarnation (at a higher epoch: the store's revision) and
// leaves, exit 0, and the new one keeps the id. Only what the first had in
// hand may be handled twice.
func TestLab_ConsumerBackAfterLapse(t *testing.T) {
	var old, successor *proc
	runLabScenario(t, oneGroup, func(lm *labMesh) {
		old = lm.procs["c1"]
		oldHost := lm.at["c1"]
		key := "butterfly/consumers/intermediate/A/c1"
		lm.hist.lose(old, "lease lapsed")
		lm.cut(oldHost, lm.etcdHosts[0])
		waitUntil(lm.t, 15*time.Second, "c1's lease expired", func() bool {
			return !slices.Contains(lm.etcdKeys(lm.etcdHosts[0], key), key)
		})
		lm.hist.event("expired", "c1's registration is gone")
		lm.move("c1")
		successor = lm.procs["c1"]
		lm.waitSubscribed("c1", "A")
		lm.heal(oldHost, lm.etcdHosts[0])
		lm.waitLeft(old, "first c1", "its cut from etcd healed")
	})
	if code := old.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("the first c1 after it found its id taken: exit %d, want 0", code)
	}
	if successor.exited() {
		t.Errorf("the c1 started while the first was cut off has exited, want it to keep the id")
	}
}

// waitLeft waits up to 30s for p, named who, to exit after what happened,
// and records its exit in the history.
func (lm *labMesh) waitLeft(p *proc, who, after string) {
	lm.t.Helper()
	select {
	case <-p.done:
		lm.hist.event("exit", "%s: %v", who, p.err)
	case <-time.After(30 * time.Second):
		lm.t.Errorf("%s still runs 30s after %s", who, after)
	}
}
