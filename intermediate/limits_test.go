package intermediate

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// testLimits are small limits for the envelope tests.
var testLimits = limits{maxMessageBytes: 200, maxHeaders: 3, maxHeaderBytes: 40, maxBatchMessages: 4, maxBatchBytes: 400}

func envelope(producer string, seq uint64, payload string, headers map[string]string) *messagev1.Message {
	return &messagev1.Message{
		Id:      &messagev1.MessageId{ProducerId: producer, Incarnation: 7, Seq: seq},
		Payload: []byte(payload),
		Headers: headers,
	}
}

// TestValidateEnvelope_Limits checks each rule of validateEnvelope and the
// limit its error names.
func TestValidateEnvelope_Limits(t *testing.T) {
	for _, tc := range []struct {
		name    string
		m       *messagev1.Message
		wantErr error
		wantMsg string
	}{
		{"valid", envelope("p1", 1, "x", map[string]string{"a": "b"}), nil, ""},
		{"no id", &messagev1.Message{Payload: []byte("x")}, ErrInvalidEnvelope, "message has no id"},
		{"seq 0", envelope("p1", 0, "x", nil), ErrInvalidEnvelope, "seq 0"},
		{"incarnation 0", &messagev1.Message{Id: &messagev1.MessageId{ProducerId: "p1", Seq: 1}, Payload: []byte("x")}, ErrInvalidEnvelope, "incarnation 0"},
		{"empty producer", envelope("", 1, "x", nil), ErrInvalidEnvelope, "producer_id is empty"},
		{"slash in producer", envelope("a/b", 1, "x", nil), ErrInvalidEnvelope, `contains '/'`},
		{"space in producer", envelope("a b", 1, "x", nil), ErrInvalidEnvelope, `contains ' '`},
		{"long producer", envelope(strings.Repeat("p", MaxProducerIDBytes+1), 1, "x", nil), ErrInvalidEnvelope, "longer than 256"},
		{"large payload", envelope("p1", 1, strings.Repeat("x", 300), nil), ErrMessageTooLarge, "exceeds max-message-bytes 200"},
		{"many headers", envelope("p1", 1, "x", map[string]string{"a": "", "b": "", "c": "", "d": ""}), ErrTooManyHeaders, "4 headers exceeds max-headers 3"},
		{"large headers", envelope("p1", 1, "x", map[string]string{"k": strings.Repeat("v", 40)}), ErrHeadersTooLarge, "headers of 41 bytes exceeds max-header-bytes 40"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateEnvelope(tc.m, proto.Size(tc.m), testLimits)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("validateEnvelope(%v) = %v, want %v", tc.m, err, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("validateEnvelope(%v) = %q, want it to contain %q", tc.m, err, tc.wantMsg)
			}
		})
	}
}

// TestEnvelopeSize_WithoutRoutes checks that envelopeSize is the encoded
// size of a message as its producer first sent it, whatever routes it
// carries.
func TestEnvelopeSize_WithoutRoutes(t *testing.T) {
	m := envelope("p1", 3, "payload", map[string]string{"k": "v"})
	m.LowWaterSeq = 2
	want := proto.Size(m)
	for _, routes := range [][]*messagev1.Route{
		nil,
		{{Group: "g1", Consumer: "c1"}},
		{{Group: "g1", Consumer: "c1", Handled: true}, {Group: strings.Repeat("g", 300), Consumer: "c2"}},
	} {
		m.Routes = routes
		if got := envelopeSize(m); got != want {
			t.Errorf("envelopeSize(message with %d routes) = %d, want %d", len(routes), got, want)
		}
	}
}

// TestValidateFrame_Statuses checks the statuses of malformed and oversized
// publish frames.
func TestValidateFrame_Statuses(t *testing.T) {
	small := func(n int) []*messagev1.Message {
		out := make([]*messagev1.Message, n)
		for i := range out {
			out[i] = envelope("p1", uint64(i+1), strings.Repeat("x", 120), nil)
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		req      *deliveryv1.PublishRequest
		wantCode codes.Code
		wantMsg  string
	}{
		{"hello", &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: &deliveryv1.PublishHello{ProducerId: "p1"}}}, codes.OK, ""},
		{"hello without producer", &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: &deliveryv1.PublishHello{}}}, codes.InvalidArgument, "producer_id is empty"},
		{"hello with bad producer", &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Hello{Hello: &deliveryv1.PublishHello{ProducerId: "p\x00"}}}, codes.InvalidArgument, "contains"},
		{"batch", &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{FirstSeq: 1, Messages: small(2)}}}, codes.OK, ""},
		{"too many messages", &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{FirstSeq: 1, Messages: small(5)}}}, codes.ResourceExhausted, "batch of 5 messages exceeds the batch limit max-batch-messages 4"},
		{"too many bytes", &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{FirstSeq: 1, Messages: small(4)}}}, codes.ResourceExhausted, "exceeds the batch limit max-batch-bytes 400"},
		{"one large message", &deliveryv1.PublishRequest{Kind: &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{FirstSeq: 1, Messages: []*messagev1.Message{envelope("p1", 1, strings.Repeat("x", 500), nil)}}}}, codes.OK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateFrame(tc.req, testLimits)
			if got := status.Code(err); got != tc.wantCode {
				t.Fatalf("validateFrame(%s) = %v, want code %v", tc.name, err, tc.wantCode)
			}
			if err != nil && !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("validateFrame(%s) = %q, want it to contain %q", tc.name, err, tc.wantMsg)
			}
		})
	}
}

