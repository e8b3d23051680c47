// Package bench measures Butterfly beside plain-gRPC baselines in the same
// run, for `butterfly bench`.
package bench

import (
	"slices"
	"sync"
	"time"
)

// Config is what a benchmark run sends and how.
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
}

// Result is one measured phase.
type Result struct {
	Messages   uint64
	Elapsed    time.Duration
	MsgsPerSec float64
	P50, P99   time.Duration
	P999       time.Duration
}

func newResult(n uint64, elapsed time.Duration, lat *latencies) Result {
	r := Result{Messages: n, Elapsed: elapsed, MsgsPerSec: float64(n) / elapsed.Seconds()}
	r.P50, r.P99, r.P999 = lat.quantiles()
	return r
}

// latencies collects samples; bounded by keeping every k-th sample once full.
type latencies struct {
	mu      sync.Mutex
	samples []time.Duration
	skip    int
	n       int
}

const maxSamples = 1 << 20

func newLatencies() *latencies { return &latencies{skip: 1} }

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	if l.n%l.skip != 0 {
		return
	}
	if len(l.samples) == maxSamples {
		// Keep every other sample and sample half as often from now on.
		kept := l.samples[:0]
		for i := 0; i < len(l.samples); i += 2 {
			kept = append(kept, l.samples[i])
		}
		l.samples = kept
		l.skip *= 2
	}
	l.samples = append(l.samples, d)
}

func (l *latencies) quantiles() (p50, p99, p999 time.Duration) {
	l.mu.Lock()
	s := slices.Clone(l.samples)
	l.mu.Unlock()
	if len(s) == 0 {
		return 0, 0, 0
	}
	slices.Sort(s)
	q := func(f float64) time.Duration { return s[min(len(s)-1, int(f*float64(len(s))))] }
	return q(0.50), q(0.99), q(0.999)
}
