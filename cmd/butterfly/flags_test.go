package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/butterfly-mesh/butterfly/components"
	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

// TestComponentFlags_OutOfRange checks that the components' commands refuse
// values out of range before they reach etcd, with a usage error naming the
// flag (exit code 2), as the intermediate does.
func TestComponentFlags_OutOfRange(t *testing.T) {
	// Nothing listens here: a command that got past its flags would fail
	// on etcd instead, without naming the flag.
	noEtcd := []string{"--etcd-endpoints", "127.0.0.1:1", "--etcd-dial-timeout", "200ms"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"consume", "--id", "c1", "--lease-ttl", "0s"}, "--lease-ttl 0s: must be at least 1s"},
		{[]string{"consume", "--id", "c1", "--lease-ttl", "500ms"}, "--lease-ttl 500ms: must be at least 1s"},
		{[]string{"consume", "--id", "c1", "--group", ""}, "--group is empty"},
		{[]string{"consume", "--id", "c1", "--group", "a/b"}, `--group "a/b" contains '/'`},
		{[]string{"consume", "--id", "c1", "--close-timeout", "0s"}, "--close-timeout 0s: must be positive"},
		{[]string{"consume", "--id", "c1", "--max-receive-bytes", "1000"}, "--max-receive-bytes 1000: must be in [65536, 2147483647]"},
		{[]string{"stage", "--id", "s1", "--from", "a", "--to", "b", "--max-receive-bytes", "0"}, "--max-receive-bytes 0: must be in [65536, 2147483647]"},
		{[]string{"produce", "--id", "p1", "--close-timeout", "-1s"}, "--close-timeout -1s: must be positive"},
		{[]string{"produce", "--id", "p1", "--rate", "-5"}, "--rate -5: must be a number of messages a second, 0 or more"},
		{[]string{"produce", "--id", "p1", "--rate", "NaN"}, "--rate NaN: must be a number of messages a second, 0 or more"},
		{[]string{"produce", "--id", "p1", "--rate", "Inf"}, "--rate +Inf: must be a number of messages a second, 0 or more"},
		{[]string{"stage", "--id", "s1", "--from", "a", "--to", "b", "--group", ""}, "--group is empty"},
		{[]string{"stage", "--id", "s1", "--from", "a", "--to", "b", "--close-timeout", "0s"}, "--close-timeout 0s: must be positive"},
		{[]string{"produce", "--id", strings.Repeat("p", 257)}, "--id of 257 bytes is longer than 256, the most an intermediate takes as a producer id"},
		{[]string{"stage", "--id", strings.Repeat("s", 257), "--from", "a", "--to", "b"}, "--id of 257 bytes is longer than 256"},
		{[]string{"drain", "i1", "--wait", "--timeout", "0s"}, "--timeout 0s: must be positive"},
		{[]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--tls-client-auth", "maybe"}, `--tls-client-auth "maybe" is not none, request or require`},
		{[]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--tls-client-auth", "none"}, "a TLS server needs its certificate"},
		{[]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--weight", "0"}, "--weight 0: must be at least 1"},
		{[]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--max-batch-bytes", "10"}, "--max-batch-bytes 10: must be at least 65536"},
		{[]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:99999"}, `--listen "127.0.0.1:99999": port "99999" is not a number in [0, 65535]`},
		{[]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:http"}, `--listen "127.0.0.1:http": port "http" is not a number in [0, 65535]`},
		{[]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--connection-timeout", "0s"}, "--connection-timeout 0s: must be positive"},
	} {
		out, err := executeCommand(t, append(tc.args, noEtcd...)...)
		var ue *usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("butterfly %v = %v (output %q), want a usage error containing %q", tc.args, err, out, tc.want)
		}
	}
}

// TestDrainCommand_WaitTimeoutNamesTheFlag checks that a drain --wait that
// runs out of time says which flag bounded it, for an instance that never
// leaves (a key written by hand, no process behind it).
func TestDrainCommand_WaitTimeoutNamesTheFlag(t *testing.T) {
	etc := etcdtest.Start(t)
	cli := etc.Client(t)
	key := registry.ServiceKey(registry.DefaultPrefix, registry.DefaultService, "deadi")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, `{"Addr":"127.0.0.1:1","Metadata":{"instance":"deadi","epoch":1}}`); err != nil {
		t.Fatalf("etcd put %s = %v", key, err)
	}
	out, err := executeCommand(t, "drain", "deadi", "--wait", "--timeout", "500ms", "--etcd-endpoints", etc.Endpoint())
	want := key + " still registered after --timeout 500ms"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("butterfly drain deadi --wait --timeout 500ms = %v (output %q), want an error containing %q", err, out, want)
	}
}

// TestRoot_UsageErrors checks what the root command refuses with a usage
// error (exit code 2): no command at all (with the help, so that the
// commands are listed), and an --etcd-dial-timeout that is not positive,
// which the etcd client would replace with its own default.
func TestRoot_UsageErrors(t *testing.T) {
	out, err := executeCommand(t)
	var ue *usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "a command is required") || !strings.Contains(out, "Available Commands:") {
		t.Errorf("butterfly = %v (output %q), want a usage error saying a command is required, after the help", err, out)
	}
	for _, d := range []string{"0s", "-1s"} {
		out, err := executeCommand(t, "ls", "--etcd-endpoints", "127.0.0.1:1", "--etcd-dial-timeout", d)
		want := "--etcd-dial-timeout " + d + ": must be positive"
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Errorf("butterfly ls --etcd-dial-timeout %s = %v (output %q), want a usage error containing %q", d, err, out, want)
		}
	}
	if out, err := executeCommand(t, "--help"); err != nil || !strings.Contains(out, "Available Commands:") {
		t.Errorf("butterfly --help = %v (output %q), want the help and nil", err, out)
	}
}

