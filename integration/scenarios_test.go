package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

const (
	perProducer = 20000 // messages each producer sends
	rate        = 4000  // per producer per second: a run lasts about 5s
	runTimeout  = 90 * time.Second
)

// standard starts etcd, intermediate1 on 127.0.0.2, intermediate2 on
// 127.0.0.3 and consumers c1 and c2.
func standard(t *testing.T) (*mesh, map[string]*proc) {
	t.Helper()
	m := newMesh(t)
	m.startEtcd()
	procs := map[string]*proc{}
	procs["intermediate1"], _ = m.startIntermediate("intermediate1", "127.0.0.2")
	procs["intermediate2"], _ = m.startIntermediate("intermediate2", "127.0.0.3")
	procs["c1"] = m.startConsumer("c1")
	procs["c2"] = m.startConsumer("c2")
	return m, procs
}

// produce starts producers p1 and p2 and returns them with the expected counts.
func produce(m *mesh, extra ...string) ([]*proc, map[string]int) {
	ps := []*proc{
		m.startProducer("p1", perProducer, rate, extra...),
		m.startProducer("p2", perProducer, rate, extra...),
	}
	return ps, map[string]int{"p1": perProducer, "p2": perProducer}
}

// waitProgress waits until the consumers handled n messages.
func waitProgress(t *testing.T, m *mesh, n int) {
	t.Helper()
	waitUntil(t, runTimeout, fmt.Sprintf("%d messages handled", n), func() bool { return m.handledCount() >= n })
}

func finish(t *testing.T, m *mesh, ps []*proc, want map[string]int) map[string]int {
	t.Helper()
	for _, p := range ps {
		m.waitProducer(p, want[p.name], runTimeout)
	}
	return m.checkExactlyOnce(want, false)
}

// TestIntegration_KillIntermediate SIGKILLs an intermediate under load.
func TestIntegration_KillIntermediate(t *testing.T) {
	m, procs := standard(t)
	ps, want := produce(m)
	waitProgress(t, m, perProducer/2)
	procs["intermediate1"].kill()
	via := finish(t, m, ps, want)
	if via["intermediate2"] == 0 {
		t.Errorf("intermediate2 delivered nothing: %v", via)
	}
}

// TestIntegration_FreezeIntermediate SIGSTOPs an intermediate for 5s (a
// frozen host: connections open, nothing answers), then SIGCONTs it.
func TestIntegration_FreezeIntermediate(t *testing.T) {
	m, procs := standard(t)
	ps, want := produce(m)
	waitProgress(t, m, perProducer/2)
	i1 := procs["intermediate1"]
	i1.signal(syscall.SIGSTOP)
	before := m.handledCount()
	// Traffic goes on through intermediate2 while intermediate1 is frozen.
	waitUntil(t, 4*time.Second, "progress while frozen", func() bool { return m.handledCount() >= before+2000 })
	time.Sleep(5 * time.Second) // the freeze itself is the fault under test, not synchronisation
	i1.signal(syscall.SIGCONT)
	finish(t, m, ps, want)
}

// TestIntegration_MoveAfterKill SIGKILLs intermediate2 and starts it again on
// another address under the same name.
func TestIntegration_MoveAfterKill(t *testing.T) {
	m, procs := standard(t)
	ps, want := produce(m)
	waitProgress(t, m, perProducer/2)
	procs["intermediate2"].kill()
	_, moved := m.startIntermediate("intermediate2", "127.0.0.4")
	if !strings.HasPrefix(moved.Addr, "127.0.0.4:") {
		t.Fatalf("moved intermediate2 at %s, want 127.0.0.4", moved.Addr)
	}
	_, viaBefore := m.handled()
	via := finish(t, m, ps, want)
	if via["intermediate2"] <= viaBefore["intermediate2"] {
		t.Errorf("intermediate2 delivered nothing after the move (%d before, %d after)", viaBefore["intermediate2"], via["intermediate2"])
	}
	checkRegistered(t, m, map[string]string{"intermediate2": "127.0.0.4:"})
}

