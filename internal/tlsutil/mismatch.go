package tlsutil

import (
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
)

// probeTimeout bounds the TLS handshake that tells a TLS server from a
// connection that merely broke.
const probeTimeout = time.Second

// Mismatch says why a gRPC connection to addr failed when the two ends
// disagree on TLS: a plaintext client meets a TLS server or the reverse, the
// server refused the client's handshake (no client certificate, or one it
// does not accept), or the server's certificate does not verify. msg is the
// failure's message (a status message of gRPC); plaintext says the client
// spoke plaintext gRPC: only then is a connection closed before the HTTP/2
// preface checked for a TLS server, with a handshake of its own. It returns
// "" when the failure is something else, or may be (the server went away),
// and the reason, with the flags that mend it, otherwise.
func Mismatch(ctx context.Context, addr string, plaintext bool, msg string) string {
	switch {
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "this client speaks TLS and the instance plaintext gRPC (drop --tls-* here or give the intermediate --tls-cert/--tls-key)"
	case strings.Contains(msg, "remote error: tls:"):
		// The server ended the handshake: no client certificate, or one it
		// does not accept.
		return "the instance refused this client's TLS handshake: remote error: " + tlsCause(msg) +
			" (mutual TLS: --tls-cert and --tls-key signed by a CA the instance trusts)"
	case strings.Contains(msg, "x509:"):
		// The server's certificate: an unknown CA, another name, expired.
		return "the TLS handshake failed: " + tlsCause(msg)
	case !plaintext:
		// A TLS client's connection closed or reset during or after the
		// handshake: the server went away, which may mend.
	case strings.Contains(msg, "server preface"), strings.Contains(msg, "EOF"),
		strings.Contains(msg, "connection reset"), strings.Contains(msg, "frame too large"):
		// A plaintext client that meets a TLS server sees its connection
		// closed before the HTTP/2 preface; so does one whose server went
		// away. A TLS handshake tells which.
		if speaksTLS(ctx, addr) {
			return "the instance speaks TLS and this client plaintext gRPC (pass --tls-ca, and --tls-cert/--tls-key for mutual TLS)"
		}
	}
	return ""
}

// IsPlaintext reports whether creds are plaintext gRPC's (insecure.NewCredentials).
func IsPlaintext(creds credentials.TransportCredentials) bool {
	return creds.Info().SecurityProtocol == "insecure"
}

// tlsCause returns the part of a connection error from "x509:" or "tls:" on,
// else msg: unquoted (gRPC quotes a connection error's description, desc =
// "..."), on one line.
func tlsCause(msg string) string {
	if i := strings.Index(msg, `desc = "`); i >= 0 {
		if u, err := strconv.Unquote(msg[i+len(`desc = `):]); err == nil {
			msg = u
		}
	}
	for _, k := range []string{"x509:", "tls:"} {
		if i := strings.Index(msg, k); i >= 0 {
			return strings.ReplaceAll(strings.TrimRight(msg[i:], `"`), "\n", "; ")
		}
	}
	return msg
}

// speaksTLS reports whether the server at addr answers a TLS handshake.
func speaksTLS(ctx context.Context, addr string) bool {
	if addr == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}} //nolint:gosec // a probe: no data is sent
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		// A server that asks for a client certificate may end the
		// handshake with an alert: it spoke TLS all the same.
		return strings.Contains(err.Error(), "remote error: tls:")
	}
	conn.Close()
	return true
}
