package components_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// TestDelivery_ManyFailuresAnsweredInFrames checks that 1 000 handler
// failures answered at once (the default credit, WithConcurrency(1000),
// handlers that fail together with errors that quote a payload, as when a
// downstream they all wait on goes away) reach the intermediate, each
// message handled once: the nacks go in frames of at most ackFrameBytes.
// In one frame, 1 000 nacks of 4 KiB details made 4 MB, over the
// intermediate's receive limit (2 × max-batch-bytes + 64 KiB); gRPC refused
// it, the stream ended, and the intermediate sent the same deliveries again,
// 5 to 20 times each.
func TestDelivery_ManyFailuresAnsweredInFrames(t *testing.T) {
	for _, errBytes := range []int{64 << 10, 256 << 10} {
		t.Run(fmt.Sprintf("%dKiB-errors", errBytes>>10), func(t *testing.T) {
			nackBurst(t, 1000, errBytes)
		})
	}
}

// TestDelivery_LongErrorsLeaveHeartbeats checks that 1 000 handlers failing
// together with 3 MiB errors leave the subscribe stream's frames and
// heartbeats their turn: a nack's detail is cut before the consumer's lock,
// and only what is kept of it is looked at. Cut under the lock, each answer
// held it for milliseconds, one after the other, the stream missed its
// heartbeats, and the intermediate sent the deliveries again. max-batch-bytes
// is 8 MiB, so no frame is refused here.
func TestDelivery_LongErrorsLeaveHeartbeats(t *testing.T) {
	nackBurst(t, 1000, 3<<20, intermediate.WithMaxBatch(256, 8<<20))
}

// nackBurst runs, twice on a fresh mesh, n messages to a consumer
// whose n handlers wait until all n are in hand and then fail with an error
// of errBytes; it fails the test at the first attempt in which a handler ran
// more than once per message or a subscribe stream ended.
func nackBurst(t *testing.T, n, errBytes int, hubOpts ...intermediate.Option) {
	for attempt := 1; attempt <= 2; attempt++ {
		if bad, summary := nackBurstOnce(t, n, errBytes, hubOpts...); bad {
			t.Fatalf("attempt %d: %s", attempt, summary)
		} else {
			t.Logf("attempt %d held: %s", attempt, summary)
		}
	}
}

func nackBurstOnce(t *testing.T, n, errBytes int, hubOpts ...intermediate.Option) (bad bool, summary string) {
	m := newMesh(t)
	var refusals atomic.Int64
	var maxNacks, batches, delivs atomic.Int64
	var endsMu sync.Mutex
	var ends, seen []string
	endTap := intermediate.WithGRPCServerOptions(grpc.ChainStreamInterceptor(
		func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			err := handler(srv, ss)
			if info.FullMethod == deliveryv1.SubscribeService_Subscribe_FullMethodName {
				endsMu.Lock()
				ends = append(ends, fmt.Sprintf("%.200v", err))
				endsMu.Unlock()
			}
			return err
		}))
	i1 := m.startHub(components.DefaultService, "i1", "127.0.0.1", append(hubOpts, endTap, wireTap(func(f any) {
		if r, ok := f.(*deliveryv1.SubscribeResponse); ok {
			if b := r.GetBatch(); b != nil {
				batches.Add(1)
				delivs.Add(int64(len(b.GetDeliveries())))
			}
		}
	}, func(f any) {
		if r, ok := f.(*deliveryv1.SubscribeRequest); ok {
			if a := r.GetAck(); a != nil {
				if k := int64(len(a.GetNacked())); k > maxNacks.Load() {
					maxNacks.Store(k)
				}
			}
		}
	}, &refusals, func(error) {}))...)
	long := strings.Repeat("e", errBytes) // an error that quotes a payload
	var calls, entered atomic.Int64
	release := make(chan struct{})
	var once sync.Once
	c := m.consumer("c1", func(ctx context.Context, d *components.Delivery) error {
		calls.Add(1)
		if entered.Add(1) >= int64(n) {
			once.Do(func() { close(release) })
		}
		select {
		case <-release:
		case <-time.After(3 * time.Second):
		}
		return errors.New(long)
	}, components.WithConcurrency(n), components.WithDialOptions(grpc.WithChainStreamInterceptor(
		func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			cs, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil || method != deliveryv1.SubscribeService_Subscribe_FullMethodName {
				return cs, err
			}
			return &recvErrStream{ClientStream: cs, record: func(err error) {
				endsMu.Lock()
				seen = append(seen, fmt.Sprintf("%.160v", err))
				endsMu.Unlock()
			}}, nil
		})))
	waitConsumers(t, 1, i1)
	var nacked atomic.Int64
	p := m.producer("p1", components.WithWindow(2*n), components.WithNackHandler(func(*messagev1.Message, messagev1.NackReason, string) { nacked.Add(1) }))
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	start := time.Now()
	for i := range n {
		if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte{byte(i)}}); err != nil {
			t.Fatalf("Send(#%d) = %v", i+1, err)
		}
	}
	for nacked.Load() < int64(n) && time.Since(start) < 10*time.Second {
		time.Sleep(20 * time.Millisecond)
	}
	st := p.Stats()
	endsMu.Lock()
	defer endsMu.Unlock()
	summary = fmt.Sprintf("after %v: producer Stats() = %+v; %d messages, handler calls %d; largest ack frame the intermediate read: %d nacks; deliveries sent %d in %d batches; consumer c1 has %d streams open; subscribe streams ended at i1: %d %q; c1's Recv errors: %q",
		time.Since(start).Round(time.Millisecond), st, n, calls.Load(), maxNacks.Load(), delivs.Load(), batches.Load(), c.OpenStreams(), len(ends), ends[:min(len(ends), 2)], seen[:min(len(seen), 2)])
	bad = nacked.Load() != int64(n) || calls.Load() != int64(n) || len(ends) != 0
	return bad, summary
}

// recvErrStream records the error that ends a client stream's Recv.
type recvErrStream struct {
	grpc.ClientStream
	record func(error)
}

func (s *recvErrStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil && status.Code(err) != codes.Canceled {
		s.record(err)
	}
	return err
}
