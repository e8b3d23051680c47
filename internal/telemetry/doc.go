// Package telemetry holds what Butterfly's intermediates and components share
// to be observed: Prometheus metric sets registered on an injected registry
// (never the global one), the gRPC server and client options that add
// go-grpc-middleware's Prometheus metrics and slog logging and, when tracing
// is on, otelgrpc, and the W3C trace context carried in the message envelope
// across hops.
//
//	reg := prometheus.NewRegistry()
//	pm := telemetry.NewProducerMetrics(reg, "intermediate", "p1")
//	pm.Published(1)
//	// ... later, for one message on its way:
//	ctx, span := tracer.Start(ctx, "send")
//	telemetry.Inject(ctx, msg)
//	span.End()
//
// Every metric set is nil-safe: with no registry the constructors return nil
// and recording on nil costs a nil check.
package telemetry
