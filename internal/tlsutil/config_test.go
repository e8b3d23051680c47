package tlsutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// TestServerConfig_RequireRefusesUntrustedClients checks that a server
// requiring client certificates refuses a client without one, with one from
// another CA and with an expired one, and serves the right one.
func TestServerConfig_RequireRefusesUntrustedClients(t *testing.T) {
	pki := newPKI(t)
	otherPKI := newPKI(t)
	// An expired client certificate from the server's own CA.
	expiredPKI := t.TempDir()
	copyFile(t, filepath.Join(pki, CAFile), filepath.Join(expiredPKI, CAFile))
	copyFile(t, filepath.Join(pki, CAKeyFile), filepath.Join(expiredPKI, CAKeyFile))
	if err := GenerateDev(expiredPKI, []string{"127.0.0.1"}, withNow(time.Now().Add(-2*caValidity))); err != nil {
		t.Fatalf("GenerateDev(expired) = %v", err)
	}
	if got := readCert(t, filepath.Join(expiredPKI, ClientFile)).NotAfter; !got.Before(time.Now()) {
		t.Fatalf("expired client certificate NotAfter = %v, want before now", got)
	}

	files := serverFiles(t, pki, pki, ClientAuthRequire)
	ca := filepath.Join(pki, CAFile)
	for _, tc := range []struct {
		name       string
		files      Files
		serverSays string
	}{
		{"no certificate", Files{CA: ca}, "client didn't provide a certificate"},
		{"other CA", clientFiles(otherPKI, ca), "certificate signed by unknown authority"},
		{"expired", clientFiles(expiredPKI, ca), "certificate has expired"},
		{"trusted", clientFiles(pki, ca), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			handshakeErrs := make(chan error, 100)
			addr, ids := startTLSServer(t, files, handshakeErrs)
			_, err := check(t, addr, newClientCreds(t, tc.files))
			if tc.serverSays == "" {
				if err != nil {
					t.Fatalf("Check(%s) = %v, want nil", tc.name, err)
				}
				if got, want := receive(t, ids), (identity{ClientCommonName, true}); got != want {
					t.Fatalf("PeerIdentity() = %+v, want %+v", got, want)
				}
				return
			}
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("Check(%s) = %v, want code Unavailable", tc.name, err)
			}
			select {
			case err := <-handshakeErrs:
				if !strings.Contains(err.Error(), tc.serverSays) {
					t.Fatalf("server handshake error = %v, want one containing %q", err, tc.serverSays)
				}
			case <-time.After(defaultTestTimeout):
				t.Fatalf("no failed server handshake within %v", defaultTestTimeout)
			}
			if len(ids) != 0 {
				t.Fatalf("calls that reached the server = %d, want 0", len(ids))
			}
		})
	}
}

// TestServerConfig_ReloadsCertificate checks that new connections get the
// server certificate written over the old files, without a restart.
func TestServerConfig_ReloadsCertificate(t *testing.T) {
	oldPKI, newPKIDir := newPKI(t), newPKI(t)
	f := serverFiles(t, oldPKI, oldPKI, ClientAuthRequire)
	addr, _ := startTLSServer(t, f, nil)
	// The client trusts both CAs and presents a certificate of the old one,
	// which the server keeps trusting.
	bundle := filepath.Join(t.TempDir(), "bundle.pem")
	writeBundle(t, bundle, filepath.Join(oldPKI, CAFile), filepath.Join(newPKIDir, CAFile))
	creds := newClientCreds(t, clientFiles(oldPKI, bundle))

	oldSerial := readCert(t, filepath.Join(oldPKI, ServerFile)).SerialNumber.String()
	cert, err := check(t, addr, creds)
	if err != nil {
		t.Fatalf("Check() = %v, want nil", err)
	}
	if got := cert.SerialNumber.String(); got != oldSerial {
		t.Fatalf("Check() server serial = %s, want %s", got, oldSerial)
	}
	copyFile(t, filepath.Join(newPKIDir, ServerKeyFile), f.Key)
	copyFile(t, filepath.Join(newPKIDir, ServerFile), f.Cert)
	pollCheck(t, addr, creds, readCert(t, filepath.Join(newPKIDir, ServerFile)).SerialNumber.String())
}

// TestServerConfig_ReloadsClientCA checks that a client of a new CA is
// accepted once the server's CA file names that CA.
func TestServerConfig_ReloadsClientCA(t *testing.T) {
	pki, newCA := newPKI(t), newPKI(t)
	f := serverFiles(t, pki, pki, ClientAuthRequire)
	addr, ids := startTLSServer(t, f, nil)
	creds := newClientCreds(t, clientFiles(newCA, filepath.Join(pki, CAFile)))
	if _, err := check(t, addr, creds); status.Code(err) != codes.Unavailable {
		t.Fatalf("Check(client of an unknown CA) = %v, want code Unavailable", err)
	}
	copyFile(t, filepath.Join(newCA, CAFile), f.CA)
	pollCheck(t, addr, creds, readCert(t, filepath.Join(pki, ServerFile)).SerialNumber.String())
	if got, want := receive(t, ids), (identity{ClientCommonName, true}); got != want {
		t.Fatalf("PeerIdentity() = %+v, want %+v", got, want)
	}
}

