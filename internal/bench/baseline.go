package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// The baselines use Butterfly's own wire messages so that they move the
// same bytes, but none of its machinery: no registry, no resolver, no
// balancer, no dedup, no heartbeats. Baseline1Hop is one producer stream to
// a server that acknowledges each batch on receipt: the near-physical limit
// of one hop. BaselineRelay is what a user would write by hand instead of
// Butterfly: producer -> relay -> consumer, the relay acknowledging a batch
// to the producer only once the consumer acknowledged it (end to end).
//
// Both reuse what a careful user would reuse: the request and response
// objects and the message structs of a batch (gRPC serialises a message
// before Send returns), so that they are honest upper bounds.

// ackSink is a PublishService that acknowledges every batch on receipt.
type ackSink struct {
	deliveryv1.UnimplementedPublishServiceServer
	received atomic.Uint64
	// lat, while set, receives each message's time from its stamp
	// (CreateTimeUnixNano) to its arrival here: one way, end to end.
	lat atomic.Pointer[histogram]
}

func (s *ackSink) Publish(stream deliveryv1.PublishService_PublishServer) error {
	ack := newAck()
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		b := req.GetBatch()
		if b == nil || len(b.Messages) == 0 {
			continue
		}
		s.received.Add(uint64(len(b.Messages)))
		if h := s.lat.Load(); h != nil {
			now := time.Now().UnixNano()
			for _, m := range b.Messages {
				h.record(time.Duration(now - m.CreateTimeUnixNano))
			}
		}
		if err := stream.Send(ack.set(b.FirstSeq, b.FirstSeq+uint64(len(b.Messages))-1)); err != nil {
			return err
		}
	}
}

// reusableAck is one acknowledgement frame with a single range, reused for
// every batch of a stream.
type reusableAck struct {
	resp *deliveryv1.PublishResponse
	rng  *messagev1.SeqRange
}

func newAck() reusableAck {
	rng := &messagev1.SeqRange{}
	return reusableAck{
		resp: &deliveryv1.PublishResponse{Kind: &deliveryv1.PublishResponse_Ack{Ack: &deliveryv1.PublishAck{
			Acked: []*messagev1.SeqRange{rng},
		}}},
		rng: rng,
	}
}

func (a reusableAck) set(first, last uint64) *deliveryv1.PublishResponse {
	a.rng.First, a.rng.Last = first, last
	return a.resp
}

// relay is a PublishService that forwards each batch downstream and
// acknowledges it upstream once downstream acknowledged it.
type relay struct {
	deliveryv1.UnimplementedPublishServiceServer
	down deliveryv1.PublishServiceClient
}

func (r *relay) Publish(up deliveryv1.PublishService_PublishServer) error {
	ctx, cancel := context.WithCancel(up.Context())
	defer cancel()
	down, err := r.down.Publish(ctx)
	if err != nil {
		return err
	}
	// pending maps a downstream batch (FIFO: the sink acks in order) to its
	// upstream range.
	type span struct{ first, last uint64 }
	pending := make(chan span, 1<<16)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		ack := newAck()
		for {
			resp, err := down.Recv()
			if err != nil {
				errc <- err
				return
			}
			for range resp.GetAck().GetAcked() {
				var sp span
				select {
				case sp = <-pending:
				case <-ctx.Done():
					errc <- ctx.Err()
					return
				}
				if err := up.Send(ack.set(sp.first, sp.last)); err != nil {
					errc <- err
					return
				}
			}
		}
	}()
	batch := &deliveryv1.PublishBatch{}
	fwd := &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: batch}}
	var downSeq uint64 = 1
	for {
		req, err := up.Recv()
		if err != nil {
			down.CloseSend()
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		b := req.GetBatch()
		if b == nil || len(b.Messages) == 0 {
			continue
		}
		select {
		case pending <- span{b.FirstSeq, b.FirstSeq + uint64(len(b.Messages)) - 1}:
		case err := <-errc:
			return err
		}
		batch.FirstSeq, batch.Messages = downSeq, b.Messages
		downSeq += uint64(len(b.Messages))
		if err := down.Send(fwd); err != nil {
			return err
		}
		select {
		case err := <-errc:
			return err
		default:
		}
	}
}

