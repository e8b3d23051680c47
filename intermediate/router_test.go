package intermediate

import (
	"fmt"
	"testing"
)

// TestGroup_PickRendezvous checks that a key goes to the same consumer id
// whatever the order of the streams, that draining consumers get nothing,
// that removing a consumer moves only its own keys, and that keys spread.
func TestGroup_PickRendezvous(t *testing.T) {
	mk := func(ids ...string) *group {
		g := &group{name: DefaultGroup}
		for _, id := range ids {
			g.subs = append(g.subs, &subStream{consumerID: id})
		}
		return g
	}
	abc, cba, ab := mk("a", "b", "c"), mk("c", "b", "a"), mk("a", "b")
	counts := map[string]int{}
	for i := range 3000 {
		key := []byte(fmt.Sprint("key-", i))
		x, y := abc.pickLocked(key), cba.pickLocked(key)
		if x.consumerID != y.consumerID {
			t.Fatalf("pick(%s) = %s and %s for two orders, want the same", key, x.consumerID, y.consumerID)
		}
		counts[x.consumerID]++
		if z := ab.pickLocked(key); x.consumerID != "c" && z.consumerID != x.consumerID {
			t.Errorf("pick(%s) without c = %s, want %s: only c's keys may move", key, z.consumerID, x.consumerID)
		}
	}
	for _, id := range []string{"a", "b", "c"} {
		if counts[id] < 800 {
			t.Errorf("keys routed to %s = %d of 3000, want about 1000", id, counts[id])
		}
	}
	abc.subs[0].draining = true
	for i := range 100 {
		if got := abc.pickLocked([]byte(fmt.Sprint(i))); got.consumerID == "a" {
			t.Fatalf("pick(%d) = a, a draining consumer", i)
		}
	}
	abc.subs[1].draining, abc.subs[2].draining = true, true
	if got := abc.pickLocked([]byte("x")); got != nil {
		t.Errorf("pick(x) with every consumer draining = %s, want nil", got.consumerID)
	}
}
