package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSoak injects random intermediate faults every few seconds for
// BUTTERFLY_SOAK_DURATION (default 5m) under steady load, then checks that
// every message was handled exactly once. It runs only with BUTTERFLY_SOAK=1.
func TestSoak(t *testing.T) {
	if os.Getenv("BUTTERFLY_SOAK") != "1" {
		t.Skip("set BUTTERFLY_SOAK=1 to run the soak test (BUTTERFLY_SOAK_DURATION, default 5m)")
	}
	duration := 5 * time.Minute
	if v := os.Getenv("BUTTERFLY_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("BUTTERFLY_SOAK_DURATION=%q: %v", v, err)
		}
		duration = d
	}
	const soakRate = 2000
	count := int(duration.Seconds()) * soakRate

	m := newMesh(t)
	m.startEtcd()
	// Each instance name has a current process; hosts rotate through
	// 127.0.0.2 … 127.0.0.9 as instances move.
	names := []string{"intermediate1", "intermediate2", "intermediate3"}
	current := map[string]*proc{}
	hostN := 2
	nextHost := func() string {
		hostN++
		return fmt.Sprintf("127.0.0.%d", 2+hostN%8)
	}
	for _, n := range names {
		current[n], _ = m.startIntermediate(n, nextHost())
	}
	m.startConsumer("c1")
	m.startConsumer("c2")
	ps := []*proc{
		m.startProducer("p1", count, soakRate, "--close-timeout", "2m"),
		m.startProducer("p2", count, soakRate, "--close-timeout", "2m"),
	}
	want := map[string]int{"p1": count, "p2": count}

	faults := map[string]int{}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	t.Logf("soak: %v, %d messages per producer, seed time %s", duration, count, time.Now().Format(time.RFC3339Nano))
	end := time.Now().Add(duration)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(2000+rng.IntN(3000)) * time.Millisecond) // the pace of faults, not synchronisation
		name := names[rng.IntN(len(names))]
		p := current[name]
		switch kind := rng.IntN(6); kind {
		case 0:
			p.kill()
			current[name], _ = m.startIntermediate(name, nextHost())
			faults["kill+move"]++
		case 1:
			p.signal(syscall.SIGSTOP)
			time.Sleep(time.Duration(1000+rng.IntN(3000)) * time.Millisecond) // the freeze itself
			p.signal(syscall.SIGCONT)
			faults["freeze"]++
		case 2:
			p.signal(syscall.SIGTERM)
			if code := p.wait(60 * time.Second); code != 0 {
				t.Errorf("%s after SIGTERM exited %d", name, code)
			}
			current[name], _ = m.startIntermediate(name, nextHost())
			faults["sigterm+restart"]++
		case 3:
			out, err := exec.Command(binary, "drain", name, "--wait", "--etcd-endpoints", m.etcd[0]).CombinedOutput()
			if err != nil && !strings.Contains(string(out), "no instance") {
				t.Errorf("butterfly drain %s: %v: %s", name, err, out)
			}
			p.wait(60 * time.Second)
			current[name], _ = m.startIntermediate(name, nextHost())
			faults["drain+restart"]++
		case 4:
			// Move with the old process alive: it fences itself.
			current[name], _ = m.startIntermediate(name, nextHost())
			p.wait(60 * time.Second)
			faults["zombie-move"]++
		case 5:
			p.kill()
			current[name], _ = m.startIntermediate(name, nextHost())
			faults["kill+restart"]++
		}
	}
	for _, p := range ps {
		m.waitProducer(p, want[p.name], 5*time.Minute)
	}
	via := m.checkExactlyOnce(want, false)
	var kinds []string
	total := 0
	for k, n := range faults {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
		total += n
	}
	sort.Strings(kinds)
	t.Logf("soak report: %d faults injected (%s); %d messages handled exactly once; by intermediate: %v",
		total, strings.Join(kinds, " "), 2*count, via)
}
