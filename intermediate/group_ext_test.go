package intermediate_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

// waitConsumers polls the admin status until n consumer streams are connected.
func (r *rig) waitConsumers(n int) {
	r.t.Helper()
	admin := adminv1.NewAdminServiceClient(r.conn)
	deadline := time.Now().Add(defaultTestTimeout)
	for {
		st, err := admin.GetStatus(r.ctx(), &adminv1.GetStatusRequest{})
		if err == nil && len(st.GetConsumers()) == n {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("GetStatus() consumers = %v, %v; want %d", st.GetConsumers(), err, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestServer_GroupRestartMissesNothing checks that a group whose only
// consumer is away for a moment still receives every message: the message is
// acknowledged to its producer only once that group's returning consumer has
// acknowledged it too.
func TestServer_GroupRestartMissesNothing(t *testing.T) {
	r := newRig(t)
	ctxA, cancelA := context.WithCancel(r.ctx())
	defer cancelA()
	subA := r.subscribeGroup(ctxA, "a", "audit", 10)
	ctxB, cancelB := context.WithCancel(r.ctx())
	r.subscribeGroup(ctxB, "b", "billing", 10)
	r.waitConsumers(2)
	cancelB() // billing's only consumer restarts
	r.waitConsumers(1)

	pub := r.producer("p1")
	sendBatch(t, pub, 1, msg("p1", 1, "x"))
	d := nextDeliveries(t, subA)
	if len(d) != 1 || d[0].GetMessage().GetId().GetSeq() != 1 {
		t.Fatalf("audit deliveries = %v, want seq 1", d)
	}
	ackDeliveries(t, subA, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: d[0].GetDeliveryId(), Last: d[0].GetDeliveryId()}}})

	acks := make(chan *deliveryv1.PublishAck, 1)
	go func() {
		for {
			resp, err := pub.Recv()
			if err != nil {
				close(acks)
				return
			}
			if a := resp.GetAck(); a != nil {
				acks <- a
			}
		}
	}()
	select {
	case a := <-acks:
		t.Fatalf("PublishAck %v while billing has no consumer, want none until billing handled it", a)
	case <-time.After(50 * time.Millisecond):
	}

	ctxB2, cancelB2 := context.WithCancel(r.ctx())
	defer cancelB2()
	subB := r.subscribeGroup(ctxB2, "b", "billing", 10)
	d = nextDeliveries(t, subB)
	if len(d) != 1 || d[0].GetMessage().GetId().GetSeq() != 1 {
		t.Fatalf("billing deliveries after its consumer came back = %v, want seq 1", d)
	}
	ackDeliveries(t, subB, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: d[0].GetDeliveryId(), Last: d[0].GetDeliveryId()}}})
	select {
	case a := <-acks:
		if len(a.GetAcked()) != 1 || a.GetAcked()[0].GetFirst() != 1 || a.GetAcked()[0].GetLast() != 1 {
			t.Fatalf("PublishAck = %v, want seq 1", a)
		}
	case <-time.After(defaultTestTimeout):
		t.Fatalf("no PublishAck after both groups acknowledged")
	}
	cancelA()
	cancelB2()
}

// slowProcessor takes longer over each message than a publish stream may be
// silent.
type slowProcessor struct{ d time.Duration }

func (slowProcessor) Name() string { return "slow" }

func (p slowProcessor) Process(ctx context.Context, m *messagev1.Message) (*messagev1.Message, error) {
	select {
	case <-time.After(p.d):
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestServer_SlowProcessorKeepsStream checks that a processor slower than the
// heartbeat timeout does not get a healthy publish stream declared dead: the
// producer's heartbeats wait in the stream while the batch is processed.
func TestServer_SlowProcessorKeepsStream(t *testing.T) {
	r := newRig(t, intermediate.WithProcessor(slowProcessor{d: 800 * time.Millisecond}))
	sub := r.subscribe("a", 10)
	// 100ms heartbeats: silent for 500ms is dead.
	pub, w := r.publish(&deliveryv1.PublishHello{ProducerId: "p1", Incarnation: 1, Instance: "i1", HeartbeatIntervalMs: 100})
	if w == nil {
		t.Fatalf("publish stream got no welcome")
	}
	sendBatch(t, pub, 1, msg("p1", 1, "x"))
	d := nextDeliveries(t, sub)
	if len(d) != 1 {
		t.Fatalf("deliveries = %v, want 1", d)
	}
	ackDeliveries(t, sub, &deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: d[0].GetDeliveryId(), Last: d[0].GetDeliveryId()}}})
	if a := nextAck(t, pub); len(a.GetAcked()) != 1 || a.GetAcked()[0].GetFirst() != 1 {
		t.Fatalf("PublishAck = %v, want seq 1", a)
	}
}

