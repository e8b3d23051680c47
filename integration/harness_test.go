package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	defaultTestTimeout = 60 * time.Second
	leaseTTL           = "2s"
)

// binary is the butterfly binary built by TestMain.
var binary string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "butterfly-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "butterfly")
	build := exec.Command("go", "build", "-o", binary, "../cmd/butterfly")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building butterfly:", err)
		return 1
	}
	return m.Run()
}

// TestSources reads every Go source and module file of the module. The
// binary these tests run is built from them, outside what go test sees of
// this package; reading them while tests run (go test logs what a test
// opens) makes go test's result cache depend on them, so a cached pass never
// stands for code that changed since.
func TestSources(t *testing.T) {
	if err := readSources(".."); err != nil {
		t.Fatalf("readSources() = %v", err)
	}
}

// readSources reads every Go source and module file under root.
func readSources(root string) error {
	return filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "tools") {
				return filepath.SkipDir
			}
			return nil
		}
		if name := d.Name(); strings.HasSuffix(name, ".go") || name == "go.mod" || name == "go.sum" {
			_, err := os.ReadFile(path)
			return err
		}
		return nil
	})
}

// proc is one butterfly process of a scenario.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	stdout string // file paths
	stderr string
	done   chan struct{}
	err    error // set before done is closed
}

// mesh is one scenario's set of processes, sharing an etcd.
type mesh struct {
	t        *testing.T
	dir      string
	etcd     []string // client endpoints
	mu       sync.Mutex
	procs    []*proc
	outFiles []string
}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	m := &mesh{t: t, dir: t.TempDir()}
	t.Cleanup(func() {
		m.mu.Lock()
		procs := append([]*proc(nil), m.procs...)
		m.mu.Unlock()
		for _, p := range procs {
			p.kill()
		}
		if t.Failed() {
			m.dumpLogs()
		}
	})
	return m
}

