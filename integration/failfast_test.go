package integration

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// failFastBound is how long a command that cannot succeed may take to say so:
// well under the minute producers used to wait.
const failFastBound = 15 * time.Second

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestCLI_EtcdUnreachable checks that every command that needs etcd ends
// after --etcd-dial-timeout with exit 1 and one line naming the endpoint and
// the timeout, when etcd never answers.
func TestCLI_EtcdUnreachable(t *testing.T) {
	ep := closedPort(t)
	for _, args := range [][]string{
		{"intermediate", "--name", "i1", "--listen", "127.0.0.2:0"},
		{"produce", "--id", "p1", "--count", "1"},
		{"consume", "--id", "c1"},
		{"stage", "--id", "s1", "--from", "a", "--to", "b"},
		{"ls"},
		{"status"},
		{"drain", "i1"},
		{"group", "ls"},
	} {
		t.Run(args[0], func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			code, _, errOut := runCLI(t, failFastBound, append(args, "--etcd-endpoints", ep, "--etcd-dial-timeout", "1s")...)
			took := time.Since(start)
			want := "butterfly: etcd unreachable: no answer from " + ep + " within 1s (--etcd-dial-timeout)"
			if code != exitError || lastLine(errOut) != want {
				t.Errorf("butterfly %v = exit %d, last line %q; want exit 1, %q", args, code, lastLine(errOut), want)
			}
			if took < time.Second || took > 5*time.Second {
				t.Errorf("butterfly %v took %v, want about the 1s dial timeout", args, took)
			}
			if strings.Contains(errOut, "plaintext gRPC") && (args[0] == "status" || args[0] == "ls" || args[0] == "drain" || args[0] == "group") {
				t.Errorf("butterfly %s logged a plaintext warning: %q", args[0], errOut)
			}
		})
	}
}

// Exit codes of the binary (main.go).
const (
	exitError      = 1
	exitUsage      = 2
	exitIncomplete = 3
)

