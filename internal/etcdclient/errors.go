package etcdclient

import (
	"context"
	"errors"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
)

// Errors that name the flag to fix. Each wraps etcd's own error too, so
// errors.Is also matches rpctypes.ErrUserEmpty, rpctypes.ErrPermissionDenied
// or rpctypes.ErrAuthFailed, and status.Code keeps etcd's gRPC code.
var (
	// ErrAuthRequired: the cluster has authentication enabled and the
	// client was given no user.
	ErrAuthRequired = errors.New("etcd: authentication required (--etcd-user)")
	// ErrAuthFailed: the user or the password is wrong.
	ErrAuthFailed = errors.New("etcd: authentication failed (--etcd-user, --etcd-password)")
	// ErrPermissionDenied: the user's roles do not grant the request.
	ErrPermissionDenied = errors.New("etcd: permission denied")
	// ErrUnreachable: no endpoint answered within the dial timeout
	// (--etcd-dial-timeout).
	ErrUnreachable = errors.New("etcd unreachable")
	// ErrNotEtcd: an endpoint answers gRPC without etcd's services (the
	// address of another server given as --etcd-endpoints).
	ErrNotEtcd = errors.New("not etcd")
)

// explainedError is an etcd error with the flag to fix in front.
type explainedError struct {
	kind   error  // ErrAuthRequired, ErrAuthFailed or ErrPermissionDenied
	detail string // what to do
	err    error  // the gRPC status error from etcd
}

func (e *explainedError) Error() string {
	return e.kind.Error() + ": " + e.detail + ": " + e.err.Error()
}

// Unwrap returns the kind, etcd's typed error (rpctypes.Error) and the gRPC
// status error, so that errors.Is and status.Code see all three.
func (e *explainedError) Unwrap() []error {
	return []error{e.kind, rpctypes.Error(e.err), e.err}
}

// explain puts the flag to fix in front of an authentication or permission
// error of a request, and returns any other error unchanged.
func explain(err error, user string, req any) error {
	switch {
	case user == "" && errors.Is(err, rpctypes.ErrGRPCUserEmpty):
		return &explainedError{ErrAuthRequired, "the cluster has authentication enabled and no user was given; pass --etcd-user user:password", err}
	case errors.Is(err, rpctypes.ErrGRPCPermissionDenied):
		detail := fmt.Sprintf("user %q", user)
		if user == "" {
			detail = "no user (--etcd-user)"
		}
		if op, key := requestKey(req); key != "" {
			detail += fmt.Sprintf(" may not %s %q", op, key)
		}
		return &explainedError{ErrPermissionDenied, detail + "; its role needs readwrite on the mesh prefix", err}
	}
	return err
}

// requestKey returns what a key-value request does and to which key.
func requestKey(req any) (op, key string) {
	switch r := req.(type) {
	case *pb.PutRequest:
		return "write", string(r.Key)
	case *pb.RangeRequest:
		return "read", string(r.Key)
	case *pb.DeleteRangeRequest:
		return "delete", string(r.Key)
	}
	return "", ""
}

// explainInterceptor explains the errors of unary requests. It runs inside
// clientv3's retrying interceptor: an error it leaves alone (an expired
// token, say) is still retried there.
func explainInterceptor(user string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
			return explain(err, user, req)
		}
		return nil
	}
}

// Refused reports whether err is etcd refusing a request for want of a
// user, a password or a permission: what no retry mends. It sees etcd's
// typed errors (rpctypes) through any wrapping, this package's explained
// ones included.
func Refused(err error) bool {
	return errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserEmpty) ||
		errors.Is(err, rpctypes.ErrAuthFailed) || errors.Is(err, rpctypes.ErrAuthNotEnabled)
}