// freePort returns a loopback address on host whose port was free a moment ago.
func freePort(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("net.Listen(%s) = %v", host, err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs the binary with args; extra environment in env.
func (m *mesh) start(name string, args ...string) *proc {
	m.t.Helper()
	m.mu.Lock()
	for _, q := range m.procs {
		if q.name == name {
			name = fmt.Sprintf("%s-%d", name, len(m.procs))
			break
		}
	}
	m.mu.Unlock()
	p := &proc{
		t: m.t, name: name, done: make(chan struct{}),
		stdout: filepath.Join(m.dir, name+".stdout"),
		stderr: filepath.Join(m.dir, name+".stderr"),
	}
	out, err := os.Create(p.stdout)
	if err != nil {
		m.t.Fatalf("os.Create() = %v", err)
	}
	errf, err := os.Create(p.stderr)
	if err != nil {
		m.t.Fatalf("os.Create() = %v", err)
	}
	full := append([]string{}, args...)
	if len(m.etcd) > 0 && args[0] != "etcd" {
		full = append(full, "--etcd-endpoints", strings.Join(m.etcd, ","))
	}
	p.cmd = exec.Command(binary, full...)
	p.cmd.Stdout, p.cmd.Stderr = out, errf
	p.cmd.Env = append(os.Environ(), "BUTTERFLY_LOG_LEVEL=info")
	if err := p.cmd.Start(); err != nil {
		m.t.Fatalf("start %s: %v", name, err)
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
	return p
}

// startEtcd starts one etcd member and waits until it serves. A port that
// was free when picked can be taken before etcd binds it, so a member that
// exits before it is ready is started again on other ports.
func (m *mesh) startEtcd() *proc {
	m.t.Helper()
	p, client := m.startEtcdOn("127.0.0.1", "http")
	m.etcd = []string{client}
	return p
}

// startEtcdOn starts one etcd member on host, serving clients over scheme
// (http or https) with extra flags, as startEtcd does, and returns it with
// its client URL ("host:port" for http).
func (m *mesh) startEtcdOn(host, scheme string, extra ...string) (*proc, string) {
	m.t.Helper()
	for attempt := 1; ; attempt++ {
		client := freePort(m.t, host)
		if scheme != "http" {
			client = scheme + "://" + client
		}
		p := m.start("etcd", append([]string{"etcd", "--data-dir", filepath.Join(m.dir, fmt.Sprintf("etcd%d", attempt)),
			"--listen-client", client, "--listen-peer", "http://" + freePort(m.t, host)}, extra...)...)
		if line := p.tryWaitOutput("etcd ready", defaultTestTimeout); line != "" {
			// It names the URL clients reach it at, as --etcd-endpoints
			// takes it.
			if want := "etcd ready on " + scheme + "://" + strings.TrimPrefix(client, scheme+"://"); line != want {
				m.t.Errorf("etcd printed %q, want %q", line, want)
			}
			return p, client
		}
		if attempt == 3 {
			m.t.Fatalf("etcd did not start in %d attempts", attempt)
		}
		p.kill()
	}
}

// serving is the JSON line an intermediate prints when it is ready.
type serving struct {
	Event    string `json:"event"`
	Instance string `json:"instance"`
	Addr     string `json:"addr"`
	Epoch    uint64 `json:"epoch"`
}

// startIntermediate starts an intermediate on host and waits until it is
// registered.
func (m *mesh) startIntermediate(name, host string, extra ...string) (*proc, serving) {
	m.t.Helper()
	return m.startIntermediateAt(name, net.JoinHostPort(host, "0"), "", extra...)
}

// startIntermediateAt starts an intermediate listening on listen and
// registered at advertise, and waits until it is registered.
func (m *mesh) startIntermediateAt(name, listen, advertise string, extra ...string) (*proc, serving) {
	m.t.Helper()
	args := []string{"intermediate", "--name", name, "--listen", listen,
		"--lease-ttl", leaseTTL, "--drain-timeout", "5s"}
	if advertise != "" {
		args = append(args, "--advertise", advertise)
	}
	p := m.start(fmt.Sprintf("%s@%s", name, listen), append(args, extra...)...)
	line := p.waitOutput(`"event":"serving"`, defaultTestTimeout)
	var s serving
	if err := json.Unmarshal([]byte(line), &s); err != nil {
		m.t.Fatalf("%s: bad serving line %q: %v", name, line, err)
	}
	return p, s
}

// startConsumer starts a consumer writing to its own --out file.
func (m *mesh) startConsumer(id string, extra ...string) *proc {
	m.t.Helper()
	out := filepath.Join(m.dir, id+".tsv")
	m.mu.Lock()
	m.outFiles = append(m.outFiles, out)
	m.mu.Unlock()
	return m.start(id, append([]string{"consume", "--id", id, "--out", out}, extra...)...)
}

// startProducer starts a producer of count messages at rate per second.
func (m *mesh) startProducer(id string, count, rate int, extra ...string) *proc {
	m.t.Helper()
	return m.start(id, append([]string{"produce", "--id", id, "--count", strconv.Itoa(count),
		"--rate", strconv.Itoa(rate)}, extra...)...)
}

// output returns the process's stdout so far.
func (p *proc) output() string {
	b, _ := os.ReadFile(p.stdout)
	return string(b)
}

// waitOutput waits for a stdout line containing s and returns it.
func (p *proc) waitOutput(s string, timeout time.Duration) string {
	p.t.Helper()
	line := p.tryWaitOutput(s, timeout)
	if line == "" {
		errb, _ := os.ReadFile(p.stderr)
		p.t.Fatalf("%s did not print %q within %v (exited: %v, %v); stderr:\n%s", p.name, s, timeout, p.exited(), p.err, tail(errb, 30))
	}
	return line
}

// tryWaitOutput waits for a stdout line containing s and returns it, or ""
// when the process exits first or the timeout passes.
func (p *proc) tryWaitOutput(s string, timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		for _, line := range strings.Split(p.output(), "\n") {
			if strings.Contains(line, s) {
				return line
			}
		}
		if p.exited() || time.Now().After(deadline) {
			// One more look: the line may have been written just before exit.
			for _, line := range strings.Split(p.output(), "\n") {
				if strings.Contains(line, s) {
					return line
				}
			}
			return ""
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v to %s: %v", sig, p.name, err)
	}
}

// kill sends SIGKILL (and SIGCONT, so a stopped process dies too) and waits.
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Process.Signal(syscall.SIGCONT)
	<-p.done
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("%s still running after %v", p.name, timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// lastJSON decodes the last stdout line into v.
func (p *proc) lastJSON(v any) {
	p.t.Helper()
	lines := strings.Split(strings.TrimSpace(p.output()), "\n")
	last := lines[len(lines)-1]
	if err := json.Unmarshal([]byte(last), v); err != nil {
		p.t.Fatalf("%s: last stdout line %q is not JSON: %v", p.name, last, err)
	}
}

// producerSummary is the JSON line a producer prints last.
type producerSummary struct {
	Sent, Acked, Resent, Nacked, Unacked uint64
}

// waitProducer waits for a producer to exit 0 and checks its summary says
// every message was acked.
func (m *mesh) waitProducer(p *proc, count int, timeout time.Duration) producerSummary {
	m.t.Helper()
	code := p.wait(timeout)
	var s producerSummary
	p.lastJSON(&s)
	if code != 0 || s.Acked != uint64(count) || s.Unacked != 0 || s.Sent != uint64(count) {
		m.t.Errorf("%s: exit %d, summary %+v, want exit 0 and sent = acked = %d", p.name, code, s, count)
	}
	return s
}

// handled reads every consumer --out file: the lines per (producer, seq) and
// the intermediates that delivered them.
func (m *mesh) handled() (map[string]map[uint64]int, map[string]int) {
	m.t.Helper()
	m.mu.Lock()
	files := append([]string(nil), m.outFiles...)
	m.mu.Unlock()
	seen := map[string]map[uint64]int{}
	via := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			m.t.Fatalf("read %s: %v", f, err)
		}
		// A consumer may be writing its last line right now: read only
		// whole lines.
		b = b[:bytes.LastIndexByte(b, '\n')+1]
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			parts := strings.Split(sc.Text(), "\t")
			if len(parts) != 4 {
				m.t.Fatalf("%s: bad line %q", f, sc.Text())
			}
			seq, err := strconv.ParseUint(parts[1], 10, 64)
			if err != nil {
				m.t.Fatalf("%s: bad seq in %q", f, sc.Text())
			}
			if seen[parts[0]] == nil {
				seen[parts[0]] = map[uint64]int{}
			}
			seen[parts[0]][seq]++
			via[parts[2]]++
		}
	}
	return seen, via
}

// waitHandled waits until the consumers' files hold every seq 1..count of
// every producer, or the timeout passes.
func (m *mesh) waitHandled(producers map[string]int, timeout time.Duration) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		seen, _ := m.handled()
		complete := true
		for id, n := range producers {
			if len(seen[id]) < n {
				complete = false
			}
		}
		if complete || time.Now().After(deadline) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkExactlyOnce checks that every seq 1..count of every producer was
// handled exactly once (allowDup: at least once), naming missing and doubled
// ids.
func (m *mesh) checkExactlyOnce(producers map[string]int, allowDup bool) map[string]int {
	m.t.Helper()
	m.waitHandled(producers, defaultTestTimeout)
	seen, via := m.handled()
	for id, n := range producers {
		var missing, doubled []uint64
		for seq := uint64(1); seq <= uint64(n); seq++ {
			switch c := seen[id][seq]; {
			case c == 0:
				missing = append(missing, seq)
			case c > 1:
				doubled = append(doubled, seq)
			}
		}
		var extra []uint64
		for seq := range seen[id] {
			if seq == 0 || seq > uint64(n) {
				extra = append(extra, seq)
			}
		}
		if len(missing) > 0 {
			m.t.Errorf("producer %s: %d of %d messages missing: %s", id, len(missing), n, idList(missing))
		}
		if len(doubled) > 0 && !allowDup {
			m.t.Errorf("producer %s: %d messages handled more than once: %s", id, len(doubled), idList(doubled))
		}
		if len(extra) > 0 {
			m.t.Errorf("producer %s: unexpected seqs %s", id, idList(extra))
		}
	}
	return via
}

func idList(ids []uint64) string {
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var b strings.Builder
	for i, id := range ids {
		if i == 30 {
			fmt.Fprintf(&b, " … (%d more)", len(ids)-30)
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatUint(id, 10))
	}
	return b.String()
}

// dumpLogs prints every process's stdout tail and stderr tail.
func (m *mesh) dumpLogs() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.procs {
		out, _ := os.ReadFile(p.stdout)
		errb, _ := os.ReadFile(p.stderr)
		m.t.Logf("==== %s (%v) stdout:\n%s\n==== %s stderr:\n%s", p.name, p.cmd.Args, tail(out, 20), p.name, tail(errb, 60))
	}
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("… (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// ls runs `butterfly ls --json`.
func (m *mesh) ls(service string) []lsEntry {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "ls", "--json", "--service", service,
		"--etcd-endpoints", strings.Join(m.etcd, ",")).Output()
	if err != nil {
		m.t.Fatalf("butterfly ls: %v", err)
	}
	var entries []lsEntry
	if err := json.Unmarshal(out, &entries); err != nil {
		m.t.Fatalf("butterfly ls --json: %v in %q", err, out)
	}
	return entries
}

// lsEntry is one element of `butterfly ls --json`.
type lsEntry struct {
	Service  string `json:"service"`
	Instance string `json:"instance"`
	Addr     string `json:"addr"`
	Epoch    uint64 `json:"epoch"`
	Draining bool   `json:"draining"`
}

// waitUntil polls cond until it holds or the timeout passes.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// handledCount is the number of lines in the consumers' files.
func (m *mesh) handledCount() int {
	seen, _ := m.handled()
	n := 0
	for _, s := range seen {
		n += len(s)
	}
	return n
}
