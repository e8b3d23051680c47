package components

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestInProgress_MatchesAMap drives an inProgress and a map keyed by
// message with the same random steps (new seqs in order, old seqs again,
// jobs finishing in any order, enough producers to sweep) and checks after
// each that they hold the same jobs.
func TestInProgress_MatchesAMap(t *testing.T) {
	for trial := range 40 {
		r := rand.New(rand.NewPCG(uint64(trial), 1))
		ip := newInProgress()
		model := map[msgKey]*job{}
		producers := 1 + r.IntN(3*sweepAbove)
		next := map[producerKey]uint64{}
		for step := range 3000 {
			p := producerKey{fmt.Sprintf("p%d", r.IntN(producers)), uint64(1 + r.IntN(2))}
			var seq uint64
			if r.IntN(2) == 0 {
				next[p] += uint64(1 + r.IntN(3))
				seq = next[p]
			} else {
				if next[p] == 0 {
					continue
				}
				seq = 1 + r.Uint64N(next[p])
			}
			k := msgKey{p, seq}
			if r.IntN(3) == 0 {
				for mk := range model { // one job finishes, any one
					ip.remove(mk)
					delete(model, mk)
					break
				}
				continue
			}
			got := ip.get(k)
			if got != model[k] {
				t.Fatalf("trial %d, step %d: get(%v) = %p, want %p", trial, step, k, got, model[k])
			}
			switch {
			case got == nil:
				j := &job{key: k}
				ip.put(k, j)
				model[k] = j
			case r.IntN(2) == 0:
				ip.remove(k)
				delete(model, k)
			}
			if ip.len() != len(model) {
				t.Fatalf("trial %d, step %d: len() = %d, want %d", trial, step, ip.len(), len(model))
			}
		}
		for k, j := range model {
			if got := ip.get(k); got != j {
				t.Fatalf("trial %d, at the end: get(%v) = %p, want %p", trial, k, got, j)
			}
		}
	}
}

// TestInProgress_MatchesAMapBeyondTheRing drives an inProgress and a map
// with seqs around the ring's span, 2^40 and the top of the range, so that
// many go beyond a producer's ring and the ring later grows or slides over
// them, with few producers and with enough to sweep. After each step the
// two hold the same jobs, and no seq is both in a ring and beyond it.
func TestInProgress_MatchesAMapBeyondTheRing(t *testing.T) {
	centers := []uint64{1, 2, ringSpan - 1, ringSpan, ringSpan + 1, 2 * ringSpan, 1 << 40, math.MaxUint64 - ringSpan, math.MaxUint64 - 1, math.MaxUint64}
	for trial := range 100 {
		r := rand.New(rand.NewPCG(uint64(trial), 3))
		ip := newInProgress()
		model := map[msgKey]*job{}
		producers := []int{1, 2, 70, 200}[r.IntN(4)]
		for step := range 3000 {
			p := producerKey{fmt.Sprint("p", r.IntN(producers)), uint64(r.IntN(2))}
			c := centers[r.IntN(len(centers))]
			seq := c + uint64(r.IntN(2*ringSpan+5)) - ringSpan - 2
			if r.IntN(4) == 0 {
				seq = c + uint64(r.IntN(9)) - 4
			}
			if r.IntN(2) == 0 {
				for k := range model { // one held, now and then
					if r.IntN(3) == 0 {
						p, seq = k.producerKey, k.seq
						break
					}
				}
			}
			k := msgKey{p, seq}
			if got := ip.get(k); got != model[k] {
				t.Fatalf("trial %d, step %d: get(%v) = %p, want %p", trial, step, k, got, model[k])
			}
			if r.IntN(2) == 0 {
				if model[k] == nil {
					j := &job{key: k}
					ip.put(k, j)
					model[k] = j
				}
			} else {
				ip.remove(k)
				delete(model, k)
				if ip.get(k) != nil {
					t.Fatalf("trial %d, step %d: get(%v) after remove = a job, want nil", trial, step, k)
				}
			}
			if step%97 != 0 {
				continue
			}
			n := 0
			for _, pj := range ip.producers {
				if pj.count != pj.jobs.Len()+len(pj.far) {
					t.Fatalf("trial %d, step %d: count %d, want %d in the ring and %d beyond", trial, step, pj.count, pj.jobs.Len(), len(pj.far))
				}
				for s := range pj.far {
					if pj.jobs.Get(s) != nil {
						t.Fatalf("trial %d, step %d: seq %d of %v in the ring and beyond it", trial, step, s, pj.key)
					}
				}
				n += pj.count
			}
			if n != len(model) {
				t.Fatalf("trial %d, step %d: %d jobs held, want %d", trial, step, n, len(model))
			}
			for mk, j := range model {
				if ip.get(mk) != j {
					t.Fatalf("trial %d, step %d: get(%v) = %p, want %p", trial, step, mk, ip.get(mk), j)
				}
			}
		}
	}
}
