package components

import (
	"strings"
	"testing"

	"github.com/butterfly-mesh/butterfly"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
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

// TestAckFrames_SplitByBytes checks that nacks with long details are split
// into frames of at most ackFrameBytes encoded, whatever their count: 1 000
// nacks of 4 KiB details made one frame of 4 MB, over the intermediate's
// receive limit, which ended the stream; the deliveries came again.
func TestAckFrames_SplitByBytes(t *testing.T) {
	detail := strings.Repeat("e", butterfly.MaxNackDetail)
	nacks := make([]*messagev1.Nack, 1000)
	for i := range nacks {
		nacks[i] = &messagev1.Nack{Seq: uint64(i + 1), Reason: messagev1.NackReason_NACK_REASON_HANDLER_FAILED, Detail: detail}
	}
	ranges := []*messagev1.SeqRange{{First: 2000, Last: 3000}}
	frames := ackFrames(ranges, nacks, 4096)
	seen := 0
	for i, f := range frames {
		if size := (&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Ack{Ack: f}}).SizeVT(); size > ackFrameBytes {
			t.Errorf("frame %d is %d bytes encoded, over %d", i, size, ackFrameBytes)
		}
		seen += len(f.GetNacked())
	}
	if seen != len(nacks) || len(frames[0].GetAcked()) != 1 {
		t.Errorf("frames carry %d nacks and %d ranges first, want %d and 1", seen, len(frames[0].GetAcked()), len(nacks))
	}
	// Each frame but the last is full: the next nack would not fit.
	for i, f := range frames[:len(frames)-1] {
		if size := (&deliveryv1.SubscribeRequest{Kind: &deliveryv1.SubscribeRequest_Ack{Ack: f}}).SizeVT(); size < ackFrameBytes-len(detail)-64 {
			t.Errorf("frame %d is %d bytes, want it full (over %d)", i, size, ackFrameBytes-len(detail)-64)
		}
	}
}
