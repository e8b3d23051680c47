// Package seqrange folds sequence numbers and delivery ids into the inclusive
// ranges that acknowledgements carry on the wire, and walks them back.
//
//	ack := &deliveryv1.PublishAck{Acked: seqrange.Build(seqs)}
//	seqrange.ForEach(ack.GetAcked(), func(seq uint64) { settle(seq) })
package seqrange

import (
	"slices"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// Build sorts seqs in place and returns them as the fewest inclusive
// ranges. Repeated numbers are folded.
func Build(seqs []uint64) []*messagev1.SeqRange {
	if len(seqs) == 0 {
		return nil
	}
	slices.Sort(seqs)
	out := make([]*messagev1.SeqRange, 0, 4)
	cur := &messagev1.SeqRange{First: seqs[0], Last: seqs[0]}
	for _, n := range seqs[1:] {
		switch {
		case n <= cur.Last:
		case n == cur.Last+1:
			cur.Last = n
		default:
			out = append(out, cur)
			cur = &messagev1.SeqRange{First: n, Last: n}
		}
	}
	return append(out, cur)
}

// MaxSpan bounds how many numbers one received range may name, so that a
// malformed range cannot make a loop run for ever.
const MaxSpan = 1 << 20

// Bounds returns the first and last number r names; ok is false for a
// malformed range (last before first, or wider than MaxSpan).
func Bounds(r *messagev1.SeqRange) (first, last uint64, ok bool) {
	first, last = r.GetFirst(), r.GetLast()
	return first, last, last >= first && last-first < MaxSpan
}

// ForEach calls f for every number in ranges, skipping malformed ranges
// (see Bounds).
func ForEach(ranges []*messagev1.SeqRange, f func(uint64)) {
	for _, r := range ranges {
		first, last, ok := Bounds(r)
		if !ok {
			continue
		}
		for n := first; ; n++ {
			f(n)
			if n == last {
				break
			}
		}
	}
}