// TestIntegration_MoveZombie starts intermediate2 on a new address while the
// old process still runs: the old one fences itself and exits.
func TestIntegration_MoveZombie(t *testing.T) {
	m, procs := standard(t)
	ps, want := produce(m)
	waitProgress(t, m, perProducer/2)
	_, moved := m.startIntermediate("intermediate2", "127.0.0.4")
	if code := procs["intermediate2"].wait(30 * time.Second); code != 0 {
		t.Errorf("fenced intermediate2 exited %d, want 0", code)
	}
	finish(t, m, ps, want)
	checkRegistered(t, m, map[string]string{"intermediate2": moved.Addr})
}

// TestIntegration_Drain drains intermediate1 with `butterfly drain --wait`
// and intermediate2 with SIGTERM, under load.
func TestIntegration_Drain(t *testing.T) {
	m, procs := standard(t)
	ps, want := produce(m)
	waitProgress(t, m, perProducer/2)
	out, err := exec.Command(binary, "drain", "intermediate1", "--wait", "--etcd-endpoints", m.etcd[0]).CombinedOutput()
	if err != nil {
		t.Fatalf("butterfly drain intermediate1 --wait = %v: %s", err, out)
	}
	if code := procs["intermediate1"].wait(30 * time.Second); code != 0 {
		t.Errorf("drained intermediate1 exited %d, want 0", code)
	}
	m.startIntermediate("intermediate3", "127.0.0.4")
	waitProgress(t, m, perProducer)
	procs["intermediate2"].signal(syscall.SIGTERM)
	if code := procs["intermediate2"].wait(30 * time.Second); code != 0 {
		t.Errorf("intermediate2 after SIGTERM exited %d, want 0", code)
	}
	finish(t, m, ps, want)
	checkRegistered(t, m, map[string]string{"intermediate3": "127.0.0.4:"})
}

// TestIntegration_RollingRestart restarts every intermediate, one at a time,
// each on a new address.
func TestIntegration_RollingRestart(t *testing.T) {
	m, procs := standard(t)
	ps, want := produce(m)
	hosts := map[string]string{"intermediate1": "127.0.0.4", "intermediate2": "127.0.0.5"}
	for i, name := range []string{"intermediate1", "intermediate2"} {
		waitProgress(t, m, (i+1)*perProducer/2)
		procs[name].signal(syscall.SIGTERM)
		if code := procs[name].wait(30 * time.Second); code != 0 {
			t.Errorf("%s after SIGTERM exited %d, want 0", name, code)
		}
		m.startIntermediate(name, hosts[name])
	}
	finish(t, m, ps, want)
	checkRegistered(t, m, map[string]string{"intermediate1": "127.0.0.4:", "intermediate2": "127.0.0.5:"})
}

// TestIntegration_KillConsumer SIGKILLs a consumer under load: its messages go
// to the other consumer; messages it wrote but had not acknowledged may be
// handled again (at least once), none is lost.
func TestIntegration_KillConsumer(t *testing.T) {
	m, procs := standard(t)
	ps, want := produce(m)
	waitProgress(t, m, perProducer/2)
	procs["c1"].kill()
	for _, p := range ps {
		m.waitProducer(p, want[p.name], runTimeout)
	}
	m.checkExactlyOnce(want, true)
}

// TestIntegration_TermConsumer SIGTERMs a consumer under load: it drains and
// nothing is lost or handled twice.
func TestIntegration_TermConsumer(t *testing.T) {
	m, procs := standard(t)
	ps, want := produce(m)
	waitProgress(t, m, perProducer/2)
	procs["c1"].signal(syscall.SIGTERM)
	if code := procs["c1"].wait(30 * time.Second); code != 0 {
		t.Errorf("c1 after SIGTERM exited %d, want 0", code)
	}
	finish(t, m, ps, want)
}

