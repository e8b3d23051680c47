package tlsutil

import (
	"crypto/x509"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/internal/logtest"
)

// logLine returns the first line of logs containing every one of want.
func logLine(logs string, want ...string) (string, bool) {
	for line := range strings.Lines(logs) {
		if !slices.ContainsFunc(want, func(w string) bool { return !strings.Contains(line, w) }) {
			return line, true
		}
	}
	return "", false
}

// waitLog calls poke and reads logs until a line contains every one of
// want, and returns it, or fails the test at the deadline.
func waitLog(t *testing.T, logs *logtest.Buffer, poke func(), want ...string) string {
	t.Helper()
	deadline := time.Now().Add(defaultTestTimeout)
	tick := time.NewTicker(testReloadInterval)
	defer tick.Stop()
	for ; ; <-tick.C {
		poke()
		if line, ok := logLine(logs.String(), want...); ok {
			return line
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line containing %q within %v; logs:\n%s", want, defaultTestTimeout, logs.String())
		}
	}
}

// reissue writes a server certificate of pki's CA for hosts into a new
// directory and returns the directory.
func reissue(t *testing.T, pki string, hosts ...string) string {
	t.Helper()
	dir := t.TempDir()
	copyFile(t, filepath.Join(pki, CAFile), filepath.Join(dir, CAFile))
	copyFile(t, filepath.Join(pki, CAKeyFile), filepath.Join(dir, CAKeyFile))
	if err := GenerateDev(dir, hosts); err != nil {
		t.Fatalf("GenerateDev(%v) = %v", hosts, err)
	}
	return dir
}

// TestServerConfig_ReloadKeepsCertificateOfDroppedHost checks that a server
// whose certificate file is rewritten for other hosts warns, naming the
// file and the names dropped, and keeps presenting the previous certificate
// to connections that reach it at a dropped name, by IP address or by SNI,
// while one that reaches it at a name the new certificate covers gets the
// new one.
func TestServerConfig_ReloadKeepsCertificateOfDroppedHost(t *testing.T) {
	pki := newPKI(t) // server.pem names localhost and 127.0.0.1
	f := serverFiles(t, pki, pki, ClientAuthRequire)
	logs := &logtest.Buffer{}
	cfg, err := ServerConfig(t.Context(), f, slog.New(slog.NewTextHandler(logs, nil)), WithReloadInterval(testReloadInterval))
	if err != nil {
		t.Fatalf("ServerConfig() = %v", err)
	}
	addr, _ := startServer(t, "127.0.0.1", cfg, nil)
	creds := newClientCreds(t, clientFiles(pki, filepath.Join(pki, CAFile)))
	oldSerial := readCert(t, filepath.Join(pki, ServerFile)).SerialNumber.String()

	for _, tc := range []struct {
		name        string
		hosts       []string
		dropped     []string // of the certificate before, as logged
		atIP, atDNS bool     // whether a connection at 127.0.0.1, at localhost, gets the new certificate
	}{
		{"only another host", []string{"127.0.0.2"}, []string{"localhost", "127.0.0.1"}, false, false},
		{"the IP address kept", []string{"127.0.0.1", "127.0.0.3"}, []string{"127.0.0.2"}, true, false},
		{"every name again", []string{"localhost", "127.0.0.1"}, []string{"127.0.0.3"}, true, true},
	} {
		// Each case reloads over the one before: stop at the first failure.
		if !t.Run(tc.name, func(t *testing.T) {
			next := reissue(t, pki, tc.hosts...)
			newSerial := readCert(t, filepath.Join(next, ServerFile)).SerialNumber.String()
			copyFile(t, filepath.Join(next, ServerKeyFile), f.Key)
			copyFile(t, filepath.Join(next, ServerFile), f.Cert)
			names := "names=" + logValue(strings.Join(tc.hosts, ", "))
			// Files are read again during handshakes: each check is one.
			handshake := func() { check(t, addr, creds) }
			waitLog(t, logs, handshake, "level=WARN", "no longer names", "file="+f.Cert, "dropped="+logValue(strings.Join(tc.dropped, ", ")), names)
			for _, at := range []struct {
				host     string
				check    func() (*x509.Certificate, error)
				takesNew bool
			}{
				{"127.0.0.1", func() (*x509.Certificate, error) { return check(t, addr, creds) }, tc.atIP},
				{"localhost", func() (*x509.Certificate, error) { return checkResolved(t, "localhost", addr, creds) }, tc.atDNS},
			} {
				want := oldSerial
				if at.takesNew {
					want = newSerial
				}
				cert, err := at.check()
				if err != nil || cert.SerialNumber.String() != want {
					t.Fatalf("Check(at %s) = %v, %v; want serial %s (the new certificate: %v)", at.host, cert, err, want, at.takesNew)
				}
				if !at.takesNew {
					waitLog(t, logs, func() {}, "level=WARN", "previous certificate", "file="+f.Cert, "host="+at.host, names)
				}
			}
		}) {
			return
		}
	}
}

// logValue is s as slog's text handler writes a value.
func logValue(s string) string {
	if strings.ContainsAny(s, " =\"") {
		return strconv.Quote(s)
	}
	return s
}

// TestDroppedHosts checks that DroppedHosts names what a certificate names
// and one for hosts would not, matching IP addresses by value and DNS
// names without regard to case.
func TestDroppedHosts(t *testing.T) {
	dir := t.TempDir()
	if err := GenerateDev(dir, []string{"mesh.local", "*.mesh.local", "::1", "127.0.0.1"}); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	file := filepath.Join(dir, ServerFile)
	for _, tc := range []struct {
		hosts []string
		want  []string
	}{
		{[]string{"MESH.local", "*.mesh.local", "0:0::1", "127.0.0.1", "127.0.0.2"}, nil},
		{[]string{"127.0.0.2"}, []string{"mesh.local", "*.mesh.local", "::1", "127.0.0.1"}},
		{[]string{"mesh.local", "a.mesh.local", "127.0.0.1"}, []string{"*.mesh.local", "::1"}},
	} {
		got, err := DroppedHosts(file, tc.hosts)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("DroppedHosts(%v) = %q, %v; want %q, nil", tc.hosts, got, err, tc.want)
		}
	}
	if _, err := DroppedHosts(filepath.Join(dir, "missing.pem"), []string{"127.0.0.1"}); err == nil {
		t.Errorf("DroppedHosts(missing file) = nil error, want one")
	}
}
