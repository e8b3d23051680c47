package components_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// payloadBook keeps what each producer sent under each id, and what each
// group's consumers were handed under it.
type payloadBook struct {
	mu       sync.Mutex
	sent     map[string][]byte            // by id
	got      map[string]map[string][]byte // by group, then id
	handled  map[string]int               // by group
	mismatch []string
}

func newPayloadBook() *payloadBook {
	return &payloadBook{sent: make(map[string][]byte), got: make(map[string]map[string][]byte), handled: make(map[string]int)}
}

func idKey(id *messagev1.MessageId) string {
	return fmt.Sprintf("%s/%d/%d", id.GetProducerId(), id.GetIncarnation(), id.GetSeq())
}

// handler records what a consumer of group is handed; a message handed to
// the group again with other bytes is a mismatch.
func (b *payloadBook) handler(group string) components.Handler {
	return func(_ context.Context, d *components.Delivery) error {
		k := idKey(d.Message.GetId())
		p := bytes.Clone(d.Message.GetPayload())
		b.mu.Lock()
		defer b.mu.Unlock()
		g := b.got[group]
		if g == nil {
			g = make(map[string][]byte)
			b.got[group] = g
		}
		if old, ok := g[k]; ok && !bytes.Equal(old, p) {
			b.mismatch = append(b.mismatch, fmt.Sprintf("group %s, message %s: handed %d bytes, then %d other bytes", group, k, len(old), len(p)))
		}
		g[k] = p
		b.handled[group]++
		return nil
	}
}

func (b *payloadBook) received(group string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.got[group])
}

// TestDelivery_PayloadsIntactWhileConsumersComeAndGo checks every message
// handed to each of two groups against what its producer sent under its id,
// byte for byte, while one group's consumers leave and come back (each
// leaving consumer's deliveries go to the other while their batches may
// still be on the way) and payloads of many sizes pass: an intermediate
// decodes each publish batch into the messages of batches before it once it
// is done with them, their payload arrays included.
func TestDelivery_PayloadsIntactWhileConsumersComeAndGo(t *testing.T) {
	m := newMesh(t)
	n := messageCount(t, 20000)
	i1 := m.startHub("intermediate", "i1", "127.0.0.1")
	i2 := m.startHub("intermediate", "i2", "127.0.0.2")
	m.waitMembers("intermediate", 2)
	book := newPayloadBook()
	opts := func(group string) []components.ConsumerOption {
		return []components.ConsumerOption{components.WithGroup(group), components.WithConcurrency(4)}
	}
	m.consumer("a1", book.handler("ga"), opts("ga")...)
	a2 := m.consumer("a2", book.handler("ga"), opts("ga")...)
	m.consumer("b1", book.handler("gb"), opts("gb")...)
	waitConsumers(t, 3, i1, i2)

	ctx, cancel := context.WithTimeout(context.Background(), 2*defaultTestTimeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, id := range []string{"p1", "p2"} {
		p := m.producer(id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(len(id)), uint64(id[1])))
			for i := range n {
				// Sizes on both sides of the codec's limits: none, a few
				// bytes, the bench's 256, up to 5 KiB.
				size := []int{0, 7, 256, 300, 1000, 4096, 5000}[rng.IntN(7)] + rng.IntN(16)
				payload := make([]byte, size)
				for j := range payload {
					payload[j] = byte(rng.Uint32())
				}
				mid, err := p.Send(ctx, &messagev1.Message{Key: fmt.Appendf(nil, "%d", i%8), Payload: payload})
				if err != nil {
					errs <- fmt.Errorf("Send(%s #%d) = %w", p.ID(), i+1, err)
					return
				}
				book.mu.Lock()
				book.sent[idKey(mid)] = payload
				book.mu.Unlock()
			}
			errs <- p.Close(ctx)
		}()
	}

	// a2 leaves and comes back three times while the load runs: its
	// unacknowledged deliveries go to a1.
	for round := 1; round <= 3; round++ {
		waitUntil(t, fmt.Sprintf("group ga past %d of %d messages", round*2*n/4, 2*n), func() bool {
			return book.received("ga") >= round*2*n/4
		})
		closeCtx, closeCancel := context.WithTimeout(ctx, 10*time.Second)
		if err := a2.Close(closeCtx); err != nil {
			t.Errorf("Close(a2), round %d = %v", round, err)
		}
		closeCancel()
		a2 = m.consumer("a2", book.handler("ga"), opts("ga")...)
	}
	wg.Wait()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []string{"ga", "gb"} {
		waitUntil(t, fmt.Sprintf("group %s handed all %d messages", g, 2*n), func() bool {
			return book.received(g) >= 2*n
		})
	}

	book.mu.Lock()
	defer book.mu.Unlock()
	if len(book.sent) != 2*n {
		t.Fatalf("%d ids sent, want %d", len(book.sent), 2*n)
	}
	for _, g := range []string{"ga", "gb"} {
		wrong, unknown := 0, 0
		for k, p := range book.got[g] {
			want, ok := book.sent[k]
			switch {
			case !ok:
				unknown++
				if unknown <= 5 {
					t.Errorf("group %s handed message %s, which no producer sent", g, k)
				}
			case !bytes.Equal(p, want):
				wrong++
				if wrong <= 5 {
					t.Errorf("group %s handed message %s with %d bytes, want the %d sent", g, k, len(p), len(want))
				}
			}
		}
		if len(book.got[g]) != 2*n || wrong > 0 || unknown > 0 {
			t.Errorf("group %s: %d of %d messages handed, %d with other bytes than sent, %d unknown", g, len(book.got[g]), 2*n, wrong, unknown)
		}
	}
	for _, s := range book.mismatch {
		t.Error(s)
	}
}
