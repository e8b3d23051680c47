package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// readiness is what the HTTP admin endpoint asks of the server it fronts.
type readiness interface {
	// Ready is closed once the server serves and is registered.
	Ready() <-chan struct{}
	// Draining reports whether the server is draining.
	Draining() bool
}

// adminServer serves /healthz and /readyz over HTTP.
type adminServer struct {
	srv  *http.Server
	wg   sync.WaitGroup
	once sync.Once
}

func startAdmin(addr string, s readiness, logger *slog.Logger) (*adminServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--admin %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
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
		fmt.Fprintln(w, "ready")
	})
	a := &adminServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("admin endpoint stopped", "addr", addr, "err", err)
		}
	}()
	logger.Info("admin endpoint", "addr", lis.Addr().String())
	return a, nil
}

// Close stops the endpoint and waits for it; safe to call twice.
func (a *adminServer) Close() {
	a.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		a.srv.Shutdown(ctx)
		a.wg.Wait()
	})
}
