package intermediate

import (
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly"
)

// refusal is a FAILED_PRECONDITION status carrying an ErrorInfo with reason.
func refusal(reason string, meta map[string]string, format string, args ...any) error {
	st := status.New(codes.FailedPrecondition, fmt.Sprintf(format, args...))
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: butterfly.ErrorDomain, Metadata: meta}); err == nil {
		st = d
	}
	return st.Err()
}

func errGroupDeleted(service, group string) error {
	return refusal(butterfly.ReasonGroupDeleted, map[string]string{"service": service, "group": group},
		"intermediate: group %q of service %q was deleted", group, service)
}
