package bench

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"time"

	"github.com/butterfly-mesh/butterfly/intermediate"
)

// run drives the phases of a run in separate processes, then finishes the
// workers, stops the intermediates and accounts for every message.
func (pm *procMesh) run(ctx context.Context) (*ProcessReport, error) {
	cfg := pm.cfg
	r := &ProcessReport{Mode: "processes"}
	r.setConfig(cfg.Config)
	if err := pm.waitFirst(ctx); err != nil {
		return nil, err
	}
	pm.log.Info("bench: processes: load: saturation (closed loop, window-bound)")
	if !pause(ctx, cfg.Warmup) {
		return nil, ctx.Err()
	}
	sat, err := pm.measure(ctx)
	if err != nil {
		return nil, err
	}
	r.setSaturation(sat)
	pm.log.Info("bench: processes: saturation", "msgs_per_s", int(sat.MsgsPerSec), "p50", sat.P50, "p99", sat.P99)

	half, given := cfg.halfLoadRate(sat.MsgsPerSec)
	if _, err := pm.callAll(ctx, pm.producers, childCallTimeout, workerRequest{Op: opRate, Rate: half / float64(len(pm.producers))}, false); err != nil {
		return nil, err
	}
	pm.log.Info("bench: processes: load: half of saturation, or the rate given", "msgs_per_s", int(half))
	if !pause(ctx, cfg.Warmup) {
		return nil, ctx.Err()
	}
	res, err := pm.measure(ctx)
	if err != nil {
		return nil, err
	}
	r.setHalfLoad(half, given, res)
	r.setBatching(sat.Batching, res.Batching)
	pm.log.Info("bench: processes: half load", "msgs_per_s", int(res.MsgsPerSec), "p50", res.P50, "p99", res.P99)

	err = pm.finish(ctx, r)
	return r, err
}

// waitFirst waits until a message reached a consumer.
func (pm *procMesh) waitFirst(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		replies, err := pm.callAll(ctx, pm.consumers, childCallTimeout, workerRequest{Op: opCount}, false)
		if err != nil {
			return err
		}
		if delivered(replies) > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return errors.New("bench: processes: no message reached a consumer within 30s")
}

// measure runs the current load for the configured duration and measures
// the messages the consumers handled, their end-to-end latency and the CPU
// the children used.
func (pm *procMesh) measure(ctx context.Context) (Result, error) {
	// The frame counters are read outside the timed window; without them
	// the run goes on and reports its frame figures as 0.
	st0, statsErr := pm.serverStats(ctx)
	cpu0, t0 := pm.cpu(), time.Now()
	start, err := pm.callAll(ctx, pm.consumers, childCallTimeout, workerRequest{Op: opStart}, false)
	if err != nil {
		return Result{}, err
	}
	if !pause(ctx, pm.cfg.Duration) {
		return Result{}, ctx.Err()
	}
	stop, err := pm.callAll(ctx, pm.consumers, childCallTimeout, workerRequest{Op: opStop}, false)
	if err != nil {
		return Result{}, err
	}
	elapsed, cpu := time.Since(t0), pm.cpu()
	st, err := pm.serverStats(ctx)
	statsErr = errors.Join(statsErr, err)
	h := &histogram{}
	for _, s := range stop {
		h.add(s.Latency)
	}
	n := delivered(stop) - delivered(start)
	res := newResult(n, elapsed, h)
	if cpu0 > 0 && cpu > 0 {
		res.CPUPerMillion = cpuPerMillion(cpu-cpu0, n)
	}
	if statsErr == nil {
		res.Batching = newBatchFigures(statsSince(st, st0))
	} else {
		pm.log.Warn("bench: processes: messages per frame not measured", "err", statsErr)
	}
	return res, nil
}

func delivered(replies []workerReply) uint64 {
	var n uint64
	for _, r := range replies {
		n += r.Delivered
	}
	return n
}

// finish stops the load and closes the producers (each waits until all it
// sent is acknowledged), closes the consumers, stops the intermediates
// (they drain), and fills r with what was sent and handled, from exact ids,
// and with the children's peak memory.
func (pm *procMesh) finish(ctx context.Context, r *ProcessReport) error {
	var errs []error
	prods, err := pm.callAll(ctx, pm.producers, childFinishTimeout, workerRequest{Op: opFinish}, false)
	if err != nil {
		return err
	}
	// Before the consumers finish: a consumer that closes removes its key.
	if err := r.setLapsed(ctx, pm.etcd.cli, pm.regs, pm.log); err != nil {
		return err
	}
	cons, err := pm.callAll(ctx, pm.consumers, childFinishTimeout, workerRequest{Op: opFinish}, false)
	if err != nil {
		return err
	}
	for i, p := range prods {
		if p.Err != "" {
			errs = append(errs, fmt.Errorf("bench: producer %s: %s", pm.producers[i].name, p.Err))
		}
	}
	for i, c := range cons {
		if c.Err != "" {
			errs = append(errs, fmt.Errorf("bench: consumer %s: %s", pm.consumers[i].name, c.Err))
		}
	}
	pm.account(r, prods, cons)
	pm.log.Info("bench: processes: producers and consumers closed", "sent", r.Sent, "lost", r.Lost)

	for _, c := range append(pm.producers, pm.consumers...) {
		c.wait(10 * time.Second)
	}
	for _, c := range pm.intermediates {
		c.stop(2 * intermediateDrainBound)
	}
	r.setPeakRSS(pm.intermediates, pm.producers, pm.consumers)
	return errors.Join(errs...)
}

// account merges the ids every consumer handled and counts, per producer
// incarnation, the messages lost and those handled more than once.
func (pm *procMesh) account(r *ProcessReport, prods, cons []workerReply) {
	seen := make(map[seenKey]*idSet, len(prods))
	for i, p := range prods {
		seen[seenKey{pm.producers[i].name, pm.incarnations[i]}] = &idSet{}
		r.Sent += p.Sent
		r.Resent += p.Resent
		r.Unacknowledged += p.Sent - min(p.Sent, p.Acked+p.Nacked)
	}
	for _, c := range cons {
		r.HandledTwice += c.Twice
		r.DuplicatesDropped += c.DuplicatesDropped
		for _, s := range c.Seen {
			set, ok := seen[seenKey{s.Producer, s.Incarnation}]
			if !ok {
				for _, b := range s.Bitmap {
					r.Strangers += uint64(bits.OnesCount8(b))
				}
				continue
			}
			r.HandledTwice += set.merge(s.Bitmap)
		}
	}
	for i, p := range prods {
		r.Lost += seen[seenKey{pm.producers[i].name, pm.incarnations[i]}].missing(p.Sent)
	}
	r.Delivered = r.Sent - r.Lost
}

// serverStats returns the intermediates' counters, added up, as their
// admin endpoints' metrics give them.
func (pm *procMesh) serverStats(ctx context.Context) (intermediate.Stats, error) {
	var sum intermediate.Stats
	for _, addr := range pm.admins {
		st, err := scrapeStats(ctx, addr)
		if err != nil {
			return intermediate.Stats{}, err
		}
		sum = addStats(sum, st)
	}
	return sum, nil
}
