// Package logtest records what a component logs, for tests that wait for or
// count a log message.
//
//	var logs logtest.Recorder
//	reg, err := registry.Register(ctx, cli, "svc", "a", addr, registry.WithLogger(logs.Logger()))
//	...
//	if logs.Count("registry: lease lost; granting a new one") != 1 { … }
package logtest

import (
	"context"
	"log/slog"
	"slices"
	"sync"
)

// Recorder keeps the messages of the records logged through its Logger. Its
// zero value is ready to use.
type Recorder struct {
	mu   sync.Mutex
	msgs []string
}

// Logger returns a logger whose records r keeps.
func (r *Recorder) Logger() *slog.Logger { return slog.New(handler{r}) }

// Count returns how many records had message msg.
func (r *Recorder) Count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

// Has reports whether a record had message msg.
func (r *Recorder) Has(msg string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.msgs, msg)
}

// handler is the slog.Handler of a Recorder: every level, attributes and
// groups ignored.
type handler struct{ r *Recorder }

func (h handler) Enabled(context.Context, slog.Level) bool { return true }

func (h handler) Handle(_ context.Context, rec slog.Record) error {
	h.r.mu.Lock()
	defer h.r.mu.Unlock()
	h.r.msgs = append(h.r.msgs, rec.Message)
	return nil
}

func (h handler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h handler) WithGroup(string) slog.Handler      { return h }
