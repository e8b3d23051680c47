package integration

import (
	"path/filepath"
	"testing"
	"time"
)

// TestIntegration_MutualTLS runs the mesh with mutual TLS on every gRPC hop,
// on certificates from `butterfly certs`, through an intermediate crash; a
// producer without a client certificate is refused.
func TestIntegration_MutualTLS(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	dir := filepath.Join(m.dir, "certs")
	if code, out, errOut := runCLI(t, 30*time.Second, "certs", "--dir", dir, "--hosts", "127.0.0.2,127.0.0.3", "--client-id", "p1", "--consumer-id", "c1"); code != 0 {
		t.Fatalf("butterfly certs = exit %d: %s %s", code, out, errOut)
	}
	server := []string{"--tls-cert", filepath.Join(dir, "server.pem"), "--tls-key", filepath.Join(dir, "server-key.pem"),
		"--tls-ca", filepath.Join(dir, "ca.pem"), "--tls-client-auth", "require"}
	client := []string{"--tls-cert", filepath.Join(dir, "client.pem"), "--tls-key", filepath.Join(dir, "client-key.pem"),
		"--tls-ca", filepath.Join(dir, "ca.pem")}
	i1, _ := m.startIntermediate("intermediate1", "127.0.0.2", server...)
	m.startIntermediate("intermediate2", "127.0.0.3", server...)
	m.startConsumer("c1", "--tls-cert", filepath.Join(dir, "consumer-c1.pem"), "--tls-key", filepath.Join(dir, "consumer-c1-key.pem"),
		"--tls-ca", filepath.Join(dir, "ca.pem"))
	p := m.startProducer("p1", perProducer, rate, client...)
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