// TestIntermediateCommand_StatusHasVersion checks that `butterfly
// intermediate` reports its version in GetStatus, as in its registration.
func TestIntermediateCommand_StatusHasVersion(t *testing.T) {
	etc := etcdtest.Start(t)
	cli := etc.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ictx, stop := context.WithCancel(ctx)
	iout, idone := startCLI(ictx, "intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--stop-timeout", "300ms",
		"--etcd-endpoints", etc.Endpoint(), "--prefix", "ver", "--log-level", "error")
	defer func() {
		stop()
		if err := <-idone; err != nil {
			t.Errorf("butterfly intermediate = %v; output:\n%s", err, iout.String())
		}
	}()
	waitServing(ctx, t, iout, idone)
	// The serving event follows the registration.
	key := registry.ServiceKey("ver", registry.DefaultService, "i1")
	resp, err := cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("etcd get %s = %v, %v, want the registration", key, resp, err)
	}
	reg, err := registry.ParseValue("i1", resp.Kvs[0].Value)
	if err != nil {
		t.Fatalf("registry.ParseValue(%s) = %v", resp.Kvs[0].Value, err)
	}
	conn, err := grpc.NewClient(reg.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient(%s) = %v", reg.Addr, err)
	}
	defer conn.Close()
	st, err := adminv1.NewAdminServiceClient(conn).GetStatus(ctx, &adminv1.GetStatusRequest{})
	if err != nil {
		t.Fatalf("GetStatus() = %v", err)
	}
	if want := buildVersion(); want == "" || st.GetVersion() != want || reg.Metadata.Version != want {
		t.Errorf("GetStatus().version = %q, registration's %q, want both %q", st.GetVersion(), reg.Metadata.Version, want)
	}
}

// TestStageSummary_SameKeysAsConsumeAndProduce checks the stage's last
// line: its consumer's and producer's counters under the keys consume and
// produce print.
func TestStageSummary_SameKeysAsConsumeAndProduce(t *testing.T) {
	got, err := json.Marshal(stageSummary{
		Consumer: newConsumeSummary(components.ConsumerStats{Delivered: 9, DuplicatesDropped: 1, Nacked: 3}),
		Producer: newProduceSummary(components.ProducerStats{Sent: 10, Acked: 7, Resent: 2, Nacked: 1, InFlight: 2}),
	})
	if err != nil {
		t.Fatalf("json.Marshal() = %v", err)
	}
	const want = `{"consumer":{"delivered":9,"duplicates_dropped":1},"producer":{"sent":10,"acked":7,"resent":2,"nacked":1,"unacked":2}}`
	if string(got) != want {
		t.Errorf("stage summary = %s, want %s", got, want)
	}
}

