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
	return drive(ctx, cfg, addr)
}

// BaselineRelay measures producer -> relay -> consumer with end-to-end
// acknowledgements, in plain gRPC.
func BaselineRelay(ctx context.Context, cfg Config) (Result, error) {
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
	return drive(ctx, cfg, addr)
}

// drive runs cfg.Producers streams against addr for cfg.Duration, each
// keeping at most cfg.Window messages unacknowledged, and measures acked
// messages and batch round trips.
func drive(ctx context.Context, cfg Config, addr string) (Result, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return Result{}, fmt.Errorf("bench: baseline client: %w", err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	lat := &histogram{}
	var acked atomic.Uint64
	// The window includes opening and closing the streams: a few hundred
	// allocations over the run, nothing per message.
	start, cpu0, allocs0 := time.Now(), cpuTime(), heapAllocs()
	var wg sync.WaitGroup
	errs := make(chan error, cfg.Producers)
	for p := 0; p < cfg.Producers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := driveStream(ctx, cfg, deliveryv1.NewPublishServiceClient(cc), fmt.Sprintf("b%d", p), &acked, lat); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	elapsed, cpu, allocs := time.Since(start), cpuTime()-cpu0, heapAllocs().sub(allocs0)
	close(errs)
	for err := range errs {
		return Result{}, fmt.Errorf("bench: baseline stream: %w", err)
	}
	r := newResult(acked.Load(), elapsed, lat)
	r.CPUPerMillion = cpuPerMillion(cpu, r.Messages)
	r.setAllocs(allocs)
	return r, nil
}

func driveStream(ctx context.Context, cfg Config, client deliveryv1.PublishServiceClient, id string, acked *atomic.Uint64, lat *histogram) error {
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
				lat.record(time.Since(<-sent))
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
	var seq uint64 = 1
	for ctx.Err() == nil {
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		now := time.Now()
		nano := now.UnixNano()
		for i, m := range msgs {
			m.Id.Seq = seq + uint64(i)
			m.CreateTimeUnixNano = nano
		}
		batch.FirstSeq = seq
		sent <- now
		if err := stream.Send(req); err != nil {
			break
		}
		seq += uint64(len(msgs))
	}
	stream.CloseSend()
	cancel()
	if err := <-recvDone; err != nil && !errors.Is(err, io.EOF) && ctx.Err() == nil {
		return err
	}
	return nil
}
