package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/pprof"
	"runtime/trace"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/registry"
)

// recoverFraction and recoverSustain define "throughput is back": at least
// 80% of the throughput before the fault, for three samples in a row.
const (
	recoverFraction = 0.8
	recoverSustain  = 3
)

// Run measures the baselines, then Butterfly at saturation, at half of it
// and under faults, all in this process, and returns the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Report{}
	r.setConfig(cfg)
	log := cfg.Logger

	r.PlatformFigures = measurePlatform(ctx, cfg.Duration, log)

	unbatched := cfg
	unbatched.BatchMessages = 1
	log.Info("bench: baseline, raw gRPC one hop, one message per gRPC message", "duration", cfg.Duration)
	res, err := Baseline1Hop(ctx, unbatched)
	if err != nil {
		return nil, err
	}
	r.Baseline1HopUnbatched = res.MsgsPerSec
	log.Info("bench: baseline, raw gRPC one hop, batched", "duration", cfg.Duration, "batch", cfg.BatchMessages)
	if res, err = Baseline1Hop(ctx, cfg); err != nil {
		return nil, err
	}
	r.setBaseline1Hop(res)
	log.Info("bench: baseline, hand-rolled two-hop relay with end-to-end acks", "duration", cfg.Duration)
	if res, err = BaselineRelay(ctx, cfg); err != nil {
		return nil, err
	}
	r.setBaselineRelay(res)

	log.Info("bench: Butterfly: starting embedded etcd, intermediates, producers and consumers")
	m, err := newMesh(ctx, cfg)
	if err != nil {
		return nil, err
	}
	err = m.run(ctx, r)
	m.close(ctx)
	if err != nil {
		return nil, err
	}
	// Butterfly's figures are in: a relay that fails now leaves its own
	// figures at 0 and says why, and the report keeps what was counted.
	log.Info("bench: baseline, the relay at Butterfly's half-load rate", "msgs_per_s", int(r.HalfLoadOffered), "duration", cfg.Warmup+cfg.Duration)
	res, err = BaselineRelayAt(ctx, cfg, r.HalfLoadOffered)
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case err != nil:
		log.Warn("bench: the relay at Butterfly's half-load rate failed: its figures are left at 0", "err", err)
	default:
		r.setBaselineRelayHalfLoad(res)
	}
	return r, nil
}

// run drives the phases of the Butterfly side and fills r.
func (m *mesh) run(ctx context.Context, r *Report) error {
	cfg := m.cfg
	if !waitUntil(ctx, 30*time.Second, func() bool { return m.consumed.Load() > 0 }) {
		return errors.Join(ctx.Err(), errors.New("bench: no message reached a consumer within 30s"))
	}
	m.event("load: saturation (closed loop, window-bound)")
	if !pause(ctx, cfg.Warmup) {
		return ctx.Err()
	}
	sat := m.measure(ctx, cfg.CPUProfile, nil)
	if cfg.HeapProfile != nil {
		if err := pprof.Lookup("heap").WriteTo(cfg.HeapProfile, 0); err != nil {
			m.log.Warn("bench: heap profile", "err", err)
		}
	}
	r.setButterfly(sat)
	m.log.Info("bench: saturation", "msgs_per_s", int(sat.MsgsPerSec), "p50", sat.P50, "p99", sat.P99)

	rate, given := cfg.halfLoadRate(sat.MsgsPerSec)
	m.setLoad(rate)
	what := "load: half of saturation"
	if given {
		what = "load: the half-load rate given"
	}
	m.event(what, "msgs_per_s", int(rate))
	if !pause(ctx, cfg.Warmup) {
		return ctx.Err()
	}
	half := m.measure(ctx, nil, cfg.Trace)
	r.setHalfLoad(rate, given, half)
	r.setHalfLoadRuntime(half.Runtime)
	r.setBatching(sat.Batching, half.Batching)
	m.log.Info("bench: half load", "msgs_per_s", int(half.MsgsPerSec), "p50", half.P50, "p99", half.P99)

	if err := m.faults(ctx, sat.MsgsPerSec, r); err != nil {
		return err
	}
	sent, lost, resent, unacked, err := m.finish(ctx, 30*time.Second)
	m.event("producers closed", "sent", sent, "lost", lost)
	if err != nil {
		m.log.Warn("bench: finishing", "err", err)
	}
	if err := r.setLapsed(ctx, m.cli, m.regs, m.log); err != nil {
		return err
	}
	m.mu.Lock()
	r.PeakHeapBytes = m.peakHeap
	r.Samples = append([]Sample(nil), m.samples...)
	r.Events = append([]Event(nil), m.events...)
	m.mu.Unlock()
	r.Sent, r.FailoverLost, r.Resent, r.Unacknowledged = sent, lost, resent, unacked
	r.Delivered, r.HandledTwice, r.Strangers = m.consumed.Load(), m.twice.Load(), m.strangers.Load()
	for _, c := range m.consumers {
		r.DuplicatesDropped += c.Stats().DuplicatesDropped
	}
	return nil
}

