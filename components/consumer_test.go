package components

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/registry"
)

// newTestConsumer returns a consumer without connections, and two streams
// of it on two instances.
func newTestConsumer() (*Consumer, *subStream, *subStream) {
	c := &Consumer{
		log:        slog.New(slog.DiscardHandler),
		workReady:  make(chan struct{}, 1),
		changed:    make(chan struct{}, 1),
		streams:    make(map[*subStream]struct{}),
		dedup:      newDedupSet(1024, 8),
		inProgress: newInProgress(),
		ctx:        context.Background(),
	}
	mk := func(name string) *subStream {
		st := &subStream{streamLife: streamLife{wake: make(chan struct{}, 1)}, link: &subLink{link: link{inst: registry.Instance{Name: name}}, c: c}}
		c.streams[st] = struct{}{}
		return st
	}
	return c, mk("i1"), mk("i2")
}

func batchOf(ids ...[2]uint64) *deliveryv1.DeliveryBatch {
	b := &deliveryv1.DeliveryBatch{}
	for _, id := range ids {
		b.Deliveries = append(b.Deliveries, &deliveryv1.Delivery{
			DeliveryId: id[0],
			Message:    &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p", Incarnation: 1, Seq: id[1]}},
		})
	}
	return b
}

func (c *Consumer) popJob(t *testing.T) *job {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) == 0 {
		t.Fatalf("job queue is empty, want a job")
	}
	j := c.queue[0]
	c.queue = c.queue[1:]
	return j
}

// TestConsumer_DuplicateWaitsForOriginal checks that a duplicate arriving
// while the original's handler runs is acknowledged only once the original
// succeeded, and that a later duplicate is acknowledged at once.
func TestConsumer_DuplicateWaitsForOriginal(t *testing.T) {
	c, s1, s2 := newTestConsumer()
	c.receive(s1, batchOf([2]uint64{1, 10}))
	c.receive(s2, batchOf([2]uint64{7, 10}))
	j := c.popJob(t)
	c.mu.Lock()
	if len(c.queue) != 0 || len(s2.acks) != 0 || s2.inHand != 1 {
		t.Errorf("while the original runs: queue=%d, s2 acks=%v, s2 inHand=%d, want 0, [], 1", len(c.queue), s2.acks, s2.inHand)
	}
	c.mu.Unlock()
	c.finish(j, nil, false)
	c.mu.Lock()
	if diff := cmp.Diff([]uint64{1}, s1.acks); diff != "" {
		t.Errorf("s1 acks (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]uint64{7}, s2.acks); diff != "" {
		t.Errorf("s2 acks (-want +got):\n%s", diff)
	}
	if s1.credit != 1 || s2.credit != 1 {
		t.Errorf("credits = %d, %d, want 1, 1", s1.credit, s2.credit)
	}
	c.mu.Unlock()
	c.receive(s2, batchOf([2]uint64{8, 10}))
	c.mu.Lock()
	if diff := cmp.Diff([]uint64{7, 8}, s2.acks); diff != "" {
		t.Errorf("s2 acks after a late duplicate (-want +got):\n%s", diff)
	}
	c.mu.Unlock()
	if st := c.Stats(); st.Delivered != 1 || st.DuplicatesDropped != 2 {
		t.Errorf("Stats() = %+v, want Delivered=1 DuplicatesDropped=2", st)
	}
}

// TestConsumer_FailedOriginalNacksWaiters checks that a handler error nacks
// the original and its waiting duplicates, and leaves the message unmarked so
// that a later copy is handled again.
func TestConsumer_FailedOriginalNacksWaiters(t *testing.T) {
	c, s1, s2 := newTestConsumer()
	c.receive(s1, batchOf([2]uint64{1, 10}))
	c.receive(s2, batchOf([2]uint64{2, 10}))
	c.finish(c.popJob(t), errors.New("boom"), false)
	c.mu.Lock()
	if len(s1.nacks) != 1 || len(s2.nacks) != 1 || s1.nacks[0].GetSeq() != 1 || s2.nacks[0].GetSeq() != 2 ||
		s2.nacks[0].GetReason() != messagev1.NackReason_NACK_REASON_HANDLER_FAILED {
		t.Errorf("nacks = %v, %v, want delivery 1 on s1 and 2 on s2 with HANDLER_FAILED", s1.nacks, s2.nacks)
	}
	c.mu.Unlock()
	c.receive(s1, batchOf([2]uint64{3, 10}))
	c.popJob(t)
}

// TestConsumer_IgnoresDeliveriesWhileDraining checks that deliveries that
// arrive after the consumer asked to drain are left unanswered, for the
// intermediate to hand to another consumer.
func TestConsumer_IgnoresDeliveriesWhileDraining(t *testing.T) {
	c, s1, _ := newTestConsumer()
	s1.drainWanted = true
	c.receive(s1, batchOf([2]uint64{1, 10}))
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue) != 0 || s1.inHand != 0 || len(s1.acks) != 0 {
		t.Errorf("after a delivery while draining: queue=%d inHand=%d acks=%v, want 0, 0, []", len(c.queue), s1.inHand, s1.acks)
	}
}

