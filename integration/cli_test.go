package integration

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runCLI runs the binary to completion and returns its exit code, stdout and
// stderr.
func runCLI(t *testing.T, timeout time.Duration, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("butterfly %v still running after %v", args, timeout)
	}
	if err != nil {
		if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) {
			t.Fatalf("butterfly %v: %v", args, err)
		}
	}
	return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
}

// TestCLI_Mesh drives the real binary the way the README does: etcd, two
// intermediates on 127.0.0.2 and 127.0.0.3, two consumers with --out, two
// producers of 20000 messages; then ls --json and drain --wait.
func TestCLI_Mesh(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	i1, s1 := m.startIntermediate("intermediate1", "127.0.0.2")
	_, s2 := m.startIntermediate("intermediate2", "127.0.0.3")
	m.startConsumer("c1")
	m.startConsumer("c2")
	const n = 20000
	p1 := m.start("p1", "produce", "--id", "p1", "--count", "20000")
	p2 := m.start("p2", "produce", "--id", "p2", "--count", "20000")
	m.waitProducer(p1, n, runTimeout)
	m.waitProducer(p2, n, runTimeout)
	via := m.checkExactlyOnce(map[string]int{"p1": n, "p2": n}, false)
	if via["intermediate1"] == 0 || via["intermediate2"] == 0 {
		t.Errorf("deliveries by intermediate = %v, want both to carry traffic", via)
	}

	entries := m.ls("intermediate")
	got := map[string]string{}
	for _, e := range entries {
		got[e.Instance] = e.Addr
	}
	if len(entries) != 2 || got["intermediate1"] != s1.Addr || got["intermediate2"] != s2.Addr {
		t.Fatalf("butterfly ls --json = %+v, want intermediate1 at %s and intermediate2 at %s", entries, s1.Addr, s2.Addr)
	}

	code, out, errOut := runCLI(t, runTimeout, "drain", "intermediate1", "--wait", "--etcd-endpoints", m.etcd[0])
	if code != 0 || !strings.Contains(out, "drained: intermediate/intermediate1") {
		t.Fatalf("butterfly drain intermediate1 --wait = exit %d, %q, %q; want exit 0 and drained", code, out, errOut)
	}
	if code := i1.wait(30 * time.Second); code != 0 {
		t.Errorf("drained intermediate1 exited %d, want 0", code)
	}
	if entries := m.ls("intermediate"); len(entries) != 1 || entries[0].Instance != "intermediate2" {
		t.Errorf("butterfly ls after drain = %+v, want only intermediate2", entries)
	}
}

// TestCLI_ConsumeCount checks `consume --count`: a consumer that receives a
// burst handles exactly N messages, exits 0 and says so in its summary; the
// messages it received beyond them wait for the group's next consumer, which
// handles them, every message exactly once.
func TestCLI_ConsumeCount(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	m.startIntermediate("intermediate1", "127.0.0.2")
	const n, count = 5000, 300
	c1 := m.startConsumer("c1", "--count", strconv.Itoa(count))
	p := m.start("p1", "produce", "--id", "p1", "--count", strconv.Itoa(n))
	if code := c1.wait(runTimeout); code != 0 {
		t.Fatalf("consume --count %d exited %d, want 0", count, code)
	}
	var sum struct{ Delivered uint64 }
	c1.lastJSON(&sum)
	seen, _ := m.handled()
	if sum.Delivered != count || len(seen["p1"]) != count {
		t.Errorf("consume --count %d: summary delivered %d, %d lines in its file; want %d and %d", count, sum.Delivered, len(seen["p1"]), count, count)
	}
	m.startConsumer("c2")
	m.waitProducer(p, n, runTimeout)
	m.checkExactlyOnce(map[string]int{"p1": n}, false)
}

