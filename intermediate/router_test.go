package intermediate

import (
	"fmt"
	"testing"
)

// TestGroup_OwnerRendezvous checks that a key has the same owner whatever
// the order consumers registered in, that removing a consumer moves only its
// own keys, that keys spread, and that only a stream of the registered epoch
// that does not drain takes deliveries.
func TestGroup_OwnerRendezvous(t *testing.T) {
	abc, cba, ab := &group{owners: []string{"a", "b", "c"}}, &group{owners: []string{"c", "b", "a"}}, &group{owners: []string{"a", "b"}}
	counts := map[string]int{}
	for i := range 3000 {
		key := []byte(fmt.Sprint("key-", i))
		x, y := abc.ownerLocked(key), cba.ownerLocked(key)
		if x != y {
			t.Fatalf("owner(%s) = %s and %s for two orders, want the same", key, x, y)
		}
		counts[x]++
		if z := ab.ownerLocked(key); x != "c" && z != x {
			t.Errorf("owner(%s) without c = %s, want %s: only c's keys may move", key, z, x)
		}
	}
	for _, id := range []string{"a", "b", "c"} {
		if counts[id] < 800 {
			t.Errorf("keys owned by %s = %d of 3000, want about 1000", id, counts[id])
		}
	}
	if got := (&group{}).ownerLocked([]byte("x")); got != "" {
		t.Errorf("owner(x) in a group without consumers = %q, want none", got)
	}

	old := &subStream{consumerID: "a", epoch: 1}
	cur := &subStream{consumerID: "a", epoch: 2}
	g := &group{owners: []string{"a"}, epochs: map[string]uint64{"a": 2}, subs: []*subStream{cur, old}}
	if got := g.streamForLocked("a"); got != cur {
		t.Errorf("streamFor(a) = epoch %d, want the stream of the registered epoch 2", got.epoch)
	}
	cur.draining = true
	if got := g.streamForLocked("a"); got != nil {
		t.Errorf("streamFor(a) with its current stream draining = epoch %d, want none", got.epoch)
	}
	if got := g.streamForLocked("b"); got != nil {
		t.Errorf("streamFor(b), not registered = %v, want none", got)
	}
}

// TestGroup_OwnerCacheFollowsOwners checks that the owner a group
// remembers for the last key is the one rendezvous gives, before and after
// its consumers change.
func TestGroup_OwnerCacheFollowsOwners(t *testing.T) {
	s := &Server{}
	g := &group{name: "g"}
	sets := [][]string{{"a", "b", "c"}, {"a", "c"}, {"a", "c", "d", "e"}, {"e"}, {}}
	for _, owners := range sets {
		s.updateGroupLocked(g, true, owners, map[string]uint64{})
		fresh := func(key []byte) string { return (&group{owners: owners}).ownerLocked(key) }
		for i := range 3000 {
			key := []byte(fmt.Sprint("key-", i/3)) // each key three times in a row
			if got, want := g.ownerLocked(key), fresh(key); got != want {
				t.Fatalf("owners %v: owner(%s) = %q, want %q", owners, key, got, want)
			}
		}
	}
}