// TestConsumer_AnswersDuplicatesWhileDraining checks that a copy of a
// message the consumer handled, arriving after it asked to drain, is still
// acknowledged as a duplicate: left unanswered, the intermediate would hand
// it to another consumer, which would handle it again. A new message is
// left unanswered.
func TestConsumer_AnswersDuplicatesWhileDraining(t *testing.T) {
	c, s1, s2 := newTestConsumer()
	c.receive(s1, batchOf([2]uint64{1, 10}))
	c.finish(c.popJob(t), nil, false)
	c.mu.Lock()
	s2.drainWanted = true
	c.mu.Unlock()
	c.receive(s2, batchOf([2]uint64{5, 10}, [2]uint64{6, 11}))
	c.mu.Lock()
	defer c.mu.Unlock()
	if diff := cmp.Diff([]uint64{5}, s2.acks); diff != "" {
		t.Errorf("s2 acks while draining (-want +got):\n%s", diff)
	}
	if len(c.queue) != 0 || s2.inHand != 0 {
		t.Errorf("after deliveries while draining: queue=%d inHand=%d, want 0, 0", len(c.queue), s2.inHand)
	}
}

// TestConsumer_WorkersRunAtOnce checks that a batch queued while every
// worker waits reaches all of them at once: receive wakes one, and each
// worker that takes a job wakes another while jobs remain. Each handler
// holds its job until all of them run, so a worker left waiting would
// hold the batch up; then the workers answer every job, one after another,
// including those of a batch queued while they were busy.
func TestConsumer_WorkersRunAtOnce(t *testing.T) {
	const workers = 4
	c, st, _ := newTestConsumer()
	ctx, cancel := context.WithCancel(context.Background())
	c.ctx = ctx
	var running, handled atomic.Int32
	allRunning := make(chan struct{})
	c.handler = func(ctx context.Context, d *Delivery) error {
		if d.Message.GetId().GetSeq() <= workers {
			if running.Add(1) == workers {
				close(allRunning)
			}
			select {
			case <-allRunning:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		handled.Add(1)
		return nil
	}
	c.wg.Add(workers)
	for range workers {
		go c.worker()
	}
	defer func() {
		cancel()
		c.wg.Wait()
	}()
	// waitLocked polls cond under the consumer's lock and returns with the
	// lock held, cond true or the deadline passed.
	deadline := time.Now().Add(10 * time.Second)
	waitLocked := func(cond func() bool) {
		c.mu.Lock()
		for !cond() && time.Now().Before(deadline) {
			c.mu.Unlock()
			time.Sleep(time.Millisecond)
			c.mu.Lock()
		}
	}
	// Every worker waits before the batch comes.
	waitLocked(func() bool { return c.idleWorkers == workers })
	idle := c.idleWorkers
	c.mu.Unlock()
	if idle != workers {
		t.Fatalf("idle workers = %d, want %d", idle, workers)
	}
	c.receive(st, batchOf([2]uint64{1, 1}, [2]uint64{2, 2}, [2]uint64{3, 3}, [2]uint64{4, 4}))
	select {
	case <-allRunning:
	case <-time.After(10 * time.Second):
		t.Fatalf("%d of %d handlers running at once after 10s, want all", running.Load(), workers)
	}
	var more [][2]uint64
	for seq := uint64(workers + 1); seq <= 100; seq++ {
		more = append(more, [2]uint64{seq, seq})
	}
	c.receive(st, batchOf(more...))
	waitLocked(func() bool { return c.pending == 0 })
	defer c.mu.Unlock()
	if got := handled.Load(); got != 100 || len(st.acks) != 100 || c.pending != 0 || len(c.queue) != 0 {
		t.Fatalf("handled %d, acks %d, pending %d, queued %d; want 100, 100, 0, 0", got, len(st.acks), c.pending, len(c.queue))
	}
}

// TestConsumer_FinishAllocatesNothing checks that answering a handled
// message allocates nothing: finish runs once a message, and one heap
// object there (an error target that escapes, say) is one more allocation
// a message on the whole path.
func TestConsumer_FinishAllocatesNothing(t *testing.T) {
	c, st, _ := newTestConsumer()
	const n = 64
	ids := make([][2]uint64, n)
	for i := range ids {
		ids[i] = [2]uint64{uint64(i + 1), uint64(i + 1)}
	}
	c.receive(st, batchOf(ids...))
	c.mu.Lock()
	jobs := c.queue
	c.queue = nil
	st.acks = make([]uint64, 0, 2*n)
	c.mu.Unlock()
	if len(jobs) != n {
		t.Fatalf("queued %d jobs, want %d", len(jobs), n)
	}
	next := 0
	allocs := testing.AllocsPerRun(n/2, func() {
		c.finish(jobs[next], nil, false)
		next++
	})
	if allocs != 0 {
		t.Errorf("AllocsPerRun(finish) = %v, want 0", allocs)
	}
}
