package intermediate

import (
	"testing"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// TestNackCounts_ByReason checks that every nack reason of the contract has
// a count of its own, and that a reason this version does not know is
// counted as unspecified rather than lost.
func TestNackCounts_ByReason(t *testing.T) {
	var c nackCounts
	if len(c) != len(messagev1.NackReason_name) {
		t.Fatalf("nackCounts has %d reasons, the contract %d", len(c), len(messagev1.NackReason_name))
	}
	nack := func(r messagev1.NackReason) *messagev1.Nack { return &messagev1.Nack{Reason: r} }
	c.add([]*messagev1.Nack{
		nack(messagev1.NackReason_NACK_REASON_INVALID),
		nack(messagev1.NackReason_NACK_REASON_INVALID),
		nack(messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE),
		nack(messagev1.NackReason(99)),
		nack(messagev1.NackReason(-1)),
	})
	for r, want := range map[messagev1.NackReason]uint64{
		messagev1.NackReason_NACK_REASON_INVALID:           2,
		messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE: 1,
		messagev1.NackReason_NACK_REASON_UNSPECIFIED:       2,
		messagev1.NackReason_NACK_REASON_HANDLER_FAILED:    0,
	} {
		if got := c[r].Load(); got != want {
			t.Errorf("count of %v = %d, want %d", r, got, want)
		}
	}
	if got := c.total(); got != 5 {
		t.Errorf("total() = %d, want 5", got)
	}
}
