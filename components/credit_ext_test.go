package components_test

// The tests of this file check the credit that rides in acknowledgement
// frames (SubscribeWelcome.ack_credit, DeliveryAck.credit): towards an
// intermediate that does not take it, and in acknowledgement frames split
// by max_ack_ranges with nacks among them. Each checks that the subscribe
// stream's unspent credit comes back to the consumer's credit once every
// delivery is answered (nothing lost, nothing counted twice), and that no
// stream ends with a refusal.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/components"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// wireTap is an intermediate option that shows every frame of a subscribe
// stream to send (before it goes out) and recv (once decoded, before the
// intermediate reads it), and counts the subscribe streams that end with a
// refusal.
func wireTap(send, recv func(any), refusals *atomic.Int64, log func(error)) intermediate.Option {
	return intermediate.WithGRPCServerOptions(grpc.ChainStreamInterceptor(
		func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			if info.FullMethod != deliveryv1.SubscribeService_Subscribe_FullMethodName {
				return handler(srv, ss)
			}
			err := handler(srv, &tappedStream{ServerStream: ss, send: send, recv: recv})
			switch status.Code(err) {
			case codes.ResourceExhausted, codes.InvalidArgument:
				refusals.Add(1)
				log(err)
			}
			return err
		}))
}

// waitCreditBack waits until the hub's only subscribe stream holds credit
// unspent again: every delivery was answered and its credit came back.
func waitCreditBack(t *testing.T, h *hub, credit uint64) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("unspent credit back at %d", credit), func() bool {
		cs := h.status(t).GetConsumers()
		return len(cs) == 1 && cs[0].GetCredit() == credit
	})
}

// TestConsumer_CreditFramesWithoutAckCredit plays an intermediate
// that does not take credit in acknowledgement frames: its welcome leaves
// ack_credit unset and it ignores DeliveryAck.credit. The consumer must
// grant its credit in Credit frames and never in acks; every message is
// handled exactly once and the credit comes back whole.
func TestConsumer_CreditFramesWithoutAckCredit(t *testing.T) {
	const n, credit = 300, 4
	m := newMesh(t)
	var refusals, ackGrants, creditFrames atomic.Int64
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1", wireTap(
		func(f any) {
			if w := f.(*deliveryv1.SubscribeResponse).GetWelcome(); w != nil {
				w.AckCredit = false
			}
		},
		func(f any) {
			r := f.(*deliveryv1.SubscribeRequest)
			switch {
			case r.GetAck() != nil:
				ackGrants.Add(int64(r.GetAck().GetCredit()))
				r.GetAck().Credit = 0 // an older intermediate does not know the field
			case r.GetCredit() != nil:
				creditFrames.Add(1)
			}
		}, &refusals, func(err error) { t.Logf("subscribe stream refused: %v", err) }))
	led := newLedger()
	m.consumer("c1", led.handler(), components.WithCredit(credit))
	waitConsumers(t, 1, h)
	p := m.producer("p1")
	led.deliverAll(t, n, p)
	waitCreditBack(t, h, credit)
	if got := ackGrants.Load(); got != 0 {
		t.Errorf("credit granted in acknowledgement frames = %d, want 0: the welcome did not allow it", got)
	}
	if got := creditFrames.Load(); got < 2 {
		t.Errorf("Credit frames = %d, want the initial grant and more", got)
	}
	if got := refusals.Load(); got != 0 {
		t.Errorf("%d subscribe streams refused, want none", got)
	}
}

// TestConsumer_AckCreditInSplitFramesWithNacks lowers the welcome's
// max_ack_ranges to 1, so that every range and nack goes in a frame of its
// own, while the handler fails every third message: the credit rides in
// the last frame of each round only, no stream is refused, every message is
// handled once (the failed ones handed back to the producer), and the
// unspent credit comes back whole.
func TestConsumer_AckCreditInSplitFramesWithNacks(t *testing.T) {
	const n, credit = 300, 8
	m := newMesh(t)
	var refusals, ackGrants, creditFrames, bigFrames atomic.Int64
	h := m.startHub(components.DefaultService, "i1", "127.0.0.1", wireTap(
		func(f any) {
			if w := f.(*deliveryv1.SubscribeResponse).GetWelcome(); w != nil {
				w.MaxAckRanges = 1
			}
		},
		func(f any) {
			r := f.(*deliveryv1.SubscribeRequest)
			switch {
			case r.GetAck() != nil:
				a := r.GetAck()
				if len(a.GetAcked())+len(a.GetNacked()) > 1 {
					bigFrames.Add(1)
				}
				ackGrants.Add(int64(a.GetCredit()))
			case r.GetCredit() != nil:
				creditFrames.Add(1)
			}
		}, &refusals, func(err error) { t.Logf("subscribe stream refused: %v", err) }))
	var mu sync.Mutex
	calls := map[string]int{}
	var total atomic.Int64
	m.consumer("c1", func(_ context.Context, d *components.Delivery) error {
		payload := string(d.Message.GetPayload())
		mu.Lock()
		calls[payload]++
		mu.Unlock()
		total.Add(1)
		i, _ := strconv.Atoi(payload[strings.LastIndexByte(payload, '-')+1:])
		if i%3 == 0 {
			return fmt.Errorf("refused %s", payload)
		}
		return nil
	}, components.WithCredit(credit), components.WithConcurrency(4))
	waitConsumers(t, 1, h)
	var handedBack atomic.Int64
	p := m.producer("p1", components.WithNackHandler(func(*messagev1.Message, messagev1.NackReason, string) { handedBack.Add(1) }))
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	startLoad(ctx, n, p).wait(t)
	waitUntil(t, fmt.Sprintf("%d handler calls", n), func() bool { return total.Load() >= n })
	waitCreditBack(t, h, credit)
	closeCtx, closeCancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer closeCancel()
	_ = p.Close(closeCtx) // it reports the messages handed back, as it should
	mu.Lock()
	for payload, c := range calls {
		if c != 1 {
			t.Errorf("%s handled %d times, want 1", payload, c)
		}
	}
	if len(calls) != n {
		t.Errorf("%d messages handled, want %d", len(calls), n)
	}
	mu.Unlock()
	if got := handedBack.Load(); got != n/3 {
		t.Errorf("%d messages handed back, want %d", got, n/3)
	}
	if got := bigFrames.Load(); got != 0 {
		t.Errorf("%d acknowledgement frames above max_ack_ranges 1", got)
	}
	if got := ackGrants.Load(); got != n {
		t.Errorf("credit granted in acknowledgement frames = %d, want %d (one per answered delivery)", got, n)
	}
	if got := creditFrames.Load(); got != 1 {
		t.Errorf("Credit frames = %d, want 1 (the initial grant)", got)
	}
	if got := refusals.Load(); got != 0 {
		t.Errorf("%d subscribe streams refused, want none", got)
	}
}
