package bench

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// Report is what a run measured. Latencies are end to end, from Send to the
// consumer's handler, in microseconds; times under faults are in
// milliseconds, -1 where the event was not seen.
type Report struct {
	Setup
	Summary

	Baseline1HopUnbatched float64 `json:"baseline_1hop_unbatched_msgs_per_s"`
	Baseline1Hop          float64 `json:"baseline_1hop_msgs_per_s"`
	Baseline1HopP50US     float64 `json:"baseline_1hop_batch_rtt_p50_us"`
	Baseline1HopP99US     float64 `json:"baseline_1hop_batch_rtt_p99_us"`
	Baseline1HopCPU       float64 `json:"baseline_1hop_cpu_s_per_million"`
	Baseline1HopAllocs    float64 `json:"baseline_1hop_allocs_per_msg"`
	Baseline1HopAllocB    float64 `json:"baseline_1hop_alloc_bytes_per_msg"`
	BaselineRelay         float64 `json:"baseline_relay_msgs_per_s"`
	BaselineRelayP50US    float64 `json:"baseline_relay_batch_rtt_p50_us"`
	BaselineRelayP99US    float64 `json:"baseline_relay_batch_rtt_p99_us"`
	BaselineRelayCPU      float64 `json:"baseline_relay_cpu_s_per_million"`
	BaselineRelayAllocs   float64 `json:"baseline_relay_allocs_per_msg"`
	BaselineRelayAllocB   float64 `json:"baseline_relay_alloc_bytes_per_msg"`

	// The relay again, once Butterfly's phases are done, at Butterfly's
	// half-load rate and sent as its producers send it: each message's
	// latency one way, from its stamp to the sink, as Butterfly's runs from
	// Send to the handler. It is what the machine gives a plain two-hop
	// path at that rate.
	BaselineRelayHalfLoad       float64 `json:"baseline_relay_half_load_msgs_per_s"`
	BaselineRelayP50HalfLoadUS  float64 `json:"baseline_relay_p50_half_load_us"`
	BaselineRelayP99HalfLoadUS  float64 `json:"baseline_relay_p99_half_load_us"`
	BaselineRelayP999HalfLoadUS float64 `json:"baseline_relay_p999_half_load_us"`
	BaselineRelayCPUHalfLoad    float64 `json:"baseline_relay_cpu_s_per_million_half_load"`
	BaselineRelayOver2msHalf    float64 `json:"baseline_relay_half_load_over_2ms_share"`

	MeshFigures
	RatioVs1Hop      float64 `json:"ratio_vs_1hop"`
	RatioVsRelay     float64 `json:"ratio_vs_relay"`
	AllocsPerMsg     float64 `json:"allocs_per_msg"`
	AllocBytesPerMsg float64 `json:"alloc_bytes_per_msg"`
	PeakHeapBytes    uint64  `json:"peak_heap_bytes"`

	// What the Go runtime did at half load, where the latency tail is
	// measured: collections, their stop-the-world pauses, how long
	// runnable goroutines waited for a thread, the collector's CPU share.
	HalfLoadGCCycles       uint64  `json:"half_load_gc_cycles"`
	HalfLoadGCPauseP99US   float64 `json:"half_load_gc_pause_p99_us"`
	HalfLoadGCPauseMaxUS   float64 `json:"half_load_gc_pause_max_us"`
	HalfLoadSchedWaitP99US float64 `json:"half_load_sched_latency_p99_us"`
	HalfLoadGCCPUFraction  float64 `json:"half_load_gc_cpu_fraction"`

	FrameFigures

	// How often the machine kept a busy thread off its core, before the
	// run: the floor under every latency tail measured on it.
	PlatformFigures

	FailoverLost      uint64  `json:"failover_lost"`
	FailoverRecoverMS float64 `json:"failover_recover_ms"`
	FailoverResendMS  float64 `json:"failover_resend_ms"`
	MoveRerouteMS     float64 `json:"move_reroute_ms"`
	FreezeDetectMS    float64 `json:"freeze_detect_ms"`
	DrainMS           float64 `json:"drain_ms"`

	Sent              uint64 `json:"sent"`
	Delivered         uint64 `json:"delivered"`
	HandledTwice      uint64 `json:"handled_twice"`
	DuplicatesDropped uint64 `json:"duplicates_dropped"`
	Resent            uint64 `json:"resent"`
	Strangers         uint64 `json:"unknown_messages"`
	EndFigures

	// Samples is the throughput over the Butterfly run, Events what was
	// done to it and when.
	Samples []Sample `json:"-"`
	Events  []Event  `json:"-"`
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// Setup is the configuration a report was measured with.
type Setup struct {
	Payload       int     `json:"payload_bytes"`
	Producers     int     `json:"producers"`
	Intermediates int     `json:"intermediates"`
	Consumers     int     `json:"consumers"`
	DurationS     float64 `json:"duration_s"`
	Window        int     `json:"window"`
	BatchMessages int     `json:"batch_messages"`
	BatchBytes    int     `json:"batch_bytes"`
	LingerUS      float64 `json:"linger_us"`
	HeartbeatMS   float64 `json:"heartbeat_ms"`
}

func (r *Setup) setConfig(c Config) {
	r.Payload, r.Producers, r.Intermediates, r.Consumers = c.Payload, c.Producers, c.Intermediates, c.Consumers
	r.DurationS, r.Window, r.BatchMessages, r.BatchBytes = c.Duration.Seconds(), c.Window, c.BatchMessages, c.BatchBytes
	r.LingerUS, r.HeartbeatMS = us(c.Linger), ms(c.Heartbeat)
}

// writeSetup writes the setup line of a table.
func (r *Setup) writeSetup(w io.Writer) {
	fmt.Fprintf(w, "%d B payload, %d producers, %d intermediates, %d consumers, %.1fs phases, window %d, batch %d msgs / %d B, linger %.0fµs\n\n",
		r.Payload, r.Producers, r.Intermediates, r.Consumers, r.DurationS, r.Window, r.BatchMessages, r.BatchBytes, r.LingerUS)
}

func (r *Report) setBaseline1Hop(res Result) {
	r.Baseline1Hop, r.Baseline1HopP50US, r.Baseline1HopP99US = res.MsgsPerSec, us(res.P50), us(res.P99)
	r.Baseline1HopCPU = res.CPUPerMillion
	r.Baseline1HopAllocs, r.Baseline1HopAllocB = res.AllocsPerMsg, res.AllocBytesPerMsg
}

func (r *Report) setBaselineRelay(res Result) {
	r.BaselineRelay, r.BaselineRelayP50US, r.BaselineRelayP99US = res.MsgsPerSec, us(res.P50), us(res.P99)
	r.BaselineRelayCPU = res.CPUPerMillion
	r.BaselineRelayAllocs, r.BaselineRelayAllocB = res.AllocsPerMsg, res.AllocBytesPerMsg
}

func (r *Report) setBaselineRelayHalfLoad(res Result) {
	r.BaselineRelayHalfLoad, r.BaselineRelayCPUHalfLoad = res.MsgsPerSec, res.CPUPerMillion
	r.BaselineRelayP50HalfLoadUS, r.BaselineRelayP99HalfLoadUS, r.BaselineRelayP999HalfLoadUS = us(res.P50), us(res.P99), us(res.P999)
	r.BaselineRelayOver2msHalf = res.Over2ms
}

// MeshFigures are what every run measures of the mesh at saturation and at
// half of it, in one process or in many.
type MeshFigures struct {
	Butterfly         float64 `json:"butterfly_msgs_per_s"`
	P50US             float64 `json:"p50_us"`
	P99US             float64 `json:"p99_us"`
	P999US            float64 `json:"p999_us"`
	CPUPerMillion     float64 `json:"cpu_s_per_million"`
	HalfLoadOffered   float64 `json:"half_load_offered_msgs_per_s"`
	HalfLoad          float64 `json:"half_load_msgs_per_s"`
	P50HalfLoadUS     float64 `json:"p50_half_load_us"`
	P99HalfLoadUS     float64 `json:"p99_half_load_us"`
	P999HalfLoadUS    float64 `json:"p999_half_load_us"`
	CPUPerMillionHalf float64 `json:"cpu_s_per_million_half_load"`
	// Over2msHalfLoad is the share of the half-load phase's messages slower
	// than 2 ms.
	Over2msHalfLoad float64 `json:"half_load_over_2ms_share"`
	// HalfLoadRateGiven: the half-load phase ran at a rate given
	// (Config.HalfLoadRate), not at half of saturation.
	HalfLoadRateGiven bool `json:"half_load_rate_given,omitempty"`
}

func (f *MeshFigures) setSaturation(res Result) {
	f.Butterfly = res.MsgsPerSec
	f.P50US, f.P99US, f.P999US = us(res.P50), us(res.P99), us(res.P999)
	f.CPUPerMillion = res.CPUPerMillion
}

func (f *MeshFigures) setHalfLoad(offered float64, given bool, res Result) {
	f.HalfLoadOffered, f.HalfLoad, f.HalfLoadRateGiven = offered, res.MsgsPerSec, given
	f.P50HalfLoadUS, f.P99HalfLoadUS, f.P999HalfLoadUS = us(res.P50), us(res.P99), us(res.P999)
	f.CPUPerMillionHalf, f.Over2msHalfLoad = res.CPUPerMillion, res.Over2ms
}

// halfLoadRow is the table row of the half-load phase.
func (f *MeshFigures) halfLoadRow(w io.Writer) {
	label := "half of saturation"
	if f.HalfLoadRateGiven {
		label = "at --half-load-rate " + fmtRate(f.HalfLoadOffered)
	}
	fmt.Fprintf(w, "%s\t%s\t%s / %s / %s\t%.2f\t\n", label, fmtRate(f.HalfLoad), fmtLat(f.P50HalfLoadUS), fmtLat(f.P99HalfLoadUS), fmtLat(f.P999HalfLoadUS), f.CPUPerMillionHalf)
}

// EndFigures are what every run finds when it ends, besides the messages
// handled, in one process or in many.
type EndFigures struct {
	// Unacknowledged is the number of messages still unacknowledged at
	// their producers when the run ended (a producer's Close that timed
	// out). Those that no handler got are counted as lost, though their
	// producers still held them; more lost than this means a message was
	// acknowledged without being handled.
	Unacknowledged uint64 `json:"unacknowledged"`
	// RegistrationsLapsed is the number of consumers whose registration in
	// etcd lapsed during the run (its lease expired under a long stall):
	// exactly once holds while none does, at least once after.
	RegistrationsLapsed uint64 `json:"consumer_registrations_lapsed"`
}

// endRows are the table rows of f; the unacknowledged only when there are
// some.
func (f *EndFigures) endRows(w io.Writer) {
	fmt.Fprintf(w, "consumer registrations lapsed (handled twice allowed after one)\t%d\t\n", f.RegistrationsLapsed)
	if f.Unacknowledged > 0 {
		fmt.Fprintf(w, "unacknowledged at their producers when the run ended\t%d\t\n", f.Unacknowledged)
	}
}

func fmtRate(v float64) string { return fmt.Sprintf("%.0f msgs/s", v) }

func fmtLat(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return fmt.Sprintf("%.0f µs", v)
}

func (r *Report) setHalfLoadRuntime(f RuntimeFigures) {
	r.HalfLoadGCCycles, r.HalfLoadGCCPUFraction = f.GCCycles, f.GCCPUFraction
	r.HalfLoadGCPauseP99US, r.HalfLoadGCPauseMaxUS = us(f.GCPauseP99), us(f.GCPauseMax)
	r.HalfLoadSchedWaitP99US = us(f.SchedLatencyP99)
}

// FrameFigures are how many messages a frame carried at saturation and at
// half load, each way of each link (BatchFigures), in one process or in
// many.
type FrameFigures struct {
	MsgsPerPublishBatch      float64 `json:"msgs_per_publish_batch"`
	MsgsPerPublishAck        float64 `json:"msgs_per_publish_ack_frame"`
	MsgsPerDeliveryBatch     float64 `json:"msgs_per_delivery_batch"`
	MsgsPerDeliveryAck       float64 `json:"msgs_per_delivery_ack_frame"`
	MsgsPerPublishBatchHalf  float64 `json:"msgs_per_publish_batch_half_load"`
	MsgsPerPublishAckHalf    float64 `json:"msgs_per_publish_ack_frame_half_load"`
	MsgsPerDeliveryBatchHalf float64 `json:"msgs_per_delivery_batch_half_load"`
	MsgsPerDeliveryAckHalf   float64 `json:"msgs_per_delivery_ack_frame_half_load"`
}

func (f *FrameFigures) setBatching(sat, half BatchFigures) {
	f.MsgsPerPublishBatch, f.MsgsPerPublishAck = sat.PublishBatch, sat.PublishAck
	f.MsgsPerDeliveryBatch, f.MsgsPerDeliveryAck = sat.DeliveryBatch, sat.DeliveryAck
	f.MsgsPerPublishBatchHalf, f.MsgsPerPublishAckHalf = half.PublishBatch, half.PublishAck
	f.MsgsPerDeliveryBatchHalf, f.MsgsPerDeliveryAckHalf = half.DeliveryBatch, half.DeliveryAck
}

// frameRows are the table rows of f.
func (f *FrameFigures) frameRows(w io.Writer) {
	fmt.Fprintf(w, "messages per frame: publish / its acks / delivery / its acks\t%.1f / %.1f / %.1f / %.1f\t\t\t\n", f.MsgsPerPublishBatch, f.MsgsPerPublishAck, f.MsgsPerDeliveryBatch, f.MsgsPerDeliveryAck)
	fmt.Fprintf(w, "half load: messages per frame, the same\t%.1f / %.1f / %.1f / %.1f\t\t\t\n", f.MsgsPerPublishBatchHalf, f.MsgsPerPublishAckHalf, f.MsgsPerDeliveryBatchHalf, f.MsgsPerDeliveryAckHalf)
}

// derive computes the ratios from the figures they divide: once a run has
// measured them, and again for a report whose figures were summarized one
// by one.
func (r *Report) derive() {
	r.RatioVs1Hop, r.RatioVsRelay = 0, 0
	if r.Baseline1Hop > 0 {
		r.RatioVs1Hop = r.Butterfly / r.Baseline1Hop
	}
	if r.BaselineRelay > 0 {
		r.RatioVsRelay = r.Butterfly / r.BaselineRelay
	}
}

func (r *Report) setButterfly(res Result) {
	r.setSaturation(res)
	r.AllocsPerMsg, r.AllocBytesPerMsg = res.AllocsPerMsg, res.AllocBytesPerMsg
	r.derive()
}

// Target is one goal of the benchmark and whether the run met it.
type Target struct {
	Name  string
	Got   string
	Want  string
	Met   bool
	Miss  string // by how much it was missed
	Known bool   // the value was measured
	// Unjudged, when set, is why this run does not judge the target: it
	// measured the figure under other conditions than the target's.
	Unjudged string
}

// Targets are the goals set for Butterfly on two cores with 256-byte
// payloads, checked against this run.
func (r *Report) Targets() []Target {
	atMost := func(name string, got, limit float64, unit string) Target {
		t := Target{Name: name, Got: fmt.Sprintf("%.1f %s", got, unit), Want: fmt.Sprintf("<= %g %s", limit, unit), Known: got >= 0}
		t.Met = t.Known && got <= limit
		if t.Known && !t.Met {
			t.Miss = fmt.Sprintf("%.1fx over", got/limit)
		}
		if !t.Known {
			t.Got = "not seen"
		}
		return t
	}
	ratio := Target{Name: "throughput vs hand-rolled relay", Got: fmt.Sprintf("%.2fx", r.RatioVsRelay), Want: ">= 0.6x", Known: true, Met: r.RatioVsRelay >= 0.6}
	if !ratio.Met {
		ratio.Miss = fmt.Sprintf("%.0f%% of target", 100*r.RatioVsRelay/0.6)
	}
	// vsRelay is a Butterfly figure against the relay's: at most limit times it.
	vsRelay := func(name string, got, relay, limit float64) Target {
		t := Target{Name: name, Want: fmt.Sprintf("<= %gx relay", limit), Known: got > 0 && relay > 0}
		if !t.Known {
			t.Got = "not measured"
			return t
		}
		t.Got = fmt.Sprintf("%.2fx", got/relay)
		if t.Met = got <= limit*relay; !t.Met {
			t.Miss = fmt.Sprintf("%.2fx over", got/(limit*relay))
		}
		return t
	}
	lost := Target{Name: "lost under faults", Got: fmt.Sprint(r.FailoverLost), Want: "0", Known: true, Met: r.FailoverLost == 0}
	if !lost.Met {
		lost.Miss = fmt.Sprintf("%d messages", r.FailoverLost)
	}
	p99 := atMost("p99 at half load", r.P99HalfLoadUS/1000, 2, "ms")
	if r.HalfLoadRateGiven {
		p99.Met, p99.Miss = false, ""
		p99.Unjudged = "the half-load phase ran at --half-load-rate, not at half of saturation"
	}
	return []Target{
		ratio,
		p99,
		vsRelay("CPU per message", r.CPUPerMillion, r.BaselineRelayCPU, 1.5),
		vsRelay("allocations per message", r.AllocsPerMsg, r.BaselineRelayAllocs, 2),
		vsRelay("bytes allocated per message", r.AllocBytesPerMsg, r.BaselineRelayAllocB, 2),
		atMost("peak heap in use", float64(r.PeakHeapBytes)/(1<<20), 32, "MiB"),
		lost,
		atMost("hard stop: back to 80%", r.FailoverRecoverMS, 250, "ms"),
		atMost("move: first message via new address", r.MoveRerouteMS, 50, "ms"),
		atMost("frozen intermediate detected", r.FreezeDetectMS, 1500, "ms"),
	}
}

// WriteTable writes r as a readable table.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	rate, lat := fmtRate, fmtLat
	fault := func(v float64) string {
		if v < 0 {
			return "not seen"
		}
		return fmt.Sprintf("%.1f ms", v)
	}
	r.writeSetup(w)
	allocs := func(n, b float64) string { return fmt.Sprintf("%.1f / %.0f B", n, b) }
	fmt.Fprintf(tw, "BASELINES (same run)\tthroughput\tbatch round trip p50 / p99\tCPU s per M msgs\tallocs per msg\t\n")
	fmt.Fprintf(tw, "raw gRPC 1 hop, 1 msg per gRPC msg\t%s\t\t\t\t\n", rate(r.Baseline1HopUnbatched))
	fmt.Fprintf(tw, "raw gRPC 1 hop, batched\t%s\t%s / %s\t%.2f\t%s\t\n", rate(r.Baseline1Hop), lat(r.Baseline1HopP50US), lat(r.Baseline1HopP99US), r.Baseline1HopCPU,
		allocs(r.Baseline1HopAllocs, r.Baseline1HopAllocB))
	fmt.Fprintf(tw, "hand-rolled relay, end-to-end acks\t%s\t%s / %s\t%.2f\t%s\t\n", rate(r.BaselineRelay), lat(r.BaselineRelayP50US), lat(r.BaselineRelayP99US), r.BaselineRelayCPU,
		allocs(r.BaselineRelayAllocs, r.BaselineRelayAllocB))
	fmt.Fprintf(tw, "\t\t\n")
	fmt.Fprintf(tw, "BUTTERFLY\tthroughput\tend-to-end p50 / p99 / p999\tCPU s per M msgs\tallocs per msg\t\n")
	fmt.Fprintf(tw, "saturation\t%s\t%s / %s / %s\t%.2f\t%s\t\n", rate(r.Butterfly), lat(r.P50US), lat(r.P99US), lat(r.P999US), r.CPUPerMillion,
		allocs(r.AllocsPerMsg, r.AllocBytesPerMsg))
	r.halfLoadRow(tw)
	fmt.Fprintf(tw, "the relay at that rate, one way\t%s\t%s / %s / %s\t%.2f\t\t\n", rate(r.BaselineRelayHalfLoad), lat(r.BaselineRelayP50HalfLoadUS), lat(r.BaselineRelayP99HalfLoadUS), lat(r.BaselineRelayP999HalfLoadUS), r.BaselineRelayCPUHalfLoad)
	fmt.Fprintf(tw, "slower than 2 ms at that rate\t%.1f %% (the relay %.1f %%)\t\t\t\n", 100*r.Over2msHalfLoad, 100*r.BaselineRelayOver2msHalf)
	fmt.Fprintf(tw, "vs 1 hop / vs relay\t%.2fx / %.2fx\t\t\t\n", r.RatioVs1Hop, r.RatioVsRelay)
	fmt.Fprintf(tw, "peak heap in use\t%.1f MiB\t\t\t\n", float64(r.PeakHeapBytes)/(1<<20))
	r.frameRows(tw)
	fmt.Fprintf(tw, "half load: GC cycles / GC CPU\t%d / %.0f %%\t\t\t\n", r.HalfLoadGCCycles, 100*r.HalfLoadGCCPUFraction)
	fmt.Fprintf(tw, "half load: GC pause p99 / max\t%s / %s\t\t\t\n", lat(r.HalfLoadGCPauseP99US), lat(r.HalfLoadGCPauseMaxUS))
	fmt.Fprintf(tw, "half load: runnable goroutine wait p99\t%s\t\t\t\n", lat(r.HalfLoadSchedWaitP99US))
	r.machineRows(tw)
	fmt.Fprintf(tw, "\t\t\n")
	fmt.Fprintf(tw, "FAULTS UNDER LOAD\t\t\n")
	fmt.Fprintf(tw, "hard stop: lost\t%d\t\n", r.FailoverLost)
	fmt.Fprintf(tw, "hard stop: back to 80%% throughput\t%s\t\n", fault(r.FailoverRecoverMS))
	fmt.Fprintf(tw, "hard stop: all resent messages delivered\t%s\t\n", fault(r.FailoverResendMS))
	fmt.Fprintf(tw, "move: etcd update to first message via new address\t%s\t\n", fault(r.MoveRerouteMS))
	fmt.Fprintf(tw, "frozen intermediate: detected (messages resent)\t%s\t\n", fault(r.FreezeDetectMS))
	fmt.Fprintf(tw, "drain at full load: Server.Drain\t%s\t\n", fault(r.DrainMS))
	fmt.Fprintf(tw, "sent / delivered / handled twice / dups dropped / resent\t%d / %d / %d / %d / %d\t\n",
		r.Sent, r.Delivered, r.HandledTwice, r.DuplicatesDropped, r.Resent)
	r.endRows(tw)
	fmt.Fprintf(tw, "\t\t\n")
	fmt.Fprintf(tw, "TARGETS\tgot\twant\tverdict\t\n")
	for _, t := range r.Targets() {
		verdict := "met"
		switch {
		case t.Unjudged != "":
			verdict = "not judged: " + t.Unjudged
		case !t.Met:
			verdict = "MISSED"
			if t.Miss != "" {
				verdict += " (" + t.Miss + ")"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", t.Name, t.Got, t.Want, verdict)
	}
	return tw.Flush()
}
