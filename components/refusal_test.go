package components

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// TestRefusal_Classify checks which errors of a stream's opening stop a
// component for good, and which are retried: a refusal of the hello or a TLS
// mismatch stops it; an instance that is gone, restarting or closed a TLS
// client's connection does not, unless the server ends the client's own
// handshake with an alert, nor does a plaintext client's connection closed
// by a server that does not speak TLS.
func TestRefusal_Classify(t *testing.T) {
	tlsSrv := httptest.NewUnstartedServer(http.NotFoundHandler())
	tlsSrv.EnableHTTP2 = true // it speaks first after the handshake, as gRPC's servers do
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	tlsAddr := tlsSrv.Listener.Addr().String()
	mtlsSrv := httptest.NewUnstartedServer(http.NotFoundHandler())
	mtlsSrv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	mtlsSrv.StartTLS()
	defer mtlsSrv.Close()
	mtlsAddr := mtlsSrv.Listener.Addr().String()
	trusting := func(srv *httptest.Server) credentials.TransportCredentials {
		roots := x509.NewCertPool()
		roots.AddCert(srv.Certificate())
		return credentials.NewTLS(&tls.Config{RootCAs: roots})
	}
	plain := insecure.NewCredentials()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	closedAddr := l.Addr().String()
	l.Close()
	unavailable := func(msg string) error { return status.Error(codes.Unavailable, msg) }
	const preface = `butterfly: instance unavailable: i1: connection in TRANSIENT_FAILURE: connection error: desc = "error reading server preface: EOF"`
	for _, tc := range []struct {
		name  string
		err   error
		addr  string
		creds credentials.TransportCredentials // nil: not known
		want  error                            // nil: retried
	}{
		{"permission denied", status.Error(codes.PermissionDenied, `intermediate: the client certificate (producer/p1) may not publish as producer "p2"`), tlsAddr, nil, ErrRefused},
		{"unauthenticated", status.Error(codes.Unauthenticated, "no"), tlsAddr, nil, ErrRefused},
		{"invalid hello", status.Error(codes.InvalidArgument, "intermediate: hello without producer_id"), tlsAddr, nil, ErrRefused},
		{"TLS client, plaintext server", unavailable(`connection error: desc = "transport: authentication handshake failed: tls: first record does not look like a TLS handshake"`), closedAddr, nil, ErrTLSMismatch},
		{"unknown CA", unavailable(`connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`), tlsAddr, nil, ErrTLSMismatch},
		{"no client certificate", unavailable(`connection error: desc = "error reading server preface: remote error: tls: certificate required"`), tlsAddr, nil, ErrTLSMismatch},
		{"plaintext client, TLS server", unavailable(preface), tlsAddr, plain, ErrTLSMismatch},
		{"plaintext client, server gone", unavailable(preface), closedAddr, plain, nil},
		{"TLS client, server gone mid-handshake", unavailable(`connection error: desc = "transport: authentication handshake failed: read tcp 127.0.0.1:1->127.0.0.2:2: read: connection reset by peer"`), tlsAddr, nil, nil},
		{"TLS client, preface EOF", unavailable(preface), tlsAddr, nil, nil},
		{"TLS client, preface EOF, server accepts its handshake", unavailable(preface), tlsAddr, trusting(tlsSrv), nil},
		{"TLS client, reset by a server that wants a certificate", unavailable(`connection error: desc = "transport: failed to write client preface: write tcp 127.0.0.1:1->127.0.0.2:2: write: broken pipe"`), mtlsAddr, trusting(mtlsSrv), ErrTLSMismatch},
		{"TLS client, preface EOF from a server that wants a certificate", unavailable(preface), mtlsAddr, trusting(mtlsSrv), ErrTLSMismatch},
		{"TLS client, reset, server gone", unavailable(`connection error: desc = "error reading server preface: read tcp 127.0.0.1:1->127.0.0.2:2: read: connection reset by peer"`), closedAddr, trusting(mtlsSrv), nil},
		{"refused", unavailable(`connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.2:7001: connect: connection refused"`), closedAddr, plain, nil},
		{"not yet in the picker", unavailable("butterfly: instance unavailable: i1: not an instance of service intermediate"), closedAddr, plain, nil},
		{"group deleted", status.Error(codes.FailedPrecondition, "intermediate: group deleted"), tlsAddr, plain, nil},
		{"deadline", status.Error(codes.DeadlineExceeded, "slow"), tlsAddr, plain, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := refusal(context.Background(), "producer p1", "i1", tc.addr, tc.creds, tc.err)
			switch {
			case tc.want == nil && r != nil:
				t.Errorf("refusal(%v) = %v, want nil (retried)", tc.err, r)
			case tc.want != nil && (r == nil || !errors.Is(r, tc.want) || r.Instance != "i1" || r.Addr != tc.addr):
				t.Errorf("refusal(%v) = %v, want %v naming i1 at %s", tc.err, r, tc.want, tc.addr)
			}
		})
	}
}
