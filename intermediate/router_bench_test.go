package intermediate

import (
	"fmt"
	"testing"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// BenchmarkGroup_Pick measures the rendezvous pick of a consumer stream for
// one message, by the number of consumers in the group.
func BenchmarkGroup_Pick(b *testing.B) {
	for _, n := range []int{1, 2, 8, 64} {
		b.Run(fmt.Sprintf("consumers=%d", n), func(b *testing.B) {
			g := &group{name: DefaultGroup}
			for i := range n {
				g.subs = append(g.subs, &subStream{consumerID: fmt.Sprintf("consumer-%d", i)})
			}
			key := routeKey(&messagev1.Message{Id: &messagev1.MessageId{ProducerId: "producer-1", Seq: 1}})
			b.ReportAllocs()
			for b.Loop() {
				if g.pickLocked(key) == nil {
					b.Fatal("pickLocked() = nil, want a stream")
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
