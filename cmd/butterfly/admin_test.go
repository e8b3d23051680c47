package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
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
