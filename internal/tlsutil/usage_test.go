package tlsutil

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClientCredentials_WarnsOfAServerOnlyCertificate checks that a client
// given a certificate whose extended key usage leaves out client
// authentication says so, naming --tls-cert and the file, and that one
// issued for clients (or the dual-use server.pem) draws no warning.
func TestClientCredentials_WarnsOfAServerOnlyCertificate(t *testing.T) {
	pki := newPKI(t)
	ca, caKey, err := loadCA(pki, time.Now())
	if err != nil {
		t.Fatalf("loadCA() = %v", err)
	}
	dir := t.TempDir()
	tmpl := leafTemplate("server-only", []string{"127.0.0.1"}, time.Now(), time.Now().Add(time.Hour))
	tmpl.Subject = pkix.Name{CommonName: "server-only"}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	if err := issue(dir, "server-only.pem", "server-only-key.pem", tmpl, ca, caKey); err != nil {
		t.Fatalf("issue() = %v", err)
	}
	serverOnly := Files{Cert: filepath.Join(dir, "server-only.pem"), Key: filepath.Join(dir, "server-only-key.pem"), CA: filepath.Join(pki, CAFile)}
	for _, tc := range []struct {
		name  string
		files Files
		warn  bool
	}{
		{"server auth only", serverOnly, true},
		{"client.pem", clientFiles(pki, filepath.Join(pki, CAFile)), false},
		{"server.pem", Files{Cert: filepath.Join(pki, ServerFile), Key: filepath.Join(pki, ServerKeyFile), CA: filepath.Join(pki, CAFile)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if _, err := ClientCredentials(ctx, tc.files, "", slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
				t.Fatalf("ClientCredentials() = %v", err)
			}
			got := strings.Contains(logs.String(), "--tls-cert") && strings.Contains(logs.String(), "is not for client authentication") && strings.Contains(logs.String(), tc.files.Cert)
			if got != tc.warn {
				t.Errorf("ClientCredentials(%s) logged %q; want a warning naming --tls-cert and the file: %v", tc.name, logs.String(), tc.warn)
			}
		})
	}
}