// serve starts srv on a loopback listener and returns its address and a
// stop function.
func serve(register func(*grpc.Server)) (string, func(), error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	s := grpc.NewServer()
	register(s)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.Serve(lis) //nolint:errcheck // it returns once the stop function stops the server
	}()
	return lis.Addr().String(), func() { s.Stop(); wg.Wait() }, nil
}

// Baseline1Hop measures one producer stream to a server that acknowledges on
// receipt, with cfg's payload, window and batch size.
func Baseline1Hop(ctx context.Context, cfg Config) (Result, error) {
	sink := &ackSink{}
	addr, stop, err := serve(func(s *grpc.Server) { deliveryv1.RegisterPublishServiceServer(s, sink) })
	if err != nil {
		return Result{}, fmt.Errorf("bench: 1-hop baseline: %w", err)
	}
	defer stop()
	return drive(ctx, cfg, addr, pacing{})
}

// BaselineRelay measures producer -> relay -> consumer with end-to-end
// acknowledgements, in plain gRPC.
func BaselineRelay(ctx context.Context, cfg Config) (Result, error) {
	return baselineRelay(ctx, cfg, 0)
}

// BaselineRelayAt measures the relay of BaselineRelay at rate messages a
// second, shared by cfg.Producers streams that send as Butterfly's
// producers do at half load: on every tick of a millisecond, what the rate
// owes since the start. After cfg.Warmup of load it measures, for
// cfg.Duration, each message's latency one way, from its stamp at the
// producer to its arrival at the consumer (the sink), as Butterfly's
// latency runs from Send to the handler. It is the latency the machine
// gives a plain two-hop path at the rate Butterfly is measured at.
func BaselineRelayAt(ctx context.Context, cfg Config, rate float64) (Result, error) {
	if rate <= 0 {
		return Result{}, fmt.Errorf("bench: relay baseline: rate %g is not positive", rate)
	}
	return baselineRelay(ctx, cfg, rate)
}

// baselineRelay is BaselineRelay at saturation (rate 0) or
// BaselineRelayAt.
func baselineRelay(ctx context.Context, cfg Config, rate float64) (Result, error) {
	sink := &ackSink{}
	sinkAddr, stopSink, err := serve(func(s *grpc.Server) { deliveryv1.RegisterPublishServiceServer(s, sink) })
	if err != nil {
		return Result{}, fmt.Errorf("bench: relay baseline: %w", err)
	}
	defer stopSink()
	cc, err := grpc.NewClient(sinkAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return Result{}, fmt.Errorf("bench: relay baseline: %w", err)
	}
	defer cc.Close()
	addr, stop, err := serve(func(s *grpc.Server) {
		deliveryv1.RegisterPublishServiceServer(s, &relay{down: deliveryv1.NewPublishServiceClient(cc)})
	})
	if err != nil {
		return Result{}, fmt.Errorf("bench: relay baseline: %w", err)
	}
	defer stop()
	if rate == 0 {
		return drive(ctx, cfg, addr, pacing{})
	}
	oneWay := &histogram{}
	res, err := drive(ctx, cfg, addr, pacing{
		perStream: rate / float64(cfg.Producers),
		warmup:    cfg.Warmup,
		measure:   func() { sink.lat.Store(oneWay) },
	})
	if err != nil {
		return Result{}, err
	}
	sink.lat.Store(nil)
	res.P50, res.P99, res.P999 = oneWay.quantiles()
	res.Over2ms = oneWay.shareOver(slowBound)
	return res, nil
}

// pacing is how drive loads its streams.
type pacing struct {
	// perStream is the messages a second each stream sends; 0 is as fast
	// as the window allows.
	perStream float64
	// warmup is the load before the measured phase.
	warmup time.Duration
	// measure, if set, is called as the measured phase starts.
	measure func()
}

