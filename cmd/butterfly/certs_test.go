package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}

// executeCommand runs the butterfly command line args and returns what it
// printed.
func executeCommand(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// TestCertsCommand_WritesPKI checks that `butterfly certs` writes the CA,
// server and client files, and keeps the CA when run again.
func TestCertsCommand_WritesPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	out, err := executeCommand(t, "certs", "--dir", dir, "--hosts", "127.0.0.2,mesh.local", "--client-id", "p1")
	if err != nil {
		t.Fatalf("butterfly certs = %v, want nil; output:\n%s", err, out)
	}
	if !strings.Contains(out, "with a new CA") {
		t.Fatalf("butterfly certs output = %q, want it to mention a new CA", out)
	}
	for _, name := range []string{tlsutil.CAFile, tlsutil.CAKeyFile, tlsutil.ServerFile, tlsutil.ServerKeyFile, tlsutil.ClientFile, tlsutil.ClientKeyFile} {
		if !strings.Contains(out, filepath.Join(dir, name)) {
			t.Errorf("butterfly certs output = %q, want it to list %s", out, name)
		}
	}
	client := readPEMCert(t, filepath.Join(dir, tlsutil.ClientFile))
	if len(client.URIs) != 1 || client.URIs[0].String() != "butterfly://producer/p1" {
		t.Errorf("client certificate URIs = %v, want [butterfly://producer/p1]", client.URIs)
	}
	server := readPEMCert(t, filepath.Join(dir, tlsutil.ServerFile))
	if len(server.IPAddresses) != 1 || server.IPAddresses[0].String() != "127.0.0.2" || len(server.DNSNames) != 1 || server.DNSNames[0] != "mesh.local" {
		t.Errorf("server certificate SANs = %v %v, want [127.0.0.2] [mesh.local]", server.IPAddresses, server.DNSNames)
	}
	caBefore, err := os.ReadFile(filepath.Join(dir, tlsutil.CAFile))
	if err != nil {
		t.Fatalf("os.ReadFile(ca) = %v", err)
	}

	out, err = executeCommand(t, "certs", "--dir", dir, "--hosts", "127.0.0.2,mesh.local,127.0.0.3")
	if err != nil {
		t.Fatalf("butterfly certs again = %v, want nil; output:\n%s", err, out)
	}
	if !strings.Contains(out, "(kept)") {
		t.Fatalf("butterfly certs again output = %q, want it to say the CA was kept", out)
	}
	caAfter, err := os.ReadFile(filepath.Join(dir, tlsutil.CAFile))
	if err != nil {
		t.Fatalf("os.ReadFile(ca) = %v", err)
	}
	if !bytes.Equal(caBefore, caAfter) {
		t.Fatalf("butterfly certs again replaced %s, want it kept", tlsutil.CAFile)
	}
	if got := readPEMCert(t, filepath.Join(dir, tlsutil.ClientFile)).URIs; len(got) != 0 {
		t.Fatalf("client certificate URIs without --client-id = %v, want none", got)
	}
}

// TestCertsCommand_KeepsServersHosts checks that certs run again on a
// directory whose server.pem names a host --hosts leaves out refuses with a
// usage error naming the hosts and --hosts, and writes nothing; that every
// host it names with a new one is accepted without a word; and that
// --replace-hosts drops hosts, saying which.
func TestCertsCommand_KeepsServersHosts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs6")
	if out, err := executeCommand(t, "certs", "--dir", dir, "--hosts", "198.18.0.21,198.18.0.24"); err != nil {
		t.Fatalf("butterfly certs = %v, want nil; output:\n%s", err, out)
	}
	serverFile := filepath.Join(dir, tlsutil.ServerFile)
	before, err := os.ReadFile(serverFile)
	if err != nil {
		t.Fatalf("os.ReadFile(server.pem) = %v", err)
	}

	out, err := executeCommand(t, "certs", "--dir", dir, "--hosts", "198.18.0.25", "--consumer-id", "cA3")
	var ue *usageError
	for _, want := range []string{"--hosts 198.18.0.25 leaves out 198.18.0.21, 198.18.0.24", serverFile, "--hosts 198.18.0.25,198.18.0.21,198.18.0.24", "--replace-hosts"} {
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Fatalf("butterfly certs --hosts 198.18.0.25 = %v, want a usage error containing %q; output:\n%s", err, want, out)
		}
	}
	if after, err := os.ReadFile(serverFile); err != nil || !bytes.Equal(before, after) {
		t.Fatalf("butterfly certs --hosts 198.18.0.25 rewrote server.pem (read: %v), want it kept", err)
	}
	certFile, _ := tlsutil.IdentityFiles(tlsutil.RoleConsumer, "cA3")
	if _, err := os.Stat(filepath.Join(dir, certFile)); !os.IsNotExist(err) {
		t.Fatalf("os.Stat(%s) = %v after a refusal, want nothing written", certFile, err)
	}

	out, err = executeCommand(t, "certs", "--dir", dir, "--hosts", "198.18.0.24,198.18.0.25,198.18.0.21", "--consumer-id", "cA3")
	if err != nil || strings.Contains(out, "no longer names") {
		t.Fatalf("butterfly certs with every host = %v, want nil and no word of dropped hosts; output:\n%s", err, out)
	}

	out, err = executeCommand(t, "certs", "--dir", dir, "--hosts", "198.18.0.25", "--replace-hosts")
	if err != nil {
		t.Fatalf("butterfly certs --replace-hosts = %v, want nil; output:\n%s", err, out)
	}
	want := serverFile + " no longer names 198.18.0.24, 198.18.0.21 (it names only 198.18.0.25 now)"
	if !strings.Contains(out, want) {
		t.Errorf("butterfly certs --replace-hosts output = %q, want it to contain %q", out, want)
	}
	if got := readPEMCert(t, serverFile).IPAddresses; len(got) != 1 || got[0].String() != "198.18.0.25" {
		t.Errorf("server certificate IP SANs after --replace-hosts = %v, want [198.18.0.25]", got)
	}
}

