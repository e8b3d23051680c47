package components

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

// Errors a producer, consumer or stage stops with when an intermediate
// refuses it for a reason that retrying does not mend. Err returns the
// refusal, and so do a producer's Send after it and its Close while
// messages are left unacknowledged; a Close with nothing left returns nil
// (nothing was lost), as a consumer's does.
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

// refusal returns the RefusedError of err, an error from opening a stream to
// the instance at addr or from its first receive, when retrying cannot mend
// it; nil when it may (the instance restarts, the network heals). creds are
// the client's credentials when known (nil otherwise): a connection closed or
// reset is checked against them for a TLS mismatch (tlsutil.Mismatch).
func refusal(ctx context.Context, component, instance, addr string, creds credentials.TransportCredentials, err error) *RefusedError {
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
	reason := tlsutil.Mismatch(ctx, addr, creds, st.Message())
	if reason == "" {
		return nil
	}
	e.Kind = ErrTLSMismatch
	e.Reason = reason
	return e
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