// drive runs cfg.Producers streams against addr for pace.warmup and then
// cfg.Duration, each keeping at most cfg.Window/cfg.BatchMessages+1 batches
// unacknowledged (cfg.Window messages when the batches are full, fewer
// when paced batches are not), and measures, after the warmup, acked
// messages and batch round trips.
func drive(ctx context.Context, cfg Config, addr string, pace pacing) (Result, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return Result{}, fmt.Errorf("bench: baseline client: %w", err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, pace.warmup+cfg.Duration)
	defer cancel()
	var (
		lat    atomic.Pointer[histogram]
		acked  atomic.Uint64
		wg     sync.WaitGroup
		errs   = make(chan error, cfg.Producers)
		events = &histogram{}
	)
	if pace.warmup == 0 {
		lat.Store(events)
	}
	// Without a warmup the window includes opening and closing the
	// streams: a few hundred allocations over the run, nothing per message.
	start, cpu0, allocs0 := time.Now(), cpuTime(), heapAllocs()
	for p := 0; p < cfg.Producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := driveStream(ctx, cfg, deliveryv1.NewPublishServiceClient(cc), fmt.Sprintf("b%d", p), pace.perStream, &acked, &lat); err != nil {
				errs <- err
			}
		}()
	}
	var acked0 uint64
	if pace.warmup > 0 {
		pause(ctx, pace.warmup)
		lat.Store(events)
		acked0, start, cpu0, allocs0 = acked.Load(), time.Now(), cpuTime(), heapAllocs()
	}
	if pace.measure != nil {
		pace.measure()
	}
	wg.Wait()
	elapsed, cpu, allocs := time.Since(start), cpuTime()-cpu0, heapAllocs().sub(allocs0)
	close(errs)
	for err := range errs {
		return Result{}, fmt.Errorf("bench: baseline stream: %w", err)
	}
	r := newResult(acked.Load()-acked0, elapsed, events)
	r.CPUPerMillion = cpuPerMillion(cpu, r.Messages)
	r.setAllocs(allocs)
	return r, nil
}

// driveStream sends batches on one stream until ctx is done: full ones as
// fast as the window allows, or, at perStream messages a second, on every
// tick of a millisecond what the rate owes since the start, in batches of
// at most cfg.BatchMessages. It records each batch's round trip, to its
// acknowledgement, in lat while lat is set.
func driveStream(ctx context.Context, cfg Config, client deliveryv1.PublishServiceClient, id string, perStream float64, acked *atomic.Uint64, lat *atomic.Pointer[histogram]) error {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stream, err := client.Publish(sctx)
	if err != nil {
		return err
	}
	window := make(chan struct{}, cfg.Window/cfg.BatchMessages+1)
	sent := make(chan time.Time, cap(window))
	recvDone := make(chan error, 1)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				recvDone <- err
				return
			}
			for _, r := range resp.GetAck().GetAcked() {
				acked.Add(r.Last - r.First + 1)
				d := time.Since(<-sent)
				if h := lat.Load(); h != nil {
					h.record(d)
				}
				<-window
			}
		}
	}()
	// One batch of messages, rewritten in place for every send: gRPC has
	// serialised it when Send returns.
	payload := make([]byte, cfg.Payload)
	msgs := make([]*messagev1.Message, cfg.BatchMessages)
	for i := range msgs {
		msgs[i] = &messagev1.Message{Id: &messagev1.MessageId{ProducerId: id, Incarnation: 1}, Payload: payload}
	}
	batch := &deliveryv1.PublishBatch{Messages: msgs}
	req := &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: batch}}
	var tick *time.Ticker
	if perStream > 0 {
		tick = time.NewTicker(time.Millisecond)
		defer tick.Stop()
	}
	var seq uint64 = 1
	start := time.Now()
	for ctx.Err() == nil {
		n := len(msgs)
		if perStream > 0 {
			owed := int64(perStream*time.Since(start).Seconds()) - int64(seq-1)
			if owed <= 0 {
				select {
				case <-tick.C:
				case <-ctx.Done():
				}
				continue
			}
			n = int(min(owed, int64(n)))
		}
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		now := time.Now()
		nano := now.UnixNano()
		for i, m := range msgs[:n] {
			m.Id.Seq = seq + uint64(i)
			m.CreateTimeUnixNano = nano
		}
		batch.FirstSeq, batch.Messages = seq, msgs[:n]
		sent <- now
		if err := stream.Send(req); err != nil {
			break
		}
		seq += uint64(n)
	}
	stream.CloseSend()
	cancel()
	if err := <-recvDone; err != nil && !errors.Is(err, io.EOF) && ctx.Err() == nil {
		return err
	}
	return nil
}
