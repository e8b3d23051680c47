package bench

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/intermediate"
)

// quickConfig is a whole run in a few seconds: short phases and heartbeats.
func quickConfig() Config {
	return Config{
		Payload: 256, Producers: 2, Intermediates: 2, Consumers: 2,
		Duration: 300 * time.Millisecond, Window: 2000, BatchMessages: 64, BatchBytes: 512 << 10,
		Linger: 200 * time.Microsecond, Credit: 1000, Heartbeat: 50 * time.Millisecond,
		LeaseTTL: 5 * time.Second, Warmup: 200 * time.Millisecond,
		FaultGap: 300 * time.Millisecond, FaultLoad: 0.5, SampleInterval: 10 * time.Millisecond,
	}
}

// TestRun_QuickFaultsLoseNothing runs the whole benchmark with short phases
// and checks that every message sent reached a handler exactly once in
// count, that every fault was seen, and that the report renders.
func TestRun_QuickFaultsLoseNothing(t *testing.T) {
	cfg := quickConfig()
	var tr, hp bytes.Buffer
	cfg.Trace = &tr
	cfg.HeapProfile = &hp
	r, err := Run(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Run() = %v", err)
	}
	if prof, err := gunzip(hp.Bytes()); err != nil || !bytes.Contains(prof, []byte("inuse_space")) {
		t.Errorf("heap profile of the saturation phase: %d bytes (%v), want a gzipped pprof profile with inuse_space", hp.Len(), err)
	}
	if !bytes.HasPrefix(tr.Bytes(), []byte("go 1.")) {
		t.Errorf("execution trace of the half-load phase: %d bytes starting %q, want a runtime trace", tr.Len(), tr.Bytes()[:min(tr.Len(), 16)])
	}
	if r.HalfLoadSchedWaitP99US <= 0 {
		t.Errorf("Run() half-load runnable goroutine wait p99 = %v µs, want > 0", r.HalfLoadSchedWaitP99US)
	}
	var table bytes.Buffer
	if err := r.WriteTable(&table); err != nil {
		t.Fatalf("WriteTable() = %v", err)
	}
	t.Logf("report:\n%s", table.String())
	if r.FailoverLost != 0 || r.Sent == 0 || r.Delivered != r.Sent {
		t.Errorf("Run() lost %d, sent %d, delivered %d, want 0 lost and delivered == sent > 0", r.FailoverLost, r.Sent, r.Delivered)
	}
	if r.Strangers != 0 {
		t.Errorf("Run() unknown messages = %d, want 0", r.Strangers)
	}
	if r.HandledTwice != 0 && r.RegistrationsLapsed == 0 {
		t.Errorf("Run() handled %d messages twice with every consumer registered throughout, want 0", r.HandledTwice)
	}
	for name, v := range map[string]float64{
		"FailoverResendMS": r.FailoverResendMS, "MoveRerouteMS": r.MoveRerouteMS,
		"FreezeDetectMS": r.FreezeDetectMS, "DrainMS": r.DrainMS,
	} {
		if v < 0 {
			t.Errorf("Run() %s = %v, want the fault seen", name, v)
		}
	}
	if r.Butterfly <= 0 || r.Baseline1Hop <= 0 || r.BaselineRelay <= 0 || r.P99HalfLoadUS <= 0 {
		t.Errorf("Run() rates %v/%v/%v and p99 at half load %v, want all > 0", r.Butterfly, r.Baseline1Hop, r.BaselineRelay, r.P99HalfLoadUS)
	}
	if r.BaselineRelayHalfLoad <= 0 || r.BaselineRelayP50HalfLoadUS <= 0 || r.BaselineRelayP99HalfLoadUS < r.BaselineRelayP50HalfLoadUS {
		t.Errorf("Run() relay at the half-load rate: %v msgs/s, one way p50 %v µs, p99 %v µs, want a rate and 0 < p50 <= p99",
			r.BaselineRelayHalfLoad, r.BaselineRelayP50HalfLoadUS, r.BaselineRelayP99HalfLoadUS)
	}
	// A frame carries one message at least; a batch no more than its limit.
	// A figure is 0 when its phase saw no such frame: on a starved machine
	// a 0.3 s phase may end before the first acknowledgement comes back.
	// Each link must show its frames in one phase at least.
	for _, f := range []struct {
		name           string
		sat, half, max float64
	}{
		{"publish batch", r.MsgsPerPublishBatch, r.MsgsPerPublishBatchHalf, float64(cfg.BatchMessages)},
		{"delivery batch", r.MsgsPerDeliveryBatch, r.MsgsPerDeliveryBatchHalf, intermediate.DefaultMaxBatchMessages},
		{"publish ack frame", r.MsgsPerPublishAck, r.MsgsPerPublishAckHalf, float64(cfg.Window)},
		{"delivery ack frame", r.MsgsPerDeliveryAck, r.MsgsPerDeliveryAckHalf, float64(cfg.Credit)},
	} {
		within := func(v float64) bool { return v >= 1 && v <= f.max }
		if f.sat != 0 && !within(f.sat) || f.half != 0 && !within(f.half) || !within(f.sat) && !within(f.half) {
			t.Errorf("Run() messages per %s = %.2f at saturation, %.2f at half load, want 1 to %g in one phase at least and 0 (no frame) or 1 to %g in the other",
				f.name, f.sat, f.half, f.max, f.max)
		}
	}
	if len(r.Samples) == 0 || len(r.Events) < 8 {
		t.Errorf("Run() samples %d, events %d, want a series and every event", len(r.Samples), len(r.Events))
	}
	var svg bytes.Buffer
	if err := WritePlot(&svg, r); err != nil || !bytes.Contains(svg.Bytes(), []byte("<svg")) {
		t.Errorf("WritePlot() = %v, %d bytes, want an SVG", err, svg.Len())
	}
}

