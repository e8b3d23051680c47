package bench

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

// TestBaselines_Deliver checks that both baselines move and acknowledge
// messages, in whole batches.
func TestBaselines_Deliver(t *testing.T) {
	cfg := Config{Payload: 256, Producers: 1, Duration: time.Second, Window: 1024, BatchMessages: 64}
	for name, run := range map[string]func(context.Context, Config) (Result, error){
		"1hop": Baseline1Hop, "relay": BaselineRelay,
	} {
		t.Run(name, func(t *testing.T) {
			r, err := run(context.Background(), cfg)
			if err != nil {
				t.Fatalf("%s() = %v", name, err)
			}
			if r.Messages == 0 || r.Messages%64 != 0 {
				t.Fatalf("%s() acked %d messages, want a positive multiple of 64", name, r.Messages)
			}
			if r.P50 <= 0 || r.P99 < r.P50 {
				t.Fatalf("%s() latencies p50 %v p99 %v, want 0 < p50 <= p99", name, r.P50, r.P99)
			}
			t.Logf("%s: %.0f msgs/s, p50 %v, p99 %v, %.2f CPU s per million", name, r.MsgsPerSec, r.P50, r.P99, r.CPUPerMillion)
		})
	}
}
