package telemetry

import (
	"context"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// TracerName is the instrumentation name of Butterfly's tracers.
const TracerName = "github.com/butterfly-mesh/butterfly"

// propagator is W3C trace context: Message.trace holds exactly its two
// headers.
var propagator = propagation.TraceContext{}

// traceCarrier adapts a message's TraceContext to a TextMapCarrier.
type traceCarrier struct{ tc *messagev1.TraceContext }

var _ propagation.TextMapCarrier = traceCarrier{}

func (c traceCarrier) Get(key string) string {
	switch key {
	case "traceparent":
		return c.tc.GetTraceparent()
	case "tracestate":
		return c.tc.GetTracestate()
	}
	return ""
}

func (c traceCarrier) Set(key, value string) {
	switch key {
	case "traceparent":
		c.tc.Traceparent = value
	case "tracestate":
		c.tc.Tracestate = value
	}
}

func (c traceCarrier) Keys() []string { return []string{"traceparent", "tracestate"} }

// Inject writes the span context of ctx into m.Trace, replacing what was
// there; without a valid span context it leaves m alone.
func Inject(ctx context.Context, m *messagev1.Message) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	tc := &messagev1.TraceContext{}
	propagator.Inject(ctx, traceCarrier{tc})
	m.Trace = tc
}

// Extract returns ctx with the remote span context carried in m.Trace, if
// any.
func Extract(ctx context.Context, m *messagev1.Message) context.Context {
	if m.GetTrace().GetTraceparent() == "" {
		return ctx
	}
	return propagator.Extract(ctx, traceCarrier{m.GetTrace()})
}

// Tracer returns Butterfly's tracer of tp, or nil when tp is nil (tracing
// off).
func Tracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		return nil
	}
	return tp.Tracer(TracerName)
}
