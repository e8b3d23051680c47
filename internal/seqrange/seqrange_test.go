package seqrange

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/testing/protocmp"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// TestBuild_Table checks that numbers fold into the fewest sorted
// inclusive ranges.
func TestBuild_Table(t *testing.T) {
	r := func(a, b uint64) *messagev1.SeqRange { return &messagev1.SeqRange{First: a, Last: b} }
	for _, tc := range []struct {
		name string
		in   []uint64
		want []*messagev1.SeqRange
	}{
		{"empty", nil, nil},
		{"one", []uint64{4}, []*messagev1.SeqRange{r(4, 4)}},
		{"run", []uint64{3, 1, 2}, []*messagev1.SeqRange{r(1, 3)}},
		{"gaps", []uint64{9, 1, 2, 5, 7, 6}, []*messagev1.SeqRange{r(1, 2), r(5, 7), r(9, 9)}},
		{"repeats", []uint64{2, 2, 3, 3, 1}, []*messagev1.SeqRange{r(1, 3)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Build(append([]uint64(nil), tc.in...))
			if diff := cmp.Diff(tc.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("Build(%v) mismatch (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

// TestForEach_SkipsMalformed checks that every number of valid
// ranges is visited once and malformed ranges are skipped.
func TestForEach_SkipsMalformed(t *testing.T) {
	var got []uint64
	ForEach([]*messagev1.SeqRange{
		{First: 1, Last: 3}, {First: 9, Last: 8}, {First: 10, Last: 10}, {First: 1, Last: MaxSpan + 1},
	}, func(n uint64) { got = append(got, n) })
	if diff := cmp.Diff([]uint64{1, 2, 3, 10}, got); diff != "" {
		t.Errorf("ForEach() visited (-want +got):\n%s", diff)
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
