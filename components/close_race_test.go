package components

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

// gateHandler discards every record; the first WithAttrs that names
// instance (link.init: inside reconcile, with the producer's mu held and
// its context checked) says so on entered and waits for release.
type gateHandler struct {
	slog.Handler
	instance string
	entered  chan struct{}
	release  chan struct{}
	once     *sync.Once
}

func (h gateHandler) WithAttrs(as []slog.Attr) slog.Handler {
	for _, a := range as {
		if a.Key == "instance" && a.Value.String() == h.instance {
			h.once.Do(func() {
				close(h.entered)
				<-h.release
			})
		}
	}
	return h
}

func (h gateHandler) WithGroup(string) slog.Handler { return h }

// TestProducer_StopWaitsForAReconcileUnderWay holds a reconcile (on the
// resolver's goroutine, which the producer's WaitGroup does not count)
// after its check of the producer's context, and stops the producer's
// goroutines as Close does: the stop waits for that reconcile, so the link
// it starts is counted and collected, never started after the wait.
func TestProducer_StopWaitsForAReconcileUnderWay(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	gate := gateHandler{Handler: slog.DiscardHandler, instance: "i1",
		entered: make(chan struct{}), release: make(chan struct{}), once: &sync.Once{}}
	p, err := NewProducer(cli, "p1", WithPrefix("bt"), WithService("svc"), WithLogger(slog.New(gate)))
	if err != nil {
		t.Fatalf("NewProducer() = %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg, err := registry.Register(ctx, cli, "svc", "i1", "127.0.0.1:1", registry.WithPrefix("bt"))
	if err != nil {
		t.Fatalf("registry.Register() = %v", err)
	}
	defer reg.Close(context.Background())
	select {
	case <-gate.entered:
	case <-ctx.Done():
		t.Fatal("no link to i1 was started")
	}

	stopped := make(chan struct{})
	go func() {
		p.stopGoroutines()
		close(stopped)
	}()
	select {
	case <-stopped:
		t.Errorf("stopGoroutines() returned while a reconcile was starting a link")
	case <-time.After(200 * time.Millisecond): // nothing happens
	}
	close(gate.release)
	select {
	case <-stopped:
	case <-ctx.Done():
		t.Fatal("stopGoroutines() did not return")
	}
	p.mu.Lock()
	l := p.links["i1"]
	p.mu.Unlock()
	if l == nil {
		t.Fatalf("links after the reconcile: no i1, want the link it started")
	}
	if err := p.Close(ctx); err != nil {
		t.Errorf("Close() = %v, want nil (nothing sent)", err)
	}
}
