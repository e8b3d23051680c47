// Package logtest records what a component logs, for tests that wait for or
// count a log message.
//
//	var logs logtest.Recorder
//	reg, err := registry.Register(ctx, cli, "svc", "a", addr, registry.WithLogger(logs.Logger()))
//	...
//	if logs.Count("registry: lease lost; granting a new one") != 1 { … }
package logtest

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"sync"
)

// Recorder keeps the messages of the records logged through its Logger,
// with each record's own attributes. Its zero value is ready to use.
type Recorder struct {
	mu   sync.Mutex
	msgs []string
	// attrs[i] are the attributes of the record of msgs[i], by key.
	attrs []map[string]any
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

// Messages returns every record's message, in the order they were logged.
func (r *Recorder) Messages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.msgs)
}

// Has reports whether a record had message msg.
func (r *Recorder) Has(msg string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.msgs, msg)
}

// Attrs returns the attributes of every record with message msg, in the
// order they were logged: each by key, its value resolved (a string as a
// string). Attributes given to Logger().With are not kept.
func (r *Recorder) Attrs(msg string) []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []map[string]any
	for i, m := range r.msgs {
		if m == msg {
			out = append(out, r.attrs[i])
		}
	}
	return out
}

// handler is the slog.Handler of a Recorder: every level; attributes given
// With and groups ignored.
type handler struct{ r *Recorder }

func (h handler) Enabled(context.Context, slog.Level) bool { return true }

func (h handler) Handle(_ context.Context, rec slog.Record) error {
	h.r.mu.Lock()
	defer h.r.mu.Unlock()
	attrs := make(map[string]any, rec.NumAttrs())
	rec.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.Resolve().Any()
		return true
	})
	h.r.msgs = append(h.r.msgs, rec.Message)
	h.r.attrs = append(h.r.attrs, attrs)
	return nil
}

func (h handler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h handler) WithGroup(string) slog.Handler      { return h }

// Buffer is a bytes.Buffer a logger may write to from any goroutine while
// a test reads it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