// TestClientCredentials_ReloadsCAAndCertificate checks that a client picks
// up a new CA file and a new client certificate without being rebuilt.
func TestClientCredentials_ReloadsCAAndCertificate(t *testing.T) {
	pki, otherPKI := newPKI(t), newPKI(t)
	boundPKI := t.TempDir() // a client certificate of pki's CA bound to p7
	copyFile(t, filepath.Join(pki, CAFile), filepath.Join(boundPKI, CAFile))
	copyFile(t, filepath.Join(pki, CAKeyFile), filepath.Join(boundPKI, CAKeyFile))
	if err := GenerateDev(boundPKI, []string{"127.0.0.1"}, WithClientID("p7")); err != nil {
		t.Fatalf("GenerateDev(WithClientID(p7)) = %v", err)
	}
	addr, ids := startTLSServer(t, serverFiles(t, pki, pki, ClientAuthRequire), nil)

	dir := t.TempDir()
	f := Files{Cert: filepath.Join(dir, "c.pem"), Key: filepath.Join(dir, "k.pem"), CA: filepath.Join(dir, "ca.pem")}
	copyFile(t, filepath.Join(pki, ClientFile), f.Cert)
	copyFile(t, filepath.Join(pki, ClientKeyFile), f.Key)
	copyFile(t, filepath.Join(otherPKI, CAFile), f.CA)
	creds := newClientCreds(t, f)
	if _, err := check(t, addr, creds); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("Check(server of an untrusted CA) = %v, want code Unavailable, unknown authority", err)
	}
	copyFile(t, filepath.Join(pki, CAFile), f.CA)
	serial := readCert(t, filepath.Join(pki, ServerFile)).SerialNumber.String()
	pollCheck(t, addr, creds, serial)
	if got, want := receive(t, ids), (identity{ClientCommonName, true}); got != want {
		t.Fatalf("PeerIdentity() = %+v, want %+v", got, want)
	}

	copyFile(t, filepath.Join(boundPKI, ClientKeyFile), f.Key)
	copyFile(t, filepath.Join(boundPKI, ClientFile), f.Cert)
	deadline := time.Now().Add(defaultTestTimeout)
	tick := time.NewTicker(testReloadInterval)
	defer tick.Stop()
	for ; ; <-tick.C {
		pollCheck(t, addr, creds, serial)
		if got := receive(t, ids); got == (identity{"p7", true}) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("PeerIdentity() = %+v, want {p7 true}", got)
		}
	}
}

// TestClientCredentials_VerifiesTargetHost checks that the server's
// certificate must be valid for the authority of the connection (the host
// dialed, or a resolver target's service name), the IP address reached, or
// the given server name.
func TestClientCredentials_VerifiesTargetHost(t *testing.T) {
	hostPKI := newPKI(t) // for 127.0.0.1 and localhost
	ipPKI := t.TempDir()
	if err := GenerateDev(ipPKI, []string{"127.0.0.2"}); err != nil {
		t.Fatalf("GenerateDev(127.0.0.2) = %v", err)
	}
	servicePKI := t.TempDir()
	if err := GenerateDev(servicePKI, []string{"intermediate"}); err != nil {
		t.Fatalf("GenerateDev(intermediate) = %v", err)
	}
	startOn127002 := func(pki string) string {
		cfg, err := ServerConfig(t.Context(), serverFiles(t, pki, pki, ClientAuthNone), nil)
		if err != nil {
			t.Fatalf("ServerConfig() = %v", err)
		}
		addr, _ := startServer(t, "127.0.0.2", cfg, nil)
		return addr
	}
	for _, tc := range []struct {
		name       string
		pki        string
		target     string // "" dials the address; else a manual resolver target
		serverName string
		wantErr    string // "" for success
	}{
		{"address, certificate for another host", hostPKI, "", "", "not 127.0.0.2"},
		{"address, certificate for the host", ipPKI, "", "", ""},
		{"address, server name in certificate", hostPKI, "", "localhost", ""},
		{"address, server name not in certificate", ipPKI, "", "localhost", "wanted to match localhost"},
		{"service target, certificate for the service", servicePKI, "intermediate", "", ""},
		{"service target, certificate for the address reached", ipPKI, "intermediate", "", ""},
		{"service target, certificate for neither", hostPKI, "intermediate", "", "not intermediate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startOn127002(tc.pki)
			creds, err := ClientCredentials(t.Context(), Files{CA: filepath.Join(tc.pki, CAFile)}, tc.serverName, nil)
			if err != nil {
				t.Fatalf("ClientCredentials(%q) = %v", tc.serverName, err)
			}
			if tc.target == "" {
				_, err = check(t, addr, creds)
			} else {
				_, err = checkResolved(t, tc.target, addr, creds)
			}
			if tc.wantErr == "" && err != nil {
				t.Fatalf("Check(%s) = %v, want nil", tc.name, err)
			}
			if tc.wantErr != "" && (status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Check(%s) = %v, want code Unavailable, error containing %q", tc.name, err, tc.wantErr)
			}
		})
	}
}

