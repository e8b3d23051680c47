package tlsutil

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

const (
	defaultTestTimeout = 10 * time.Second
	// testReloadInterval keeps reload tests fast; production uses a second.
	testReloadInterval = 10 * time.Millisecond
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// withNow makes GenerateDev issue certificates as if the time were now.
func withNow(now time.Time) GenerateOption {
	return func(o *generateOptions) { o.now = func() time.Time { return now } }
}

// newPKI writes a fresh development PKI for 127.0.0.1 into a temporary
// directory and returns it.
func newPKI(t *testing.T, opts ...GenerateOption) string {
	t.Helper()
	dir := t.TempDir()
	if err := GenerateDev(dir, []string{"127.0.0.1", "localhost"}, opts...); err != nil {
		t.Fatalf("GenerateDev(%s) = %v", dir, err)
	}
	return dir
}

// copyFile copies src to dst, replacing dst in place (not atomically, as a
// careless operator would).
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("os.ReadFile(%s) = %v", src, err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatalf("os.WriteFile(%s) = %v", dst, err)
	}
}

// serverFiles copies the server certificate of pki and the CA of caPKI
// into a new directory and returns Files naming the copies.
func serverFiles(t *testing.T, pki, caPKI, clientAuth string) Files {
	t.Helper()
	dir := t.TempDir()
	f := Files{
		Cert:       filepath.Join(dir, ServerFile),
		Key:        filepath.Join(dir, ServerKeyFile),
		CA:         filepath.Join(dir, CAFile),
		ClientAuth: clientAuth,
	}
	copyFile(t, filepath.Join(pki, ServerFile), f.Cert)
	copyFile(t, filepath.Join(pki, ServerKeyFile), f.Key)
	copyFile(t, filepath.Join(caPKI, CAFile), f.CA)
	return f
}

// clientFiles returns Files naming the client certificate of pki and the
// CA file ca.
func clientFiles(pki, ca string) Files {
	return Files{Cert: filepath.Join(pki, ClientFile), Key: filepath.Join(pki, ClientKeyFile), CA: ca}
}

// identity is what PeerIdentity said about one call.
type identity struct {
	id string
	ok bool
}

// startServer serves the gRPC health service with cfg on host:0, sends
// PeerIdentity of every call to the returned channel, and the error of every
// failed handshake to handshakeErrs (nil: dropped).
func startServer(t *testing.T, host string, cfg *tls.Config, handshakeErrs chan<- error) (string, <-chan identity) {
	t.Helper()
	lis, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("net.Listen(%s:0) = %v", host, err)
	}
	ids := make(chan identity, 100)
	s := grpc.NewServer(
		grpc.Creds(recordingCreds{credentials.NewTLS(cfg), handshakeErrs}),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			id, ok := PeerIdentity(ctx)
			ids <- identity{id, ok}
			return h(ctx, req)
		}),
	)
	healthpb.RegisterHealthServer(s, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(lis)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	return lis.Addr().String(), ids
}

// startTLSServer starts a server with ServerConfig(f).
func startTLSServer(t *testing.T, f Files, handshakeErrs chan<- error) (string, <-chan identity) {
	t.Helper()
	cfg, err := ServerConfig(t.Context(), f, nil, WithReloadInterval(testReloadInterval))
	if err != nil {
		t.Fatalf("ServerConfig(%+v) = %v", f, err)
	}
	return startServer(t, "127.0.0.1", cfg, handshakeErrs)
}

// recordingCreds sends the errors of failed server handshakes to errs.
type recordingCreds struct {
	credentials.TransportCredentials
	errs chan<- error
}

func (c recordingCreds) ServerHandshake(rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(rawConn)
	if err != nil && c.errs != nil {
		c.errs <- err
	}
	return conn, info, err
}

// clientCreds returns ClientCredentials(f).
func newClientCreds(t *testing.T, f Files) credentials.TransportCredentials {
	t.Helper()
	creds, err := ClientCredentials(t.Context(), f, "", nil, WithReloadInterval(testReloadInterval))
	if err != nil {
		t.Fatalf("ClientCredentials(%+v) = %v", f, err)
	}
	return creds
}

// check makes one health check over a new connection to addr and returns
// the certificate the server presented.
func check(t *testing.T, addr string, creds credentials.TransportCredentials) (*x509.Certificate, error) {
	t.Helper()
	return checkTarget(t, addr, creds)
}

// checkResolved is check through a resolver target whose authority is
// service, resolved to addr.
func checkResolved(t *testing.T, service, addr string, creds credentials.TransportCredentials) (*x509.Certificate, error) {
	t.Helper()
	r := manual.NewBuilderWithScheme("tlsutiltest")
	r.InitialState(resolver.State{Addresses: []resolver.Address{{Addr: addr}}})
	return checkTarget(t, r.Scheme()+":///"+service, creds, grpc.WithResolvers(r))
}

func checkTarget(t *testing.T, target string, creds credentials.TransportCredentials, opts ...grpc.DialOption) (*x509.Certificate, error) {
	t.Helper()
	conn, err := grpc.NewClient(target, append(opts, grpc.WithTransportCredentials(creds))...)
	if err != nil {
		t.Fatalf("grpc.NewClient(%s) = %v", target, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		return nil, err
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		t.Fatalf("Check() peer AuthInfo = %T without certificates, want credentials.TLSInfo", p.AuthInfo)
	}
	return info.State.PeerCertificates[0], nil
}

// pollCheck checks until the server presents a certificate with serial,
// or fails the test at the deadline.
func pollCheck(t *testing.T, addr string, creds credentials.TransportCredentials, serial string) {
	t.Helper()
	deadline := time.Now().Add(defaultTestTimeout)
	tick := time.NewTicker(testReloadInterval)
	defer tick.Stop()
	for ; ; <-tick.C {
		cert, err := check(t, addr, creds)
		if err == nil && cert.SerialNumber.String() == serial {
			return
		}
		if time.Now().After(deadline) {
			got := "<none>"
			if cert != nil {
				got = cert.SerialNumber.String()
			}
			t.Fatalf("Check(%s) = serial %s, err %v; want serial %s", addr, got, err, serial)
		}
	}
}

// readCert parses the first certificate of a PEM file.
func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("os.ReadFile(%s) = %v", path, err)
	}
	cert, err := parseCertPEM(b)
	if err != nil {
		t.Fatalf("parseCertPEM(%s) = %v", path, err)
	}
	return cert
}

// receive returns the next identity the server saw.
func receive(t *testing.T, ids <-chan identity) identity {
	t.Helper()
	select {
	case id := <-ids:
		return id
	case <-time.After(defaultTestTimeout):
		t.Fatalf("no call reached the server within %v", defaultTestTimeout)
		return identity{}
	}
}