// measure runs the current load for the configured duration and measures
// the messages handled, their end-to-end latency and the CPU used; with a
// CPU profile or an execution trace of the phase where asked.
func (m *mesh) measure(ctx context.Context, profile, tr io.Writer) Result {
	h := &histogram{}
	if profile != nil {
		if err := pprof.StartCPUProfile(profile); err != nil {
			m.log.Warn("bench: CPU profile", "err", err)
			profile = nil
		}
	}
	if tr != nil {
		if err := trace.Start(tr); err != nil {
			m.log.Warn("bench: execution trace", "err", err)
			tr = nil
		}
	}
	n0, cpu0, allocs0, rt0, st0, t0 := m.consumed.Load(), cpuTime(), heapAllocs(), readRuntimeCounters(), m.serverStats(), time.Now()
	m.lat.Store(h)
	pause(ctx, m.cfg.Duration)
	m.lat.Store(nil)
	n, elapsed, cpu, allocs, rt := m.consumed.Load()-n0, time.Since(t0), cpuTime()-cpu0, heapAllocs().sub(allocs0), readRuntimeCounters().since(rt0)
	st := statsSince(m.serverStats(), st0)
	if profile != nil {
		pprof.StopCPUProfile()
	}
	if tr != nil {
		trace.Stop()
	}
	res := newResult(n, elapsed, h)
	res.CPUPerMillion = cpuPerMillion(cpu, n)
	res.setAllocs(allocs)
	res.Runtime = rt
	res.Batching = newBatchFigures(st)
	return res
}

