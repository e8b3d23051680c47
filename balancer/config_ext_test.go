package balancer_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/butterfly-mesh/butterfly/balancer"
)

// TestParseConfig_Valid fills absent fields with defaults.
func TestParseConfig_Valid(t *testing.T) {
	full := balancer.DefaultConfig()
	full.LocalZone = "z1"
	full.Ejection = balancer.EjectionConfig{ConsecutiveFailures: 3, BaseEjectionTime: 200 * time.Millisecond, MaxEjectionTime: 2 * time.Second, MaxEjectedPercent: 30}
	full.Backoff = balancer.BackoffConfig{BaseDelay: 50 * time.Millisecond, MaxDelay: time.Second}
	noEjection := balancer.DefaultConfig()
	noEjection.Ejection.ConsecutiveFailures = 0
	for _, tc := range []struct {
		name string
		js   string
		want balancer.Config
	}{
		{"empty", ``, balancer.DefaultConfig()},
		{"null", `null`, balancer.DefaultConfig()},
		{"object", `{}`, balancer.DefaultConfig()},
		{"unknown fields", `{"future":1}`, balancer.DefaultConfig()},
		{"full", `{"localZone":"z1",
			"ejection":{"consecutiveFailures":3,"baseEjectionTime":"200ms","maxEjectionTime":"2s","maxEjectedPercent":30},
			"backoff":{"baseDelay":"50ms","maxDelay":"1s"}}`, full},
		{"ejection off", `{"ejection":{"consecutiveFailures":0}}`, noEjection},
		{"round trip", full.JSON(), full},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := balancer.ParseConfig([]byte(tc.js))
			if err != nil {
				t.Fatalf("ParseConfig(%s) = %v, want nil", tc.js, err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseConfig(%s) mismatch (-want +got):\n%s", tc.js, diff)
			}
		})
	}
}

// TestParseConfig_Invalid names the offending field.
func TestParseConfig_Invalid(t *testing.T) {
	for _, tc := range []struct {
		js, want string
	}{
		{`[]`, "cannot unmarshal"},
		{`{"backoff":{"baseDelay":"soon"}}`, `"soon"`},
		{`{"backoff":{"baseDelay":100}}`, "duration string"},
		{`{"backoff":{"baseDelay":"-1s"}}`, "not positive"},
		{`{"backoff":{"baseDelay":"2s","maxDelay":"1s"}}`, "backoff.maxDelay"},
		{`{"ejection":{"maxEjectedPercent":101}}`, "maxEjectedPercent"},
		{`{"ejection":{"baseEjectionTime":"10s","maxEjectionTime":"1s"}}`, "ejection.maxEjectionTime"},
	} {
		_, err := balancer.ParseConfig([]byte(tc.js))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "balancer: ") {
			t.Errorf("ParseConfig(%s) = %v, want a \"balancer: \" error containing %q", tc.js, err, tc.want)
		}
	}
}
