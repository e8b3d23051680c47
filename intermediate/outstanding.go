package intermediate

import (
	"cmp"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// outstanding is the set of deliveries sent on one subscribe stream and not
// yet answered, indexed so that an acknowledgement costs O(ranges) plus the
// ids it settles, never O(ids its ranges name): a range is looked up by
// binary search in ids, which are sent in increasing order. Settled ids stay
// in ids as tombstones until they outnumber the live ones. It is guarded by
// Server.mu.
type outstanding struct {
	byID map[uint64]*delivery
	ids  []uint64 // increasing; may hold settled ids (not in byID)
}

func newOutstanding() outstanding {
	return outstanding{byID: make(map[uint64]*delivery)}
}

func (o *outstanding) len() int { return len(o.byID) }

// add records d, sent under id, which is above every id added before.
func (o *outstanding) add(id uint64, d *delivery) {
	o.byID[id] = d
	o.ids = append(o.ids, id)
}

// take removes and returns the delivery sent under id, nil when it is not
// outstanding.
func (o *outstanding) take(id uint64) *delivery {
	d := o.byID[id]
	if d != nil {
		delete(o.byID, id)
		o.compact()
	}
	return d
}

// takeRanges removes the deliveries whose ids fall in ranges, which are
// sorted and disjoint, and calls f for each in id order.
func (o *outstanding) takeRanges(ranges []idRange, f func(*delivery)) {
	i := 0
	for _, r := range ranges {
		if i == len(o.ids) {
			break
		}
		i += sortSearch(o.ids[i:], r.first)
		for ; i < len(o.ids) && o.ids[i] <= r.last; i++ {
			id := o.ids[i]
			if d := o.byID[id]; d != nil {
				delete(o.byID, id)
				f(d)
			}
		}
	}
	o.compact()
}

// takeAll removes and returns every outstanding delivery.
func (o *outstanding) takeAll() []*delivery {
	out := make([]*delivery, 0, len(o.byID))
	for _, id := range o.ids {
		if d := o.byID[id]; d != nil {
			out = append(out, d)
		}
	}
	clear(o.byID)
	o.ids = o.ids[:0]
	return out
}

// compact drops the tombstones once they outnumber the live ids, so that
// walking ids costs at most about twice the live ones; the cost is
// amortised over the removals.
func (o *outstanding) compact() {
	if len(o.ids) <= 2*len(o.byID)+64 {
		return
	}
	kept := o.ids[:0]
	for _, id := range o.ids {
		if _, ok := o.byID[id]; ok {
			kept = append(kept, id)
		}
	}
	o.ids = kept
}

// sortSearch returns the index of the first id in ids not below first.
func sortSearch(ids []uint64, first uint64) int {
	i, _ := slices.BinarySearch(ids, first)
	return i
}

// idRange is an inclusive range of delivery ids.
type idRange struct{ first, last uint64 }

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
	return fmt.Sprintf("ack range [%d, %d]", f.maxRange.first, f.maxRange.last)
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
			f.maxID, f.maxRange = last, idRange{first, last}
		}
		f.acked = append(f.acked, idRange{first, last})
	}
	for _, n := range a.GetNacked() {
		if n.GetSeq() == 0 {
			return nil, status.Error(codes.InvalidArgument, "intermediate: nack of delivery id 0; ids start at 1")
		}
		if n.GetSeq() > f.maxID {
			f.maxID, f.maxNack = n.GetSeq(), true
		}
	}
	slices.SortFunc(f.acked, func(a, b idRange) int { return cmp.Compare(a.first, b.first) })
	merged := f.acked[:0]
	for _, r := range f.acked {
		if n := len(merged); n > 0 && r.first <= merged[n-1].last+1 {
			merged[n-1].last = max(merged[n-1].last, r.last)
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
