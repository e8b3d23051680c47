package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The fault lab: every host is a Linux network namespace with its own
// address in 198.18.0.0/15, joined to one bridge that lives in a namespace
// of its own, so the machine's own networking is never touched. Namespace
// names are labNSPrefix + the creating process id + a lab number, so
// namespaces left by a crashed run can be told from those of a live one.

const labNSPrefix = "bfl-"

var (
	labCount     atomic.Uint32
	labStaleOnce sync.Once
	labToolsOnce sync.Once
	labToolsErr  error
	labIptables  string // the iptables binary that works in a fresh namespace
)

// lab is one test's set of hosts on one bridge.
type lab struct {
	t      *testing.T
	m      *mesh
	name   string // namespace name prefix of this lab
	net    string // the lab's /24, as "198.x.y."
	bridge string // the bridge's namespace
	hist   *history

	mu    sync.Mutex
	hosts []*host
	cuts  map[[2]string]bool // host-name pairs, sorted
	etcd  []string           // client endpoints, lab addresses

	intermediateArgs []string // more flags for every intermediate; set before any starts
}

// host is one network namespace of a lab.
type host struct {
	lab  *lab
	name string
	ns   string
	ip   string

	mu    sync.Mutex
	procs []*proc
}

// labTools checks once whether this process can build a lab: root,
// iproute2 with netns support, and an iptables that works in a fresh
// namespace (iptables-nft or iptables-legacy, whichever does).
func labTools() error {
	labToolsOnce.Do(func() {
		if os.Geteuid() != 0 {
			labToolsErr = errors.New("the fault lab needs root (network namespaces, iptables)")
			return
		}
		if _, err := exec.LookPath("ip"); err != nil {
			labToolsErr = errors.New("the fault lab needs iproute2's ip: " + err.Error())
			return
		}
		ns := fmt.Sprintf("%s%d-probe", labNSPrefix, os.Getpid())
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			labToolsErr = fmt.Errorf("ip netns add: %w: %s", err, out)
			return
		}
		defer exec.Command("ip", "netns", "del", ns).Run()
		var tried []string
		for _, ipt := range []string{"iptables", "iptables-nft", "iptables-legacy"} {
			if _, err := exec.LookPath(ipt); err != nil {
				continue
			}
			rule := []string{"INPUT", "-s", "198.18.255.254", "-j", "DROP"}
			add := append([]string{"netns", "exec", ns, ipt, "-w", "-I"}, rule...)
			del := append([]string{"netns", "exec", ns, ipt, "-w", "-D"}, rule...)
			out, err := exec.Command("ip", add...).CombinedOutput()
			if err == nil {
				out, err = exec.Command("ip", del...).CombinedOutput()
			}
			if err == nil {
				labIptables = ipt
				return
			}
			tried = append(tried, fmt.Sprintf("%s: %v: %s", ipt, err, strings.TrimSpace(string(out))))
		}
		if len(tried) == 0 {
			labToolsErr = errors.New("the fault lab needs iptables (none found on PATH)")
			return
		}
		labToolsErr = fmt.Errorf("no iptables works in a network namespace: %s", strings.Join(tried, "; "))
	})
	return labToolsErr
}

// newLab builds an empty lab (the bridge only) and tears it down when the
// test ends, failed or not. It skips the test when the machine cannot run
// a lab.
func newLab(t *testing.T) *lab {
	t.Helper()
	if err := labTools(); err != nil {
		t.Skip(err)
	}
	labStaleOnce.Do(func() { cleanStaleNamespaces(t) })
	n := labCount.Add(1)
	idx := (os.Getpid()*7 + int(n)) % 512 // one /24 of 198.18.0.0/15
	l := &lab{
		t:    t,
		name: fmt.Sprintf("%s%d-%d-", labNSPrefix, os.Getpid(), n),
		net:  fmt.Sprintf("198.%d.%d.", 18+idx/256, idx%256),
		cuts: map[[2]string]bool{},
	}
	l.m = newMesh(t)
	l.hist = newHistory(t, l.m.dir)
	l.bridge = l.name + "br"
	t.Cleanup(l.teardown) // runs before the mesh's own clean-up: hosts go first
	l.ip("netns", "add", l.bridge)
	l.ip("-n", l.bridge, "link", "set", "lo", "up")
	l.ip("-n", l.bridge, "link", "add", "br0", "type", "bridge")
	l.ip("-n", l.bridge, "link", "set", "br0", "up")
	return l
}

