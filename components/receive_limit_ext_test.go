package components_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/registry"
)

// TestConsumer_ReceiveLimit checks that an intermediate whose max-batch-bytes
// is above what a consumer receives (its max_receive_bytes) sends it no
// larger batch, and hands a message that alone would not fit back to its
// producer for good: a backlog that waited for the consumer is cut into
// batches it takes, every message handled once; a message over its limit
// fails (NACK_REASON_INVALID naming the consumer and its limit), and what
// follows is handled. Before, the consumer kept gRPC's 4 MiB receive limit
// and stated none: a batch or a message over it ended its stream with
// RESOURCE_EXHAUSTED, and the intermediate sent the same deliveries again on
// every new stream, without end. The default limit takes what an
// intermediate with max-batch-bytes of 8 MiB sends.
func TestConsumer_ReceiveLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int // 0: the default
		big   int // a message over the limit; 0: none
	}{
		{"default", 0, 0},
		{"1 MiB", 1 << 20, 2 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			i1 := m.startHub(components.DefaultService, "i1", "127.0.0.1", intermediate.WithMaxBatch(256, 8<<20))
			ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
			defer cancel()
			if _, err := registry.CreateGroup(ctx, m.cli, components.DefaultService, components.DefaultGroup, "operator", registry.WithPrefix(testPrefix)); err != nil {
				t.Fatalf("CreateGroup = %v", err)
			}
			p := m.producer("p1", components.WithMaxMessageBytes(8<<20))
			waitProducer(t, "p1", i1)
			// A backlog of 100 messages of 100 KB waits at i1 for the
			// consumer: 10 MB, more than one batch of 8 MiB.
			const n = 100
			for i := range n {
				if _, err := p.Send(ctx, &messagev1.Message{Payload: bytes.Repeat([]byte{byte(i)}, 100<<10)}); err != nil {
					t.Fatalf("Send(#%d) = %v", i+1, err)
				}
			}
			waitUntil(t, "the backlog to reach i1", func() bool { return i1.status(t).GetReceived() == n })
			led := newLedger()
			var opts []components.ConsumerOption
			if tc.limit != 0 {
				opts = append(opts, components.WithMaxReceiveBytes(tc.limit))
			}
			m.consumer("c1", led.handler(), opts...)
			waitConsumers(t, 1, i1)
			// One message of 5 MiB, within i1's limits and the default
			// receive limit; or one over the consumer's.
			want := n + 2 // the backlog, the 5 MiB message, the one after
			if tc.big == 0 {
				if err := p.SendWait(ctx, &messagev1.Message{Payload: bytes.Repeat([]byte("y"), 5<<20)}); err != nil {
					t.Errorf("SendWait(5 MiB) = %v, want nil", err)
				}
			} else {
				want--
				err := p.SendWait(ctx, &messagev1.Message{Payload: bytes.Repeat([]byte("z"), tc.big)})
				var ne *components.NackError
				if !errors.As(err, &ne) || ne.Reason != messagev1.NackReason_NACK_REASON_INVALID ||
					!strings.Contains(ne.Detail, "consumer c1") || !strings.Contains(ne.Detail, "max_receive_bytes") {
					t.Errorf("SendWait(%d bytes) = %.300v, want a NackError with NACK_REASON_INVALID naming consumer c1 and its max_receive_bytes", tc.big, err)
				}
			}
			if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("after")}); err != nil {
				t.Errorf("SendWait(after) = %v, want nil", err)
			}
			if err := p.Close(ctx); tc.big == 0 && err != nil {
				t.Errorf("Close() = %v, want nil", err)
			}
			if st := p.Stats(); st.Acked != uint64(want) || st.InFlight != 0 {
				t.Errorf("producer Stats() = %+v, want Acked=%d InFlight=0", st, want)
			}
			led.mu.Lock()
			defer led.mu.Unlock()
			got := led.counts["p1"]
			for seq := uint64(1); seq <= n+2; seq++ {
				wantN := 1
				if tc.big != 0 && seq == n+1 {
					wantN = 0 // over the consumer's limit
				}
				if got[seq] != wantN {
					t.Errorf("message p1/%d handled %d times, want %d", seq, got[seq], wantN)
				}
			}
		})
	}
}

// TestDelivery_RoutesTooLargeToCarryFail checks that a message whose routes
// would be more than a message sent again may carry (here the routes of
// three groups named in 1 000 bytes each that handled it, over a
// max-batch-bytes of 2 KiB) fails where it is handed back, as INVALID
// saying why, rather than going back with those routes: sent again it would
// be refused INVALID anyway, and the nack carrying them could be over what
// its producer receives (routes to 2 200 groups made a frame of 4.5 MB,
// which ended the producer's stream). The fourth group's owner is
// registered but not connected, so the message is handed back.
func TestDelivery_RoutesTooLargeToCarryFail(t *testing.T) {
	m := newMesh(t)
	i1 := m.startHub(components.DefaultService, "i1", "127.0.0.1", intermediate.WithMaxBatch(256, 2<<10))
	registerConsumer(t, m, "ghost") // owns everything of the default group, never connects
	for i, c := range []string{"a", "b", "c"} {
		m.consumer(fmt.Sprintf("c%d", i+1), newLedger().handler(), components.WithGroup(strings.Repeat(c, 1000)))
	}
	waitConsumers(t, 3, i1)
	p := m.producer("p1")
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("x")})
	var ne *components.NackError
	if !errors.As(err, &ne) || ne.Reason != messagev1.NackReason_NACK_REASON_INVALID ||
		!strings.Contains(ne.Detail, "OWNER_UNREACHABLE") || !strings.Contains(ne.Detail, "more than a message sent again may carry") {
		t.Fatalf("SendWait = %.400v, want a NackError with NACK_REASON_INVALID saying its routes are too large to carry", err)
	}
	if st := p.Stats(); st.Resent != 0 || st.Nacked != 1 || st.InFlight != 0 {
		t.Errorf("producer Stats() = %+v, want Resent=0 Nacked=1 InFlight=0", st)
	}
}
