package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// nodeDir holds the Node.js conformance client and its locked dependencies.
const nodeDir = "node"

var npmOnce struct {
	sync.Once
	err error
	out string
}

// requireNode skips the test when node or npm is missing, and installs the
// client's locked dependencies (npm ci) once.
func requireNode(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found in PATH: the Node.js conformance client cannot run (install nodejs and npm)", tool)
		}
	}
	// Read what the client runs, so that go test's cache depends on it.
	files, _ := filepath.Glob("../proto/butterfly/*/v1/*.proto")
	for _, f := range append(files, filepath.Join(nodeDir, "conformance.js"), filepath.Join(nodeDir, "package-lock.json")) {
		if _, err := os.ReadFile(f); err != nil {
			t.Fatalf("read %s: %v", f, err)
		}
	}
	npmOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = nodeDir
		out, err := cmd.CombinedOutput()
		npmOnce.err, npmOnce.out = err, string(out)
	})
	if npmOnce.err != nil {
		t.Fatalf("npm ci in integration/node: %v\n%s", npmOnce.err, npmOnce.out)
	}
}

// runNode runs the conformance client with args and returns its exit code,
// its last stdout line decoded into summary, and its stderr.
func runNode(t *testing.T, summary any, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{"conformance.js"}, args...)...)
	cmd.Dir = nodeDir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			code = ee.ExitCode()
		}
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if last := lines[len(lines)-1]; last != "" {
		if err := json.Unmarshal([]byte(last), summary); err != nil {
			t.Errorf("node %s: last stdout line %q is not JSON: %v", args[0], last, err)
		}
	}
	return code, stderr.String()
}

// TestConformance_NodePublishes checks that a Node.js producer written from
// docs/protocol.md, loading proto/ at run time, publishes n messages through
// the real intermediate that `butterfly consume` handles exactly once, and
// that the intermediate refuses its contract-breaking probe with
// INVALID_ARGUMENT.
func TestConformance_NodePublishes(t *testing.T) {
	requireNode(t)
	const n = 2000
	m := newMesh(t)
	m.startEtcd()
	m.startIntermediate("intermediate1", "127.0.0.2")
	m.startConsumer("gc1")
	var s struct {
		Sent, Acked, Resent int
		Probe               string
	}
	code, stderr := runNode(t, &s, "publish", "--etcd", "http://"+m.etcd[0], "--id", "nodep", "--count", strconv.Itoa(n))
	if code != 0 || s.Sent != n || s.Acked != n {
		t.Fatalf("node publish = exit %d, summary %+v, want exit 0 and %d acknowledged; stderr:\n%s", code, s, n, stderr)
	}
	t.Logf("node publish: %+v", s)
	if !strings.HasPrefix(s.Probe, "INVALID_ARGUMENT: intermediate: batch first_seq 5, want 1") {
		t.Errorf("node publish probe = %q, want INVALID_ARGUMENT naming first_seq", s.Probe)
	}
	m.checkExactlyOnce(map[string]int{"nodep": n}, false)
}

// TestConformance_NodeConsumes checks that a Node.js consumer that registers
// itself through etcd's HTTP/JSON gateway, subscribes and deduplicates as
// docs/protocol.md says receives every message of `butterfly produce`
// exactly once, that the producer exits 0 with every message acknowledged,
// and that the intermediate refuses the consumer's empty acknowledgement
// frame with INVALID_ARGUMENT.
func TestConformance_NodeConsumes(t *testing.T) {
	requireNode(t)
	const n = 2000
	m := newMesh(t)
	m.startEtcd()
	m.startIntermediate("intermediate1", "127.0.0.2")
	type result struct {
		code   int
		stderr string
		s      struct {
			Handled, Duplicates, Unexpected int
			Missing, Doubled                []uint64
			Epoch                           uint64
			Probe                           string
		}
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.code, r.stderr = runNode(t, &r.s, "consume", "--etcd", "http://"+m.etcd[0], "--id", "nodec",
			"--expect", "p1", "--count", strconv.Itoa(n))
		done <- r
	}()
	// The producer may start before the consumer is registered: it keeps
	// what no consumer took and sends it again.
	p := m.startProducer("p1", n, 0)
	m.waitProducer(p, n, runTimeout)
	r := <-done
	if r.code != 0 || r.s.Handled != n || len(r.s.Missing) != 0 || len(r.s.Doubled) != 0 || r.s.Unexpected != 0 {
		t.Fatalf("node consume = exit %d, summary %+v, want exit 0 and seqs 1..%d each handled once; stderr:\n%s", r.code, r.s, n, r.stderr)
	}
	t.Logf("node consume: %+v", r.s)
	if !strings.HasPrefix(r.s.Probe, "INVALID_ARGUMENT: intermediate: ack frame names no delivery") {
		t.Errorf("node consume probe = %q, want INVALID_ARGUMENT for the empty ack frame", r.s.Probe)
	}
}
