package seqindex

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// contents returns the seqs and values held, in iteration order.
func contents(x *Index[int]) (seqs []uint64, vals []int) {
	for seq, v := range x.All() {
		seqs = append(seqs, seq)
		vals = append(vals, v)
	}
	return seqs, vals
}

// TestIndex_Table checks pushes, lookups and removals against their
// expected contents.
func TestIndex_Table(t *testing.T) {
	type step struct {
		push   []uint64 // value = seq*10
		remove []uint64
		rng    [2]uint64 // removed range, when rng[1] != 0
	}
	for _, tc := range []struct {
		name  string
		steps []step
		want  []uint64
	}{
		{"empty", nil, nil},
		{"pushes", []step{{push: []uint64{1, 2, 3}}}, []uint64{1, 2, 3}},
		{"gaps", []step{{push: []uint64{2, 5, 9}}}, []uint64{2, 5, 9}},
		{"remove head", []step{{push: []uint64{1, 2, 3}, remove: []uint64{1}}}, []uint64{2, 3}},
		{"remove middle", []step{{push: []uint64{1, 2, 3}, remove: []uint64{2}}}, []uint64{1, 3}},
		{"remove tail", []step{{push: []uint64{1, 2, 3}, remove: []uint64{3}}}, []uint64{1, 2}},
		{"remove absent", []step{{push: []uint64{1, 3}, remove: []uint64{0, 2, 4}}}, []uint64{1, 3}},
		{"remove twice", []step{{push: []uint64{1, 2}, remove: []uint64{1, 1}}}, []uint64{2}},
		{"range", []step{{push: []uint64{1, 2, 3, 4, 5}, rng: [2]uint64{2, 4}}}, []uint64{1, 5}},
		{"range over gaps", []step{{push: []uint64{10, 20, 30}, rng: [2]uint64{11, 30}}}, []uint64{10}},
		{"range wide", []step{{push: []uint64{10, 20}, rng: [2]uint64{1, 1 << 62}}}, nil},
		{"empty then push", []step{{push: []uint64{1, 2}, remove: []uint64{1, 2}}, {push: []uint64{3}}}, []uint64{3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var x Index[int]
			for _, s := range tc.steps {
				for _, seq := range s.push {
					x.Push(seq, int(seq)*10)
				}
				for _, seq := range s.remove {
					x.Remove(seq)
				}
				if s.rng[1] != 0 {
					x.RemoveRange(s.rng[0], s.rng[1], nil)
				}
			}
			seqs, vals := contents(&x)
			if diff := cmp.Diff(tc.want, seqs); diff != "" {
				t.Errorf("All() seqs mismatch (-want +got):\n%s", diff)
			}
			for i, seq := range seqs {
				if vals[i] != int(seq)*10 {
					t.Errorf("All() value under %d = %d, want %d", seq, vals[i], seq*10)
				}
			}
			if x.Len() != len(tc.want) {
				t.Errorf("Len() = %d, want %d", x.Len(), len(tc.want))
			}
		})
	}
}

// TestIndex_PushOutOfOrder checks that a seq not above the last pushed one
// panics, removed or not, and is taken again after Clear.
func TestIndex_PushOutOfOrder(t *testing.T) {
	var x Index[int]
	x.Push(5, 0)
	x.Remove(5)
	for _, seq := range []uint64{4, 5} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Push(%d) after 5 did not panic", seq)
				}
			}()
			x.Push(seq, 0)
		}()
	}
	x.Clear()
	x.Push(1, 1)
	if v, ok := x.Get(1); !ok || v != 1 {
		t.Errorf("Get(1) after Clear and Push = %d, %t, want 1, true", v, ok)
	}
}

// TestIndex_RemoveRangeOrder checks that RemoveRange reports what it removes
// in sequence order and counts it.
func TestIndex_RemoveRangeOrder(t *testing.T) {
	var x Index[int]
	for seq := uint64(1); seq <= 10; seq++ {
		x.Push(seq*2, int(seq))
	}
	x.Remove(8)
	var got []uint64
	n := x.RemoveRange(3, 13, func(seq uint64, v int) {
		if uint64(v)*2 != seq {
			t.Errorf("RemoveRange reported value %d under %d", v, seq)
		}
		got = append(got, seq)
	})
	if diff := cmp.Diff([]uint64{4, 6, 10, 12}, got); diff != "" {
		t.Errorf("RemoveRange(3, 13) seqs mismatch (-want +got):\n%s", diff)
	}
	if n != len(got) {
		t.Errorf("RemoveRange(3, 13) = %d, want %d", n, len(got))
	}
	if lo, ok := x.Min(); !ok || lo != 2 {
		t.Errorf("Min() = %d, %t, want 2, true", lo, ok)
	}
}

