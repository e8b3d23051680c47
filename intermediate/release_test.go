package intermediate

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// releaseRig is a server of one group with one consumer stream and one
// producer stream (newRigServer).
type releaseRig struct {
	s   *Server
	p   *pubStream
	sub *subStream
}

func newReleaseRig(t *testing.T, proc Processor) *releaseRig {
	s, p, subs := newRigServer(t, proc, keepsNoMessage(proc), "g1")
	return &releaseRig{s: s, p: p, sub: subs[0]}
}

// admit admits n messages of the producer and returns them.
func (r *releaseRig) admit(t *testing.T, n int) []*messagev1.Message {
	t.Helper()
	msgs := make([]*messagev1.Message, n)
	for i := range msgs {
		seq := r.p.expectSeq + uint64(i)
		msgs[i] = &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "producer-1", Incarnation: 1, Seq: seq}, Payload: payloadOf(seq)}
	}
	if err := r.p.admit(t.Context(), &deliveryv1.PublishBatch{FirstSeq: r.p.expectSeq, Messages: msgs}); err != nil {
		t.Fatalf("admit() = %v", err)
	}
	return msgs
}

// take takes the deliveries sendLoop would send next, as it does.
func (r *releaseRig) take(t *testing.T, n int) []*deliveryv1.Delivery {
	t.Helper()
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.sub.credit = uint64(n)
	out := r.sub.takeLocked()
	if len(out) != n {
		t.Fatalf("takeLocked() = %d deliveries, want %d", len(out), n)
	}
	return out
}

// ack acknowledges the deliveries as the consumer does.
func (r *releaseRig) ack(t *testing.T, out []*deliveryv1.Delivery) {
	t.Helper()
	f, err := parseAck(&deliveryv1.DeliveryAck{Acked: []*messagev1.SeqRange{{First: out[0].GetDeliveryId(), Last: out[len(out)-1].GetDeliveryId()}}})
	if err != nil {
		t.Fatalf("parseAck() = %v", err)
	}
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.sub.ackLocked(f)
}

// sent is sendLoop's next turn after a batch went out.
func (r *releaseRig) sent() {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	r.sub.sentLocked()
}

func payloadOf(seq uint64) []byte {
	return bytes.Repeat(fmt.Appendf(nil, "%08d", seq), 32)
}

// released reports whether the server gave m back to the codec: the rig's
// few messages wait in its Releaser for a batch to fill.
func (r *releaseRig) released(m *messagev1.Message) bool {
	r.s.mu.Lock()
	defer r.s.mu.Unlock()
	return slices.Contains(r.s.released.Pending(), m)
}

// intact reports whether m still holds message seq.
func intact(m *messagev1.Message, seq uint64) bool {
	return m.GetId().GetSeq() == seq && bytes.Equal(m.GetPayload(), payloadOf(seq))
}

// TestServer_ReleasesMessagesOnlyOnceSent checks when an intermediate gives
// a message back to the codec for the next frames to be decoded into: once
// it is done (acknowledged by its groups, or its producer's stream ended)
// and no batch that carries it is being sent any more; not while gRPC may
// still be encoding it, whichever comes first; and never when the
// processor is one of the caller's own, which may keep it.
func TestServer_ReleasesMessagesOnlyOnceSent(t *testing.T) {
	for _, tc := range []struct {
		name    string
		proc    Processor
		release bool
		// done ends the messages of out while their batch is (or is not)
		// being sent.
		done func(*releaseRig, *testing.T, []*deliveryv1.Delivery)
		// whileSending is whether done comes before the send returns.
		whileSending bool
	}{
		{"acknowledged after the send", Passthrough(), true, (*releaseRig).ack, false},
		{"acknowledged while being sent", Passthrough(), true, (*releaseRig).ack, true},
		{"producer gone while being sent", Passthrough(), true, func(r *releaseRig, _ *testing.T, _ []*deliveryv1.Delivery) {
			r.s.mu.Lock()
			defer r.s.mu.Unlock()
			r.s.abandonLocked(r.p)
		}, true},
		{"producer gone after the send", Passthrough(), true, func(r *releaseRig, _ *testing.T, _ []*deliveryv1.Delivery) {
			r.s.mu.Lock()
			defer r.s.mu.Unlock()
			r.s.abandonLocked(r.p)
		}, false},
		{"a processor of the caller's own", keeper{}, false, (*releaseRig).ack, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newReleaseRig(t, tc.proc)
			msgs := r.admit(t, 4)
			seqs := make([]uint64, len(msgs))
			for i, m := range msgs {
				seqs[i] = m.GetId().GetSeq()
			}
			out := r.take(t, len(msgs))
			for i, d := range out {
				if d.GetMessage() != msgs[i] {
					t.Fatalf("delivery %d carries %v, want the message admitted", i, d.GetMessage())
				}
			}
			check := func(when string, released bool) {
				t.Helper()
				for i, m := range msgs {
					if got := r.released(m); got != released {
						t.Errorf("%s: message %d given back = %v, want %v", when, seqs[i], got, released)
					}
					if !intact(m, seqs[i]) {
						t.Errorf("%s: message %d = %v, want it as admitted", when, seqs[i], m)
					}
				}
			}
			if tc.whileSending {
				tc.done(r, t, out)
				check("done while its batch is being sent", false)
				r.sent()
			} else {
				r.sent()
				check("sent, not done", false)
				tc.done(r, t, out)
			}
			check("done and sent", tc.release)
			r.s.mu.Lock()
			defer r.s.mu.Unlock()
			if r.s.heldTotal != 0 {
				t.Errorf("%d messages held, want 0", r.s.heldTotal)
			}
		})
	}
}

// TestServer_ReleasesReplacedMessages checks that a message a built-in
// processor replaced goes back to the codec as it is admitted, and the
// result it is held as goes once acknowledged.
func TestServer_ReleasesReplacedMessages(t *testing.T) {
	r := newReleaseRig(t, Upper())
	msgs := r.admit(t, 3)
	out := r.take(t, len(msgs))
	for i, m := range msgs {
		if !r.released(m) {
			t.Errorf("message %d replaced by the processor: not given back, want given back as admitted", i+1)
		}
		res := out[i].GetMessage()
		if res == m || res.GetId().GetSeq() != uint64(i+1) || !bytes.Equal(res.GetPayload(), bytes.ToUpper(payloadOf(uint64(i+1)))) {
			t.Fatalf("delivery %d carries %v, want the processor's result for seq %d", i, res, i+1)
		}
	}
	results := make([]*messagev1.Message, len(out))
	for i, d := range out {
		results[i] = d.GetMessage()
	}
	r.sent()
	r.ack(t, out)
	for i, res := range results {
		if !r.released(res) {
			t.Errorf("result %d acknowledged and sent: not given back, want given back", i+1)
		}
	}
	if n := len(r.s.released.Pending()); n != 2*len(msgs) {
		t.Errorf("%d messages given back, want the %d admitted and their %d results", n, len(msgs), len(msgs))
	}
}

// keeper is a processor of the caller's own: it passes every message on.
type keeper struct{}

func (keeper) Name() string { return "keeper" }

func (keeper) Process(_ context.Context, m *messagev1.Message) (*messagev1.Message, error) {
	return m, nil
}