// TestServer_RedeliveriesCountPerGroup checks that a message's redeliveries
// count its deliveries to its group: each group's first delivery of it says
// 0, whatever the other groups got, and a redelivery within a group says 1.
func TestServer_RedeliveriesCountPerGroup(t *testing.T) {
	r := newRig(t)
	subA := r.subscribeGroup(r.ctx(), "a", "audit", 10)
	ctxB, cancelB := context.WithCancel(r.ctx())
	subB := r.subscribeGroup(ctxB, "b", "billing", 10)
	r.waitConsumers(2)

	pub := r.producer("p1")
	sendBatch(t, pub, 1, msgs("p1", 1, 3)...)
	for name, sub := range map[string]deliveryv1.SubscribeService_SubscribeClient{"audit": subA, "billing": subB} {
		var got []string
		for len(got) < 3 {
			for _, d := range nextDeliveries(t, sub) {
				got = append(got, fmt.Sprintf("%d:%d", d.GetMessage().GetId().GetSeq(), d.GetRedeliveries()))
			}
		}
		if want := []string{"1:0", "2:0", "3:0"}; !slices.Equal(got, want) {
			t.Errorf("%s's first deliveries (seq:redeliveries) = %v, want %v", name, got, want)
		}
	}

	// billing's consumer goes without acknowledging; its successor gets the
	// three again, each once redelivered.
	cancelB()
	r.waitConsumers(1)
	subB2 := r.subscribeGroup(r.ctx(), "b", "billing", 10)
	var got []string
	for len(got) < 3 {
		for _, d := range nextDeliveries(t, subB2) {
			got = append(got, fmt.Sprintf("%d:%d", d.GetMessage().GetId().GetSeq(), d.GetRedeliveries()))
		}
	}
	if want := []string{"1:1", "2:1", "3:1"}; !slices.Equal(got, want) {
		t.Errorf("billing's deliveries after its consumer came back (seq:redeliveries) = %v, want %v", got, want)
	}
}

// TestServer_SaysItsOwnerIsNotConnected checks that handing messages back
// because their owner is registered but has no stream here is logged at
// WARN, naming the group and the consumer, once per awayWarnEvery however
// many hand-backs follow; and that an owner registered by a key without a
// lease, which no consumer process writes and which never lapses, is said
// to be one, with its key.
func TestServer_SaysItsOwnerIsNotConnected(t *testing.T) {
	tests := []struct {
		name     string
		register func(r *rig)
		msg      string
		key      bool
	}{
		{name: "registered", register: func(r *rig) { r.register(intermediate.DefaultGroup, "ghost") },
			msg: "intermediate: consumer registered but not connected here; its messages went back to their producers"},
		{name: "key written without a lease", register: func(r *rig) {
			if _, err := registry.CreateGroup(r.ctx(), r.cli, service, intermediate.DefaultGroup, "test", registry.WithPrefix(prefix)); err != nil {
				t.Fatalf("CreateGroup() = %v", err)
			}
			key := registry.ConsumerKey(prefix, service, intermediate.DefaultGroup, "ghost")
			if _, err := r.cli.Put(r.ctx(), key, `{"consumer":"ghost","group":"default","epoch":1}`); err != nil {
				t.Fatalf("Put(%s) = %v", key, err)
			}
		}, msg: "intermediate: consumer registered by a key without a lease, which never lapses, and not connected here; its messages went back to their producers: delete the key if no such consumer runs",
			key: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs logtest.Recorder
			r := newRig(t, intermediate.WithOwnerWait(100*time.Millisecond), intermediate.WithNoConsumerTimeout(200*time.Millisecond),
				intermediate.WithLogger(logs.Logger()))
			tc.register(r)
			pub := r.producer("p1")
			// Until the server has read the registration, the group has no
			// consumer and its messages come back NO_CONSUMER.
			seq := uint64(0)
			for reason := messagev1.NackReason(0); reason != messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE; {
				if seq++; seq > 50 {
					t.Fatalf("no OWNER_UNREACHABLE hand-back in 50 messages")
				}
				sendBatch(t, pub, seq, msg("p1", seq, "x"))
				a := nextAck(t, pub)
				if len(a.GetNacked()) != 1 {
					t.Fatalf("PublishAck = %v, want seq %d handed back", a, seq)
				}
				reason = a.GetNacked()[0].GetReason()
			}
			sendBatch(t, pub, seq+1, msgs("p1", seq+1, seq+3)...)
			if a := nextAck(t, pub); len(a.GetNacked()) != 3 || a.GetNacked()[0].GetReason() != messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE {
				t.Fatalf("PublishAck = %v, want 3 seqs handed back OWNER_UNREACHABLE", a)
			}
			got := logs.Attrs(tc.msg)
			if len(got) != 1 || got[0]["group"] != intermediate.DefaultGroup || got[0]["consumer"] != "ghost" || fmt.Sprint(got[0]["count"]) != "1" {
				t.Errorf("warnings %q = %v, want one naming group %s, consumer ghost and the 1 message of its first hand-back", tc.msg, got, intermediate.DefaultGroup)
			}
			wantKey := registry.ConsumerKey(prefix, service, intermediate.DefaultGroup, "ghost")
			if tc.key && (len(got) != 1 || got[0]["key"] != wantKey) {
				t.Errorf("warnings %q = %v, want the key %s named", tc.msg, got, wantKey)
			}
		})
	}
}