// TestIndex_Bounded checks that the backing array stays within a small
// multiple of the live values under a sliding window of in-order and
// out-of-order removals.
func TestIndex_Bounded(t *testing.T) {
	const window = 1000
	var x Index[int]
	rng := rand.New(rand.NewPCG(1, 2))
	var next uint64
	for range 100 * window {
		for x.Len() < window {
			next++
			x.Push(next, 0)
		}
		// Remove one of the oldest few, so tombstones build up in the middle.
		lo, _ := x.Min()
		for {
			if _, ok := x.Remove(lo + uint64(rng.IntN(8))); ok {
				break
			}
		}
		if len(x.slots) > 2*window+compactMin+1 {
			t.Fatalf("len(slots) = %d with %d live, want at most %d", len(x.slots), x.Len(), 2*window+compactMin+1)
		}
	}
}

// TestIndex_Random runs random operations against a map and checks that the
// index agrees with it after each.
func TestIndex_Random(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 7))
		var x Index[int]
		ref := map[uint64]int{}
		var next uint64
		for op := range 5000 {
			switch k := rng.IntN(100); {
			case k < 40: // push, sometimes leaving a gap
				next += 1 + uint64(rng.IntN(3))*uint64(rng.IntN(2))
				x.Push(next, op)
				ref[next] = op
			case k < 65: // remove one, present or not
				seq := uint64(rng.Int64N(int64(next) + 2))
				v, ok := x.Remove(seq)
				want, wantOK := ref[seq]
				if ok != wantOK || v != want {
					t.Fatalf("seed %d: Remove(%d) = %d, %t, want %d, %t", seed, seq, v, ok, want, wantOK)
				}
				delete(ref, seq)
			case k < 80: // remove one range, or several in any order
				ranges := make([][2]uint64, 1+rng.IntN(3))
				for i := range ranges {
					first := uint64(rng.Int64N(int64(next) + 2))
					ranges[i] = [2]uint64{first, first + uint64(rng.IntN(20))}
				}
				var got []uint64
				report := func(seq uint64, v int) {
					if ref[seq] != v {
						t.Fatalf("seed %d: %v reported %d under %d, want %d", seed, ranges, v, seq, ref[seq])
					}
					got = append(got, seq)
				}
				var n int
				if len(ranges) == 1 {
					n = x.RemoveRange(ranges[0][0], ranges[0][1], report)
				} else {
					rs := make([]Range, len(ranges))
					for i, r := range ranges {
						rs[i] = Range{r[0], r[1]}
					}
					n = x.RemoveRanges(rs, report)
				}
				var want []uint64
				for _, r := range ranges {
					for _, seq := range slices.Sorted(maps.Keys(ref)) {
						if seq >= r[0] && seq <= r[1] {
							want = append(want, seq)
							delete(ref, seq)
						}
					}
				}
				if diff := cmp.Diff(want, got); diff != "" || n != len(want) {
					t.Fatalf("seed %d: removing %v = %d, mismatch (-want +got):\n%s", seed, ranges, n, diff)
				}
			case k < 95: // look one up
				seq := uint64(rng.Int64N(int64(next) + 2))
				v, ok := x.Get(seq)
				want, wantOK := ref[seq]
				if ok != wantOK || v != want {
					t.Fatalf("seed %d: Get(%d) = %d, %t, want %d, %t", seed, seq, v, ok, want, wantOK)
				}
			case k < 99: // stop an iteration early
				for range x.All() {
					break
				}
			default:
				x.Clear()
				clear(ref)
				next = 0
			}
			if x.Len() != len(ref) {
				t.Fatalf("seed %d op %d: Len() = %d, want %d", seed, op, x.Len(), len(ref))
			}
			if op%50 == 0 {
				seqs, vals := contents(&x)
				wantSeqs := slices.Sorted(maps.Keys(ref))
				if diff := cmp.Diff(wantSeqs, seqs); diff != "" {
					t.Fatalf("seed %d op %d: All() mismatch (-want +got):\n%s", seed, op, diff)
				}
				for i, seq := range seqs {
					if vals[i] != ref[seq] {
						t.Fatalf("seed %d op %d: All() value under %d = %d, want %d", seed, op, seq, vals[i], ref[seq])
					}
				}
				if got := x.AppendTo(nil); !slices.Equal(got, vals) {
					t.Fatalf("seed %d op %d: AppendTo() = %v, want %v", seed, op, got, vals)
				}
				lo, ok := x.Min()
				if ok != (len(wantSeqs) > 0) || (ok && lo != wantSeqs[0]) {
					t.Fatalf("seed %d op %d: Min() = %d, %t, want the lowest of %v", seed, op, lo, ok, wantSeqs)
				}
			}
		}
	}
}