// TestCLI_UsageErrors checks that a wrong or missing flag gives a one-line
// error naming it and exit code 2.
func TestCLI_UsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"produce"}, "--id"},
		{[]string{"produce", "--id", "p1", "--window", "0"}, "--window"},
		{[]string{"produce", "--id", "p1", "--count", "ten"}, "--count"},
		{[]string{"consume"}, "--id"},
		{[]string{"intermediate", "--name", "i1"}, "--listen"},
		{[]string{"intermediate", "--listen", "127.0.0.1:0"}, "--name"},
		{[]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--processor", "nope"}, "--processor"},
		{[]string{"intermediate", "--name", "a/b", "--listen", "127.0.0.1:0"}, "--name"},
		{[]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--forwarders", "s1,a/b"}, "--forwarders stage id \"a/b\""},
		{[]string{"stage", "--id", "s", "--from", "a"}, "--to"},
		{[]string{"drain"}, "INSTANCE"},
		{[]string{"etcd"}, "--data-dir"},
		{[]string{"ls", "--bogus"}, "--bogus"},
		{[]string{"ls", "--log-level", "loud"}, "--log-level"},
		{[]string{"nosuchcommand"}, "nosuchcommand"},
		{[]string{"demo", "--messages", "1"}, "--messages"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, _, stderr := runCLI(t, 30*time.Second, tt.args...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if code != 2 || len(lines) != 1 || !strings.Contains(stderr, tt.want) {
				t.Errorf("butterfly %v = exit %d, stderr %q; want exit 2 and one line naming %s", tt.args, code, stderr, tt.want)
			}
		})
	}
}

// TestCLI_EnvFlags checks that BUTTERFLY_<FLAG> sets a flag, and that a bad
// value names the variable.
func TestCLI_EnvFlags(t *testing.T) {
	cmd := exec.Command(binary, "ls")
	cmd.Env = append(cmd.Environ(), "BUTTERFLY_LOG_LEVEL=loud")
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "BUTTERFLY_LOG_LEVEL") {
		t.Fatalf("BUTTERFLY_LOG_LEVEL=loud butterfly ls = %v, %q; want exit 2 naming BUTTERFLY_LOG_LEVEL", err, out)
	}
}

// TestCLI_HelpHasExamples checks that every subcommand's --help shows
// examples and the exit codes.
func TestCLI_HelpHasExamples(t *testing.T) {
	for _, sub := range []string{"etcd", "intermediate", "produce", "consume", "stage", "ls", "drain", "demo", "certs", "version"} {
		code, out, _ := runCLI(t, 30*time.Second, sub, "--help")
		if code != 0 || !strings.Contains(out, "Examples:") || !strings.Contains(out, "Exit codes:") {
			t.Errorf("butterfly %s --help = exit %d, want 0 with Examples and Exit codes; got:\n%s", sub, code, out)
		}
	}
}

// TestCLI_Demo runs the demo: it crashes, moves and drains intermediates and
// must report 0 lost.
func TestCLI_Demo(t *testing.T) {
	code, out, stderr := runCLI(t, 3*time.Minute, "demo", "--messages", "30000")
	if code != 0 {
		t.Fatalf("butterfly demo = exit %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	for _, want := range []string{"CRASH", "MOVE", "DRAIN"} {
		if !strings.Contains(out, want) {
			t.Errorf("butterfly demo output lacks %q:\n%s", want, out)
		}
	}
	table := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(line, "[") {
			table[strings.Join(f[:len(f)-1], " ")] = f[len(f)-1]
		}
	}
	for label, want := range map[string]string{"sent": "30000", "delivered": "30000", "lost": "0", "handled twice": "0"} {
		if table[label] != want {
			t.Errorf("butterfly demo table %q = %q, want %s:\n%s", label, table[label], want, out)
		}
	}
}

// TestCLI_ProduceNoConsumer checks a producer whose messages no consumer
// takes: it exits 3 and its summary counts them as unacknowledged.
func TestCLI_ProduceNoConsumer(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	m.startIntermediate("intermediate1", "127.0.0.2")
	p := m.start("p1", "produce", "--id", "p1", "--count", "50", "--close-timeout", "2s")
	code := p.wait(runTimeout)
	var s producerSummary
	p.lastJSON(&s)
	if code != 3 || s.Sent != 50 || s.Acked != 0 || s.Unacked != 50 {
		t.Fatalf("produce with no consumer = exit %d, %+v; want exit 3 with 50 unacknowledged", code, s)
	}
}

