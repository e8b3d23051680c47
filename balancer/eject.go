package balancer

import (
	"time"
)

// run is the balancer's one goroutine. Woken by kickRun (an RPC failure
// reached the ejection threshold, a connection went IDLE) or by its timer
// (an ejection expired, a delayed reconnect is due), it ejects and
// un-ejects instances, publishing a new picker when that changes anything,
// and reconnects idle children. It stops when done is closed.
func (b *butterflyBalancer) run() {
	defer b.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-b.kick:
		case <-timer.C:
		}
		reconnect, next := b.tick(time.Now())
		for _, c := range reconnect {
			c.exitIdle()
		}
		if next > 0 {
			timer.Reset(next)
		}
	}
}

// tick applies the ejection rules at now and returns the idle children due
// for a reconnect and the wait until the next deadline (0: none).
func (b *butterflyBalancer) tick(now time.Time) (reconnect []*child, next time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, 0
	}
	var nextAt time.Time
	later := func(t time.Time) {
		if nextAt.IsZero() || t.Before(nextAt) {
			nextAt = t
		}
	}

	changed := false
	ejected := 0
	children := b.childrenLocked()
	for _, c := range children {
		if c.ejectedUntil.IsZero() {
			continue
		}
		if !now.Before(c.ejectedUntil) {
			c.ejectedUntil = time.Time{}
			c.stats.failures.Store(0)
			b.metrics.Returned(1)
			changed = true
			b.logger.Info("balancer: ejection ended", "instance", c.name)
			continue
		}
		ejected++
		later(c.ejectedUntil)
	}

	cfg := b.cfg.Ejection
	if cfg.ConsecutiveFailures > 0 {
		limit := len(children) * int(cfg.MaxEjectedPercent) / 100
		limit = min(limit, len(children)-1)
		for _, c := range children {
			if ejected >= limit {
				break
			}
			if !c.ejectedUntil.IsZero() || c.stats.failures.Load() < cfg.ConsecutiveFailures {
				continue
			}
			if c.stats.succeeded.Swap(false) {
				c.ejections = 0
			}
			c.ejections++
			d := min(cfg.BaseEjectionTime*time.Duration(c.ejections), cfg.MaxEjectionTime)
			c.ejectedUntil = now.Add(d)
			b.metrics.Ejected()
			ejected++
			changed = true
			later(c.ejectedUntil)
			b.logger.Warn("balancer: instance ejected", "instance", c.name, "addr", c.inst.Addr,
				"failures", c.stats.failures.Load(), "for", d)
		}
	}

	for c, due := range b.retries {
		if !now.Before(due) {
			reconnect = append(reconnect, c)
			delete(b.retries, c)
			continue
		}
		later(due)
	}

	if changed && !b.inhibit {
		b.updateStateLocked()
	}
	if !nextAt.IsZero() {
		next = max(nextAt.Sub(now), time.Millisecond)
	}
	return reconnect, next
}
