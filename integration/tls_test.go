package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIntegration_MutualTLS runs the mesh with mutual TLS on every gRPC hop,
// on certificates from `butterfly certs`, through an intermediate crash; a
// producer without a client certificate is refused.
func TestIntegration_MutualTLS(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	dir := m.certs("--client-id", "p1", "--consumer-id", "c1")
	server := append(tlsFiles(dir, "server"), "--tls-client-auth", "require")
	i1, _ := m.startIntermediate("intermediate1", "127.0.0.2", server...)
	m.startIntermediate("intermediate2", "127.0.0.3", server...)
	m.startConsumer("c1", tlsFiles(dir, "consumer-c1")...)
	p := m.startProducer("p1", perProducer, rate, tlsFiles(dir, "client")...)
	waitProgress(t, m, perProducer/2)
	i1.kill()
	m.waitProducer(p, perProducer, runTimeout)
	m.checkExactlyOnce(map[string]int{"p1": perProducer}, false)

	// Without a client certificate the intermediates refuse the producer:
	// nothing it sends is acknowledged.
	anon := m.start("anonymous", "produce", "--id", "p2", "--count", "10", "--close-timeout", "3s",
		"--tls-ca", filepath.Join(dir, "ca.pem"))
	if code := anon.wait(runTimeout); code == 0 {
		t.Errorf("producer without a client certificate exited 0, want refused")
	}
	var s producerSummary
	anon.lastJSON(&s)
	if s.Acked != 0 {
		t.Errorf("producer without a client certificate: %+v, want nothing acknowledged", s)
	}
	seen, _ := m.handled()
	if len(seen["p2"]) != 0 {
		t.Errorf("messages of the refused producer were handled: %d", len(seen["p2"]))
	}
}

// TestCLI_StageRefusedDownstream runs a stage whose certificate the
// downstream intermediate does not let forward (`--forwarders=`): the real
// binary exits 1 with the refusal, naming the flag, as its last line, and
// what it took is left unacknowledged upstream, not handed back for good,
// so its producer still holds every message to send again.
func TestCLI_StageRefusedDownstream(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	dir := m.certs("--producer-id", "p1", "--stage-id", "s1")
	m.startIntermediate("upstream", "127.0.0.2", append(tlsFiles(dir, "server"), "--service", "requests")...)
	m.startIntermediate("downstream", "127.0.0.3", append(tlsFiles(dir, "server"), "--service", "replies", "--forwarders=")...)
	stage := m.start("s1", append([]string{"stage", "--id", "s1", "--from", "requests", "--to", "replies", "--close-timeout", "3s"}, tlsFiles(dir, "stage-s1")...)...)
	p := m.start("p1", append([]string{"produce", "--id", "p1", "--service", "requests", "--count", "5", "--close-timeout", "3s"}, tlsFiles(dir, "producer-p1")...)...)

	if code := stage.wait(runTimeout); code != 1 {
		t.Errorf("butterfly stage refused downstream = exit %d, want 1", code)
	}
	errb, _ := os.ReadFile(stage.stderr)
	lines := strings.Split(strings.TrimSpace(string(errb)), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "butterfly: ") || !strings.Contains(last, "--forwarders") || !strings.Contains(last, `"s1"`) {
		t.Errorf("butterfly stage's last line = %q, want the refusal naming stage \"s1\" and --forwarders", last)
	}
	if code := p.wait(runTimeout); code != 3 {
		t.Errorf("butterfly produce = exit %d, want 3 (messages unacknowledged at its close timeout)", code)
	}
	var s producerSummary
	p.lastJSON(&s)
	if s.Sent != 5 || s.Acked != 0 || s.Nacked != 0 || s.Unacked != 5 {
		t.Errorf("producer summary %+v, want 5 sent, none acknowledged or handed back for good, 5 unacknowledged", s)
	}
}

// certs writes the certificates of `butterfly certs` for the lab's
// loopback hosts 127.0.0.2 and 127.0.0.3, with the role flags given, and
// returns their directory.
func (m *mesh) certs(roles ...string) string {
	m.t.Helper()
	dir := filepath.Join(m.dir, "certs")
	args := append([]string{"certs", "--dir", dir, "--hosts", "127.0.0.2,127.0.0.3"}, roles...)
	if code, out, errOut := runCLI(m.t, 30*time.Second, args...); code != 0 {
		m.t.Fatalf("butterfly certs = exit %d: %s %s", code, out, errOut)
	}
	return dir
}

// tlsFiles returns the TLS flags of the certificate base.pem in dir, its
// key and the CA.
func tlsFiles(dir, base string) []string {
	return []string{"--tls-cert", filepath.Join(dir, base+".pem"), "--tls-key", filepath.Join(dir, base+"-key.pem"),
		"--tls-ca", filepath.Join(dir, "ca.pem")}
}