// ip runs `ip args…` and fails the test if it fails.
func (l *lab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// addHost adds a host with the lab's next address.
func (l *lab) addHost(name string) *host {
	l.t.Helper()
	l.mu.Lock()
	num := len(l.hosts) + 1
	h := &host{lab: l, name: name, ns: l.name + name, ip: l.net + strconv.Itoa(10+num)}
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	veth := fmt.Sprintf("h%d", num)
	l.ip("netns", "add", h.ns)
	l.ip("link", "add", "eth0", "netns", h.ns, "type", "veth", "peer", "name", veth, "netns", l.bridge)
	l.ip("-n", l.bridge, "link", "set", veth, "master", "br0")
	l.ip("-n", l.bridge, "link", "set", veth, "up")
	l.ip("-n", h.ns, "addr", "add", h.ip+"/24", "dev", "eth0")
	l.ip("-n", h.ns, "link", "set", "eth0", "up")
	l.ip("-n", h.ns, "link", "set", "lo", "up")
	l.hist.event("host", "%s at %s", name, h.ip)
	return h
}

// host returns the lab's host with that name.
func (l *lab) host(name string) *host {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.hosts {
		if h.name == name {
			return h
		}
	}
	l.t.Fatalf("no host %q in the lab", name)
	return nil
}

// teardown kills every process of the lab and deletes its namespaces.
func (l *lab) teardown() {
	l.hist.stop()
	l.mu.Lock()
	hosts := append([]*host(nil), l.hosts...)
	l.mu.Unlock()
	for _, h := range hosts {
		h.kill()
	}
	for _, h := range hosts {
		deleteNamespace(h.ns)
	}
	deleteNamespace(l.bridge)
	if l.t.Failed() || os.Getenv("BUTTERFLY_LAB_KEEP") != "" {
		l.keep()
	}
}

// keep copies the history (events log, --out files, process logs; not the
// etcd data) out of the test's temporary directory, which go test removes.
func (l *lab) keep() {
	dir, err := os.MkdirTemp("", "butterfly-lab-"+strings.ReplaceAll(l.t.Name(), "/", "_")+"-")
	if err != nil {
		l.t.Logf("lab history in %s (not kept: %v)", l.m.dir, err)
		return
	}
	entries, _ := os.ReadDir(l.m.dir)
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(l.m.dir, e.Name())); err == nil {
			os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644)
		}
	}
	l.t.Logf("lab history kept in %s (events: %s)", dir, filepath.Join(dir, "events.log"))
}

// deleteNamespace kills whatever still runs in ns and deletes it.
func deleteNamespace(ns string) {
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil {
				if p, err := os.FindProcess(pid); err == nil {
					p.Kill()
				}
			}
		}
	}
	exec.Command("ip", "netns", "del", ns).Run()
}

// cleanStaleNamespaces deletes the lab namespaces of test processes that no
// longer run (a crashed or killed earlier run).
func cleanStaleNamespaces(t *testing.T) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || !strings.HasPrefix(fields[0], labNSPrefix) {
			continue
		}
		ns := fields[0]
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(ns, labNSPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", pidStr, "cmdline"))
		if err == nil && strings.Contains(string(cmdline), ".test") {
			continue // a lab of a test process still running
		}
		t.Logf("deleting stale lab namespace %s", ns)
		deleteNamespace(ns)
	}
}

// iptables runs the lab's iptables in host h's namespace.
func (h *host) iptables(args ...string) {
	h.lab.t.Helper()
	full := append([]string{"netns", "exec", h.ns, labIptables, "-w"}, args...)
	if out, err := exec.Command("ip", full...).CombinedOutput(); err != nil {
		h.lab.t.Fatalf("ip %s: %v: %s", strings.Join(full, " "), err, out)
	}
}

func pairKey(a, b *host) [2]string {
	if a.name > b.name {
		a, b = b, a
	}
	return [2]string{a.name, b.name}
}

// cut silently drops all traffic between a and b, both ways: each drops
// what arrives from the other (no reset, no error at the sender).
func (l *lab) cut(a, b *host) {
	l.t.Helper()
	l.mu.Lock()
	k := pairKey(a, b)
	already := l.cuts[k]
	l.cuts[k] = true
	l.mu.Unlock()
	if already || a == b {
		return
	}
	a.iptables("-I", "INPUT", "-s", b.ip, "-j", "DROP")
	b.iptables("-I", "INPUT", "-s", a.ip, "-j", "DROP")
	l.hist.event("cut", "%s | %s", a.name, b.name)
}

// heal undoes cut(a, b).
func (l *lab) heal(a, b *host) {
	l.t.Helper()
	l.mu.Lock()
	k := pairKey(a, b)
	was := l.cuts[k]
	delete(l.cuts, k)
	l.mu.Unlock()
	if !was {
		return
	}
	a.iptables("-D", "INPUT", "-s", b.ip, "-j", "DROP")
	b.iptables("-D", "INPUT", "-s", a.ip, "-j", "DROP")
	l.hist.event("heal", "%s | %s", a.name, b.name)
}

// partition cuts every host of side from every host not in it.
func (l *lab) partition(side ...*host) {
	l.t.Helper()
	in := map[*host]bool{}
	for _, h := range side {
		in[h] = true
	}
	l.mu.Lock()
	hosts := append([]*host(nil), l.hosts...)
	l.mu.Unlock()
	for _, a := range side {
		for _, b := range hosts {
			if !in[b] {
				l.cut(a, b)
			}
		}
	}
}

// healAll heals every cut.
func (l *lab) healAll() {
	l.t.Helper()
	l.mu.Lock()
	var pairs [][2]string
	for k := range l.cuts {
		pairs = append(pairs, k)
	}
	l.mu.Unlock()
	for _, k := range pairs {
		l.heal(l.host(k[0]), l.host(k[1]))
	}
}

// command is `ip netns exec NS name args…`, for a process on h.
func (h *host) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
}

// run runs the butterfly binary on h to completion (an admin command) with
// the lab's etcd endpoints, and returns its stdout.
func (h *host) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append(append([]string{}, args...), "--etcd-endpoints", strings.Join(h.lab.etcdEndpoints(), ","))
	var stderr strings.Builder
	c := h.command(ctx, binary, full...)
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return string(out), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return string(out), nil
}

func (l *lab) etcdEndpoints() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.etcd...)
}