// TestClientConfig_ServerName checks that a ClientConfig verifies against
// its server name, and refuses an IP address target when it has none.
func TestClientConfig_ServerName(t *testing.T) {
	pki := newPKI(t)
	addr, _ := startTLSServer(t, serverFiles(t, pki, pki, ClientAuthRequire), nil)
	f := clientFiles(pki, filepath.Join(pki, CAFile))
	for _, tc := range []struct {
		serverName string
		wantErr    string
	}{
		{"", ErrNoServerName.Error()},
		{"127.0.0.1", ""},
		{"localhost", ""},
		{"example.com", "not example.com"},
	} {
		cfg, err := ClientConfig(t.Context(), f, tc.serverName, nil)
		if err != nil {
			t.Fatalf("ClientConfig(%q) = %v", tc.serverName, err)
		}
		_, err = check(t, addr, credentials.NewTLS(cfg))
		if tc.wantErr == "" && err != nil {
			t.Errorf("Check(server name %q) = %v, want nil", tc.serverName, err)
		}
		if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("Check(server name %q) = %v, want an error containing %q", tc.serverName, err, tc.wantErr)
		}
	}
}

// TestServerConfig_RequestAcceptsAnonymous checks that ClientAuth "request"
// serves clients without a certificate, which then have no identity.
func TestServerConfig_RequestAcceptsAnonymous(t *testing.T) {
	pki := newPKI(t)
	addr, ids := startTLSServer(t, serverFiles(t, pki, pki, ClientAuthRequest), nil)
	if _, err := check(t, addr, newClientCreds(t, Files{CA: filepath.Join(pki, CAFile)})); err != nil {
		t.Fatalf("Check(no client certificate) = %v, want nil", err)
	}
	if got, want := receive(t, ids), (identity{}); got != want {
		t.Fatalf("PeerIdentity() = %+v, want %+v", got, want)
	}
}

// TestServerConfig_KeepsLastGoodCertificate checks that a broken certificate
// file does not break the server: it keeps serving the last good one.
func TestServerConfig_KeepsLastGoodCertificate(t *testing.T) {
	pki := newPKI(t)
	f := serverFiles(t, pki, pki, ClientAuthRequire)
	cfg, err := ServerConfig(t.Context(), f, nil, WithReloadInterval(time.Nanosecond))
	if err != nil {
		t.Fatalf("ServerConfig() = %v", err)
	}
	addr, _ := startServer(t, "127.0.0.1", cfg, nil)
	if err := os.WriteFile(f.Cert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatalf("os.WriteFile(%s) = %v", f.Cert, err)
	}
	serial := readCert(t, filepath.Join(pki, ServerFile)).SerialNumber.String()
	cert, err := check(t, addr, newClientCreds(t, clientFiles(pki, filepath.Join(pki, CAFile))))
	if err != nil {
		t.Fatalf("Check() with a broken certificate file = %v, want nil", err)
	}
	if got := cert.SerialNumber.String(); got != serial {
		t.Fatalf("Check() server serial = %s, want %s", got, serial)
	}
}

// TestServerConfig_Errors checks the configuration errors of ServerConfig.
func TestServerConfig_Errors(t *testing.T) {
	pki := newPKI(t)
	good := serverFiles(t, pki, pki, "")
	for _, tc := range []struct {
		name    string
		files   Files
		wantErr string
	}{
		{"no certificate", Files{CA: good.CA}, "needs --tls-cert and --tls-key"},
		{"missing file", Files{Cert: good.Cert + ".missing", Key: good.Key}, "no such file"},
		{"key of another certificate", Files{Cert: good.Cert, Key: filepath.Join(pki, ClientKeyFile)}, "private key does not match"},
		{"CA not PEM", Files{Cert: good.Cert, Key: good.Key, CA: good.Key}, "no PEM certificate found"},
	} {
		_, err := ServerConfig(t.Context(), tc.files, nil)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("ServerConfig(%s) = %v, want an error containing %q", tc.name, err, tc.wantErr)
		}
	}
}

func writeBundle(t *testing.T, dst string, srcs ...string) {
	t.Helper()
	var bundle []byte
	for _, src := range srcs {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatalf("os.ReadFile(%s) = %v", src, err)
		}
		bundle = append(bundle, b...)
	}
	if err := os.WriteFile(dst, bundle, 0o600); err != nil {
		t.Fatalf("os.WriteFile(%s) = %v", dst, err)
	}
}
