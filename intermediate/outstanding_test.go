package intermediate

import (
	"testing"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// TestOutstanding_TakeRanges checks that ranges settle exactly the
// outstanding ids they name, once, whatever their order and overlaps.
func TestOutstanding_TakeRanges(t *testing.T) {
	o := newOutstanding()
	for id := uint64(1); id <= 1000; id++ {
		o.add(id, &delivery{id: id})
	}
	if d := o.take(500); d == nil || d.id != 500 {
		t.Fatalf("take(500) = %v, want delivery 500", d)
	}
	f, err := parseAck(&deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{
		{First: 900, Last: 1000}, {First: 1, Last: 10}, {First: 5, Last: 20}, {First: 400, Last: 600}, {First: 1, Last: 1},
	}})
	if err != nil {
		t.Fatalf("parseAck() = %v", err)
	}
	seen := map[uint64]int{}
	o.takeRanges(f.acked, func(d *delivery) { seen[d.id]++ })
	want := 20 + 200 + 101 // 1..20, 400..600 without 500, 900..1000
	if len(seen) != want {
		t.Errorf("takeRanges() settled %d ids, want %d", len(seen), want)
	}
	for id, n := range seen {
		if n != 1 || id == 500 || (id > 20 && id < 400) || (id > 600 && id < 900) {
			t.Errorf("takeRanges() settled id %d %d times", id, n)
		}
	}
	if o.len() != 1000-want-1 {
		t.Errorf("len() = %d, want %d", o.len(), 1000-want-1)
	}
	o.takeRanges([]idRange{{First: 1, Last: 1000}}, func(*delivery) {})
	if o.len() != 0 {
		t.Errorf("after settling everything: len() = %d, want 0", o.len())
	}
}

// BenchmarkOutstanding_WorstAckFrame measures the work under the lock of the
// costliest frame a consumer can send: max_ack_ranges disjoint ranges that
// fall between 100 000 outstanding deliveries and settle none.
func BenchmarkOutstanding_WorstAckFrame(b *testing.B) {
	o := newOutstanding()
	for id := uint64(2); id <= 200_000; id += 2 {
		o.add(id, &delivery{id: id})
	}
	ranges := make([]idRange, maxAckRanges)
	for i := range ranges {
		odd := uint64(1 + 2*i*(100_000/maxAckRanges))
		ranges[i] = idRange{First: odd, Last: odd}
	}
	b.ReportAllocs()
	for b.Loop() {
		o.takeRanges(ranges, func(*delivery) { b.Fatal("settled an id no range names") })
	}
}
