package components

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors a producer, consumer or stage stops with when an intermediate
// refuses it for a reason that retrying does not mend (Err, Close, Send).
var (
	// ErrRefused: an intermediate refused the stream's hello for good:
	// PERMISSION_DENIED (mutual TLS binds another id to the certificate),
	// UNAUTHENTICATED or INVALID_ARGUMENT; or it ended a publish stream
	// after the welcome with PERMISSION_DENIED (a message under an id the
	// certificate does not publish as).
	ErrRefused = errors.New("components: refused by the intermediate")
	// ErrTLSMismatch: the two ends of a connection disagree on TLS: a
	// plaintext client meets a TLS server or the reverse, or the server's
	// certificate is not signed by a CA the client trusts.
	ErrTLSMismatch = errors.New("components: TLS mismatch")
)

// RefusedError is why a component stopped on a refusal (ErrRefused or
// ErrTLSMismatch): which instance, at which address, and why.
type RefusedError struct {
	// Kind is ErrRefused or ErrTLSMismatch.
	Kind error
	// Component is "producer p1", "consumer c1".
	Component string
	// Instance and Addr name the intermediate.
	Instance, Addr string
	// Code is the gRPC code of the refusal.
	Code codes.Code
	// Reason is the intermediate's message, or what the TLS mismatch is.
	Reason string
}

func (e *RefusedError) Error() string {
	if errors.Is(e.Kind, ErrTLSMismatch) {
		return fmt.Sprintf("%s: TLS mismatch with instance %s at %s: %s", e.Component, e.Instance, e.Addr, e.Reason)
	}
	return fmt.Sprintf("%s: instance %s at %s refused it: %s: %s", e.Component, e.Instance, e.Addr, e.Code, e.Reason)
}

func (e *RefusedError) Unwrap() error { return e.Kind }

// tlsProbeTimeout bounds the TLS handshake that tells a TLS server from a
// connection that merely broke.
const tlsProbeTimeout = time.Second

// refusal returns the RefusedError of err, an error from opening a stream to
// the instance at addr or from its first receive, when retrying cannot mend
// it; nil when it may (the instance restarts, the network heals). plaintext
// says the client is known to speak plaintext gRPC: only then is a
// connection closed before the HTTP/2 preface checked for a TLS server.
func refusal(ctx context.Context, component, instance, addr string, plaintext bool, err error) *RefusedError {
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	e := &RefusedError{Component: component, Instance: instance, Addr: addr, Code: st.Code(), Reason: st.Message()}
	switch st.Code() {
	case codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument:
		e.Kind = ErrRefused
		return e
	case codes.Unavailable:
	default:
		return nil
	}
	msg := st.Message()
	e.Kind = ErrTLSMismatch
	switch {
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		e.Reason = "this client speaks TLS and the instance plaintext gRPC (drop --tls-* here or give the intermediate --tls-cert/--tls-key)"
		return e
	case strings.Contains(msg, "remote error: tls:"):
		// The server ended the handshake: no client certificate, or one it
		// does not accept.
		e.Reason = "the instance refused this client's TLS handshake: remote error: " + tlsCause(msg) +
			" (mutual TLS: --tls-cert and --tls-key signed by a CA the instance trusts)"
		return e
	case strings.Contains(msg, "x509:"):
		// The server's certificate: an unknown CA, another name, expired.
		e.Reason = "the TLS handshake failed: " + tlsCause(msg)
		return e
	case !plaintext:
		// A TLS client's connection closed or reset during or after the
		// handshake: the server went away, which may mend.
	case strings.Contains(msg, "server preface"), strings.Contains(msg, "EOF"),
		strings.Contains(msg, "connection reset"), strings.Contains(msg, "frame too large"):
		// A plaintext client that meets a TLS server sees its connection
		// closed before the HTTP/2 preface; so does one whose server went
		// away. A TLS handshake tells which.
		if speaksTLS(ctx, addr) {
			e.Reason = "the instance speaks TLS and this client plaintext gRPC (pass --tls-ca, and --tls-cert/--tls-key for mutual TLS)"
			return e
		}
	}
	return nil
}

// refusalAfterWelcome returns the RefusedError of err, the status that
// ended a welcomed stream to the instance at addr, when retrying cannot mend
// it: PERMISSION_DENIED, which an intermediate sends when a message names a
// producer id the stream's certificate does not publish as; the same
// messages would be refused again on any stream. nil for any other end.
func refusalAfterWelcome(component, instance, addr string, err error) *RefusedError {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.PermissionDenied {
		return nil
	}
	return &RefusedError{Kind: ErrRefused, Component: component, Instance: instance, Addr: addr, Code: st.Code(), Reason: st.Message()}
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

// speaksTLS reports whether a server at addr answers a TLS handshake.
func speaksTLS(ctx context.Context, addr string) bool {
	if addr == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, tlsProbeTimeout)
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