// TestCLI_ConsumeOutputFails checks a consumer whose --out cannot be
// written (a full disk): it hands nothing back as failed, exits 1 naming
// --out and the error, and the group's other consumer handles every
// message, each exactly once; the producer exits 0.
func TestCLI_ConsumeOutputFails(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	m.startIntermediate("intermediate1", "127.0.0.2")
	full := m.start("full", "consume", "--id", "full", "--out", "/dev/full")
	c2 := m.startConsumer("c2")
	for _, c := range []*proc{full, c2} {
		waitUntil(t, failFastBound, c.name+" registered", func() bool {
			return strings.Contains(readFile(c.stderr), "consumer registered")
		})
	}
	const n = 5000
	p := m.start("p1", "produce", "--id", "p1", "--count", strconv.Itoa(n))
	if code := full.wait(runTimeout); code != 1 {
		t.Errorf("consume --out /dev/full exited %d, want 1", code)
	}
	lines := strings.Split(strings.TrimSpace(readFile(full.stderr)), "\n")
	last := lines[len(lines)-1]
	for _, want := range []string{"butterfly: ", "--out: write /dev/full: no space left on device"} {
		if !strings.Contains(last, want) {
			t.Errorf("consume --out /dev/full: last line %q, want it to contain %q", last, want)
		}
	}
	if sum := m.waitProducer(p, n, runTimeout); sum.Nacked != 0 {
		t.Errorf("producer summary %+v, want nothing handed back", sum)
	}
	m.checkExactlyOnce(map[string]int{"p1": n}, false)
}

// TestCLI_ConsumeOutNamesIncarnation runs one producer id twice, each run
// numbering its messages from 1: the consumer's --out lines tell the two
// runs apart by their incarnation, each with seqs 1 to 3 once.
func TestCLI_ConsumeOutNamesIncarnation(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	m.startIntermediate("intermediate1", "127.0.0.2")
	c := m.startConsumer("c1")
	waitUntil(t, failFastBound, "c1 registered", func() bool {
		return strings.Contains(readFile(c.stderr), "consumer registered")
	})
	for run := 1; run <= 2; run++ {
		p := m.start("p1", "produce", "--id", "p1", "--count", "3")
		if sum := m.waitProducer(p, 3, runTimeout); sum.Acked != 3 {
			t.Fatalf("run %d of p1: %+v, want 3 acknowledged", run, sum)
		}
	}
	m.waitHandled(map[string]int{"p1": 3}, runTimeout)
	byIncarnation := map[string][]string{}
	waitUntil(t, runTimeout, "6 lines in c1's --out", func() bool {
		byIncarnation = map[string][]string{}
		// Whole lines only: the consumer may be writing one.
		b := readFile(m.outFiles[0])
		lines := strings.Split(strings.TrimSpace(b[:strings.LastIndexByte(b, '\n')+1]), "\n")
		for _, l := range lines {
			f := strings.Split(l, "\t")
			if len(f) != 4 {
				t.Fatalf("--out line %q, want producer_id, seq, intermediate and incarnation", l)
			}
			if f[0] != "p1" || f[2] != "intermediate1" {
				t.Fatalf("--out line %q, want p1's through intermediate1", l)
			}
			byIncarnation[f[3]] = append(byIncarnation[f[3]], f[1])
		}
		return len(lines) == 6
	})
	if len(byIncarnation) != 2 {
		t.Fatalf("--out names incarnations %v, want 2", byIncarnation)
	}
	for inc, seqs := range byIncarnation {
		if _, err := strconv.ParseUint(inc, 10, 64); err != nil || inc == "0" {
			t.Errorf("--out incarnation %q, want a positive integer", inc)
		}
		slices.Sort(seqs)
		if !slices.Equal(seqs, []string{"1", "2", "3"}) {
			t.Errorf("incarnation %s: seqs %v, want 1, 2 and 3 once each", inc, seqs)
		}
	}
}
