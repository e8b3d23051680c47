package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"time"
)

// stallThreshold is the gap between two clock readings of a spinning
// thread that counts as a stall: the thread was kept off its core.
const stallThreshold = time.Millisecond

// PlatformFigures are how often the machine kept a busy thread off its core,
// measured before anything else runs: threads that do nothing but read the
// clock, one per core (GOMAXPROCS) and then one alone. A gap between two
// readings is time the thread did not run. On a machine of its own a thread
// that never blocks runs on; a virtual machine whose host is short of cores
// takes a busy virtual core away for milliseconds at a time, and every
// latency measured on it carries those gaps.
//
// StallsPerS counts the gaps of 1 ms or more per second of one thread's
// spinning, StallMaxUS is the longest gap, and Lost the share of the
// threads' time in gaps of 100 µs or more; AllBusy with every core
// spinning, OneBusy with one.
type PlatformFigures struct {
	AllBusyStallsPerS float64 `json:"platform_all_busy_stalls_per_s"`
	AllBusyStallMaxUS float64 `json:"platform_all_busy_stall_max_us"`
	AllBusyLost       float64 `json:"platform_all_busy_lost_fraction"`
	OneBusyStallsPerS float64 `json:"platform_one_busy_stalls_per_s"`
	OneBusyStallMaxUS float64 `json:"platform_one_busy_stall_max_us"`
	OneBusyLost       float64 `json:"platform_one_busy_lost_fraction"`
}

// stalls sums the gaps seen by spinning threads.
type stalls struct {
	count int           // gaps of stallThreshold or more
	max   time.Duration // the longest gap, however short
	lost  time.Duration // all gaps of stallThreshold/10 or more, added up
	spun  time.Duration // thread time spent spinning, gaps included
}

func (s *stalls) merge(o stalls) {
	s.count += o.count
	s.max = max(s.max, o.max)
	s.lost += o.lost
	s.spun += o.spun
}

// perSecond is the stalls per second of one thread's spinning.
func (s stalls) perSecond() float64 {
	if s.spun <= 0 {
		return 0
	}
	return float64(s.count) / s.spun.Seconds()
}

// lostFraction is the share of the spinning threads' time they were off
// their cores.
func (s stalls) lostFraction() float64 {
	if s.spun <= 0 {
		return 0
	}
	return float64(s.lost) / float64(s.spun)
}

// spinClock reads now until d has passed since the first reading, or done
// is closed, and sums the gaps between readings.
func spinClock(done <-chan struct{}, now func() time.Time, d time.Duration) stalls {
	var s stalls
	start := now()
	prev := start
	for n := 1; ; n++ {
		if n%1024 == 0 {
			select {
			case <-done:
				return s
			default:
			}
		}
		t := now()
		gap := t.Sub(prev)
		s.max = max(s.max, gap)
		if gap >= stallThreshold/10 {
			s.lost += gap
			if gap >= stallThreshold {
				s.count++
			}
		}
		prev = t
		if s.spun = t.Sub(start); s.spun >= d {
			return s
		}
	}
}

// spinThreads runs n threads that spin on the clock for d, or until ctx is
// done, each locked to its own OS thread, and sums what they saw.
func spinThreads(ctx context.Context, n int, d time.Duration) stalls {
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		all stalls
	)
	for range n {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			s := spinClock(ctx.Done(), time.Now, d)
			mu.Lock()
			all.merge(s)
			mu.Unlock()
		})
	}
	wg.Wait()
	return all
}

// platformSpin is how long each platform check spins: short for short
// phases, two seconds at most.
func platformSpin(phase time.Duration) time.Duration {
	return min(max(phase/2, 100*time.Millisecond), 2*time.Second)
}

// measurePlatform spins every core, then one core, each for platformSpin
// of the phase length, or until ctx is done.
func measurePlatform(ctx context.Context, phase time.Duration, log *slog.Logger) PlatformFigures {
	d := platformSpin(phase)
	log.Info("bench: the machine: threads spinning on the clock, every core busy, then one", "each", d)
	all := spinThreads(ctx, runtime.GOMAXPROCS(0), d)
	one := spinThreads(ctx, 1, d)
	return PlatformFigures{
		AllBusyStallsPerS: all.perSecond(), AllBusyStallMaxUS: us(all.max), AllBusyLost: all.lostFraction(),
		OneBusyStallsPerS: one.perSecond(), OneBusyStallMaxUS: us(one.max), OneBusyLost: one.lostFraction(),
	}
}

// machineRows writes the table rows of f.
func (f *PlatformFigures) machineRows(w io.Writer) {
	stall := func(perS, maxUS, lost float64) string {
		return fmt.Sprintf("%.2f/s, longest %s, %.2f %% lost", perS, fmtLat(maxUS), 100*lost)
	}
	fmt.Fprintf(w, "machine: thread off core >= 1 ms, all busy\t%s\t\t\t\n", stall(f.AllBusyStallsPerS, f.AllBusyStallMaxUS, f.AllBusyLost))
	fmt.Fprintf(w, "machine: thread off core >= 1 ms, one busy\t%s\t\t\t\n", stall(f.OneBusyStallsPerS, f.OneBusyStallMaxUS, f.OneBusyLost))
	fmt.Fprintf(w, "(lost: the time in gaps of 0.1 ms or more)\t\t\t\t\n")
}