// TestCLI_ComponentFailures checks what a producer, consumer or stage says,
// and how soon, when its messages cannot be delivered: no instance
// registered or no consumer (a WARN naming what it waits for, then exit 3
// after --close-timeout), its id refused by mutual TLS or a TLS mismatch
// (exit 1 at once naming the instance and the reason), and the message size
// limit.
func TestCLI_ComponentFailures(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	dir := m.certs("--client-id", "p1", "--stage-id", "s1")
	ca := filepath.Join(dir, "ca.pem")
	client := tlsFiles(dir, "client")
	// Service "nobody": no instance registered. Service "tls": an
	// intermediate with mutual TLS. Service "intermediate": a plaintext one
	// whose group "g" has no consumer.
	run := func(name string, args ...string) (int, string, time.Duration) {
		start := time.Now()
		p := m.start(name, args...)
		code := p.wait(failFastBound)
		b, _ := os.ReadFile(p.stderr)
		return code, string(b), time.Since(start)
	}
	if code, out, errOut := runCLI(t, failFastBound, "group", "create", "g", "--etcd-endpoints", m.etcd[0]); code != 0 {
		t.Fatalf("butterfly group create g = exit %d: %s %s", code, out, errOut)
	}
	_, tlsSrv := m.startIntermediate("tls1", "127.0.0.2", append([]string{"--service", "tls", "--tls-client-auth", "require"}, tlsFiles(dir, "server")...)...)
	_, plainSrv := m.startIntermediate("plain1", "127.0.0.3")

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantLog  []string // in stderr
		wantLast string   // in the last line of stderr
		maxTook  time.Duration
	}{{
		name:     "no instance registered",
		args:     []string{"produce", "--id", "p1", "--service", "nobody", "--count", "5", "--close-timeout", "3s"},
		wantCode: exitIncomplete,
		wantLog:  []string{`msg="no instance of service nobody is registered (waiting)"`, "held=5"},
		wantLast: "5 messages unacknowledged and 0 handed back: context deadline exceeded (waiting: no instance of service nobody is registered)",
		maxTook:  failFastBound,
	}, {
		name:     "no consumer",
		args:     []string{"produce", "--id", "p3", "--count", "5", "--close-timeout", "8s"},
		wantCode: exitIncomplete,
		wantLog:  []string{`msg="group g has no registered consumer (waiting)"`, "held=5"},
		wantLast: "5 messages unacknowledged and 0 handed back: context deadline exceeded (waiting: group g has no registered consumer)",
		maxTook:  failFastBound,
	}, {
		name:     "mutual TLS refuses the id",
		args:     append([]string{"produce", "--id", "p2", "--service", "tls", "--count", "5"}, client...),
		wantCode: exitError,
		wantLast: "butterfly: producer p2: instance tls1 at " + tlsSrv.Addr + ` refused it: PermissionDenied: intermediate: the client certificate (producer/p1) may not publish as producer "p2"`,
		maxTook:  5 * time.Second,
	}, {
		name:     "no client certificate for mutual TLS",
		args:     []string{"produce", "--id", "p4", "--service", "tls", "--count", "5", "--tls-ca", ca},
		wantCode: exitError,
		wantLast: "butterfly: producer p4: TLS mismatch with instance tls1 at " + tlsSrv.Addr + ": the instance refused this client's TLS handshake: remote error: tls:",
		// Under load an attempt can end without the server's TLS alert,
		// the connection only reset; a handshake of the producer's own then
		// reads the alert (at most 1 s).
		maxTook: failFastBound,
	}, {
		name:     "plaintext client, TLS server",
		args:     []string{"produce", "--id", "p5", "--service", "tls", "--count", "5"},
		wantCode: exitError,
		wantLast: "butterfly: producer p5: TLS mismatch with instance tls1 at " + tlsSrv.Addr + ": the instance speaks TLS and this client plaintext gRPC",
		maxTook:  5 * time.Second,
	}, {
		name:     "TLS client, plaintext server",
		args:     append([]string{"produce", "--id", "p6", "--count", "5"}, client...),
		wantCode: exitError,
		wantLast: "butterfly: producer p6: TLS mismatch with instance plain1 at " + plainSrv.Addr + ": this client speaks TLS and the instance plaintext gRPC",
		maxTook:  5 * time.Second,
	}, {
		name:     "message over --max-message-bytes",
		args:     []string{"produce", "--id", "p7", "--count", "1", "--size", "2000", "--max-message-bytes", "1000"},
		wantCode: exitUsage,
		wantLast: "butterfly: --size 2000: over --max-message-bytes 1000",
		maxTook:  5 * time.Second,
	}, {
		name:     "consumer: plaintext client, TLS server",
		args:     []string{"consume", "--id", "c1", "--service", "tls"},
		wantCode: exitError,
		wantLast: "butterfly: consumer c1: TLS mismatch with instance tls1 at " + tlsSrv.Addr + ": the instance speaks TLS and this client plaintext gRPC",
		maxTook:  5 * time.Second,
	}, {
		name:     "stage: TLS client, plaintext server downstream",
		args:     append([]string{"stage", "--id", "s1", "--from", "tls", "--to", "intermediate"}, tlsFiles(dir, "stage-s1")...),
		wantCode: exitError,
		wantLast: "TLS mismatch with instance plain1 at " + plainSrv.Addr + ": this client speaks TLS and the instance plaintext gRPC",
		maxTook:  5 * time.Second,
	}}
	t.Run("cases", func(t *testing.T) {
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel() // each its own producer id; they share etcd and the intermediates
				code, errOut, took := run(regexp.MustCompile(`[^a-z0-9]+`).ReplaceAllString(tc.name, "-"), tc.args...)
				if code != tc.wantCode || !strings.Contains(lastLine(errOut), tc.wantLast) {
					t.Errorf("butterfly %v = exit %d, last line %q; want exit %d, a line containing %q", tc.args, code, lastLine(errOut), tc.wantCode, tc.wantLast)
				}
				for _, w := range tc.wantLog {
					if !strings.Contains(errOut, w) {
						t.Errorf("butterfly %v logged %q, want %q in it", tc.args, errOut, w)
					}
				}
				if took > tc.maxTook {
					t.Errorf("butterfly %v took %v, want at most %v", tc.args, took, tc.maxTook)
				}
				if n := strings.Count(errOut, `msg="plaintext gRPC`); n > 1 {
					t.Errorf("butterfly %v logged the plaintext warning %d times, want at most once", tc.args, n)
				}
			})
		}
	})

	// A consumer waits for an instance, saying so, until it is stopped.
	c := m.start("consume", "consume", "--id", "c2", "--service", "nobody")
	const waiting = `msg="no instance of service nobody is registered (waiting)"`
	waitUntil(t, failFastBound, "consumer c2 warns it waits", func() bool { return strings.Contains(readFile(c.stderr), waiting) })
	c.signal(syscall.SIGTERM)
	if code := c.wait(failFastBound); code != 0 {
		t.Errorf("consumer c2 after SIGTERM exited %d, want 0", code)
	}
}

