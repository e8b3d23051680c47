package seqindex

import (
	"fmt"
	"testing"
)

// BenchmarkIndex_Window measures a window of unacknowledged messages: push
// a batch at the tail, then acknowledge the oldest batch with one range.
func BenchmarkIndex_Window(b *testing.B) {
	for _, window := range []int{64, 1024, 16384} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			const batch = 64
			x, v, next := filled(window)
			b.ReportAllocs()
			for b.Loop() {
				lo, _ := x.Min()
				x.RemoveRange(lo, lo+batch-1, nil)
				for range batch {
					next++
					x.Push(next, v)
				}
			}
		})
	}
}

// BenchmarkIndex_RemoveOne measures single removals out of order (nacks,
// per-id acks) and the lookups they need, against a map doing the same.
func BenchmarkIndex_RemoveOne(b *testing.B) {
	const window = 1024
	// Remove every other seq of the oldest 64, then the rest in order.
	b.Run("index", func(b *testing.B) {
		x, v, next := filled(window)
		b.ReportAllocs()
		for b.Loop() {
			lo, _ := x.Min()
			for i := uint64(0); i < 64; i += 2 {
				x.Remove(lo + i)
			}
			for i := uint64(1); i < 64; i += 2 {
				x.Remove(lo + i)
			}
			for range 64 {
				next++
				x.Push(next, v)
			}
		}
	})
	b.Run("map", func(b *testing.B) {
		x := map[uint64]*int{}
		v := new(int)
		var lo, next uint64 = 1, 0
		for range window {
			next++
			x[next] = v
		}
		b.ReportAllocs()
		for b.Loop() {
			for i := uint64(0); i < 64; i += 2 {
				delete(x, lo+i)
			}
			for i := uint64(1); i < 64; i += 2 {
				delete(x, lo+i)
			}
			lo += 64
			for range 64 {
				next++
				x[next] = v
			}
		}
	})
}

// filled returns an index holding seqs 1 to window, the value they share and
// the last seq.
func filled(window int) (*Index[*int], *int, uint64) {
	x := new(Index[*int])
	v := new(int)
	var next uint64
	for range window {
		next++
		x.Push(next, v)
	}
	return x, v, next
}
