package seqrange

import (
	"math/rand/v2"
	"testing"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// BenchmarkBuild measures turning a batch's acknowledged numbers into
// ranges: contiguous, every other one, and shuffled.
func BenchmarkBuild(b *testing.B) {
	for _, tc := range []struct {
		name string
		seqs func() []uint64
	}{
		{"contiguous-64", func() []uint64 { return seqRun(64, 1) }},
		{"gaps-64", func() []uint64 { return seqRun(64, 2) }},
		{"shuffled-1000", func() []uint64 {
			s := seqRun(1000, 1)
			rand.New(rand.NewPCG(3, 4)).Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
			return s
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			src := tc.seqs()
			seqs := make([]uint64, len(src))
			b.ReportAllocs()
			for b.Loop() {
				copy(seqs, src)
				if r := Build(seqs); len(r) == 0 {
					b.Fatal("Build() = no ranges")
				}
			}
		})
	}
}

// BenchmarkForEach measures walking an ack of one 64-number range.
func BenchmarkForEach(b *testing.B) {
	ranges := []*messagev1.SeqRange{{First: 1, Last: 64}}
	var sum uint64
	b.ReportAllocs()
	for b.Loop() {
		ForEach(ranges, func(n uint64) { sum += n })
	}
	if sum == 0 {
		b.Fatal("ForEach() called f for nothing")
	}
}

func seqRun(n int, step uint64) []uint64 {
	s := make([]uint64, n)
	for i := range s {
		s[i] = 1 + uint64(i)*step
	}
	return s
}