// TestUsageErrors_NameTheFlagFirst checks that a usage error found by the
// TLS and etcd settings starts with the flag, as the commands' own do,
// with no internal package's name before it.
func TestUsageErrors_NameTheFlagFirst(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"produce", "--id", "p1", "--tls-cert", "c.pem"}, "--tls-cert is set but --tls-key is not"},
		{[]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--tls-client-auth", "maybe"}, `--tls-client-auth "maybe" is not none, request or require`},
		{[]string{"produce", "--id", "p1", "--etcd-user", ":x"}, `--etcd-user ":x" has no user name before ':'`},
		{[]string{"status", "--etcd-cert", "c.pem"}, "--etcd-cert is set but --etcd-key is not"},
		{[]string{"intermediate", "--name", "a/b", "--listen", "127.0.0.1:0"}, `--name "a/b" contains '/'`},
		{[]string{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--processor", "nope"}, `--processor "nope" is unknown (valid: `},
		{[]string{"stage", "--id", "s1", "--from", "a", "--to", "b", "--processor", "nope"}, `--processor "nope" is unknown (valid: `},
		{[]string{"consume", "--id", ""}, "--id is required"},
		{[]string{"consume", "--id", "c 1"}, `--id "c 1" contains ' '`},
	} {
		out, err := executeCommand(t, append(tc.args, "--etcd-endpoints", "127.0.0.1:1", "--etcd-dial-timeout", "200ms")...)
		var ue *usageError
		if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("butterfly %v = %v (output %q), want a usage error starting %q", tc.args, err, out, tc.want)
		}
	}
}

// TestErrorLine_OneLine checks that a command's last line is one line when
// its error joins two (a stage whose two sides both failed to close).
func TestErrorLine_OneLine(t *testing.T) {
	err := errors.Join(errors.New("components: consumer closed with 3 in hand"), errors.New("components: producer closed with 5 messages unacknowledged\n"))
	want := "butterfly: components: consumer closed with 3 in hand; components: producer closed with 5 messages unacknowledged"
	if got := errorLine(err); got != want {
		t.Errorf("errorLine() = %q, want %q", got, want)
	}
}

// TestErrorLine_Suggestion checks the line of a misspelt command: cobra's
// suggestion, on lines of its own, joined into the sentence.
func TestErrorLine_Suggestion(t *testing.T) {
	_, err := executeCommand(t, "consumer", "--id", "c1")
	want := `butterfly: unknown command "consumer" for "butterfly"; did you mean consume?`
	if got := errorLine(err); got != want {
		t.Errorf("errorLine(butterfly consumer) = %q, want %q", got, want)
	}
}

// TestCommands_EtcdEndpointsOfAnotherServer checks that a command given the
// address of a gRPC server that is not etcd for --etcd-endpoints (an
// intermediate's) fails at once naming the flag, where it retried or waited
// for reads as from an etcd without a leader (consume for ever).
func TestCommands_EtcdEndpointsOfAnotherServer(t *testing.T) {
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	ep := serveOnLoopback(t, gs)
	want := "not etcd: --etcd-endpoints " + ep + " answers gRPC but is not etcd"
	for _, args := range [][]string{
		{"ls"},
		{"consume", "--id", "c1"},
		{"produce", "--id", "p1", "--count", "1"},
		{"intermediate", "--name", "i1", "--listen", "127.0.0.1:0"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		root := newRootCommand()
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		root.SetArgs(append(args, "--etcd-endpoints", ep))
		err := root.ExecuteContext(ctx)
		cancel()
		var ue *usageError
		if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Errorf("butterfly %s = %v, want a runtime error containing %q", strings.Join(args, " "), err, want)
		}
	}
}

