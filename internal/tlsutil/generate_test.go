package tlsutil

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestGenerateDev_Files checks the files, modes and certificate contents
// GenerateDev writes.
func TestGenerateDev_Files(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	start := time.Now()
	if err := GenerateDev(dir, []string{"127.0.0.2", "mesh.local", "::1"}, WithClientID("p1")); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	for name, want := range map[string]os.FileMode{
		CAFile: 0o644, CAKeyFile: 0o600, ServerFile: 0o644, ServerKeyFile: 0o600, ClientFile: 0o644, ClientKeyFile: 0o600,
	} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("os.Stat(%s) = %v", name, err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("mode of %s = %v, want %v", name, got, want)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("os.Stat(%s) = %v, %v; want mode 0700", dir, fi.Mode().Perm(), err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("os.ReadDir(%s) = %v", dir, err)
	}
	if len(entries) != 6 {
		t.Errorf("files in %s = %d, want 6 (no temporary files left)", dir, len(entries))
	}

	ca := readCert(t, filepath.Join(dir, CAFile))
	if !ca.IsCA || ca.Subject.CommonName != caCommonName {
		t.Errorf("CA IsCA, CommonName = %v, %q; want true, %q", ca.IsCA, ca.Subject.CommonName, caCommonName)
	}
	if got := ca.NotAfter.Sub(start); got < caValidity-time.Minute || got > caValidity+time.Minute {
		t.Errorf("CA validity from now = %v, want %v", got, caValidity)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	wantIPs := []string{"127.0.0.2", "::1"}
	for _, tc := range []struct {
		file, cn string
		usage    x509.ExtKeyUsage
		uris     []string
	}{
		{ServerFile, "butterfly-server", x509.ExtKeyUsageServerAuth, nil},
		{ClientFile, ClientCommonName, x509.ExtKeyUsageClientAuth, []string{"butterfly://producer/p1"}},
	} {
		cert := readCert(t, filepath.Join(dir, tc.file))
		if cert.Subject.CommonName != tc.cn {
			t.Errorf("%s CommonName = %q, want %q", tc.file, cert.Subject.CommonName, tc.cn)
		}
		pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			t.Errorf("%s public key = %T, want ECDSA P-256", tc.file, cert.PublicKey)
		}
		var ips, uris []string
		for _, ip := range cert.IPAddresses {
			ips = append(ips, ip.String())
		}
		for _, u := range cert.URIs {
			uris = append(uris, u.String())
		}
		if diff := cmp.Diff(wantIPs, ips); diff != "" {
			t.Errorf("%s IP SANs (-want +got):\n%s", tc.file, diff)
		}
		if diff := cmp.Diff([]string{"mesh.local"}, cert.DNSNames); diff != "" {
			t.Errorf("%s DNS SANs (-want +got):\n%s", tc.file, diff)
		}
		if diff := cmp.Diff(tc.uris, uris); diff != "" {
			t.Errorf("%s URI SANs (-want +got):\n%s", tc.file, diff)
		}
		if !cert.NotAfter.Equal(ca.NotAfter) && cert.NotAfter.After(ca.NotAfter) {
			t.Errorf("%s NotAfter = %v, after the CA's %v", tc.file, cert.NotAfter, ca.NotAfter)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
			t.Errorf("%s Verify(CA, %v) = %v, want nil", tc.file, tc.usage, err)
		}
	}
}

// TestGenerateDev_Handshake checks that the generated server and client
// certificates complete an mTLS handshake with each other.
func TestGenerateDev_Handshake(t *testing.T) {
	dir := t.TempDir()
	if err := GenerateDev(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	addr, ids := startTLSServer(t, Files{
		Cert: filepath.Join(dir, ServerFile), Key: filepath.Join(dir, ServerKeyFile), CA: filepath.Join(dir, CAFile),
	}, nil)
	if _, err := check(t, addr, newClientCreds(t, clientFiles(dir, filepath.Join(dir, CAFile)))); err != nil {
		t.Fatalf("Check() = %v, want nil", err)
	}
	if got, want := receive(t, ids), (identity{ClientCommonName, true}); got != want {
		t.Fatalf("PeerIdentity() = %+v, want %+v", got, want)
	}
}

// TestGenerateDev_KeepsCA checks that running GenerateDev again keeps the CA,
// so certificates issued before stay valid, and issues new leaves.
func TestGenerateDev_KeepsCA(t *testing.T) {
	dir := t.TempDir()
	if err := GenerateDev(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	ca1, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatalf("os.ReadFile(ca) = %v", err)
	}
	client1 := readCert(t, filepath.Join(dir, ClientFile))
	if err := GenerateDev(dir, []string{"127.0.0.1"}, WithValidity(time.Hour)); err != nil {
		t.Fatalf("GenerateDev() again = %v", err)
	}
	ca2, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		t.Fatalf("os.ReadFile(ca) = %v", err)
	}
	if !bytes.Equal(ca1, ca2) {
		t.Fatalf("GenerateDev() again replaced %s, want it kept", CAFile)
	}
	client2 := readCert(t, filepath.Join(dir, ClientFile))
	if client1.SerialNumber.Cmp(client2.SerialNumber) == 0 {
		t.Fatalf("GenerateDev() again kept client serial %v, want a new certificate", client1.SerialNumber)
	}
	if got := time.Until(client2.NotAfter); got > time.Hour || got < 50*time.Minute {
		t.Fatalf("client NotAfter - now = %v with WithValidity(1h), want about 1h", got)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca2)
	opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := client1.Verify(opts); err != nil {
		t.Fatalf("first client certificate Verify(kept CA) = %v, want nil", err)
	}
}

// TestGenerateDev_Errors checks that bad arguments are refused before any
// file is written.
func TestGenerateDev_Errors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		hosts   []string
		opts    []GenerateOption
		wantErr string
	}{
		{"no hosts", nil, nil, "no hosts"},
		{"empty host", []string{"127.0.0.1", ""}, nil, `host "" is not`},
		{"host with space", []string{"a b"}, nil, `host "a b" is not`},
		{"client id with slash", []string{"h"}, []GenerateOption{WithClientID("p/1")}, `client id "p/1" contains '/'`},
		{"zero validity", []string{"h"}, []GenerateOption{WithValidity(0)}, "validity 0s is not positive"},
	} {
		dir := filepath.Join(t.TempDir(), "certs")
		err := GenerateDev(dir, tc.hosts, tc.opts...)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("GenerateDev(%s) = %v, want an error containing %q", tc.name, err, tc.wantErr)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("GenerateDev(%s) created %s, want nothing written", tc.name, dir)
		}
	}
}

// TestGenerateDev_ExpiredCA checks that an expired CA is not reused.
func TestGenerateDev_ExpiredCA(t *testing.T) {
	dir := t.TempDir()
	if err := GenerateDev(dir, []string{"127.0.0.1"}, withNow(time.Now().Add(-2*caValidity))); err != nil {
		t.Fatalf("GenerateDev(two years ago) = %v", err)
	}
	err := GenerateDev(dir, []string{"127.0.0.1"})
	if err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("GenerateDev(expired CA) = %v, want an error containing %q", err, "expired")
	}
}
