package bench

import (
	"math"
	"runtime/metrics"
	"time"
)

// runtimeCounters are the Go runtime's cumulative figures that tell where a
// latency tail comes from: how often the collector ran, how long it stopped
// the world, how long runnable goroutines waited for a thread, and the CPU
// the collector took.
type runtimeCounters struct {
	gcCycles   uint64
	gcPauses   *metrics.Float64Histogram
	schedWait  *metrics.Float64Histogram
	gcCPU, cpu float64
}

var runtimeMetricNames = []string{
	"/gc/cycles/total:gc-cycles",
	"/sched/pauses/total/gc:seconds",
	"/sched/latencies:seconds",
	"/cpu/classes/gc/total:cpu-seconds",
	"/cpu/classes/total:cpu-seconds",
}

// readRuntimeCounters reads the runtime's figures now.
func readRuntimeCounters() runtimeCounters {
	s := make([]metrics.Sample, len(runtimeMetricNames))
	for i, n := range runtimeMetricNames {
		s[i].Name = n
	}
	metrics.Read(s)
	var c runtimeCounters
	if s[0].Value.Kind() == metrics.KindUint64 {
		c.gcCycles = s[0].Value.Uint64()
	}
	if s[1].Value.Kind() == metrics.KindFloat64Histogram {
		c.gcPauses = copyHist(s[1].Value.Float64Histogram())
	}
	if s[2].Value.Kind() == metrics.KindFloat64Histogram {
		c.schedWait = copyHist(s[2].Value.Float64Histogram())
	}
	if s[3].Value.Kind() == metrics.KindFloat64 {
		c.gcCPU = s[3].Value.Float64()
	}
	if s[4].Value.Kind() == metrics.KindFloat64 {
		c.cpu = s[4].Value.Float64()
	}
	return c
}

// copyHist copies h: the runtime may reuse the memory of a sample.
func copyHist(h *metrics.Float64Histogram) *metrics.Float64Histogram {
	return &metrics.Float64Histogram{
		Counts:  append([]uint64(nil), h.Counts...),
		Buckets: append([]float64(nil), h.Buckets...),
	}
}

// RuntimeFigures say what the Go runtime did over a phase.
type RuntimeFigures struct {
	// GCCycles is how many collections completed.
	GCCycles uint64
	// GCPauseP99 is the 99th percentile of the collector's stop-the-world
	// pauses; GCPauseMax the longest (the upper bound of its bucket).
	GCPauseP99, GCPauseMax time.Duration
	// SchedLatencyP99 is the 99th percentile of the time goroutines spent
	// runnable before they ran.
	SchedLatencyP99 time.Duration
	// GCCPUFraction is the share of the process's CPU time (as the
	// runtime counts it, idle included) the collector used.
	GCCPUFraction float64
}

// since returns the figures from b to a.
func (a runtimeCounters) since(b runtimeCounters) RuntimeFigures {
	f := RuntimeFigures{GCCycles: a.gcCycles - b.gcCycles}
	if d := histDiff(a.gcPauses, b.gcPauses); d != nil {
		f.GCPauseP99 = histQuantile(d, 0.99)
		f.GCPauseMax = histQuantile(d, 1)
	}
	if d := histDiff(a.schedWait, b.schedWait); d != nil {
		f.SchedLatencyP99 = histQuantile(d, 0.99)
	}
	if cpu := a.cpu - b.cpu; cpu > 0 {
		f.GCCPUFraction = (a.gcCPU - b.gcCPU) / cpu
	}
	return f
}

// histDiff returns the counts a has beyond b (same buckets), nil when
// either is missing.
func histDiff(a, b *metrics.Float64Histogram) *metrics.Float64Histogram {
	if a == nil || b == nil || len(a.Counts) != len(b.Counts) {
		return nil
	}
	d := &metrics.Float64Histogram{Counts: make([]uint64, len(a.Counts)), Buckets: a.Buckets}
	for i := range a.Counts {
		d.Counts[i] = a.Counts[i] - b.Counts[i]
	}
	return d
}

// histQuantile returns the upper bound of the bucket holding quantile q of
// h, 0 for an empty histogram. An unbounded last bucket reports its lower
// bound.
func histQuantile(h *metrics.Float64Histogram, q float64) time.Duration {
	var total uint64
	for _, c := range h.Counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var n uint64
	for i, c := range h.Counts {
		n += c
		if n >= rank && c > 0 {
			hi := h.Buckets[i+1]
			if math.IsInf(hi, 1) {
				hi = h.Buckets[i]
			}
			return time.Duration(hi * float64(time.Second))
		}
	}
	return 0
}