// TestRun_AllocsPerMessage checks that a run reports the heap allocations
// per message of Butterfly and of the relay baseline, and that they are
// plausible: every message is decoded on its way (at least its payload is
// allocated again), and both stay under generous bounds, the relay, which
// reuses what it can, under a tighter one.
func TestRun_AllocsPerMessage(t *testing.T) {
	cfg := quickConfig()
	cfg.Duration = time.Second // phases long enough to count messages on a busy machine
	r, err := Run(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Run() = %v", err)
	}
	t.Logf("allocs per msg: Butterfly %.1f (%.0f B), relay %.1f (%.0f B), 1 hop %.1f (%.0f B)",
		r.AllocsPerMsg, r.AllocBytesPerMsg, r.BaselineRelayAllocs, r.BaselineRelayAllocB, r.Baseline1HopAllocs, r.Baseline1HopAllocB)
	for _, tc := range []struct {
		name          string
		allocs, bytes float64
		maxAllocs     float64
	}{
		{"Butterfly", r.AllocsPerMsg, r.AllocBytesPerMsg, 1000},
		{"relay", r.BaselineRelayAllocs, r.BaselineRelayAllocB, 100},
		{"1 hop", r.Baseline1HopAllocs, r.Baseline1HopAllocB, 100},
	} {
		if tc.allocs <= 0 || tc.allocs > tc.maxAllocs {
			t.Errorf("Run() %s allocs per msg = %.1f, want in (0, %v]", tc.name, tc.allocs, tc.maxAllocs)
		}
		if tc.bytes < float64(cfg.Payload) {
			t.Errorf("Run() %s alloc bytes per msg = %.0f, want at least the payload, %d", tc.name, tc.bytes, cfg.Payload)
		}
	}
}

