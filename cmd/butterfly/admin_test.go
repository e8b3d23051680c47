package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
)

// fakeReadiness is a readiness whose state the test sets.
type fakeReadiness struct {
	ready    chan struct{}
	draining atomic.Bool
}

func (f *fakeReadiness) Ready() <-chan struct{} { return f.ready }
func (f *fakeReadiness) Draining() bool         { return f.draining.Load() }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s = %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// TestAdminEndpoint_MetricsHealthReady checks /healthz, /readyz through
// the server's life (not serving, serving, draining) and /metrics serving
// the process registry.
func TestAdminEndpoint_MetricsHealthReady(t *testing.T) {
	obs, err := newObservability(context.Background(), false, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("newObservability() = %v", err)
	}
	defer obs.Close()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "butterfly_test_total", Help: "test"})
	obs.Registry.MustRegister(c)
	c.Add(7)
	fr := &fakeReadiness{ready: make(chan struct{})}
	if err := obs.serveAdmin("127.0.0.1:0", fr); err != nil {
		t.Fatalf("serveAdmin() = %v", err)
	}
	base := "http://" + obs.admin.Addr()

	if code, _ := get(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz = %d, want 200", code)
	}
	if code, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("GET /readyz before ready = %d, want 503", code)
	}
	close(fr.ready)
	if code, _ := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("GET /readyz when ready = %d, want 200", code)
	}
	fr.draining.Store(true)
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Errorf("GET /readyz while draining = %d %q, want 503 draining", code, body)
	}
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d, want 200", code)
	}
	for _, want := range []string{"\nbutterfly_test_total 7\n", "\ngo_goroutines ", "\nprocess_"} {
		if !strings.Contains(body, want) {
			t.Errorf("GET /metrics lacks %q", want)
		}
	}
	obs.Close() // safe twice: the deferred one
}

// TestIntermediateCommand_ServingLineNamesAdmin starts an intermediate with
// --admin on port 0 and finds the admin endpoint's real address in its
// serving line, serving the intermediate's metrics.
func TestIntermediateCommand_ServingLineNamesAdmin(t *testing.T) {
	etc := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ictx, stop := context.WithCancel(ctx)
	iout, idone := startCLI(ictx, "intermediate", "--name", "i1", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--stop-timeout", "300ms", "--etcd-endpoints", etc.Endpoint(), "--prefix", "adm", "--log-level", "error")
	defer func() {
		stop()
		if err := <-idone; err != nil {
			t.Errorf("butterfly intermediate = %v; output:\n%s", err, iout.String())
		}
	}()
	waitServing(ctx, t, iout, idone)
	line, _, _ := strings.Cut(iout.String(), "\n")
	var ev struct{ Event, Addr, Admin string }
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatalf("serving line %q: %v", line, err)
	}
	host, port, err := net.SplitHostPort(ev.Admin)
	if err != nil || ev.Event != "serving" || host != "127.0.0.1" || port == "0" || ev.Admin == ev.Addr {
		t.Fatalf("serving line %q: admin %q, want 127.0.0.1 with the port picked (%v)", line, ev.Admin, err)
	}
	code, body := get(t, "http://"+ev.Admin+"/metrics")
	if want := `butterfly_intermediate_publish_batches_total{instance="i1",service="intermediate"} 0`; code != http.StatusOK || !strings.Contains(body, want) {
		t.Errorf("GET http://%s/metrics = %d, want 200 with %s", ev.Admin, code, want)
	}
}

// TestOTLPEndpoint_SaysWhereSpansGo checks that the warning of a flush that
// failed names the endpoint the exporter was given, and where it came
// from.
func TestOTLPEndpoint_SaysWhereSpansGo(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	if got := otlpEndpoint(); got != "localhost:4317 (the default; set OTEL_EXPORTER_OTLP_ENDPOINT)" {
		t.Errorf("otlpEndpoint() without OTEL_* = %q", got)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
	if got := otlpEndpoint(); got != "http://collector:4317 (OTEL_EXPORTER_OTLP_ENDPOINT)" {
		t.Errorf("otlpEndpoint() = %q", got)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")
	if got := otlpEndpoint(); got != "http://traces:4317 (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)" {
		t.Errorf("otlpEndpoint() = %q", got)
	}
}
