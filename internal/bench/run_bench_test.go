package bench

import (
	"flag"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

var (
	runDuration = flag.Duration("bench.duration", DefaultDuration, "BenchmarkRun: length of each measured phase")
	runProfile  = flag.String("bench.profile", "", "BenchmarkRun: write a CPU profile of Butterfly's saturation phase to this file")
)

// BenchmarkRun runs the whole `butterfly bench` with its defaults and
// reports the main figures; -bench.profile profiles the saturation phase.
//
//	go test -run '^$' -bench Run -benchtime 1x ./internal/bench -bench.profile cpu.out
func BenchmarkRun(b *testing.B) {
	cfg := Config{
		Payload: DefaultPayload, Producers: DefaultProducers, Intermediates: DefaultIntermediates, Consumers: DefaultConsumers,
		Duration: *runDuration, Window: components.DefaultWindow, BatchMessages: components.DefaultBatchMessages,
		BatchBytes: components.DefaultBatchBytes, Linger: components.DefaultLinger, Credit: components.DefaultCredit,
		Heartbeat: components.DefaultHeartbeatInterval,
		LeaseTTL:  intermediate.DefaultLeaseTTL, Warmup: time.Second, FaultGap: time.Second,
		FaultLoad: DefaultFaultLoad, SampleInterval: DefaultSampleInterval,
		Logger: slog.New(slog.DiscardHandler),
	}
	if *runProfile != "" {
		f, err := os.Create(*runProfile)
		if err != nil {
			b.Fatalf("os.Create(%s) = %v", *runProfile, err)
		}
		defer f.Close()
		cfg.CPUProfile = f
	}
	for b.Loop() {
		r, err := Run(b.Context(), cfg)
		if err != nil {
			b.Fatalf("Run() = %v", err)
		}
		if r.FailoverLost != 0 {
			b.Errorf("Run() lost %d messages, want 0", r.FailoverLost)
		}
		b.ReportMetric(r.Butterfly, "msgs/s")
		b.ReportMetric(r.RatioVsRelay, "x-relay")
		b.ReportMetric(r.P99HalfLoadUS, "p99-half-µs")
		b.ReportMetric(r.CPUPerMillion, "cpu-s/M")
		if testing.Verbose() {
			r.WriteTable(os.Stdout)
		}
	}
}