// TestIntegration_EtcdOutage stops etcd for longer than the lease TTL: traffic
// never stops, and the registrations return when etcd does.
func TestIntegration_EtcdOutage(t *testing.T) {
	m := newMesh(t)
	etcd := m.startEtcd()
	m.startIntermediate("intermediate1", "127.0.0.2")
	m.startIntermediate("intermediate2", "127.0.0.3")
	m.startConsumer("c1")
	m.startConsumer("c2")
	ps, want := produce(m)
	waitProgress(t, m, perProducer/2)
	etcd.kill()
	before := m.handledCount()
	waitUntil(t, 10*time.Second, "progress while etcd is down", func() bool { return m.handledCount() >= before+4000 })
	time.Sleep(3 * time.Second) // longer than the 2s lease TTL: the fault under test
	args := etcd.cmd.Args[1:]
	restarted := m.start("etcd-restarted", args...)
	restarted.waitOutput("etcd ready", defaultTestTimeout)
	finish(t, m, ps, want)
	waitUntil(t, 20*time.Second, "both registrations back", func() bool { return len(m.ls("intermediate")) == 2 })
}

// TestIntegration_EtcdLeaderKill runs a 3-member etcd cluster and SIGKILLs its
// leader under load.
func TestIntegration_EtcdLeaderKill(t *testing.T) {
	m := newMesh(t)
	type member struct{ name, client, peer string }
	var members []member
	var cluster []string
	for i := 1; i <= 3; i++ {
		// An address of their own on the loopback, where no client's port
		// (those take 127.0.0.1's) can take a port picked for them before
		// they bind it.
		host := fmt.Sprintf("127.0.0.%d", 20+i)
		mb := member{fmt.Sprintf("e%d", i), freePort(t, host), freePort(t, host)}
		members = append(members, mb)
		cluster = append(cluster, mb.name+"=http://"+mb.peer)
	}
	procs := map[string]*proc{}
	for _, mb := range members {
		procs[mb.client] = m.start(mb.name, "etcd", "--name", mb.name, "--data-dir", filepath.Join(m.dir, mb.name),
			"--listen-client", "http://"+mb.client, "--listen-peer", "http://"+mb.peer,
			"--initial-cluster", strings.Join(cluster, ","))
		m.etcd = append(m.etcd, mb.client)
	}
	for _, mb := range members {
		procs[mb.client].waitOutput("etcd ready", defaultTestTimeout)
	}
	m.startIntermediate("intermediate1", "127.0.0.2")
	m.startIntermediate("intermediate2", "127.0.0.3")
	m.startConsumer("c1")
	m.startConsumer("c2")
	ps, want := produce(m)
	waitProgress(t, m, perProducer/2)

	cli, err := clientv3.New(clientv3.Config{Endpoints: m.etcd, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("clientv3.New() = %v", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var leader string
	for _, ep := range m.etcd {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			t.Fatalf("Status(%s) = %v", ep, err)
		}
		if st.Header.MemberId == st.Leader {
			leader = ep
		}
	}
	if leader == "" {
		t.Fatalf("no etcd leader among %v", m.etcd)
	}
	procs[leader].kill()
	finish(t, m, ps, want)
	waitUntil(t, 20*time.Second, "both registrations listed", func() bool { return len(m.ls("intermediate")) == 2 })
}

// TestIntegration_ProducerTerm SIGTERMs a producer mid-stream: it exits 0
// once everything it accepted was acknowledged, and exactly that was handled.
func TestIntegration_ProducerTerm(t *testing.T) {
	m, _ := standard(t)
	p := m.startProducer("p1", perProducer, rate)
	waitProgress(t, m, perProducer/4)
	p.signal(syscall.SIGTERM)
	if code := p.wait(runTimeout); code != 0 {
		t.Errorf("producer after SIGTERM exited %d, want 0", code)
	}
	var s producerSummary
	p.lastJSON(&s)
	if s.Sent == 0 || s.Sent >= perProducer || s.Acked != s.Sent || s.Unacked != 0 {
		t.Fatalf("producer summary %+v, want 0 < sent < %d and acked = sent", s, perProducer)
	}
	m.checkExactlyOnce(map[string]int{"p1": int(s.Sent)}, false)
}

// checkRegistered checks `butterfly ls` shows each instance at an address
// with the given prefix.
func checkRegistered(t *testing.T, m *mesh, want map[string]string) {
	t.Helper()
	entries := m.ls("intermediate")
	got := map[string]string{}
	for _, e := range entries {
		got[e.Instance] = e.Addr
	}
	for inst, prefix := range want {
		if !strings.HasPrefix(got[inst], prefix) {
			t.Errorf("butterfly ls: %s at %q, want %s…", inst, got[inst], prefix)
		}
	}
}
