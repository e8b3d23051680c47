package intermediate

import (
	"fmt"
	"testing"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/seqrange"
	"github.com/butterfly-mesh/butterfly/internal/vtcodec"
)

// BenchmarkGroup_Owner measures finding a message's owner, by the number of
// consumers registered in the group: for the key of the message before (the
// group remembers it), and for a new key each time (a rendezvous pick).
func BenchmarkGroup_Owner(b *testing.B) {
	for _, n := range []int{1, 2, 8, 64} {
		g := &group{name: DefaultGroup}
		for i := range n {
			g.owners = append(g.owners, fmt.Sprintf("consumer-%d", i))
		}
		b.Run(fmt.Sprintf("consumers=%d", n), func(b *testing.B) {
			key := routeKey(&messagev1.Message{Id: &messagev1.MessageId{ProducerId: "producer-1", Seq: 1}})
			b.ReportAllocs()
			for b.Loop() {
				if g.ownerLocked(key) == "" {
					b.Fatal("ownerLocked() = \"\", want an owner")
				}
			}
		})
		b.Run(fmt.Sprintf("consumers=%d/new-keys", n), func(b *testing.B) {
			keys := make([][]byte, 4096)
			for i := range keys {
				keys[i] = fmt.Appendf(nil, "key-%d", i)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if g.ownerLocked(keys[i%len(keys)]) == "" {
					b.Fatal("ownerLocked() = \"\", want an owner")
				}
				i++
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

// hotPath is a server with one producer stream and two consumer groups of
// one consumer each, and a batch of n messages of 256 B to send through it.
type hotPath struct {
	s     *Server
	p     *pubStream
	subs  []*subStream
	msgs  []*messagev1.Message
	batch *deliveryv1.PublishBatch
	rng   *messagev1.SeqRange
	ack   *deliveryv1.DeliveryAck
	spare []uint64 // as pubStream.sendLoop keeps it
}

func newHotPath(b *testing.B, n int, release bool) *hotPath {
	s, p, subs := newRigServer(b, Passthrough(), release, "g1", "g2")
	h := &hotPath{s: s, p: p, subs: subs, rng: &messagev1.SeqRange{}}
	h.ack = &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{h.rng}}
	h.msgs = make([]*messagev1.Message, n)
	for i := range h.msgs {
		h.msgs[i] = &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "producer-1", Incarnation: 1}, Payload: make([]byte, 256)}
	}
	h.batch = &deliveryv1.PublishBatch{Messages: h.msgs}
	return h
}

// next numbers the batch's messages as the producer's next.
func (h *hotPath) next() {
	h.batch.FirstSeq = h.p.expectSeq
	for i, m := range h.msgs {
		m.Id.Seq = h.p.expectSeq + uint64(i)
	}
}

// forward takes each group's deliveries of the batch admitted, lets them go
// as sendLoop does once sent, applies each consumer's ranged ack, and
// folds the producer's acks into ranges.
func (h *hotPath) forward(b *testing.B) {
	s, n := h.s, len(h.msgs)
	for _, sub := range h.subs {
		s.mu.Lock()
		sub.credit = uint64(n)
		out := sub.takeLocked()
		s.mu.Unlock()
		if len(out) != n {
			b.Fatalf("takeLocked() = %d deliveries, want %d", len(out), n)
		}
		h.rng.First, h.rng.Last = out[0].GetDeliveryId(), out[n-1].GetDeliveryId()
		f, err := parseAck(h.ack)
		if err != nil {
			b.Fatalf("parseAck() = %v", err)
		}
		s.mu.Lock()
		sub.sentLocked()
		sub.ackLocked(f)
		s.mu.Unlock()
	}
	s.mu.Lock()
	acks := h.p.acks
	h.p.acks = h.spare[:0]
	s.mu.Unlock()
	if len(acks) != n {
		b.Fatalf("producer acks = %d, want %d", len(acks), n)
	}
	if r := seqrange.Build(acks); len(r) != 1 {
		b.Fatalf("seqrange.Build() = %d ranges, want 1", len(r))
	}
	h.spare = acks
}

// BenchmarkIntermediate_AdmitRouteForward measures an intermediate's hot path
// for one batch of 64 messages from one producer, with two consumer groups of
// one consumer each: admit (validate, process, hold), route each message to
// the owner's stream of both groups, take the deliveries for the wire, apply
// each consumer's ranged ack, and fold the producer's acks into ranges.
// The batch is the same messages every time;
// BenchmarkIntermediate_DecodeAdmitRouteForward decodes a frame for each.
func BenchmarkIntermediate_AdmitRouteForward(b *testing.B) {
	h := newHotPath(b, 64, false)
	b.ReportAllocs()
	for b.Loop() {
		h.next()
		if err := h.p.admit(b.Context(), h.batch); err != nil {
			b.Fatalf("admit() = %v", err)
		}
		h.forward(b)
	}
	b.ReportMetric(float64(b.N*len(h.msgs))/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkIntermediate_DecodeAdmitRouteForward is
// BenchmarkIntermediate_AdmitRouteForward with each batch decoded from its
// frame by the codec, as it comes off the wire: with the messages the server
// is done with given back for the next frames (release=true, the built-in
// processors') and without (a processor of the caller's own).
func BenchmarkIntermediate_DecodeAdmitRouteForward(b *testing.B) {
	for _, release := range []bool{false, true} {
		b.Run(fmt.Sprintf("release=%v", release), func(b *testing.B) {
			h := newHotPath(b, 64, release)
			req := &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: h.batch}}
			var codec vtcodec.Codec
			b.ReportAllocs()
			for b.Loop() {
				h.next()
				frame, err := codec.Marshal(req)
				if err != nil {
					b.Fatalf("Marshal() = %v", err)
				}
				in := &deliveryv1.PublishRequest{}
				err = codec.Unmarshal(frame, in)
				frame.Free()
				if err != nil {
					b.Fatalf("Unmarshal() = %v", err)
				}
				if err := h.p.admit(b.Context(), in.GetBatch()); err != nil {
					b.Fatalf("admit() = %v", err)
				}
				h.forward(b)
			}
			b.ReportMetric(float64(b.N*len(h.msgs))/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
