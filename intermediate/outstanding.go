package intermediate

import (
	"cmp"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/seqindex"
)

// outstanding is the set of deliveries sent on one subscribe stream and not
// yet answered, by delivery id: ids are sent in increasing order, so an
// acknowledgement's sorted ranges cost one walk of the ids at most, plus the
// ids they settle, never O(ids its ranges name). It is guarded by Server.mu.
type outstanding struct {
	ids seqindex.Index[*delivery]
}

func newOutstanding() outstanding { return outstanding{} }

func (o *outstanding) len() int { return o.ids.Len() }

// add records d, sent under id, which is above every id added before.
func (o *outstanding) add(id uint64, d *delivery) { o.ids.Push(id, d) }

// take removes and returns the delivery sent under id, nil when it is not
// outstanding.
func (o *outstanding) take(id uint64) *delivery {
	d, _ := o.ids.Remove(id)
	return d
}

// takeRanges removes the deliveries whose ids fall in ranges, which are
// sorted and disjoint, and calls f for each in id order. f must not change
// o.
func (o *outstanding) takeRanges(ranges []idRange, f func(*delivery)) {
	o.ids.RemoveRanges(ranges, func(_ uint64, d *delivery) { f(d) })
}

// takeAll removes and returns every outstanding delivery, in id order.
func (o *outstanding) takeAll() []*delivery {
	out := o.ids.AppendTo(make([]*delivery, 0, o.ids.Len()))
	o.ids.Clear()
	return out
}

// idRange is an inclusive range of delivery ids.
type idRange = seqindex.Range

// ackFrame is a consumer's DeliveryAck checked for its form and folded into
// sorted, disjoint ranges, ready to apply under the server's lock.
type ackFrame struct {
	acked  []idRange
	nacked []*messagev1.Nack
	// The highest id the frame names, and the range (or, when maxNack, the
	// nack) naming it, for the check against the ids sent, which needs the
	// lock.
	maxID    uint64
	maxRange idRange
	maxNack  bool
}

// maxName names the range or nack that names the frame's highest id.
func (f *ackFrame) maxName() string {
	if f.maxNack {
		return fmt.Sprintf("nack of delivery id %d", f.maxID)
	}
	return fmt.Sprintf("ack range [%d, %d]", f.maxRange.First, f.maxRange.Last)
}

// parseAck checks the form of a DeliveryAck without the lock: it names at
// least one id, no range is reversed and no id is 0. Its ranges are sorted
// and merged, so that applying them walks the outstanding ids once.
func parseAck(a *deliveryv1.DeliveryAck) (*ackFrame, error) {
	if len(a.GetAcked()) == 0 && len(a.GetNacked()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "intermediate: ack frame names no delivery")
	}
	if n := len(a.GetAcked()) + len(a.GetNacked()); n > maxAckRanges {
		return nil, status.Errorf(codes.ResourceExhausted, "intermediate: ack frame of %d ranges and nacks exceeds max_ack_ranges %d", n, maxAckRanges)
	}
	f := &ackFrame{acked: make([]idRange, 0, len(a.GetAcked())), nacked: a.GetNacked()}
	for _, r := range a.GetAcked() {
		first, last := r.GetFirst(), r.GetLast()
		switch {
		case last < first:
			return nil, status.Errorf(codes.InvalidArgument, "intermediate: ack range [%d, %d] is reversed (last < first)", first, last)
		case first == 0:
			return nil, status.Errorf(codes.InvalidArgument, "intermediate: ack range [%d, %d] names delivery id 0; ids start at 1", first, last)
		}
		if last > f.maxID {
			f.maxID, f.maxRange = last, idRange{First: first, Last: last}
		}
		f.acked = append(f.acked, idRange{First: first, Last: last})
	}
	for _, n := range a.GetNacked() {
		if n.GetSeq() == 0 {
			return nil, status.Error(codes.InvalidArgument, "intermediate: nack of delivery id 0; ids start at 1")
		}
		if n.GetSeq() > f.maxID {
			f.maxID, f.maxNack = n.GetSeq(), true
		}
	}
	slices.SortFunc(f.acked, func(a, b idRange) int { return cmp.Compare(a.First, b.First) })
	merged := f.acked[:0]
	for _, r := range f.acked {
		if n := len(merged); n > 0 && r.First <= merged[n-1].Last+1 {
			merged[n-1].Last = max(merged[n-1].Last, r.Last)
			continue
		}
		merged = append(merged, r)
	}
	f.acked = merged
	return f, nil
}

// checkSentLocked refuses a frame that names an id above the highest sent
// on the stream.
func (f *ackFrame) checkSentLocked(sub *subStream) error {
	if f.maxID > sub.nextID {
		if sub.nextID == 0 {
			return status.Errorf(codes.InvalidArgument, "intermediate: %s names deliveries never sent: none was sent on this stream", f.maxName())
		}
		return status.Errorf(codes.InvalidArgument, "intermediate: %s names deliveries never sent: ids sent on this stream are 1 to %d", f.maxName(), sub.nextID)
	}
	return nil
}
