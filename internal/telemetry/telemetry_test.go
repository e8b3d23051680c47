package telemetry

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestTraceContext_RoundTrip injects a span context into a message and
// extracts the same one.
func TestTraceContext_RoundTrip(t *testing.T) {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:     trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
		TraceFlags: trace.FlagsSampled,
	})
	m := &messagev1.Message{}
	Inject(trace.ContextWithSpanContext(context.Background(), sc), m)
	const want = "00-0102030405060708090a0b0c0d0e0f10-0102030405060708-01"
	if got := m.GetTrace().GetTraceparent(); got != want {
		t.Fatalf("Inject() traceparent = %q, want %q", got, want)
	}
	got := trace.SpanContextFromContext(Extract(context.Background(), m))
	if !got.Equal(sc.WithRemote(true)) {
		t.Errorf("Extract() = %v, want %v", got, sc.WithRemote(true))
	}

	empty := &messagev1.Message{}
	Inject(context.Background(), empty)
	if empty.Trace != nil {
		t.Errorf("Inject(no span) set Trace = %v, want nil", empty.Trace)
	}
	if sc := trace.SpanContextFromContext(Extract(context.Background(), empty)); sc.IsValid() {
		t.Errorf("Extract(no trace) = %v, want invalid", sc)
	}
}

// TestProducerMetrics_SharedAcrossProducers registers two producers on one
// registry: they share the vectors and count apart; a nil set records
// nothing.
func TestProducerMetrics_SharedAcrossProducers(t *testing.T) {
	reg := prometheus.NewRegistry()
	zero := func() float64 { return 0 }
	p1, err := NewProducerMetrics(reg, "s", "p1", zero, 10)
	if err != nil {
		t.Fatalf("NewProducerMetrics(p1) = %v", err)
	}
	p2, err := NewProducerMetrics(reg, "s", "p2", zero, 10)
	if err != nil {
		t.Fatalf("NewProducerMetrics(p2) = %v", err)
	}
	p1.Published(3)
	p2.Published(5)
	p2.Resent(ReasonMove, 2)
	p2.Nacked(messagev1.NackReason_NACK_REASON_INVALID)
	var none *ProducerMetrics
	none.Published(1)
	none.Close()
	if got := counterValue(t, p1.published); got != 3 {
		t.Errorf("published(p1) = %v, want 3", got)
	}
	if got := counterValue(t, p2.published); got != 5 {
		t.Errorf("published(p2) = %v, want 5", got)
	}
	if got := counterValue(t, p2.resent[ReasonMove]); got != 2 {
		t.Errorf("resent(p2, move) = %v, want 2", got)
	}
	if got := counterValue(t, p2.nacked[messagev1.NackReason_NACK_REASON_INVALID]); got != 1 {
		t.Errorf("nacked(p2, invalid) = %v, want 1", got)
	}
	if m, err := NewProducerMetrics(nil, "s", "p3", zero, 10); m != nil || err != nil {
		t.Errorf("NewProducerMetrics(nil registry) = %v, %v, want nil, nil", m, err)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatalf("Write() = %v", err)
	}
	return m.GetCounter().GetValue()
}
