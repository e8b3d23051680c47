package components

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
)

// TestProducer_SeqSpan checks that a producer whose oldest message stays
// unsettled while later ones pass waits in Send rather than give a seq
// beyond its low-water mark plus the span (lowered here to 8), and goes on
// once the oldest settles: every message it sent lies in the window, none
// is handed back, each is handled once.
func TestProducer_SeqSpan(t *testing.T) {
	defer func(old uint64) { seqSpan = old }(seqSpan)
	seqSpan = 8
	const prefix = "span"
	cli := serveOne(t, prefix)

	release := make(chan struct{})
	var (
		mu      sync.Mutex
		handled = map[uint64]int{}
		outside []uint64
	)
	handler := func(ctx context.Context, d *Delivery) error {
		id := d.Message.GetId()
		if id.GetSeq() == 1 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		mu.Lock()
		defer mu.Unlock()
		handled[id.GetSeq()]++
		if lwm := max(d.Message.GetLowWaterSeq(), 1); id.GetSeq()-lwm >= seqSpan {
			outside = append(outside, id.GetSeq())
		}
		return nil
	}
	c, err := NewConsumer(cli, "c1", handler, WithPrefix(prefix), WithConcurrency(4))
	if err != nil {
		t.Fatalf("NewConsumer() = %v", err)
	}
	defer c.Close(context.Background())
	var nacks []messagev1.NackReason
	p, err := NewProducer(cli, "p1", WithPrefix(prefix), WithBatch(1, 1<<20, 0),
		WithNackHandler(func(_ *messagev1.Message, reason messagev1.NackReason, _ string) {
			mu.Lock()
			nacks = append(nacks, reason)
			mu.Unlock()
		}))
	if err != nil {
		t.Fatalf("NewProducer() = %v", err)
	}
	defer p.Close(context.Background())

	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	for i := range 8 {
		if _, err := p.Send(sctx, &messagev1.Message{Payload: []byte{byte(i)}}); err != nil {
			t.Fatalf("Send(#%d) = %v", i+1, err)
		}
	}
	blocked, bcancel := context.WithTimeout(sctx, 300*time.Millisecond)
	_, err = p.Send(blocked, &messagev1.Message{Payload: []byte("9")})
	bcancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send(#9) while seq 1 is unsettled = %v, want it to wait (context.DeadlineExceeded)", err)
	}
	sent := make(chan error, 1)
	go func() {
		var err error
		for i := 9; i <= 20 && err == nil; i++ {
			_, err = p.Send(sctx, &messagev1.Message{Payload: []byte{byte(i)}})
		}
		sent <- err
	}()
	close(release)
	if err := <-sent; err != nil {
		t.Fatalf("Send(#9..#20) after seq 1 settled = %v", err)
	}
	if err := p.Close(sctx); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != 20 || len(outside) != 0 || len(nacks) != 0 {
		t.Fatalf("handled %d seqs (%v), outside the window %v, nacks %v; want 20, none, none", len(handled), handled, outside, nacks)
	}
	for seq, n := range handled {
		if n != 1 {
			t.Errorf("seq %d handled %d times, want 1", seq, n)
		}
	}
	for _, tc := range []struct {
		seq, lwm uint64
		ok       bool
	}{{butterfly.MaxSeqSpan, 1, true}, {butterfly.MaxSeqSpan + 1, 1, false}, {butterfly.MaxSeqSpan + 1, 0, false}, {butterfly.MaxSeqSpan + 1, 2, true}, {3, 5, false}} {
		if err := butterfly.CheckSeqWindow(tc.seq, tc.lwm); (err == nil) != tc.ok {
			t.Errorf("CheckSeqWindow(%d, %d) = %v, want ok %v", tc.seq, tc.lwm, err, tc.ok)
		}
	}
}

