package integration

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// labLeakCheck fails t if it leaves goroutines behind (the lab's sampler,
// process waiters). Lab tests do not run in parallel, so what runs now is
// all that may run at the end.
func labLeakCheck(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// labNamespaces lists the network namespaces whose names start with prefix.
func labNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			names = append(names, f[0])
		}
	}
	return names
}

// TestLab_Infrastructure checks the lab itself: hosts reach each other, a
// cut drops traffic both ways and heals, freeze/thaw and kill work, and
// nothing is left behind, stale namespaces of a dead run included.
func TestLab_Infrastructure(t *testing.T) {
	if err := labTools(); err != nil {
		t.Skip(err)
	}
	labLeakCheck(t)
	stale := fmt.Sprintf("%s%d-1-stale", labNSPrefix, 1<<22+1) // above any pid_max: no such process
	if out, err := exec.Command("ip", "netns", "add", stale).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", stale, err, out)
	}
	cleanStaleNamespaces(t)
	if left := labNamespaces(t, stale); len(left) > 0 {
		exec.Command("ip", "netns", "del", stale).Run()
		t.Errorf("stale namespace %s not deleted", stale)
	}

	var prefix string
	t.Run("hosts", func(t *testing.T) {
		l := newLab(t)
		prefix = l.name
		a, b, c := l.addHost("a"), l.addHost("b"), l.addHost("c")
		if !strings.HasPrefix(a.ip, "198.18.") && !strings.HasPrefix(a.ip, "198.19.") {
			t.Fatalf("host address %s outside 198.18.0.0/15", a.ip)
		}
		for _, h := range []*host{a, b, c} {
			h.listen()
		}
		all := []*host{a, b, c}
		expect := func(when string, cut map[[2]string]bool) {
			t.Helper()
			for _, x := range all {
				for _, y := range all {
					if x == y {
						continue
					}
					want := !cut[pairKey(x, y)]
					if got := l.reaches(x, y); got != want {
						t.Errorf("%s: %s reaches %s = %v, want %v", when, x.name, y.name, got, want)
					}
				}
			}
		}
		expect("at start", nil)
		l.cut(a, b)
		expect("a|b cut", map[[2]string]bool{pairKey(a, b): true})
		l.heal(a, b)
		expect("healed", nil)
		l.partition(c)
		expect("c isolated", map[[2]string]bool{pairKey(a, c): true, pairKey(b, c): true})
		l.healAll()
		expect("all healed", nil)

		c.freeze()
		if l.reaches(a, c) {
			t.Errorf("a reaches frozen c")
		}
		c.thaw()
		if !l.reaches(a, c) {
			t.Errorf("a does not reach thawed c")
		}
		c.kill()
		if l.reaches(a, c) {
			t.Errorf("a reaches c after its processes were killed")
		}
		if len(labNamespaces(t, prefix)) != 4 {
			t.Errorf("lab namespaces %v, want 3 hosts and the bridge", labNamespaces(t, prefix))
		}
	})
	if left := labNamespaces(t, prefix); len(left) > 0 {
		t.Errorf("namespaces left after the lab's test: %v", left)
	}
}
