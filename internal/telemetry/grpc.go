package telemetry

import (
	"context"
	"fmt"
	"log/slog"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
)

// Observe is what a server or a client is observed with; every field may be
// nil (off).
type Observe struct {
	// Registry receives the gRPC metrics.
	Registry prometheus.Registerer
	// Logger logs every RPC at its end: at debug level when it succeeded or
	// was canceled, else at the level go-grpc-middleware gives its code.
	Logger *slog.Logger
	// TracerProvider traces every RPC through otelgrpc.
	TracerProvider trace.TracerProvider
}

// ServerOptions returns the gRPC server options of o: metrics and logging
// interceptors (chained, so they add to any others) and the otelgrpc stats
// handler. Call InitServer once the services are registered.
func ServerOptions(o Observe) ([]grpc.ServerOption, *grpcprom.ServerMetrics, error) {
	var (
		unary  []grpc.UnaryServerInterceptor
		stream []grpc.StreamServerInterceptor
		opts   []grpc.ServerOption
		sm     *grpcprom.ServerMetrics
	)
	if o.TracerProvider != nil {
		opts = append(opts, grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(o.TracerProvider),
			otelgrpc.WithPropagators(propagation.TraceContext{}))))
	}
	if o.Registry != nil {
		var err error
		sm, err = Shared(o.Registry, grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram()))
		if err != nil {
			return nil, nil, fmt.Errorf("telemetry: gRPC server metrics: %w", err)
		}
		unary = append(unary, sm.UnaryServerInterceptor())
		stream = append(stream, sm.StreamServerInterceptor())
	}
	if o.Logger != nil {
		lopts := logOptions(logging.DefaultServerCodeToLevel)
		unary = append(unary, logging.UnaryServerInterceptor(slogLogger(o.Logger), lopts...))
		stream = append(stream, logging.StreamServerInterceptor(slogLogger(o.Logger), lopts...))
	}
	if len(unary) > 0 {
		opts = append(opts, grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
	}
	return opts, sm, nil
}

// DialOptions returns the gRPC client options of o: metrics and logging
// interceptors and the otelgrpc stats handler.
func DialOptions(o Observe) ([]grpc.DialOption, error) {
	var (
		unary  []grpc.UnaryClientInterceptor
		stream []grpc.StreamClientInterceptor
		opts   []grpc.DialOption
	)
	if o.TracerProvider != nil {
		opts = append(opts, grpc.WithStatsHandler(otelgrpc.NewClientHandler(
			otelgrpc.WithTracerProvider(o.TracerProvider),
			otelgrpc.WithPropagators(propagation.TraceContext{}))))
	}
	if o.Registry != nil {
		cm, err := Shared(o.Registry, grpcprom.NewClientMetrics(grpcprom.WithClientHandlingTimeHistogram()))
		if err != nil {
			return nil, fmt.Errorf("telemetry: gRPC client metrics: %w", err)
		}
		unary = append(unary, cm.UnaryClientInterceptor())
		stream = append(stream, cm.StreamClientInterceptor())
	}
	if o.Logger != nil {
		lopts := logOptions(clientCodeToLevel)
		unary = append(unary, logging.UnaryClientInterceptor(slogLogger(o.Logger), lopts...))
		stream = append(stream, logging.StreamClientInterceptor(slogLogger(o.Logger), lopts...))
	}
	if len(unary) > 0 {
		opts = append(opts, grpc.WithChainUnaryInterceptor(unary...), grpc.WithChainStreamInterceptor(stream...))
	}
	return opts, nil
}

// clientCodeToLevel is go-grpc-middleware's level of a client RPC's code,
// but UNAVAILABLE at debug level: a stream to an instance that is starting,
// moving or gone fails so while the membership catches up, and the
// components retry it and report, rate-limited, what they wait for.
func clientCodeToLevel(c codes.Code) logging.Level {
	if c == codes.Unavailable {
		return logging.LevelDebug
	}
	return logging.DefaultClientCodeToLevel(c)
}

// logOptions logs the end of every RPC with its peer and trace ids; an RPC
// that succeeded or was canceled is logged at debug level only.
func logOptions(levels logging.CodeToLevel) []logging.Option {
	return []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithLevels(func(c codes.Code) logging.Level {
			if c == codes.OK || c == codes.Canceled {
				return logging.LevelDebug
			}
			return levels(c)
		}),
		logging.WithFieldsFromContext(contextFields),
	}
}

// WithPeer returns ctx carrying the instance and the address a client RPC
// is pinned to, for its finished-call line: a client call's context has no
// peer of its own when it starts, and that is when the line's fields are
// taken.
func WithPeer(ctx context.Context, instance, addr string) context.Context {
	return logging.InjectFields(ctx, logging.Fields{"peer", addr, "instance", instance})
}

// contextFields are the peer address and the trace and span ids of an RPC.
func contextFields(ctx context.Context) logging.Fields {
	var f logging.Fields
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		f = append(f, "peer", p.Addr.String())
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		f = append(f, "trace_id", sc.TraceID().String(), "span_id", sc.SpanID().String())
	}
	return f
}

// slogLogger adapts l to go-grpc-middleware's logging interface.
func slogLogger(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		l.Log(ctx, slog.Level(lvl), msg, fields...)
	})
}
