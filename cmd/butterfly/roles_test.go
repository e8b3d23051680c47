package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

// startCLI runs the butterfly command line args until ctx is done; its
// result arrives on the returned channel.
func startCLI(ctx context.Context, args ...string) (*syncBuffer, <-chan error) {
	root := newRootCommand()
	out := &syncBuffer{wrote: make(chan struct{}, 1)}
	root.SetOut(out)
	root.SetErr(out)
	root.SetArgs(args)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	return out, done
}

// waitServing waits until `butterfly intermediate`, started by startCLI with
// out and done, printed its serving event (after it registered).
func waitServing(ctx context.Context, t *testing.T, out *syncBuffer, done <-chan error) {
	t.Helper()
	for !strings.Contains(out.String(), `"event":"serving"`) {
		select {
		case err := <-done:
			t.Fatalf("butterfly intermediate = %v before serving; output:\n%s", err, out.String())
		case <-ctx.Done():
			t.Fatalf("butterfly intermediate not serving; output:\n%s", out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestCLI_RoleCertificates runs intermediate, consume and produce with the
// role certificates of `butterfly certs`: the producer's messages reach the
// consumer, and a consume with the producer's certificate stops with an
// error naming the refusal.
func TestCLI_RoleCertificates(t *testing.T) {
	etc := etcdtest.Start(t)
	dir := filepath.Join(t.TempDir(), "certs")
	if out, err := executeCommand(t, "certs", "--dir", dir, "--hosts", "127.0.0.1", "--producer-id", "p1", "--consumer-id", "c1"); err != nil {
		t.Fatalf("butterfly certs = %v; output:\n%s", err, out)
	}
	ca := filepath.Join(dir, tlsutil.CAFile)
	common := []string{"--etcd-endpoints", etc.Endpoint(), "--prefix", "roles", "--log-level", "error"}
	role := func(r tlsutil.Role, id string) []string {
		cert, key := tlsutil.IdentityFiles(r, id)
		return []string{"--tls-cert", filepath.Join(dir, cert), "--tls-key", filepath.Join(dir, key), "--tls-ca", ca}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ictx, stop := context.WithCancel(ctx)
	iout, idone := startCLI(ictx, append([]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--stop-timeout", "300ms",
		"--tls-cert", filepath.Join(dir, tlsutil.ServerFile), "--tls-key", filepath.Join(dir, tlsutil.ServerKeyFile), "--tls-ca", ca}, common...)...)
	defer func() {
		stop()
		if err := <-idone; err != nil {
			t.Errorf("butterfly intermediate = %v; output:\n%s", err, iout.String())
		}
	}()
	waitServing(ctx, t, iout, idone)

	tsv := filepath.Join(t.TempDir(), "c1.tsv")
	cout, cdone := startCLI(ctx, append(append([]string{"consume", "--id", "c1", "--count", "5", "--out", tsv}, role(tlsutil.RoleConsumer, "c1")...), common...)...)
	pout, pdone := startCLI(ctx, append(append([]string{"produce", "--id", "p1", "--count", "5"}, role(tlsutil.RoleProducer, "p1")...), common...)...)
	if err := <-pdone; err != nil {
		t.Fatalf("butterfly produce = %v; output:\n%s", err, pout.String())
	}
	if err := <-cdone; err != nil {
		t.Fatalf("butterfly consume = %v; output:\n%s", err, cout.String())
	}
	lines, err := os.ReadFile(tsv)
	if err != nil {
		t.Fatalf("os.ReadFile(%s) = %v", tsv, err)
	}
	if got := strings.Count(string(lines), "p1\t"); got != 5 {
		t.Fatalf("consumer c1 wrote %d lines of p1, want 5:\n%s", got, lines)
	}

	_, done := startCLI(ctx, append(append([]string{"consume", "--id", "c1", "--count", "1", "--close-timeout", "1s"}, role(tlsutil.RoleProducer, "p1")...), common...)...)
	err = <-done
	// Refused at start, before it registers (the intermediates would
	// refuse it too: components' TestAuthz tests).
	var ue *usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), `is bound to producer/p1, not consumer/c1 (--id)`) {
		t.Fatalf("butterfly consume with the certificate of producer p1 = %v, want a usage error naming the binding", err)
	}
}

// TestIntermediateFlags_Budgets checks that the byte budget, stream cap,
// connection timeout, peer heartbeat cap and credit cap flags refuse values
// out of range, naming the flag.
func TestIntermediateFlags_Budgets(t *testing.T) {
	base := []string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-in-flight-bytes", "1000"}, "--max-in-flight-bytes 1000: must be at least 1048576"},
		{[]string{"--memory-budget", "2000000"}, "--memory-budget 2000000: must be at least 67108864"},
		{[]string{"--max-streams", "-1"}, "--max-streams -1"},
		{[]string{"--connection-timeout", "0s"}, "--connection-timeout 0s"},
		{[]string{"--budget-wait", "0s"}, "--budget-wait 0s"},
		{[]string{"--max-peer-heartbeat", "2m"}, "--max-peer-heartbeat 2m0s: must be within [1ms, 1m]"},
		{[]string{"--max-credit", "0"}, "--max-credit 0: must be at least 1"},
	} {
		_, err := executeCommand(t, append(base, tc.args...)...)
		var ue *usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("butterfly intermediate %v = %v, want a usage error containing %q", tc.args, err, tc.want)
		}
	}
}
