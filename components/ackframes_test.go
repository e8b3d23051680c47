package components

import (
	"testing"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// TestAckFrames_Split checks that acknowledgements are split into frames of
// at most max ranges and nacks together, losing and doubling none.
func TestAckFrames_Split(t *testing.T) {
	rs := func(n int) []*messagev1.SeqRange {
		out := make([]*messagev1.SeqRange, n)
		for i := range out {
			out[i] = &messagev1.SeqRange{First: uint64(2*i + 1), Last: uint64(2*i + 1)}
		}
		return out
	}
	ns := func(n int) []*messagev1.Nack {
		out := make([]*messagev1.Nack, n)
		for i := range out {
			out[i] = &messagev1.Nack{Seq: uint64(1000 + i)}
		}
		return out
	}
	for _, tc := range []struct {
		name           string
		ranges, nacks  int
		max            int
		wantFrameSizes []int
	}{
		{"nothing", 0, 0, 4, nil},
		{"no limit", 10, 3, 0, []int{13}},
		{"within", 3, 1, 4, []int{4}},
		{"ranges split", 9, 0, 4, []int{4, 4, 1}},
		{"ranges then nacks", 5, 5, 4, []int{4, 4, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frames := ackFrames(rs(tc.ranges), ns(tc.nacks), tc.max)
			var sizes []int
			seen := map[uint64]int{}
			for _, f := range frames {
				sizes = append(sizes, len(f.GetAcked())+len(f.GetNacked()))
				for _, r := range f.GetAcked() {
					seen[r.GetFirst()]++
				}
				for _, n := range f.GetNacked() {
					seen[n.GetSeq()]++
				}
			}
			if len(sizes) != len(tc.wantFrameSizes) {
				t.Fatalf("ackFrames(%d ranges, %d nacks, %d) frame sizes = %v, want %v", tc.ranges, tc.nacks, tc.max, sizes, tc.wantFrameSizes)
			}
			for i := range sizes {
				if sizes[i] != tc.wantFrameSizes[i] {
					t.Fatalf("ackFrames(%d ranges, %d nacks, %d) frame sizes = %v, want %v", tc.ranges, tc.nacks, tc.max, sizes, tc.wantFrameSizes)
				}
			}
			if len(seen) != tc.ranges+tc.nacks {
				t.Errorf("ackFrames() carried %d distinct entries, want %d", len(seen), tc.ranges+tc.nacks)
			}
			for id, n := range seen {
				if n != 1 {
					t.Errorf("ackFrames() carried %d %d times, want once", id, n)
				}
			}
		})
	}
}
