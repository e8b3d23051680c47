package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/butterfly-mesh/butterfly/internal/tcpproxy"
)

// TestIntegration_AdvertiseOfAnother runs two intermediates over mutual TLS:
// intermediate1 advertised at a proxy in front of itself, which its check
// finds it at and says nothing about; and intermediate2 started with
// intermediate1's --advertise, as a copied command line would, which exits 1
// with one line naming --advertise and who answers there, its registration
// gone, while intermediate1 serves on.
func TestIntegration_AdvertiseOfAnother(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	dir := m.certs()
	listen := freePort(t, "127.0.0.2")
	proxy, err := tcpproxy.Listen("127.0.0.3:0", listen)
	if err != nil {
		t.Fatalf("tcpproxy.Listen() = %v", err)
	}
	t.Cleanup(func() { proxy.Close() })
	i1, s1 := m.startIntermediateAt("intermediate1", listen, proxy.Addr(), append([]string{"--log-level", "debug"}, tlsFiles(dir, "server")...)...)
	stderr := func(p *proc) string {
		b, _ := os.ReadFile(p.stderr)
		return string(b)
	}
	waitUntil(t, defaultTestTimeout, "intermediate1's check finding itself at "+proxy.Addr(), func() bool {
		return strings.Contains(stderr(i1), `msg="intermediate: the advertised address reaches this server"`)
	})
	if errOut := stderr(i1); strings.Contains(errOut, "level=WARN") || strings.Contains(errOut, "level=ERROR") {
		t.Errorf("intermediate1 stderr:\n%s\nwant no warning or error", errOut)
	}

	i2 := m.start("intermediate2", append([]string{"intermediate", "--name", "intermediate2", "--listen", "127.0.0.3:0",
		"--advertise", s1.Addr, "--lease-ttl", leaseTTL, "--drain-timeout", "5s"}, tlsFiles(dir, "server")...)...)
	if code := i2.wait(failFastBound); code != 1 {
		t.Fatalf("intermediate2 --advertise %s (intermediate1's) = exit %d, want 1; stderr:\n%s", s1.Addr, code, stderr(i2))
	}
	want := fmt.Sprintf("butterfly: --advertise %s reaches another server (it answers as intermediate/intermediate1 epoch %d), not this instance", s1.Addr, s1.Epoch)
	if last := lastLine(stderr(i2)); !strings.HasPrefix(last, want) {
		t.Errorf("intermediate2's last line = %q, want it to start %q", last, want)
	}
	if entries := m.ls("intermediate"); len(entries) != 1 || entries[0].Instance != "intermediate1" {
		t.Errorf("butterfly ls --json after intermediate2 exited = %+v, want intermediate1 alone", entries)
	}
	if i1.exited() {
		t.Errorf("intermediate1 exited (%v), want it serving on; stderr:\n%s", i1.err, stderr(i1))
	}
}