// TestFinish_CountsWhatProducersStillHold stops every intermediate under
// load, so that the producers' Close times out with messages in flight,
// and checks that the run counts those as unacknowledged: every message
// missing at the consumers is one a producer still holds, since none was
// acknowledged without being handled.
func TestFinish_CountsWhatProducersStillHold(t *testing.T) {
	ctx := t.Context()
	m, err := newMesh(ctx, quickConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer m.close(ctx)
	if !waitUntil(ctx, 30*time.Second, func() bool { return m.consumed.Load() > 0 }) {
		t.Fatal("no message reached a consumer within 30s")
	}
	for i := range m.cfg.Intermediates {
		m.server(fmt.Sprintf("i%d", i)).srv.Stop()
	}
	// The producers fill their windows with nowhere to send them.
	if !waitUntil(ctx, 10*time.Second, func() bool {
		var inFlight uint64
		for _, p := range m.producers {
			inFlight += p.Stats().InFlight
		}
		return inFlight > 0
	}) {
		t.Fatal("no message in flight at the producers within 10s of stopping every intermediate")
	}
	sent, lost, _, unacked, err := m.finish(ctx, 300*time.Millisecond)
	if err == nil {
		t.Errorf("finish() with every intermediate stopped = nil error, want the producers' Close to time out")
	}
	if unacked == 0 || lost == 0 || lost > unacked || unacked > sent {
		t.Errorf("finish() sent %d, lost %d, unacknowledged %d; want 0 < lost <= unacknowledged <= sent", sent, lost, unacked)
	}
}

// gunzip returns the gzip stream b uncompressed.
func gunzip(b []byte) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

// TestRun_HalfLoadRateGiven checks that a run given a half-load rate loads
// Butterfly's half-load phase and the relay's run beside it at that rate,
// whatever saturation measured, and says so in its report, so that
// settings that change saturation (GOGC) are compared at one rate.
func TestRun_HalfLoadRateGiven(t *testing.T) {
	const rate = 5000
	cfg := quickConfig()
	cfg.HalfLoadRate = rate
	r, err := Run(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Run() = %v", err)
	}
	if r.HalfLoadOffered != rate || !r.HalfLoadRateGiven {
		t.Errorf("Run() half load offered %v msgs/s (given: %v), want %d given", r.HalfLoadOffered, r.HalfLoadRateGiven, rate)
	}
	// Paced in 1 ms ticks from the start of each stream, at what the rate
	// owes since then: a phase's count is about the rate. A short phase
	// may also count what the phase before left in flight (up to two
	// windows), and a producer held back catches up, so the bounds are
	// wide; they still tell the rate given from half of saturation, which
	// is above 10 000 msgs/s even under the race detector on a busy
	// machine (27 000 msgs/s of saturation there).
	t.Logf("half load at %d msgs/s given: Butterfly %.0f, the relay %.0f msgs/s; saturation %.0f msgs/s", rate, r.HalfLoad, r.BaselineRelayHalfLoad, r.Butterfly)
	for name, got := range map[string]float64{"Butterfly": r.HalfLoad, "relay": r.BaselineRelayHalfLoad} {
		if got < rate/2 || got > rate*2 {
			t.Errorf("Run() %s at the given half-load rate: %.0f msgs/s, want about %d", name, got, rate)
		}
	}
	if r.Butterfly < 4*rate {
		t.Logf("saturation %.0f msgs/s is under four times the given rate: the bounds above do not tell the two apart", r.Butterfly)
	}
	var table bytes.Buffer
	if err := r.WriteTable(&table); err != nil {
		t.Fatalf("WriteTable() = %v", err)
	}
	if r.Over2msHalfLoad < 0 || r.Over2msHalfLoad > 1 || r.BaselineRelayOver2msHalf < 0 || r.BaselineRelayOver2msHalf > 1 {
		t.Errorf("Run() shares over 2 ms at half load: %v, the relay %v, want shares in [0, 1]", r.Over2msHalfLoad, r.BaselineRelayOver2msHalf)
	}
	if want := "at --half-load-rate"; !bytes.Contains(table.Bytes(), []byte(want)) {
		t.Errorf("WriteTable() =\n%s\nwant its half-load row to say %q", table.String(), want)
	}
}

// TestHalfLoadRate checks the rate of the half-load phase: half of
// saturation, or the rate given.
func TestHalfLoadRate(t *testing.T) {
	if got, given := (Config{}).halfLoadRate(600000); got != 300000 || given {
		t.Errorf("halfLoadRate(600000) without a rate = %v, %v; want 300000, false", got, given)
	}
	if got, given := (Config{HalfLoadRate: 250000}).halfLoadRate(600000); got != 250000 || !given {
		t.Errorf("halfLoadRate(600000) with 250000 given = %v, %v; want 250000, true", got, given)
	}
}
