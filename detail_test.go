package butterfly_test

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/butterfly-mesh/butterfly"
)

func TestNackDetail(t *testing.T) {
	long := strings.Repeat("é", 3<<20) // two bytes a character
	for _, tc := range []struct {
		name, in string
		want     string // "" to check only the bounds
	}{
		{"short", "handler: bad input", "handler: bad input"},
		{"invalid UTF-8", "bad \xff byte", "bad \uFFFD byte"},
		{"exactly the limit", strings.Repeat("a", butterfly.MaxNackDetail), strings.Repeat("a", butterfly.MaxNackDetail)},
		{"one over", strings.Repeat("a", butterfly.MaxNackDetail+1), ""},
		{"long, two-byte characters", long, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := butterfly.NackDetail(tc.in)
			if tc.want != "" {
				if got != tc.want {
					t.Fatalf("NackDetail = %q, want %q", got, tc.want)
				}
				return
			}
			if len(got) > butterfly.MaxNackDetail {
				t.Fatalf("NackDetail is %d bytes, over %d", len(got), butterfly.MaxNackDetail)
			}
			if !utf8.ValidString(got) {
				t.Fatalf("NackDetail is not valid UTF-8")
			}
			i := strings.LastIndex(got, " … (")
			if i < 0 || !strings.HasSuffix(got, " bytes cut)") {
				t.Fatalf("NackDetail does not say what it cut: ...%q", got[max(0, len(got)-40):])
			}
			if kept := got[:i]; !strings.HasPrefix(tc.in, kept) || len(kept) < butterfly.MaxNackDetail-64 {
				t.Fatalf("NackDetail kept %d bytes that are not the start of the input", len(kept))
			}
			var cut int
			if _, err := fmt.Sscan(got[i+len(" … ("):], &cut); err != nil || cut != len(tc.in)-i {
				t.Fatalf("NackDetail says %q bytes cut, want %d", got[i:], len(tc.in)-i)
			}
		})
	}
}

// TestNackDetail_LongInvalidUTF8 checks that a long detail of bytes that are
// not UTF-8 stays within the limit once each is replaced (three bytes for
// one).
func TestNackDetail_LongInvalidUTF8(t *testing.T) {
	got := butterfly.NackDetail(strings.Repeat("\xff", 10000))
	if len(got) > butterfly.MaxNackDetail || !utf8.ValidString(got) || !strings.HasPrefix(got, "\uFFFD") || !strings.HasSuffix(got, " bytes cut)") {
		t.Fatalf("NackDetail of 10 000 invalid bytes = %d bytes, valid %v, ending %q", len(got), utf8.ValidString(got), got[max(0, len(got)-30):])
	}
}
