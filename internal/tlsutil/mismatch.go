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
// failure's message (a status message of gRPC); creds are the client's
// credentials, nil when not known. A connection that was closed or reset is
// looked at again with a handshake of its own: for a plaintext client,
// whether the server speaks TLS; for a TLS client, whether the server ends
// the client's own handshake with an alert (a TLS 1.3 server checks the
// client's certificate after the client's side of the handshake is done, so
// gRPC may see only the connection broken). It returns "" when the failure
// is something else, or may be (the server went away), and the reason, with
// the flags that mend it, otherwise.
func Mismatch(ctx context.Context, addr string, creds credentials.TransportCredentials, msg string) string {
	plaintext := creds != nil && IsPlaintext(creds)
	switch {
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "this client speaks TLS and the instance plaintext gRPC (give the intermediate --tls-cert/--tls-key)"
	case strings.Contains(msg, "remote error: tls:"):
		// The server ended the handshake: no client certificate, or one it
		// does not accept.
		return refusedHandshake(msg)
	case strings.Contains(msg, "x509:"):
		// The server's certificate: an unknown CA, another name, expired.
		return "the TLS handshake failed: " + tlsCause(msg) + x509Mend(msg)
	case !plaintext:
		// A TLS client's connection closed or reset during or after the
		// handshake: the server refused the client's certificate, or went
		// away, which may mend. Its own handshake tells which.
		if creds != nil && (strings.Contains(msg, "EOF") || strings.Contains(msg, "connection reset") || strings.Contains(msg, "broken pipe")) {
			if alert := alertTo(ctx, addr, creds); alert != "" {
				return refusedHandshake(alert)
			}
		}
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

// x509Mend says, for a server certificate that did not verify, which flags
// mend it: the CA this client trusts, the name it checks, or the
// certificate itself.
func x509Mend(msg string) string {
	switch {
	case strings.Contains(msg, "unknown authority"):
		return " (--tls-ca: the CA that signed the instance's certificate)"
	case strings.Contains(msg, "is valid for"), strings.Contains(msg, "is not valid for any names"):
		return " (the instance's certificate does not name the address this client dials: reissue it for that address, butterfly certs --hosts, or pass --tls-server-name with a name it has)"
	case strings.Contains(msg, "expired or is not yet valid"):
		return " (renew the instance's --tls-cert and --tls-key)"
	}
	return ""
}

// refusedHandshake says that the server ended the client's handshake with
// the alert in msg.
func refusedHandshake(msg string) string {
	mend := "mutual TLS: --tls-cert and --tls-key, a certificate for client authentication signed by a CA the instance trusts"
	if strings.Contains(msg, "expired certificate") {
		mend = "renew --tls-cert and --tls-key: files renewed on disk are read at a later handshake, so a component stops here for its supervisor to start it again"
	}
	return "the instance refused this client's TLS handshake: remote error: " + tlsCause(msg) + " (" + mend + ")"
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

// alertTo returns the TLS alert with which the server at addr ends a
// handshake made with creds ("remote error: tls: ..."), "" when it does not
// (it accepts the client, or cannot be reached). A server that accepts a gRPC
// client sends its HTTP/2 settings first, so the read after the handshake
// returns at once either way.
func alertTo(ctx context.Context, addr string, creds credentials.TransportCredentials) string {
	if addr == "" {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return ""
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	conn, _, err := creds.Clone().ClientHandshake(ctx, addr, raw)
	if err == nil {
		defer conn.Close()
		_, err = conn.Read(make([]byte, 1))
	}
	if err != nil && strings.Contains(err.Error(), "remote error: tls:") {
		return err.Error()
	}
	return ""
}
