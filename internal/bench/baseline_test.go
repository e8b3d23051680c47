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

// TestBaselineRelayAt_PacesAndTimesOneWay checks that the relay at a rate
// sends no more than the rate owes, delivers, and times each message one
// way from its stamp to the sink.
func TestBaselineRelayAt_PacesAndTimesOneWay(t *testing.T) {
	const rate = 20_000 // messages a second, both streams together
	cfg := Config{Payload: 256, Producers: 2, Duration: time.Second, Window: 1024, BatchMessages: 64, Warmup: 200 * time.Millisecond}
	r, err := BaselineRelayAt(t.Context(), cfg, rate)
	if err != nil {
		t.Fatalf("BaselineRelayAt() = %v", err)
	}
	// The streams together never owe more than the rate over the whole
	// run; the relay unpaced moves tens of times that.
	if most := uint64(rate * (cfg.Warmup + cfg.Duration).Seconds()); r.Messages == 0 || r.Messages > most {
		t.Fatalf("BaselineRelayAt(%d/s) acked %d messages after the warmup, want 1..%d", rate, r.Messages, most)
	}
	if least := uint64(rate * cfg.Duration.Seconds() / 4); r.Messages < least {
		t.Errorf("BaselineRelayAt(%d/s) acked %d messages in %v, want at least %d", rate, r.Messages, cfg.Duration, least)
	}
	if r.P50 <= 0 || r.P99 < r.P50 || r.P999 < r.P99 {
		t.Errorf("BaselineRelayAt() one-way latencies p50 %v p99 %v p999 %v, want 0 < p50 <= p99 <= p999", r.P50, r.P99, r.P999)
	}
	t.Logf("relay at %d/s: %.0f msgs/s, one way p50 %v, p99 %v, p999 %v, %.2f CPU s per million", rate, r.MsgsPerSec, r.P50, r.P99, r.P999, r.CPUPerMillion)

	if _, err := BaselineRelayAt(t.Context(), cfg, 0); err == nil {
		t.Errorf("BaselineRelayAt(rate 0) = nil error, want one naming the rate")
	}
}
