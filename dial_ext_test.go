package butterfly_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc"

	"github.com/butterfly-mesh/butterfly"
)

// TestDialOptions_InvalidBalancerConfig makes grpc.NewClient fail on a bad
// balancer config, and accept a good one.
func TestDialOptions_InvalidBalancerConfig(t *testing.T) {
	_, err := grpc.NewClient("butterfly:///intermediate",
		butterfly.DialOptions(nil, butterfly.WithBalancerConfig(`{"backoff":{"baseDelay":"soon"}}`))...)
	if err == nil || !strings.Contains(err.Error(), "soon") {
		t.Errorf("grpc.NewClient(bad balancer config) = %v, want an error naming \"soon\"", err)
	}
	conn, err := grpc.NewClient("butterfly:///intermediate",
		butterfly.DialOptions(nil, butterfly.WithBalancerConfig(`{"localZone":"z1"}`))...)
	if err != nil {
		t.Fatalf("grpc.NewClient(good balancer config) = %v, want nil", err)
	}
	conn.Close()
}