// TestCertsCommand_UsageErrors checks that wrong flags are usage errors that
// name the flag, and write nothing.
func TestCertsCommand_UsageErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"certs", "--hosts", "127.0.0.1"}, "--dir is required"},
		{[]string{"certs", "--dir", dir}, "--hosts is required"},
		{[]string{"certs", "--dir", dir, "--hosts", "127.0.0.1,,x"}, `--hosts: "" is not`},
		{[]string{"certs", "--dir", dir, "--hosts", "127.0.0.1", "--client-id", "a/b"}, "--client-id"},
		{[]string{"certs", "--dir", dir, "--hosts", "127.0.0.1", "--validity", "0s"}, "--validity 0s is not positive"},
		{[]string{"certs", "--dir", dir, "--hosts", "127.0.0.1", "extra"}, "takes no arguments"},
	} {
		_, err := executeCommand(t, tc.args...)
		var ue *usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("butterfly %s = %v, want a usage error containing %q", strings.Join(tc.args, " "), err, tc.wantErr)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("os.Stat(%s) = %v, want nothing written", dir, err)
	}
}

func readPEMCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("os.ReadFile(%s) = %v", path, err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("pem.Decode(%s) found no block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("x509.ParseCertificate(%s) = %v", path, err)
	}
	return cert
}

// TestCertsCommand_RoleCertificates checks that the role flags write one
// file pair per identity, each bound by its URI SAN, and refuse a bad id
// naming the flag.
func TestCertsCommand_RoleCertificates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	out, err := executeCommand(t, "certs", "--dir", dir, "--hosts", "127.0.0.1",
		"--producer-id", "p1,p2", "--consumer-id", "c1", "--stage-id", "s1", "--admin-id", "ops")
	if err != nil {
		t.Fatalf("butterfly certs = %v, want nil; output:\n%s", err, out)
	}
	for _, tc := range []struct {
		role tlsutil.Role
		id   string
	}{{tlsutil.RoleProducer, "p1"}, {tlsutil.RoleProducer, "p2"}, {tlsutil.RoleConsumer, "c1"}, {tlsutil.RoleStage, "s1"}, {tlsutil.RoleAdmin, "ops"}} {
		certFile, keyFile := tlsutil.IdentityFiles(tc.role, tc.id)
		for _, name := range []string{certFile, keyFile} {
			if !strings.Contains(out, filepath.Join(dir, name)) {
				t.Errorf("butterfly certs output = %q, want it to list %s", out, name)
			}
		}
		want := "butterfly://" + string(tc.role) + "/" + tc.id
		if got := readPEMCert(t, filepath.Join(dir, certFile)).URIs; len(got) != 1 || got[0].String() != want {
			t.Errorf("%s URIs = %v, want [%s]", certFile, got, want)
		}
	}
	if got := readPEMCert(t, filepath.Join(dir, tlsutil.ClientFile)).URIs; len(got) != 0 {
		t.Errorf("client certificate URIs = %v, want none", got)
	}
	_, err = executeCommand(t, "certs", "--dir", dir, "--hosts", "127.0.0.1", "--stage-id", "s/1")
	var ue *usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--stage-id") {
		t.Errorf("butterfly certs --stage-id s/1 = %v, want a usage error naming --stage-id", err)
	}
}

// TestCertsCommand_SaysUntilWhen checks that certs says when what it wrote
// expires, and says so when the CA cut --validity short.
func TestCertsCommand_SaysUntilWhen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	out, err := executeCommand(t, "certs", "--dir", dir, "--hosts", "127.0.0.1", "--validity", "48h")
	if err != nil {
		t.Fatalf("butterfly certs = %v, want nil", err)
	}
	notAfter := readPEMCert(t, filepath.Join(dir, tlsutil.ServerFile)).NotAfter
	want := "the certificates are valid until " + notAfter.UTC().Format(time.RFC3339) + "\n"
	if !strings.HasSuffix(out, want) {
		t.Errorf("butterfly certs --validity 48h output ends %q, want %q", lastLine(out), want)
	}
	if d := time.Until(notAfter); d < 47*time.Hour || d > 49*time.Hour {
		t.Errorf("server certificate expires in %v, want about 48h", d)
	}

	out, err = executeCommand(t, "certs", "--dir", dir, "--hosts", "127.0.0.1", "--validity", "87600h")
	if err != nil {
		t.Fatalf("butterfly certs = %v, want nil", err)
	}
	ca := readPEMCert(t, filepath.Join(dir, tlsutil.CAFile)).NotAfter
	want = "the certificates are valid until " + ca.UTC().Format(time.RFC3339) + ", when " + filepath.Join(dir, tlsutil.CAFile) + " expires: --validity 87600h0m0s reaches past it"
	if !strings.Contains(out, want) {
		t.Errorf("butterfly certs --validity 87600h output ends %q, want it to contain %q", lastLine(out), want)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
