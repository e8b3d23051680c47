package bench

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"time"

	"github.com/butterfly-mesh/butterfly/intermediate"
)

// Config is what a benchmark run sends and how. The baselines use Payload,
// Producers, Duration, Window and BatchMessages; Run uses all of it.
type Config struct {
	// Payload is the payload size in bytes.
	Payload int
	// Producers, Intermediates and Consumers are how many of each run.
	Producers, Intermediates, Consumers int
	// Duration is how long each throughput phase runs.
	Duration time.Duration
	// Window is the most unacknowledged messages per producer.
	Window int
	// BatchMessages is the most messages in one batch.
	BatchMessages int

	// BatchBytes and Linger are the rest of a producer's batching.
	BatchBytes int
	Linger     time.Duration
	// Credit is how many deliveries a consumer lets each intermediate send
	// ahead of its acknowledgements.
	Credit int
	// Heartbeat is the heartbeat interval of every stream; a frozen peer is
	// detected after five.
	Heartbeat time.Duration
	// LeaseTTL is the intermediates' registration lease TTL.
	LeaseTTL time.Duration
	// Warmup runs before every measured phase.
	Warmup time.Duration
	// FaultGap is how long the load runs between two faults.
	FaultGap time.Duration
	// FaultLoad is the load offered during the faults, as a fraction of the
	// measured saturation; the drain always runs at full load.
	FaultLoad float64
	// SampleInterval is the resolution of the throughput series.
	SampleInterval time.Duration
	// HalfLoadRate, when positive, is the load of the half-load phase, and
	// of the relay's run at that load, in messages a second, in place of
	// half the saturation measured: settings that move saturation (GOGC,
	// the window) are then compared at one rate.
	HalfLoadRate float64

	// Logger receives the progress of the run.
	Logger *slog.Logger
	// CPUProfile, when set, receives a CPU profile of Butterfly's saturation
	// phase.
	CPUProfile io.Writer
	// HeapProfile, when set, receives a heap profile taken at the end of
	// Butterfly's saturation phase, with the windows full (go tool pprof;
	// its in-use figures are those of the last collection).
	HeapProfile io.Writer
	// Trace, when set, receives a runtime execution trace of Butterfly's
	// half-load phase (go tool trace).
	Trace io.Writer
}

// Default values of Config, for `butterfly bench`.
const (
	DefaultPayload        = 256
	DefaultProducers      = 2
	DefaultIntermediates  = 2
	DefaultConsumers      = 2
	DefaultDuration       = 5 * time.Second
	DefaultFaultLoad      = 0.5
	DefaultSampleInterval = 10 * time.Millisecond
)

// halfLoadRate is the load of the half-load phase, sat the saturation
// measured: HalfLoadRate when given (given is true), half of sat
// otherwise.
func (c Config) halfLoadRate(sat float64) (rate float64, given bool) {
	if c.HalfLoadRate > 0 {
		return c.HalfLoadRate, true
	}
	return sat / 2, false
}

// Validate reports every invalid field of c.
func (c *Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Payload >= 0 && c.Payload <= 4<<20, "payload %d is out of range [0, 4MiB]", c.Payload)
	check(c.Producers >= 1, "producers %d is under 1", c.Producers)
	check(c.Intermediates >= 2, "intermediates %d is under 2 (the faults need one to break and one to carry on)", c.Intermediates)
	check(c.Consumers >= 1, "consumers %d is under 1", c.Consumers)
	check(c.Duration > 0, "duration %v is not positive", c.Duration)
	check(c.Window >= 1, "window %d is under 1", c.Window)
	check(c.BatchMessages >= 1, "batch messages %d is under 1", c.BatchMessages)
	check(c.BatchBytes >= 1, "batch bytes %d is under 1", c.BatchBytes)
	check(c.Linger >= 0, "linger %v is negative", c.Linger)
	check(c.Credit >= 1, "credit %d is under 1", c.Credit)
	check(c.Heartbeat >= time.Millisecond, "heartbeat %v is under 1ms", c.Heartbeat)
	check(c.LeaseTTL >= time.Second, "lease TTL %v is under 1s", c.LeaseTTL)
	check(c.Warmup >= 0, "warmup %v is negative", c.Warmup)
	check(c.FaultGap > 0, "fault gap %v is not positive", c.FaultGap)
	check(c.FaultLoad > 0 && c.FaultLoad <= 1, "fault load %v is out of range (0, 1]", c.FaultLoad)
	check(c.SampleInterval >= time.Millisecond, "sample interval %v is under 1ms", c.SampleInterval)
	check(c.HalfLoadRate >= 0 && !math.IsInf(c.HalfLoadRate, 1), "half-load rate %v is negative or infinite", c.HalfLoadRate)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bench: invalid config: %w", err)
	}
	return nil
}