// TestProducer_MarkPastTheSpan checks that the producer's messages carry
// its low-water mark, so that it passes 2^24 seqs in one incarnation: from
// seq 2^24 on (the producer started there), every message is acknowledged
// and handled, none handed back.
func TestProducer_MarkPastTheSpan(t *testing.T) {
	const prefix = "markspan"
	cli := serveOne(t, prefix)
	var (
		mu      sync.Mutex
		handled = map[uint64]uint64{} // low_water_seq by seq
	)
	p := pair(t, cli, prefix, func(_ context.Context, d *Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		handled[d.Message.GetId().GetSeq()] = d.Message.GetLowWaterSeq()
		return nil
	})
	const first = butterfly.MaxSeqSpan
	p.mu.Lock()
	p.nextSeq = first - 1
	p.mu.Unlock()
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	for i := range 3 {
		if err := p.SendWait(sctx, &messagev1.Message{Payload: []byte{byte(i)}}); err != nil {
			t.Fatalf("SendWait(seq %d) = %v", first+i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[uint64]uint64{first: first, first + 1: first + 1, first + 2: first + 2}
	if diff := cmp.Diff(want, handled); diff != "" {
		t.Errorf("low_water_seq by handled seq (-want +got):\n%s", diff)
	}
	if st := p.Stats(); st.Acked != 3 || st.Nacked != 0 {
		t.Errorf("Stats() = %+v, want Acked=3 Nacked=0", st)
	}
}

// TestProducer_StuckOldestKeepsNothingSettled checks that while a
// producer's oldest message stays unsettled (its consumer holds it), the
// messages after it that settle are let go: the producer's live heap grows
// by the window it holds, not by every message sent since the oldest.
func TestProducer_StuckOldestKeepsNothingSettled(t *testing.T) {
	const (
		prefix = "stuck"
		later  = 60000
		// Every later message kept would add about 80 bytes (its outMsg,
		// in its slab, and a slot): 4.8 MB for 60 000. Let go, they add
		// nothing; the limit leaves room for buffers and dedup state.
		limit = 1 << 20
	)
	cli := serveOne(t, prefix)
	release := make(chan struct{})
	p := pair(t, cli, prefix, func(ctx context.Context, d *Delivery) error {
		if d.Message.GetId().GetSeq() == 1 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}, WithConcurrency(4))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	payload := []byte("m")
	// settle sends n messages and waits until all n are acknowledged.
	settle := func(n uint64) {
		t.Helper()
		base := p.Stats().Acked
		for i := range n {
			if _, err := p.Send(ctx, &messagev1.Message{Payload: payload}); err != nil {
				t.Fatalf("Send(#%d) = %v", i+1, err)
			}
		}
		for p.Stats().Acked-base < n {
			if ctx.Err() != nil {
				t.Fatalf("acked %d of %d", p.Stats().Acked-base, n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// Seq 1 is held; a first round sizes the buffers the rest reuse.
	if _, err := p.Send(ctx, &messagev1.Message{Payload: payload}); err != nil {
		t.Fatalf("Send(#1) = %v", err)
	}
	settle(later / 4)
	before := liveHeap()
	settle(later)
	after := liveHeap()
	close(release)
	t.Logf("live heap grew by %d bytes over %d settled messages", int64(after)-int64(before), later)
	if grew := int64(after) - int64(before); grew > limit {
		t.Errorf("live heap grew by %d bytes over %d settled messages behind an unsettled one, want at most %d", grew, later, limit)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if st, want := p.Stats(), uint64(later/4+later+1); st.Acked != want || st.Nacked != 0 {
		t.Errorf("Stats() = %+v, want Acked=%d Nacked=0", st, want)
	}
}

// TestProducer_RetriedMessageKeepsTheMark checks that a message sent
// again while its first send is still queued (SendWait timed out, the
// caller retried) leaves the low-water mark free to rise once both copies
// settle: the mark does not stay at the first copy's seq, and Send does not
// end up waiting for it forever past the span (lowered here to 8).
func TestProducer_RetriedMessageKeepsTheMark(t *testing.T) {
	defer func(old uint64) { seqSpan = old }(seqSpan)
	seqSpan = 8
	const prefix = "retried"
	cli := etcdtest.Start(t).Client(t)
	var handled atomic.Uint64
	p, err := NewProducer(cli, "p1", WithPrefix(prefix), WithBatch(1, 1<<20, 0))
	if err != nil {
		t.Fatalf("NewProducer() = %v", err)
	}
	defer p.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msg := &messagev1.Message{Payload: []byte("x")}
	wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err = p.SendWait(wctx, msg)
	wcancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SendWait() with no intermediate = %v, want context.DeadlineExceeded", err)
	}
	if _, err := p.Send(ctx, msg); err != nil {
		t.Fatalf("Send() again = %v", err)
	}
	startOne(t, cli, prefix)
	c, err := NewConsumer(cli, "c1", func(context.Context, *Delivery) error {
		handled.Add(1)
		return nil
	}, WithPrefix(prefix))
	if err != nil {
		t.Fatalf("NewConsumer() = %v", err)
	}
	defer c.Close(context.Background())
	for i := range 3 * seqSpan {
		if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte{byte(i)}}); err != nil {
			p.mu.Lock()
			lwm, next := p.lowWaterLocked(), p.nextSeq
			p.mu.Unlock()
			t.Fatalf("SendWait(#%d) = %v (low-water mark %d, last seq %d)", i+1, err, lwm, next)
		}
	}
	p.mu.Lock()
	lwm, next := p.lowWaterLocked(), p.nextSeq
	p.mu.Unlock()
	if lwm != next {
		t.Errorf("low-water mark %d with every message settled, want the last seq %d", lwm, next)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	// The retried message went out twice, under seqs 1 and 2 or twice
	// under 2 (dedup may drop the second): at least once.
	if got := handled.Load(); got < 3*seqSpan+1 {
		t.Errorf("handled %d messages, want at least %d", got, 3*seqSpan+1)
	}
}

// pair starts consumer c1 with h and producer p1 under prefix, both closed
// when the test ends (the producer first).
func pair(t *testing.T, cli *clientv3.Client, prefix string, h Handler, copts ...ConsumerOption) *Producer {
	t.Helper()
	c, err := NewConsumer(cli, "c1", h, append([]ConsumerOption{WithPrefix(prefix)}, copts...)...)
	if err != nil {
		t.Fatalf("NewConsumer() = %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	p, err := NewProducer(cli, "p1", WithPrefix(prefix))
	if err != nil {
		t.Fatalf("NewProducer() = %v", err)
	}
	t.Cleanup(func() { p.Close(context.Background()) })
	return p
}

// liveHeap returns the live heap after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// serveOne starts an embedded etcd and one intermediate, i1, under prefix,
// stopped when the test ends, and returns the etcd client.
func serveOne(t *testing.T, prefix string) *clientv3.Client {
	t.Helper()
	cli := etcdtest.Start(t).Client(t)
	startOne(t, cli, prefix)
	return cli
}

// startOne starts intermediate i1 under prefix on cli's etcd, stopped when
// the test ends.
func startOne(t *testing.T, cli *clientv3.Client, prefix string) {
	t.Helper()
	srv, err := intermediate.New(cli, DefaultService, "i1", intermediate.WithPrefix(prefix), intermediate.WithStopTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatalf("intermediate.New() = %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	<-srv.Ready()
}
