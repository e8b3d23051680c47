package components

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// BenchmarkProducer_BatchCycle measures a producer's hot path for one batch:
// queue n messages, dispatch them to a stream, pack the batch, and settle it
// with one ranged ack.
func BenchmarkProducer_BatchCycle(b *testing.B) {
	for _, n := range []int{1, 64, 256} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) {
			p, st := newTestStream(n, 1<<20, 1<<20)
			p.window = make(chan struct{}, n)
			msgs := make([]*messagev1.Message, n)
			for i := range msgs {
				msgs[i] = &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p", Incarnation: 1, Seq: uint64(i + 1)}, Payload: make([]byte, 256)}
			}
			a := newAcker()
			b.ReportAllocs()
			for b.Loop() {
				p.mu.Lock()
				for _, m := range msgs {
					p.window <- struct{}{}
					om := p.slab.newOutMsg()
					om.msg, om.size = m, 270
					p.outbox.pushBack(om)
					p.unsettled++
				}
				p.dispatchLocked()
				p.mu.Unlock()
				if got := a.ackAll(p, st); got != n {
					b.Fatalf("the batch held %d messages, want %d", got, n)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkProducer_Send measures Send itself for a batch of 64 messages
// whose window slots are free, as under load: the checks, a window slot, an
// id and creation time, queueing and dispatch; then the batch is packed and
// settled with one ranged ack, which gives the slots back.
func BenchmarkProducer_Send(b *testing.B) {
	const n = 64
	p, st := newSendProducer(b, n)
	payload := make([]byte, 256)
	msgs := make([]*messagev1.Message, n)
	for i := range msgs {
		msgs[i] = &messagev1.Message{Payload: payload}
	}
	ctx, a := context.Background(), newAcker()
	b.ReportAllocs()
	for b.Loop() {
		for _, m := range msgs {
			m.Id, m.CreateTimeUnixNano, m.LowWaterSeq = nil, 0, 0
			if _, err := p.Send(ctx, m); err != nil {
				b.Fatal(err)
			}
		}
		if got := a.ackAll(p, st); got != n {
			b.Fatalf("the batch held %d messages, want %d", got, n)
		}
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkConsumer_ReceiveAndFinish measures a consumer's hot path for a
// batch of 64 deliveries: dedup check, queueing, and the handler's outcome
// turned into acks and credit (the handler itself is not run). With
// in_hand=1024 the handler's outcomes lag 16 batches behind, as under load
// with the default credit, so that many messages are in progress; with
// swapped, each two batches of a producer arrive in the wrong order, over
// two streams, as from a producer that alternates two intermediates.
func BenchmarkConsumer_ReceiveAndFinish(b *testing.B) {
	for _, tc := range []struct {
		inHand     int
		interleave uint64
	}{{64, 1}, {1024, 1}, {1024, 2}, {1024, 16}} {
		name := fmt.Sprintf("in_hand=%d", tc.inHand)
		if tc.interleave > 1 {
			name += fmt.Sprintf("/interleaved=%d", tc.interleave)
		}
		inHand := tc.inHand
		b.Run(name, func(b *testing.B) {
			c, st, st2 := newTestConsumer()
			c.dedup = newDedupSet(DefaultDedupWindow, DefaultDedupProducers)
			const n = 64
			batch := &deliveryv1.DeliveryBatch{Deliveries: make([]*deliveryv1.Delivery, n)}
			for i := range batch.Deliveries {
				batch.Deliveries[i] = &deliveryv1.Delivery{Message: &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "producer-7f3a9c1e", Incarnation: 1}}}
			}
			var (
				batches uint64
				running []*job
			)
			b.ReportAllocs()
			for b.Loop() {
				k, to := batches, st
				if tc.interleave > 1 {
					k, to = batches^(tc.interleave-1), []*subStream{st, st2}[batches%2]
				}
				batches++
				for i, d := range batch.Deliveries {
					seq := k*n + uint64(i) + 1
					d.DeliveryId, d.Message.Id.Seq = batches*n+uint64(i), seq
				}
				c.receive(to, batch)
				c.mu.Lock()
				running = append(running, c.queue...)
				c.queue = nil
				c.mu.Unlock()
				for len(running) >= inHand {
					c.finish(running[0], nil, false)
					running = running[1:]
				}
				c.mu.Lock()
				st.acks, st.credit = st.acks[:0], 0
				st2.acks, st2.credit = st2.acks[:0], 0
				c.mu.Unlock()
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkDedup measures the consumer's dedup window: a miss (new message,
// in order), a hit (a duplicate), out-of-order arrival within 1024, and many
// producer incarnations at once (LRU upkeep).
func BenchmarkDedup(b *testing.B) {
	key := func(seq uint64) msgKey { return msgKey{producerKey{"p", 1}, seq} }
	b.Run("miss", func(b *testing.B) {
		d := newDedupSet(DefaultDedupWindow, DefaultDedupProducers)
		var seq uint64
		b.ReportAllocs()
		for b.Loop() {
			seq++
			k := key(seq)
			if d.seen(k) {
				b.Fatalf("seen(%d) = true on first sight", seq)
			}
			d.mark(k)
		}
	})
	b.Run("hit", func(b *testing.B) {
		d := newDedupSet(DefaultDedupWindow, DefaultDedupProducers)
		const marked = 1 << 16
		for seq := uint64(1); seq <= marked; seq++ {
			d.mark(key(seq))
		}
		var i uint64
		b.ReportAllocs()
		for b.Loop() {
			i++
			if !d.seen(key(i%marked + 1)) {
				b.Fatalf("seen(%d) = false for a marked seq", i%marked+1)
			}
		}
	})
	b.Run("out-of-order", func(b *testing.B) {
		d := newDedupSet(DefaultDedupWindow, DefaultDedupProducers)
		perm := rand.New(rand.NewPCG(1, 2)).Perm(1024)
		var base, i uint64
		b.ReportAllocs()
		for b.Loop() {
			k := key(base + uint64(perm[i]) + 1)
			if !d.seen(k) {
				d.mark(k)
			}
			if i++; i == uint64(len(perm)) {
				i, base = 0, base+uint64(len(perm))
			}
		}
	})
	b.Run("producers=1024", func(b *testing.B) {
		d := newDedupSet(DefaultDedupWindow, DefaultDedupProducers)
		names := make([]string, 1024)
		for i := range names {
			names[i] = fmt.Sprintf("p%d", i)
		}
		var i, seq uint64
		b.ReportAllocs()
		for b.Loop() {
			k := msgKey{producerKey{names[i], 1}, seq/1024 + 1}
			if !d.seen(k) {
				d.mark(k)
			}
			i, seq = (i+1)%1024, seq+1
		}
	})
}

// BenchmarkConsumer_Workers measures the consumer's whole hot path with its
// workers running: batches of 64 deliveries received while the workers take
// each job, run a handler that does nothing and answer it, with at most
// 1 024 messages in hand, as under load with the default credit.
func BenchmarkConsumer_Workers(b *testing.B) {
	for _, workers := range []int{1, 4} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			c, st, _ := newTestConsumer()
			c.dedup = newDedupSet(DefaultDedupWindow, DefaultDedupProducers)
			ctx, cancel := context.WithCancel(context.Background())
			c.ctx = ctx
			var handled atomic.Uint64
			c.handler = func(context.Context, *Delivery) error {
				handled.Add(1)
				return nil
			}
			c.wg.Add(workers)
			for range workers {
				go c.worker()
			}
			const n, inHand = 64, 1024
			var sent uint64
			b.ReportAllocs()
			for b.Loop() {
				batch := &deliveryv1.DeliveryBatch{Deliveries: make([]*deliveryv1.Delivery, n)}
				for i := range batch.Deliveries {
					sent++
					batch.Deliveries[i] = &deliveryv1.Delivery{DeliveryId: sent, Message: &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "producer-7f3a9c1e", Incarnation: 1, Seq: sent}}}
				}
				c.receive(st, batch)
				for sent-handled.Load() > inHand {
					runtime.Gosched()
				}
				c.mu.Lock()
				st.acks, st.credit = st.acks[:0], 0
				c.mu.Unlock()
			}
			for handled.Load() < sent {
				runtime.Gosched()
			}
			b.ReportMetric(float64(sent)/b.Elapsed().Seconds(), "msgs/s")
			cancel()
			c.wg.Wait()
			if got := c.delivered.Load(); got != sent {
				b.Fatalf("delivered %d, want %d", got, sent)
			}
		})
	}
}
