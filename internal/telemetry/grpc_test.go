package telemetry

import (
	"testing"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/grpc/codes"
)

// TestClientCodeToLevel checks the level a client RPC's end is logged at:
// UNAVAILABLE (an instance starting, moving or gone, which the components
// retry and report themselves) at debug, the rest as go-grpc-middleware
// logs them.
func TestClientCodeToLevel(t *testing.T) {
	for code, want := range map[codes.Code]logging.Level{
		codes.OK:                logging.LevelDebug,
		codes.Unavailable:       logging.LevelDebug,
		codes.PermissionDenied:  logging.DefaultClientCodeToLevel(codes.PermissionDenied),
		codes.Internal:          logging.LevelWarn,
		codes.DeadlineExceeded:  logging.DefaultClientCodeToLevel(codes.DeadlineExceeded),
		codes.ResourceExhausted: logging.DefaultClientCodeToLevel(codes.ResourceExhausted),
	} {
		if got := clientCodeToLevel(code); got != want {
			t.Errorf("clientCodeToLevel(%s) = %v, want %v", code, got, want)
		}
	}
}
