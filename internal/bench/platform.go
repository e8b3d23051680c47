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
//
// Then a thread sleeps 1 ms at a time with nothing else running, as the
// mesh's goroutines wait between the ticks of a paced load: the process
// is idle and a virtual machine's cores halt. IdleWakeLatePerS counts the
// wake-ups 2 ms or more later than asked per second of sleeping (Go's
// runtime rounds an idle process's sleeps to the millisecond, so a
// wake-up up to about 1 ms late is the runtime's, not the machine's), and
// IdleWakeLateMaxUS is the latest. A message whose next hop waits on
// another core that is halted is late by as much.
type PlatformFigures struct {
	AllBusyStallsPerS float64 `json:"platform_all_busy_stalls_per_s"`
	AllBusyStallMaxUS float64 `json:"platform_all_busy_stall_max_us"`
	AllBusyLost       float64 `json:"platform_all_busy_lost_fraction"`
	OneBusyStallsPerS float64 `json:"platform_one_busy_stalls_per_s"`
	OneBusyStallMaxUS float64 `json:"platform_one_busy_stall_max_us"`
	OneBusyLost       float64 `json:"platform_one_busy_lost_fraction"`
	IdleWakeLatePerS  float64 `json:"platform_idle_wake_late_per_s"`
	IdleWakeLateMaxUS float64 `json:"platform_idle_wake_late_max_us"`
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
func (s stalls) perSecond() float64 { return perSecond(s.count, s.spun) }

// perSecond is n events over d, 0 for no time.
func perSecond(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
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

// sleepTick is what the sleeping thread asks for at a time, and
// lateWakeThreshold how much later than that a wake-up counts as late.
const (
	sleepTick         = time.Millisecond
	lateWakeThreshold = 2 * time.Millisecond
)

// wakes sums how late a sleeping thread woke.
type wakes struct {
	late  int           // wake-ups lateWakeThreshold or more past their time
	max   time.Duration // the latest, however little
	slept time.Duration // time in the loop, sleeps and readings
}

// perSecond is the late wake-ups per second of sleeping.
func (w wakes) perSecond() float64 { return perSecond(w.late, w.slept) }

// sleepClock sleeps sleepTick at a time until d has passed since the first
// reading, or done is closed, and sums how late each sleep ended.
func sleepClock(done <-chan struct{}, now func() time.Time, sleep func(time.Duration), d time.Duration) wakes {
	var w wakes
	start := now()
	for {
		select {
		case <-done:
			return w
		default:
		}
		t := now()
		sleep(sleepTick)
		end := now()
		late := end.Sub(t) - sleepTick
		w.max = max(w.max, late)
		if late >= lateWakeThreshold {
			w.late++
		}
		if w.slept = end.Sub(start); w.slept >= d {
			return w
		}
	}
}

// platformSpin is how long each platform check spins: short for short
// phases, two seconds at most.
func platformSpin(phase time.Duration) time.Duration {
	return min(max(phase/2, 100*time.Millisecond), 2*time.Second)
}

// measurePlatform spins every core, then one core, then sleeps on one,
// each for platformSpin of the phase length, or until ctx is done.
func measurePlatform(ctx context.Context, phase time.Duration, log *slog.Logger) PlatformFigures {
	d := platformSpin(phase)
	log.Info("bench: the machine: threads spinning on the clock, every core busy, then one; then one sleeping", "each", d)
	all := spinThreads(ctx, runtime.GOMAXPROCS(0), d)
	one := spinThreads(ctx, 1, d)
	idle := sleepClock(ctx.Done(), time.Now, time.Sleep, d)
	return PlatformFigures{
		AllBusyStallsPerS: all.perSecond(), AllBusyStallMaxUS: us(all.max), AllBusyLost: all.lostFraction(),
		OneBusyStallsPerS: one.perSecond(), OneBusyStallMaxUS: us(one.max), OneBusyLost: one.lostFraction(),
		IdleWakeLatePerS: idle.perSecond(), IdleWakeLateMaxUS: us(idle.max),
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
	fmt.Fprintf(w, "machine: idle, a 1 ms sleep woken >= 2 ms late\t%.2f/s, latest %s late\t\t\t\n", f.IdleWakeLatePerS, fmtLat(f.IdleWakeLateMaxUS))
}
