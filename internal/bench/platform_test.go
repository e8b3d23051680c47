package bench

import (
	"context"
	"testing"
	"time"
)

// fakeClock returns readings 10µs apart, with the gaps given jumping in
// after the readings they are keyed by.
type fakeClock struct {
	t     time.Time
	n     int
	jumps map[int]time.Duration
}

func (c *fakeClock) now() time.Time {
	c.n++
	c.t = c.t.Add(10*time.Microsecond + c.jumps[c.n])
	return c.t
}

func TestSpinClock_CountsTheGaps(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0), jumps: map[int]time.Duration{
		5:   3 * time.Millisecond,   // a stall
		50:  200 * time.Microsecond, // lost time, not a stall
		90:  time.Millisecond,       // a stall, just over the threshold
		120: 50 * time.Microsecond,  // below what is counted
	}}
	s := spinClock(nil, c.now, 10*time.Millisecond)
	if s.count != 2 {
		t.Errorf("stalls = %d, want 2 (3ms and 1ms)", s.count)
	}
	if want := 3*time.Millisecond + 10*time.Microsecond; s.max != want {
		t.Errorf("longest = %v, want %v", s.max, want)
	}
	if want := 3*time.Millisecond + 200*time.Microsecond + time.Millisecond + 3*10*time.Microsecond; s.lost != want {
		t.Errorf("lost = %v, want %v", s.lost, want)
	}
	if s.spun < 10*time.Millisecond || s.spun > 10*time.Millisecond+10*time.Microsecond {
		t.Errorf("spun = %v, want the 10ms asked for, to one reading", s.spun)
	}
	if got, want := s.perSecond(), 2/s.spun.Seconds(); got != want {
		t.Errorf("perSecond() = %v, want %v", got, want)
	}
}

func TestStalls_Merge(t *testing.T) {
	a := stalls{count: 1, max: 2 * time.Millisecond, lost: 3 * time.Millisecond, spun: time.Second}
	a.merge(stalls{count: 2, max: 4 * time.Millisecond, lost: 5 * time.Millisecond, spun: time.Second})
	want := stalls{count: 3, max: 4 * time.Millisecond, lost: 8 * time.Millisecond, spun: 2 * time.Second}
	if a != want {
		t.Errorf("merge = %+v, want %+v", a, want)
	}
	if got := a.perSecond(); got != 1.5 {
		t.Errorf("perSecond() = %v, want 1.5 a thread-second", got)
	}
	if got := a.lostFraction(); got != 0.004 {
		t.Errorf("lostFraction() = %v, want 0.004", got)
	}
	if got := (stalls{}).perSecond(); got != 0 {
		t.Errorf("perSecond() of nothing spun = %v, want 0", got)
	}
}

func TestPlatformSpin(t *testing.T) {
	for _, tc := range []struct{ phase, want time.Duration }{
		{300 * time.Millisecond, 150 * time.Millisecond},
		{50 * time.Millisecond, 100 * time.Millisecond},
		{3 * time.Second, 1500 * time.Millisecond},
		{10 * time.Second, 2 * time.Second},
	} {
		if got := platformSpin(tc.phase); got != tc.want {
			t.Errorf("platformSpin(%v) = %v, want %v", tc.phase, got, tc.want)
		}
	}
}

func TestSpinThreads_EveryThreadSpins(t *testing.T) {
	const d = 20 * time.Millisecond
	s := spinThreads(t.Context(), 2, d)
	if s.spun < 2*d || s.spun > 2*d+time.Second {
		t.Errorf("spinThreads(2, %v) spun %v in all, want two threads' %v each", d, s.spun, d)
	}
	if s.lost > s.spun {
		t.Errorf("lost %v of %v spun, want at most all of it", s.lost, s.spun)
	}
}

