package butterfly

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestDialOptions_ConnectParams backs off from 100ms to 3s unless the
// balancer config says otherwise.
func TestDialOptions_ConnectParams(t *testing.T) {
	for _, tc := range []struct {
		name     string
		lbConfig string
		base     time.Duration
		max      time.Duration
	}{
		{"default", "", 100 * time.Millisecond, 3 * time.Second},
		{"no backoff in config", `{"localZone":"z1"}`, 100 * time.Millisecond, 3 * time.Second},
		{"config backoff", `{"backoff":{"baseDelay":"20ms","maxDelay":"500ms"}}`, 20 * time.Millisecond, 500 * time.Millisecond},
		{"invalid config", `{"backoff":{"baseDelay":"soon"}}`, 100 * time.Millisecond, 3 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := dialOptions{lbConfig: tc.lbConfig}
			got := o.connectParams()
			if diff := cmp.Diff([]time.Duration{tc.base, tc.max, minConnectTimeout},
				[]time.Duration{got.Backoff.BaseDelay, got.Backoff.MaxDelay, got.MinConnectTimeout}); diff != "" {
				t.Errorf("connectParams(%s) mismatch (-want +got):\n%s", tc.lbConfig, diff)
			}
		})
	}
}