// TestCLI_EmbeddedEtcdLogs checks that `butterfly etcd` logs no error on a
// normal SIGTERM, and that a taken port ends it at once with exit 1 and one
// line.
func TestCLI_EmbeddedEtcdLogs(t *testing.T) {
	m := newMesh(t)
	e := m.startEtcd()
	start := time.Now()
	code, out, errOut := runCLI(t, failFastBound, "etcd", "--data-dir", filepath.Join(m.dir, "taken"),
		"--listen-client", "http://"+m.etcd[0], "--listen-peer", "http://"+closedPort(t))
	want := "butterfly: embedetcd: an address is taken (another etcd running?): listen tcp " + m.etcd[0] + ": bind: address already in use"
	if code != exitError || strings.TrimSpace(errOut) != want {
		t.Errorf("butterfly etcd on a taken port = exit %d, stderr %q (stdout %q); want exit 1, the one line %q", code, errOut, out, want)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("butterfly etcd on a taken port took %v, want at once", took)
	}

	e.signal(syscall.SIGTERM)
	if code := e.wait(failFastBound); code != 0 {
		t.Errorf("butterfly etcd after SIGTERM exited %d, want 0", code)
	}
	b, _ := os.ReadFile(e.stderr)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, `"level":"error"`) || strings.Contains(line, "level=WARN") {
			t.Errorf("butterfly etcd logged on a normal stop: %q", line)
		}
	}
}

// TestCLI_DrainWait checks that drain --wait returns only once the
// intermediate stopped serving, soon after, and that the process then exits
// at once, though a health Watch stream was open on it (it ends with the
// drain instead of holding the graceful stop until --stop-timeout).
func TestCLI_DrainWait(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	const stopTimeout = 10 * time.Second
	i1, s1 := m.startIntermediate("i1", "127.0.0.2", "--stop-timeout", stopTimeout.String())
	c1 := m.startConsumer("c1")
	waitUntil(t, failFastBound, "c1 registered", func() bool {
		return strings.Contains(readFile(c1.stderr), "consumer registered")
	})
	watchLog := filepath.Join(m.dir, "health-watch.out")
	watchFile, err := os.Create(watchLog)
	if err != nil {
		t.Fatalf("os.Create() = %v", err)
	}
	defer watchFile.Close()
	// Build grpcurl first, so the wait below is for the stream, not the
	// compiler.
	grpcurl := filepath.Join(m.dir, "grpcurl")
	if out, err := exec.Command("go", "build", "-modfile=../tools/go.mod", "-o", grpcurl, "github.com/fullstorydev/grpcurl/cmd/grpcurl").CombinedOutput(); err != nil {
		t.Fatalf("go build grpcurl: %v\n%s", err, out)
	}
	watch := exec.Command(grpcurl, "-plaintext", "-d", "{}", s1.Addr, "grpc.health.v1.Health/Watch")
	watch.Stdout, watch.Stderr = watchFile, watchFile
	if err := watch.Start(); err != nil {
		t.Fatalf("grpcurl Health/Watch: %v", err)
	}
	watchDone := make(chan struct{})
	go func() {
		_ = watch.Wait() // killed, or ended by the drain
		close(watchDone)
	}()
	t.Cleanup(func() {
		_ = watch.Process.Kill()
		<-watchDone
	})
	waitUntil(t, failFastBound, "the health Watch open", func() bool { return strings.Contains(readFile(watchLog), `"SERVING"`) })
	start := time.Now()
	code, out, errOut := runCLI(t, failFastBound, "drain", "i1", "--wait", "--etcd-endpoints", m.etcd[0])
	took := time.Since(start)
	if code != 0 || !strings.Contains(out, "drained: intermediate/i1") {
		t.Fatalf("butterfly drain i1 --wait = exit %d, %q, %q; want exit 0 and drained", code, out, errOut)
	}
	if took > stopTimeout/2 {
		t.Errorf("butterfly drain i1 --wait took %v, want well under the %v stop timeout the health Watch would hold it", took, stopTimeout)
	}
	if conn, err := net.DialTimeout("tcp", s1.Addr, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections after drain --wait returned", s1.Addr)
	}
	if code := i1.wait(2 * time.Second); code != 0 {
		t.Errorf("drained i1 exited %d, want 0", code)
	}
	select {
	case <-watchDone:
	case <-time.After(2 * time.Second):
		t.Errorf("the health Watch stream still open after the drain: %q", readFile(watchLog))
	}
}

// readFile returns the content of path, "" when it cannot be read.
func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