// TestIntermediateCommand_ListenTaken checks that an intermediate whose
// --listen address is taken says so naming the flag.
func TestIntermediateCommand_ListenTaken(t *testing.T) {
	etc := etcdtest.Start(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	defer taken.Close()
	addr := taken.Addr().String()
	_, err = executeCommand(t, "intermediate", "--name", "i1", "--listen", addr, "--etcd-endpoints", etc.Endpoint())
	want := "--listen " + addr + ": listen tcp " + addr + ": bind: address already in use"
	if err == nil || err.Error() != want {
		t.Errorf("butterfly intermediate --listen %s (taken) = %v, want %q", addr, err, want)
	}
}

// TestComponentFlags_CertificateOfAnotherID checks that consume and stage
// refuse, before they register anything in etcd, a client certificate
// bound to another role or id than theirs: registering first would take the
// id from the process that runs as it, and every intermediate would then
// refuse the newcomer. Their own certificate, and one bound to nobody, pass
// the check (and reach etcd, which does not answer here).
func TestComponentFlags_CertificateOfAnotherID(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if out, err := executeCommand(t, "certs", "--dir", dir, "--hosts", "127.0.0.1", "--consumer-id", "cA1,cA2", "--stage-id", "s1"); err != nil {
		t.Fatalf("butterfly certs = %v; output:\n%s", err, out)
	}
	files := func(name string) []string {
		return []string{"--tls-cert", filepath.Join(dir, name+".pem"), "--tls-key", filepath.Join(dir, name+"-key.pem"), "--tls-ca", filepath.Join(dir, "ca.pem")}
	}
	noEtcd := []string{"--etcd-endpoints", "127.0.0.1:1", "--etcd-dial-timeout", "200ms"}
	for _, tc := range []struct {
		args []string
		want string // "" for no usage error
	}{
		{append([]string{"consume", "--id", "cA1"}, files("consumer-cA2")...), `--tls-cert ` + filepath.Join(dir, "consumer-cA2.pem") + ` is bound to consumer/cA2, not consumer/cA1 (--id)`},
		{append([]string{"consume", "--id", "s1"}, files("stage-s1")...), `is bound to stage/s1, not consumer/s1 (--id)`},
		{append([]string{"stage", "--id", "s2", "--from", "a", "--to", "b"}, files("stage-s1")...), `is bound to stage/s1, not stage/s2 (--id)`},
		{append([]string{"consume", "--id", "cA1"}, files("consumer-cA1")...), ""},
		{append([]string{"consume", "--id", "cA1"}, files("client")...), ""},
		{append([]string{"stage", "--id", "s1", "--from", "a", "--to", "b"}, files("stage-s1")...), ""},
	} {
		out, err := executeCommand(t, append(tc.args, noEtcd...)...)
		var ue *usageError
		isUsage := errors.As(err, &ue)
		switch {
		case tc.want == "" && (err == nil || isUsage):
			t.Errorf("butterfly %v = %v (output %q), want it past its flags, failing on etcd", tc.args, err, out)
		case tc.want != "" && (!isUsage || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("butterfly %v = %v (output %q), want a usage error containing %q", tc.args, err, out, tc.want)
		}
	}
}

// TestLsCommand_EtcdThatAnswersNoRead checks what ls says when etcd takes
// its connection and answers no read (a member whose cluster lost its
// quorum): the endpoints and the likely cause, not a bare deadline.
func TestLsCommand_EtcdThatAnswersNoRead(t *testing.T) {
	srv := etcdtest.Start(t)
	cli, px := srv.ProxiedClient(t)
	px.Blackhole(true)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := listInstances(ctx, cli, "butterfly", "", func(string, error) {})
	want := "etcd at " + px.Addr() + " answered no read of butterfly/services/ in time (no leader? a cluster that lost its quorum answers no read)"
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("listInstances() = %v, want an error starting %q", err, want)
	}
}

// TestLsCommand_SaysWhereNothingIsRegistered checks that ls and status, with
// a --prefix or --service that names nothing, say where they looked rather
// than print an empty table alone.
func TestLsCommand_SaysWhereNothingIsRegistered(t *testing.T) {
	etc := etcdtest.Start(t)
	for _, args := range [][]string{
		{"ls", "--prefix", "wrongprefix"},
		{"status", "--prefix", "wrongprefix"},
		{"ls", "--prefix", "wrongprefix", "--service", "nope", "--json"},
	} {
		out, err := executeCommand(t, append(args, "--etcd-endpoints", etc.Endpoint())...)
		if err != nil {
			t.Fatalf("butterfly %v = %v; output:\n%s", args, err, out)
		}
		want := `butterfly: no instance is registered under wrongprefix/services/ (--prefix "wrongprefix")`
		if len(args) > 3 {
			want = `butterfly: no instance is registered under wrongprefix/services/nope/ (--prefix "wrongprefix", --service "nope")`
		}
		if !strings.Contains(out, want) {
			t.Errorf("butterfly %v output:\n%s\nwant a line %q", args, out, want)
		}
	}
}