// faults breaks the intermediates under steady load, one way after the
// other, and measures how the mesh copes: a hard stop, a move to a new
// address, a freeze and a drain at full load.
func (m *mesh) faults(ctx context.Context, saturation float64, r *Report) error {
	cfg := m.cfg
	m.setLoad(cfg.FaultLoad * saturation)
	m.event("load: faults", "msgs_per_s", int(cfg.FaultLoad*saturation))
	if !pause(ctx, cfg.FaultGap) {
		return ctx.Err()
	}

	// Hard stop of i0: its streams reset; producers resend what it held.
	victim := m.server(m.moveName)
	oldAddr := victim.srv.Addr()
	sentAt := make([]uint64, len(m.producers))
	for i, p := range m.producers {
		sentAt[i] = p.Stats().Sent
	}
	tStop := m.event("stop " + m.moveName + " (Server.Stop)")
	victim.srv.Stop()
	delivered := waitUntil(ctx, 30*time.Second, func() bool {
		for i, s := range m.seen {
			if s.contiguous() < sentAt[i] {
				return false
			}
		}
		return true
	})
	r.FailoverResendMS = -1
	if delivered {
		r.FailoverResendMS = ms(time.Since(tStop))
		m.event("every message sent before the stop delivered")
	}
	if !pause(ctx, time.Until(tStop.Add(cfg.FaultGap))) {
		return ctx.Err()
	}
	m.mu.Lock()
	r.FailoverRecoverMS = recoveryMS(m.samples, m.since(tStop), cfg.FaultGap/2)
	m.mu.Unlock()

	// Move: i0 comes back at a new address (behind a proxy, for the freeze),
	// under the same name, while its old key still holds its lease.
	stopWatch := m.watchPut(registry.ServiceKey(registry.DefaultPrefix, service, m.moveName), oldAddr)
	m.moveFirst.Store(0)
	m.moveArmed.Store(true)
	m.event("move " + m.moveName + " to a new address")
	host := fmt.Sprintf("127.0.0.%d", 2+cfg.Intermediates)
	if err := m.startServer(ctx, m.moveName, host, true); err != nil {
		stopWatch()
		return err
	}
	ready := time.Now()
	moved := waitUntil(ctx, 10*time.Second, func() bool { return m.moveFirst.Load() != 0 })
	put := stopWatch()
	if put.IsZero() || ready.Before(put) {
		put = ready
	}
	r.MoveRerouteMS = -1
	if moved {
		first := time.Unix(0, m.moveFirst.Load())
		r.MoveRerouteMS = ms(first.Sub(put))
		m.event("first message through the new address", "after", first.Sub(put))
	}
	if !pause(ctx, cfg.FaultGap) {
		return ctx.Err()
	}

	// Freeze: the proxy in front of i0 drops everything, connections stay
	// open; heartbeats must tell.
	moved0 := m.server(m.moveName)
	resent0 := m.resent()
	tFreeze := m.event("freeze " + m.moveName + " (blackhole)")
	moved0.proxy.Blackhole(true)
	detected := waitUntil(ctx, 50*cfg.Heartbeat+5*time.Second, func() bool { return m.resent() > resent0 })
	r.FreezeDetectMS = -1
	if detected {
		r.FreezeDetectMS = ms(time.Since(tFreeze))
		m.event("frozen instance detected: its messages resent")
	}
	if !pause(ctx, 2*cfg.Heartbeat) {
		return ctx.Err()
	}
	moved0.proxy.Blackhole(false)
	m.event("unfreeze " + m.moveName)
	if !pause(ctx, cfg.FaultGap) {
		return ctx.Err()
	}

	// Drain at full load.
	last := fmt.Sprintf("i%d", cfg.Intermediates-1)
	m.setLoad(0)
	m.event("load: full")
	if !pause(ctx, cfg.FaultGap) {
		return ctx.Err()
	}
	tDrain := m.event("drain " + last + " (Server.Drain)")
	dctx, cancel := context.WithTimeout(ctx, 2*intermediateDrainBound)
	err := m.server(last).srv.Drain(dctx)
	cancel()
	if err != nil {
		return fmt.Errorf("bench: drain %s: %w", last, err)
	}
	r.DrainMS = ms(time.Since(tDrain))
	m.event(last + " drained")
	if !pause(ctx, cfg.FaultGap) {
		return ctx.Err()
	}
	return nil
}

// intermediateDrainBound is the intermediates' default drain timeout plus
// their stop timeout: how long a drain may take.
const intermediateDrainBound = 12 * time.Second

// resent is how many messages the producers sent again so far.
func (m *mesh) resent() uint64 {
	var n uint64
	for _, p := range m.producers {
		n += p.Stats().Resent
	}
	return n
}

// watchPut watches key for a put with another address than old. The
// returned function stops the watch and returns when that put was seen
// (zero if it was not).
func (m *mesh) watchPut(key, old string) func() time.Time {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(m.ctx))
	seen := make(chan time.Time, 1)
	wch := m.cli.Watch(ctx, key)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for resp := range wch {
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				v, err := registry.ParseValue(m.moveName, ev.Kv.Value)
				if err == nil && v.Addr != old {
					seen <- time.Now()
					cancel()
					for range wch {
					}
					return
				}
			}
		}
	}()
	return func() time.Time {
		cancel()
		select {
		case t := <-seen:
			return t
		default:
			return time.Time{}
		}
	}
}

// recoveryMS is the time from at until the throughput is back to
// recoverFraction of its mean over the window before at, for
// recoverSustain samples in a row, counted to the end of the first of them;
// -1 when it does not come back within the samples.
func recoveryMS(samples []Sample, at, window time.Duration) float64 {
	var sum float64
	var n int
	for _, s := range samples {
		if s.End <= at && s.End > at-window {
			sum += s.Rate
			n++
		}
	}
	if n == 0 {
		return -1
	}
	target := recoverFraction * sum / float64(n)
	run := 0
	for i, s := range samples {
		if s.Start < at {
			continue
		}
		if s.Rate < target {
			run = 0
			continue
		}
		run++
		if run == recoverSustain {
			return ms(samples[i-recoverSustain+1].End - at)
		}
	}
	return -1
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