// TestStreamLimiter_PerPeer checks that each peer has its own count and that
// a released stream makes room.
func TestStreamLimiter_PerPeer(t *testing.T) {
	l := newStreamLimiter(2, 0)
	for i, want := range []bool{true, true, false} {
		if _, _, ok := l.acquire("10.0.0.1"); ok != want {
			t.Fatalf("acquire(10.0.0.1) #%d = %v, want %v", i+1, ok, want)
		}
	}
	if _, _, ok := l.acquire("10.0.0.2"); !ok {
		t.Fatalf("acquire(10.0.0.2) = false, want true: peers are counted apart")
	}
	l.release("10.0.0.1")
	if n, _, ok := l.acquire("10.0.0.1"); !ok || n != 2 {
		t.Fatalf("acquire(10.0.0.1) after a release = %d, %v, want 2, true", n, ok)
	}
	l.release("10.0.0.1")
	l.release("10.0.0.1")
	l.release("10.0.0.2")
	if len(l.open) != 0 {
		t.Errorf("open after every release = %v, want empty", l.open)
	}
	if _, _, ok := newStreamLimiter(0, 0).acquire("x"); !ok {
		t.Errorf("acquire() with no limit = false, want true")
	}
	if l.total != 0 {
		t.Errorf("total after every release = %d, want 0", l.total)
	}
}

// TestStreamLimiter_Total checks that the cap on all streams holds over
// peers, and that a release makes room.
func TestStreamLimiter_Total(t *testing.T) {
	l := newStreamLimiter(2, 3)
	for i, key := range []string{"a", "b", "c"} {
		if _, total, ok := l.acquire(key); !ok || total != i+1 {
			t.Fatalf("acquire(%s) = %d, %v, want %d, true", key, total, ok, i+1)
		}
	}
	if _, total, ok := l.acquire("d"); ok || total != 3 {
		t.Fatalf("acquire(d) over the total = %d, %v, want 3, false", total, ok)
	}
	l.release("a")
	if _, _, ok := l.acquire("d"); !ok {
		t.Fatalf("acquire(d) after a release = false, want true")
	}
}

// TestDeliveryQueue_Prune checks that prune drops the deliveries of
// finished messages, those moved to another stream and those released, and
// keeps the others in order.
func TestDeliveryQueue_Prune(t *testing.T) {
	var q deliveryQueue
	sub, other := &subStream{}, &subStream{}
	var want []uint64
	for i := range 14 {
		h := &held{seq: uint64(i + 1), done: i%3 == 0}
		d := &delivery{h: h, sub: sub}
		switch i {
		case 4:
			d.sub = other
		case 8:
			d.sub, d.acked = nil, true
		}
		q.push(d)
		if !h.done && d.sub == sub && i > 1 {
			want = append(want, h.seq)
		}
	}
	q.pop()
	q.pop()
	q.prune(sub)
	var got []uint64
	for q.len() > 0 {
		got = append(got, q.front().h.seq)
		q.pop()
	}
	if len(got) != len(want) {
		t.Fatalf("queue after prune = %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("queue after prune = %v, want %v", got, want)
		}
	}
}

// TestRecovered_PanicBecomesInternal checks that the recovery interceptor
// turns a handler's panic into an Internal status without the panic's text.
func TestRecovered_PanicBecomesInternal(t *testing.T) {
	s := &Server{log: slog.New(slog.DiscardHandler)}
	intercept := recovery.UnaryServerInterceptor(recovery.WithRecoveryHandlerContext(s.recovered))
	_, err := intercept(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"}, func(context.Context, any) (any, error) {
		panic("secret detail")
	})
	if status.Code(err) != codes.Internal || strings.Contains(err.Error(), "secret") {
		t.Errorf("panicking handler = %v, want INTERNAL without the panic's text", err)
	}
}

// FuzzValidateEnvelope checks that validateEnvelope never panics and accepts
// only messages within every rule.
func FuzzValidateEnvelope(f *testing.F) {
	for _, m := range []*messagev1.Message{
		envelope("p1", 1, "hello", nil),
		envelope("p1", 1, "x", map[string]string{"trace": "abc", "k": "v"}),
		envelope("", 1, "x", nil),
		envelope("p/1", 2, "x", nil),
		envelope("p1", 0, "x", nil),
		envelope("p1", 1, strings.Repeat("x", 300), nil),
		envelope("p1", 1, "x", map[string]string{"a": "1", "b": "2", "c": "3", "d": "4"}),
		{Payload: []byte("no id")},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatalf("proto.Marshal(%v) = %v", m, err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x02, 0x18, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		var m messagev1.Message
		if err := proto.Unmarshal(data, &m); err != nil {
			return
		}
		size := proto.Size(&m)
		err := validateEnvelope(&m, size, testLimits)
		if err == nil {
			id := m.GetId()
			switch {
			case id == nil || id.GetSeq() == 0:
				t.Fatalf("validateEnvelope(%v) = nil for a message without id or seq", &m)
			case id.GetProducerId() == "" || len(id.GetProducerId()) > MaxProducerIDBytes || !utf8.ValidString(id.GetProducerId()) || strings.ContainsAny(id.GetProducerId(), "/ \t\n"):
				t.Fatalf("validateEnvelope(%v) = nil for producer_id %q", &m, id.GetProducerId())
			case size > testLimits.maxMessageBytes || len(m.GetHeaders()) > testLimits.maxHeaders:
				t.Fatalf("validateEnvelope(%v) = nil for %d bytes, %d headers", &m, size, len(m.GetHeaders()))
			}
			return
		}
		if !errors.Is(err, ErrInvalidEnvelope) && !errors.Is(err, ErrMessageTooLarge) && !errors.Is(err, ErrTooManyHeaders) && !errors.Is(err, ErrHeadersTooLarge) {
			t.Fatalf("validateEnvelope(%v) = %v, want one of the named limits", &m, err)
		}
	})
}
