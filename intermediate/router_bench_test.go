package intermediate

import (
	"fmt"
	"testing"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// BenchmarkGroup_Owner measures the rendezvous pick of a message's owner, by
// the number of consumers registered in the group.
func BenchmarkGroup_Owner(b *testing.B) {
	for _, n := range []int{1, 2, 8, 64} {
		b.Run(fmt.Sprintf("consumers=%d", n), func(b *testing.B) {
			g := &group{name: DefaultGroup}
			for i := range n {
				g.owners = append(g.owners, fmt.Sprintf("consumer-%d", i))
			}
			key := routeKey(&messagev1.Message{Id: &messagev1.MessageId{ProducerId: "producer-1", Seq: 1}})
			b.ReportAllocs()
			for b.Loop() {
				if g.ownerLocked(key) == "" {
					b.Fatal("ownerLocked() = \"\", want an owner")
				}
			}
		})
	}
}

// BenchmarkRendezvousScore measures one score: the hash of a consumer id and
// a routing key.
func BenchmarkRendezvousScore(b *testing.B) {
	key := []byte("producer-1")
	var sum uint64
	b.ReportAllocs()
	for b.Loop() {
		sum += rendezvousScore("consumer-1", key)
	}
	if sum == 0 {
		b.Fatal("rendezvousScore() = 0")
	}
}
