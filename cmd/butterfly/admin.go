package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

const observeHelp = `Observability: --admin HOST:PORT serves /metrics (Prometheus: butterfly_*
counters and gauges, grpc_server_* / grpc_client_* from go-grpc-middleware, Go
and process metrics), /healthz and /readyz over HTTP. --otel traces every
message (producer, intermediate and consumer spans in one trace, carried in
Message.trace as W3C traceparent) and every RPC (otelgrpc), exported with
OTLP over gRPC as the standard OTEL_* environment says
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, …).`

// readiness is what the HTTP admin endpoint asks of the server it fronts.
type readiness interface {
	// Ready is closed once the server serves and is registered.
	Ready() <-chan struct{}
	// Draining reports whether the server is draining.
	Draining() bool
}

// observeFlags are --admin and --otel of the roles that do not define
// --admin themselves.
type observeFlags struct {
	admin string
	otel  bool
}

// addObserveFlags adds --otel, and --admin when withAdmin, to f.
func addObserveFlags(f *pflag.FlagSet, withAdmin bool) *observeFlags {
	o := &observeFlags{}
	if withAdmin {
		f.StringVar(&o.admin, "admin", "", "host:port for the HTTP admin endpoint (/metrics, /healthz, /readyz)")
	}
	f.BoolVar(&o.otel, "otel", false, "trace messages and RPCs with OpenTelemetry, exported over OTLP as OTEL_* says")
	return o
}

// observability is a process's metrics registry, tracer provider and admin
// endpoint.
type observability struct {
	// Registry is the process's registry: every component of the process
	// registers on it, and /metrics serves it.
	Registry *prometheus.Registry
	// TracerProvider is nil unless tracing is on.
	TracerProvider trace.TracerProvider

	logger *slog.Logger
	sdk    *sdktrace.TracerProvider
	admin  *adminServer
}

// start sets up the observability of a process running component: a
// registry with the Go and process collectors and, with --otel, an OTLP
// tracer provider.
func (o *observeFlags) start(ctx context.Context, component string, logger *slog.Logger) (*observability, error) {
	return newObservability(ctx, o.otel, component, logger)
}

func newObservability(ctx context.Context, otel bool, component string, logger *slog.Logger) (*observability, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	obs := &observability{Registry: reg, logger: logger}
	if !otel {
		return obs, nil
	}
	exp, err := otlptracegrpc.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("--otel: OTLP exporter: %w", err)
	}
	// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the name.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "butterfly-"+component)),
		resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost())
	if err != nil {
		logger.Warn("--otel: incomplete resource", "err", err)
	}
	obs.sdk = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	obs.TracerProvider = obs.sdk
	logger.Info("tracing with OpenTelemetry", "exporter", "otlp/grpc")
	return obs, nil
}

// serveAdmin starts the admin endpoint on addr; ready may be nil (always
// ready while the process runs). An empty addr serves nothing.
func (obs *observability) serveAdmin(addr string, ready readiness) error {
	if addr == "" {
		return nil
	}
	a, err := startAdmin(addr, ready, obs.Registry, obs.logger)
	if err != nil {
		return err
	}
	obs.admin = a
	return nil
}

// Close stops the admin endpoint and flushes the spans; safe to call twice.
func (obs *observability) Close() {
	if obs.admin != nil {
		obs.admin.Close()
	}
	if obs.sdk != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := obs.sdk.Shutdown(ctx); err != nil {
			// Where the spans were to go, as OTEL_* says: a collector
			// that is not there costs this wait at every exit.
			obs.logger.Warn("--otel: flushing spans", "err", err, "endpoint", otlpEndpoint())
		}
	}
}

// adminServer serves /metrics, /healthz and /readyz over HTTP.
type adminServer struct {
	srv  *http.Server
	addr string
	wg   sync.WaitGroup
	once sync.Once
}

// startAdmin serves the admin endpoint on addr. /healthz answers 200 while
// the process runs; /readyz answers 200 once s serves and while it does not
// drain (always, when s is nil); /metrics serves reg.
func startAdmin(addr string, s readiness, reg *prometheus.Registry, logger *slog.Logger) (*adminServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--admin %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if s != nil {
			select {
			case <-s.Ready():
			default:
				http.Error(w, "not serving yet", http.StatusServiceUnavailable)
				return
			}
			if s.Draining() {
				http.Error(w, "draining", http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	a := &adminServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, addr: lis.Addr().String()}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("admin endpoint stopped", "addr", addr, "err", err)
		}
	}()
	logger.Info("admin endpoint", "addr", a.addr)
	return a, nil
}

// Addr returns the address the endpoint listens on.
func (a *adminServer) Addr() string { return a.addr }

// Close stops the endpoint and waits for it; safe to call twice.
func (a *adminServer) Close() {
	a.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := a.srv.Shutdown(ctx); err != nil {
			_ = a.srv.Close() // connections still open after 2s: cut them; nothing is left to report
		}
		a.wg.Wait()
	})
}

// otlpEndpoint returns the OTLP traces endpoint the exporter was given by
// the environment, or the exporter's default.
func otlpEndpoint() string {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if v := os.Getenv(k); v != "" {
			return v + " (" + k + ")"
		}
	}
	return "localhost:4317 (the default; set OTEL_EXPORTER_OTLP_ENDPOINT)"
}
