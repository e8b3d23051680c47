package integration

import (
	"os"
	"os/exec"
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

// TestIntegration_EtcdOverMutualTLS runs `butterfly etcd` serving clients
// over mutual TLS with the files of `butterfly certs`: an intermediate, a
// consumer and a producer reach it with --etcd-cacert, --etcd-cert and
// --etcd-key and deliver every message once, `butterfly ls` and a stock
// etcdctl read the registration over TLS, and a client without a
// certificate reads nothing.
func TestIntegration_EtcdOverMutualTLS(t *testing.T) {
	m := newMesh(t)
	dir := m.certs("--client-id", "p1", "--consumer-id", "c1")
	ca, cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	e, client := m.startEtcdOn("127.0.0.2", "https",
		"--cert-file", filepath.Join(dir, "server.pem"), "--key-file", filepath.Join(dir, "server-key.pem"),
		"--trusted-ca-file", ca, "--client-cert-auth")
	if errb, _ := os.ReadFile(e.stderr); strings.Contains(string(errb), "plaintext") {
		t.Errorf("butterfly etcd over TLS warned of plaintext:\n%s", errb)
	}
	m.etcd = []string{client}
	etcdTLS := []string{"--etcd-cacert", ca, "--etcd-cert", cert, "--etcd-key", key}

	m.startIntermediate("intermediate1", "127.0.0.2", etcdTLS...)
	m.startConsumer("c1", etcdTLS...)
	p := m.startProducer("p1", 200, 1000, etcdTLS...)
	m.waitProducer(p, 200, runTimeout)
	m.checkExactlyOnce(map[string]int{"p1": 200}, false)

	code, out, errOut := runCLI(t, 30*time.Second, append([]string{"ls", "--etcd-endpoints", client}, etcdTLS...)...)
	if code != 0 || !strings.Contains(out, "intermediate1") {
		t.Errorf("butterfly ls over TLS = exit %d, stdout %q, stderr %q; want intermediate1 listed", code, out, errOut)
	}
	code, out, errOut = runCLI(t, 30*time.Second, "ls", "--etcd-endpoints", client, "--etcd-cacert", ca, "--etcd-dial-timeout", "2s")
	if code == 0 || strings.Contains(out, "intermediate1") {
		t.Errorf("butterfly ls without a client certificate = exit %d, stdout %q, stderr %q; want it refused", code, out, errOut)
	}

	etcdctl, err := exec.LookPath("etcdctl")
	if err != nil {
		t.Skip("etcdctl not found in PATH (Debian: apt-get install etcd-client); skipping its part")
	}
	ctl := exec.Command(etcdctl, "--endpoints", client, "--cacert", ca, "--cert", cert, "--key", key,
		"get", "--prefix", "--keys-only", "butterfly/services/intermediate/")
	ctl.Env = append(os.Environ(), "ETCDCTL_API=3")
	got, err := ctl.CombinedOutput()
	if err != nil || !strings.Contains(string(got), "butterfly/services/intermediate/intermediate1") {
		t.Errorf("etcdctl get over TLS = %v:\n%s\nwant the key of intermediate1", err, got)
	}
}

// TestCLI_EtcdTLSFilesWithoutHTTPS checks that TLS files without an
// https:// URL are a usage error naming the flags, where etcd alone ignores
// them with a warning.
func TestCLI_EtcdTLSFilesWithoutHTTPS(t *testing.T) {
	m := newMesh(t)
	code, _, errOut := runCLI(t, 30*time.Second, "etcd", "--data-dir", filepath.Join(m.dir, "etcd2"), "--cert-file", "server.pem", "--key-file", "server-key.pem")
	if want := "--cert-file, --key-file, --trusted-ca-file and --client-cert-auth need an https:// --listen-client"; code != 2 || !strings.Contains(errOut, want) {
		t.Errorf("butterfly etcd --cert-file with an http:// --listen-client = exit %d, stderr %q; want 2 saying %q", code, errOut, want)
	}
}
