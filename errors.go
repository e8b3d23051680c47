package butterfly

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// Intermediates refuse or end a subscribe stream for a reason a consumer
// must act on with a gRPC status that carries a google.rpc.ErrorInfo in
// ErrorDomain with one of these reasons.
const (
	// ErrorDomain is the ErrorInfo domain of Butterfly's refusals.
	ErrorDomain = "butterfly-mesh.dev"
	// ReasonGroupDeleted ends the streams of a group whose declaration was
	// deleted (FAILED_PRECONDITION). Permanent for its consumers.
	ReasonGroupDeleted = "GROUP_DELETED"
	// ReasonConsumerReplaced refuses a stream of a consumer incarnation that
	// another incarnation of the same id took over (FAILED_PRECONDITION).
	// Permanent for that incarnation.
	ReasonConsumerReplaced = "CONSUMER_REPLACED"
	// ReasonNotRegistered refuses a stream whose consumer is not registered
	// with the epoch it named, or whose group is not declared
	// (FAILED_PRECONDITION). Transient while a registration is on its way.
	ReasonNotRegistered = "CONSUMER_NOT_REGISTERED"
)

// RefusalReason returns the reason of a Butterfly refusal carried by err's
// gRPC status, "" when it carries none.
func RefusalReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}

// Transient reports whether a message handed back for reason is sent again
// by its producer (it keeps it), rather than handed back for good.
func Transient(reason messagev1.NackReason) bool {
	switch reason {
	case messagev1.NackReason_NACK_REASON_DRAINING, messagev1.NackReason_NACK_REASON_UNAVAILABLE,
		messagev1.NackReason_NACK_REASON_NO_CONSUMER, messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE:
		return true
	}
	return false
}
