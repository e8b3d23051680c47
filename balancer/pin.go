package balancer

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// instanceCtxKey is the context key of a pinned instance name.
type instanceCtxKey struct{}

// WithInstance returns a context that pins the RPC or stream started with
// it to one instance: the pick goes to that instance's current connection,
// even when the instance is draining or ejected. While the instance's
// connection is not READY yet (just moved to a new address, reconnecting),
// the pick waits for it; it is never routed to an old address. A pinned pick
// of an instance the balancer does not know, or whose connection is in
// TRANSIENT_FAILURE, fails at once with ErrInstanceUnavailable's status,
// even for a wait-for-ready RPC.
func WithInstance(ctx context.Context, instance string) context.Context {
	return context.WithValue(ctx, instanceCtxKey{}, instance)
}

// InstanceFromContext returns the instance ctx is pinned to.
func InstanceFromContext(ctx context.Context) (string, bool) {
	s, ok := ctx.Value(instanceCtxKey{}).(string)
	return s, ok && s != ""
}

// instanceUnavailableMsg starts the message of every pinned-pick failure.
const instanceUnavailableMsg = "butterfly: instance unavailable"

// ErrInstanceUnavailable is the status error (codes.Unavailable) of a pinned
// pick that cannot be served: the instance is not in the resolver state, or
// its connection is in TRANSIENT_FAILURE. The error an RPC returns carries
// the instance name and reason after this message; test it with
// IsInstanceUnavailable.
var ErrInstanceUnavailable = status.Error(codes.Unavailable, instanceUnavailableMsg)

// IsInstanceUnavailable reports whether err is, or wraps, the status of a
// failed pinned pick (see ErrInstanceUnavailable).
func IsInstanceUnavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrInstanceUnavailable) {
		return true
	}
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Unavailable && strings.HasPrefix(st.Message(), instanceUnavailableMsg)
}

// instanceUnavailable returns the pick error for instance.
func instanceUnavailable(instance, reason string) error {
	return status.Error(codes.Unavailable, instanceUnavailableMsg+": "+instance+": "+reason)
}
