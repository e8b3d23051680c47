package components

import (
	"fmt"
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
