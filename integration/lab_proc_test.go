package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// start runs the butterfly binary on h (inside its namespace); every
// command but etcd gets the lab's etcd endpoints.
func (h *host) start(name string, args ...string) *proc {
	h.lab.t.Helper()
	full := append([]string{}, args...)
	if args[0] != "etcd" {
		full = append(full, "--etcd-endpoints", strings.Join(h.lab.etcdEndpoints(), ","))
	}
	switch args[0] {
	case "intermediate", "consume", "produce", "stage":
		full = append(full, "--insecure") // lab addresses are not loopback
	}
	return h.spawn(name, nil, binary, full...)
}

// spawn runs exe on h with extra environment env.
func (h *host) spawn(name string, env []string, exe string, args ...string) *proc {
	l := h.lab
	l.t.Helper()
	m := l.m
	m.mu.Lock()
	for _, q := range m.procs {
		if q.name == name {
			name = fmt.Sprintf("%s-%d", name, len(m.procs))
			break
		}
	}
	m.mu.Unlock()
	p := &proc{
		t: l.t, name: name, done: make(chan struct{}),
		stdout: filepath.Join(m.dir, name+".stdout"),
		stderr: filepath.Join(m.dir, name+".stderr"),
	}
	out, err := os.Create(p.stdout)
	if err != nil {
		l.t.Fatalf("os.Create() = %v", err)
	}
	errf, err := os.Create(p.stderr)
	if err != nil {
		l.t.Fatalf("os.Create() = %v", err)
	}
	// ip netns exec execs the program in place: the pid is the program's.
	p.cmd = h.command(context.Background(), exe, args...)
	p.cmd.Stdout, p.cmd.Stderr = out, errf
	p.cmd.Env = append(append(os.Environ(), "BUTTERFLY_LOG_LEVEL=info"), env...)
	if err := p.cmd.Start(); err != nil {
		l.t.Fatalf("start %s on %s: %v", name, h.name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		out.Close()
		errf.Close()
		close(p.done)
	}()
	m.mu.Lock()
	m.procs = append(m.procs, p)
	m.mu.Unlock()
	h.mu.Lock()
	h.procs = append(h.procs, p)
	h.mu.Unlock()
	l.hist.event("start", "%s on %s (pid %d): %s", name, h.name, p.cmd.Process.Pid, strings.Join(args, " "))
	return p
}

// running is h's processes that have not exited.
func (h *host) running() []*proc {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ps []*proc
	for _, p := range h.procs {
		if !p.exited() {
			ps = append(ps, p)
		}
	}
	return ps
}

// kill SIGKILLs every process of h and waits for them.
func (h *host) kill() {
	ps := h.running()
	for _, p := range ps {
		h.lab.hist.lose(p, "killed")
		p.kill()
	}
	if len(ps) > 0 {
		h.lab.hist.event("kill", "%s (%d processes)", h.name, len(ps))
	}
}

// freeze SIGSTOPs every process of h: connections stay open, nothing answers.
func (h *host) freeze() {
	for _, p := range h.running() {
		p.cmd.Process.Signal(syscall.SIGSTOP)
	}
	h.lab.hist.event("freeze", "%s", h.name)
}

// thaw SIGCONTs every process of h.
func (h *host) thaw() {
	for _, p := range h.running() {
		p.cmd.Process.Signal(syscall.SIGCONT)
	}
	h.lab.hist.event("thaw", "%s", h.name)
}

// startEtcd starts one etcd member on each of hosts, as one cluster, and
// waits until every member serves.
func (l *lab) startEtcd(hosts ...*host) {
	l.t.Helper()
	var cluster, clients []string
	for i, h := range hosts {
		cluster = append(cluster, fmt.Sprintf("e%d=http://%s:2380", i+1, h.ip))
		clients = append(clients, h.ip+":2379")
	}
	l.mu.Lock()
	l.etcd = clients
	l.mu.Unlock()
	var ps []*proc
	for i, h := range hosts {
		ps = append(ps, h.start(fmt.Sprintf("etcd-e%d", i+1), "etcd", "--name", fmt.Sprintf("e%d", i+1),
			"--data-dir", filepath.Join(l.m.dir, fmt.Sprintf("etcd-e%d", i+1)),
			"--listen-client", "http://"+h.ip+":2379", "--listen-peer", "http://"+h.ip+":2380",
			"--initial-cluster", strings.Join(cluster, ",")))
	}
	for _, p := range ps {
		p.waitOutput("etcd ready", defaultTestTimeout)
	}
}

// startIntermediate starts intermediate name on h and waits until it is
// registered.
func (l *lab) startIntermediate(h *host, name string) (*proc, serving) {
	l.t.Helper()
	p := h.start(name+"@"+h.name, append([]string{"intermediate", "--log-level", "debug", "--name", name, "--listen", h.ip + ":7000",
		"--lease-ttl", leaseTTL, "--drain-timeout", "5s"}, l.intermediateArgs...)...)
	line := p.waitOutput(`"event":"serving"`, defaultTestTimeout)
	var s serving
	if err := json.Unmarshal([]byte(line), &s); err != nil {
		l.t.Fatalf("%s: bad serving line %q: %v", name, line, err)
	}
	return p, s
}

// startConsumer starts consumer id of group on h, writing its handled ids
// to a file of its own incarnation.
func (l *lab) startConsumer(h *host, id, group string) *proc {
	l.t.Helper()
	out := l.hist.newIncarnation(id, group, h.name)
	p := h.start(id+"@"+h.name, "consume", "--id", id, "--group", group, "--out", out.file)
	out.proc = p
	return p
}

// startProducer starts producer id on h: count messages at rate per second.
func (l *lab) startProducer(h *host, id string, count, rate int) *proc {
	l.t.Helper()
	p := h.start(id, "produce", "--id", id, "--count", strconv.Itoa(count), "--rate", strconv.Itoa(rate),
		"--close-timeout", "40s")
	l.hist.producer(id, count, rate, p)
	return p
}

// drain asks the intermediate named instance to drain, from host h.
func (l *lab) drain(h *host, instance string) {
	l.t.Helper()
	if out, err := h.run("drain", instance); err != nil {
		l.t.Fatalf("butterfly drain %s: %v (%s)", instance, err, out)
	}
	l.hist.event("drain", "%s (from %s)", instance, h.name)
}

// registered returns the registrations of service, read by `butterfly ls`
// run on h.
func (l *lab) registered(h *host, service string) ([]lsEntry, error) {
	out, err := h.run("ls", "--json", "--service", service, "--etcd-dial-timeout", "2s")
	if err != nil {
		return nil, err
	}
	var entries []lsEntry
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		return nil, fmt.Errorf("butterfly ls --json: %w in %q", err, out)
	}
	return entries, nil
}

// waitRegistered waits until instance is registered at an address on want.
func (l *lab) waitRegistered(from *host, instance string, want *host, timeout time.Duration) {
	l.t.Helper()
	var last string
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		entries, err := l.registered(from, "intermediate")
		last = fmt.Sprint(entries, err)
		for _, e := range entries {
			if e.Instance == instance && strings.HasPrefix(e.Addr, want.ip+":") {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	l.t.Errorf("%s not registered on %s (%s) within %v; last ls: %s", instance, want.name, want.ip, timeout, last)
}
