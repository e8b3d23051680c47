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
// finds it at before it says it serves, and says nothing about; and a copy
// of its command line started on another address with its --name and
// --advertise, which exits 1 with one line naming --advertise and who
// answers there, without registering or saying it serves: intermediate1 is
// not fenced and serves on at the same epoch.
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
	errOut := stderr(i1)
	if !strings.Contains(errOut, `msg="intermediate: the advertised address reaches this server"`) {
		t.Errorf("intermediate1 stderr once serving:\n%s\nwant the check finding it at %s", errOut, proxy.Addr())
	}
	if strings.Contains(errOut, "level=WARN") || strings.Contains(errOut, "level=ERROR") {
		t.Errorf("intermediate1 stderr:\n%s\nwant no warning or error", errOut)
	}

	i2 := m.start("intermediate1-copy", append([]string{"intermediate", "--name", "intermediate1", "--listen", "127.0.0.3:0",
		"--advertise", s1.Addr, "--lease-ttl", leaseTTL, "--drain-timeout", "5s"}, tlsFiles(dir, "server")...)...)
	if code := i2.wait(failFastBound); code != 1 {
		t.Fatalf("intermediate --name intermediate1 --advertise %s (a copy of its command line) = exit %d, want 1; stderr:\n%s", s1.Addr, code, stderr(i2))
	}
	want := fmt.Sprintf("butterfly: --advertise %s reaches another process of instance intermediate1 (it answers as intermediate/intermediate1 epoch %d): nothing was registered", s1.Addr, s1.Epoch)
	if last := lastLine(stderr(i2)); !strings.HasPrefix(last, want) {
		t.Errorf("the copy's last line = %q, want it to start %q", last, want)
	}
	if out := i2.output(); strings.Contains(out, `"event":"serving"`) {
		t.Errorf("the copy's stdout = %q, want no serving event", out)
	}
	if entries := m.ls("intermediate"); len(entries) != 1 || entries[0].Instance != "intermediate1" || entries[0].Epoch != s1.Epoch || entries[0].Addr != s1.Addr || entries[0].Draining {
		t.Errorf("butterfly ls --json after the copy exited = %+v, want intermediate1 alone at %s, epoch %d, not draining", entries, s1.Addr, s1.Epoch)
	}
	if i1.exited() {
		t.Errorf("intermediate1 exited (%v), want it serving on; stderr:\n%s", i1.err, stderr(i1))
	}
}