// Result is one measured phase.
type Result struct {
	Messages   uint64
	Elapsed    time.Duration
	MsgsPerSec float64
	P50, P99   time.Duration
	P999       time.Duration
	// Over2ms is the share of the messages slower than 2 ms, the bound
	// the half-load p99 is held to. The histogram's bucket that holds
	// 2 ms (up to 2.015 ms) counts as not slower, where a quantile in it
	// reads 2.015 ms: a run may show a p99 just over 2 ms with under 1 %
	// of its messages counted here.
	Over2ms float64
	// CPUPerMillion is the process's CPU seconds (user and system) per
	// million messages, 0 where the platform does not report it.
	CPUPerMillion float64
	// AllocsPerMsg and AllocBytesPerMsg are the process's heap allocations
	// over the phase per message handled: unlike the rates, a busy machine
	// does not blur them.
	AllocsPerMsg, AllocBytesPerMsg float64
	// Runtime is what the Go runtime did over the phase (process-wide).
	Runtime RuntimeFigures
	// Batching is how many messages the mesh's frames carried over the
	// phase, from the intermediates' counters.
	Batching BatchFigures
}

// BatchFigures are the messages a frame carried on average, each way of
// each link: what a mesh pays per frame (a gRPC message, a write, a wake-up
// at each end) is spread over them.
type BatchFigures struct {
	// PublishBatch and PublishAck are messages per batch from producers to
	// intermediates, and per acknowledgement frame back.
	PublishBatch, PublishAck float64
	// DeliveryBatch and DeliveryAck are messages per batch from
	// intermediates to consumers, and deliveries acknowledged or handed
	// back per acknowledgement frame back.
	DeliveryBatch, DeliveryAck float64
}

// newBatchFigures returns the messages per frame of what the intermediates
// counted between two readings of their Stats.
func newBatchFigures(d intermediate.Stats) BatchFigures {
	per := func(msgs, frames uint64) float64 {
		if frames == 0 {
			return 0
		}
		return float64(msgs) / float64(frames)
	}
	return BatchFigures{
		PublishBatch:  per(d.Received, d.PublishBatches),
		PublishAck:    per(d.Acked+d.Nacked, d.PublishAcks),
		DeliveryBatch: per(d.Delivered, d.DeliveryBatches),
		DeliveryAck:   per(d.DeliveryAnswers, d.DeliveryAcks),
	}
}

func newResult(n uint64, elapsed time.Duration, lat *histogram) Result {
	r := Result{Messages: n, Elapsed: elapsed, MsgsPerSec: float64(n) / elapsed.Seconds()}
	r.P50, r.P99, r.P999 = lat.quantiles()
	r.Over2ms = lat.shareOver(slowBound)
	return r
}

// slowBound is the latency above which a message counts in Result.Over2ms.
const slowBound = 2 * time.Millisecond

// cpuPerMillion is CPU seconds per million of n messages.
func cpuPerMillion(cpu time.Duration, n uint64) float64 {
	if n == 0 {
		return 0
	}
	return cpu.Seconds() / (float64(n) / 1e6)
}