func TestSpinClock_NoGaps(t *testing.T) {
	c := &fakeClock{t: time.Unix(0, 0)}
	s := spinClock(nil, c.now, time.Millisecond)
	if s.count != 0 || s.lost != 0 || s.max != 10*time.Microsecond {
		t.Errorf("spinClock() with readings 10µs apart = %d stalls, %v lost, longest %v; want 0, 0, 10µs", s.count, s.lost, s.max)
	}
}

func TestSpinThreads_StopsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	s := spinThreads(ctx, 2, time.Minute)
	if took := time.Since(start); took > 10*time.Second || s.spun >= time.Minute {
		t.Errorf("spinThreads(done context, 1m) took %v, spun %v; want it to stop at once", took, s.spun)
	}
}

// fakeSleeper is a clock whose sleeps last what they ask for plus the
// delays given, keyed by the sleep's number from 1; readings take no time.
type fakeSleeper struct {
	t      time.Time
	n      int
	delays map[int]time.Duration
}

func (c *fakeSleeper) now() time.Time { return c.t }

func (c *fakeSleeper) sleep(d time.Duration) {
	c.n++
	c.t = c.t.Add(d + c.delays[c.n])
}

func TestSleepClock_CountsLateWakeups(t *testing.T) {
	c := &fakeSleeper{t: time.Unix(0, 0), delays: map[int]time.Duration{
		2:  100 * time.Microsecond,               // the runtime's rounding, not late
		5:  9 * time.Millisecond,                 // late
		7:  lateWakeThreshold,                    // late, just
		9:  lateWakeThreshold - time.Microsecond, // not late
		11: 1500 * time.Microsecond,              // not late
	}}
	w := sleepClock(nil, c.now, c.sleep, 30*time.Millisecond)
	if w.late != 2 {
		t.Errorf("late wake-ups = %d, want 2 (9ms and %v)", w.late, lateWakeThreshold)
	}
	if w.max != 9*time.Millisecond {
		t.Errorf("latest = %v, want 9ms", w.max)
	}
	// The delays add 14.599ms: 15 sleeps end at 29.599ms, 16 at 30.599ms,
	// the first reading at or past the 30ms asked for.
	if w.slept != 30599*time.Microsecond || c.n != 16 {
		t.Errorf("slept %v in %d sleeps, want 30.599ms in 16: it stops at the first reading past 30ms", w.slept, c.n)
	}
	if got, want := w.perSecond(), 2/w.slept.Seconds(); got != want {
		t.Errorf("perSecond() = %v, want %v", got, want)
	}
}

func TestSleepClock_OnTime(t *testing.T) {
	c := &fakeSleeper{t: time.Unix(0, 0)}
	w := sleepClock(nil, c.now, c.sleep, 10*time.Millisecond)
	if w.late != 0 || w.max != 0 || c.n != 10 {
		t.Errorf("sleepClock() with sleeps on time = %d late, latest %v, %d sleeps; want 0, 0, 10", w.late, w.max, c.n)
	}
	if got := (wakes{}).perSecond(); got != 0 {
		t.Errorf("perSecond() of no sleep = %v, want 0", got)
	}
}

func TestSleepClock_StopsWhenDone(t *testing.T) {
	done := make(chan struct{})
	close(done)
	c := &fakeSleeper{t: time.Unix(0, 0)}
	if w := sleepClock(done, c.now, c.sleep, time.Hour); c.n != 0 || w.slept != 0 {
		t.Errorf("sleepClock(closed done, 1h) slept %d times (%v), want none", c.n, w.slept)
	}
}

func TestSleepClock_RealSleeps(t *testing.T) {
	const d = 20 * time.Millisecond
	w := sleepClock(t.Context().Done(), time.Now, time.Sleep, d)
	if w.slept < d || w.slept > d+10*time.Second {
		t.Errorf("sleepClock(%v) slept %v, want %v and at most one sleep more", d, w.slept, d)
	}
	if w.max <= 0 {
		t.Errorf("latest wake-up %v after a real sleep, want > 0: a sleep ends after its time", w.max)
	}
}
