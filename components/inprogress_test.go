package components

import (
	"fmt"
	"testing"
)

// TestInProgress checks lookups, adds and removals of jobs whose seqs come
// in order, out of order, from several producers, and after a sweep.
func TestInProgress(t *testing.T) {
	ip := newInProgress()
	key := func(p string, inc, seq uint64) msgKey { return msgKey{producerKey{p, inc}, seq} }
	jobs := map[msgKey]*job{}
	put := func(k msgKey) {
		t.Helper()
		if ip.get(k) != nil {
			t.Fatalf("get(%v) before put = a job, want nil", k)
		}
		j := &job{key: k}
		ip.put(k, j)
		jobs[k] = j
	}
	check := func(when string) {
		t.Helper()
		for k, want := range jobs {
			if got := ip.get(k); got != want {
				t.Errorf("%s: get(%v) = %p, want %p", when, k, got, want)
			}
		}
		if got := ip.len(); got != len(jobs) {
			t.Errorf("%s: len() = %d, want %d", when, got, len(jobs))
		}
	}
	remove := func(k msgKey) {
		t.Helper()
		ip.remove(k)
		delete(jobs, k)
		if ip.get(k) != nil {
			t.Errorf("get(%v) after remove = a job, want nil", k)
		}
	}

	for seq := uint64(1); seq <= 10; seq++ {
		put(key("a", 1, seq))
	}
	put(key("b", 1, 5))
	put(key("a", 2, 3)) // another incarnation of a
	check("in order")
	remove(key("a", 1, 4))
	remove(key("a", 1, 1))
	put(key("a", 1, 4)) // a redelivery: below the highest seq of a/1
	put(key("a", 1, 20))
	put(key("a", 1, 15)) // out of order
	check("out of order")
	ip.remove(key("a", 1, 99)) // nothing there: no effect
	ip.remove(key("c", 1, 1))
	check("removing what is not there")
	for k := range jobs {
		if k.producer == "a" && k.incarnation == 1 {
			remove(k)
		}
	}
	check("a/1 done")
	put(key("a", 1, 2)) // below a/1's highest seq, and nothing in progress
	check("a/1 again")
	put(key("a", 1, 2+ringSpan))   // beyond the ring's span: kept apart
	put(key("a", 1, 2+2*ringSpan)) // and further
	put(key("a", 1, 3))
	check("a/1 beyond the ring's span")
	if n := len(ip.of(producerKey{"a", 1}, false).far); n != 2 {
		t.Errorf("%d jobs of a/1 kept beyond the ring, want 2", n)
	}
	remove(key("a", 1, 2))
	remove(key("a", 1, 2+ringSpan))
	check("a/1 beyond the ring's span, one removed from each")

	// Many producers: those with nothing in progress are forgotten, those
	// with jobs are kept.
	for i := range 3 * sweepAbove {
		k := key(fmt.Sprintf("p%d", i), 1, 1)
		put(k)
		if i%2 == 0 {
			remove(k)
		}
	}
	check("many producers")
	if n := len(ip.producers); n > sweepAbove+3*sweepAbove/2+3 {
		t.Errorf("%d producers kept, want the ones with jobs and fewer than %d empty", n, sweepAbove)
	}
}

// len returns the number of jobs held.
func (ip *inProgress) len() int {
	n := 0
	for _, pj := range ip.producers {
		n += pj.count
	}
	return n
}
