package components

import (
	"slices"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// buildRanges sorts seqs in place and returns them as the fewest inclusive
// ranges. Repeated numbers are folded.
func buildRanges(seqs []uint64) []*messagev1.SeqRange {
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

// maxRangeSpan bounds how many numbers one received range may name, so that a
// malformed range cannot make a loop run for ever.
const maxRangeSpan = 1 << 20

// forEachInRanges calls f for every number in ranges, skipping malformed
// ranges (last before first, or wider than maxRangeSpan).
func forEachInRanges(ranges []*messagev1.SeqRange, f func(uint64)) {
	for _, r := range ranges {
		first, last := r.GetFirst(), r.GetLast()
		if last < first || last-first >= maxRangeSpan {
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
