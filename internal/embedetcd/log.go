package embedetcd

import (
	"context"
	"log/slog"
	"math"
	"sync/atomic"

	"go.uber.org/zap/zapcore"
)

// slogCore is a zapcore.Core that writes etcd's log entries to a
// *slog.Logger, without stack traces, at or above level. While the member
// starts or stops (quiet is set), warnings and errors go to debug level:
// a member that fails to start says why through Start's error, and one that
// stops normally complains of connections it closes itself.
type slogCore struct {
	logger *slog.Logger
	level  zapcore.Level
	quiet  *atomic.Bool
	attrs  []slog.Attr
}

var _ zapcore.Core = (*slogCore)(nil)

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= c.level }

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	cc := *c
	cc.attrs = append(append([]slog.Attr(nil), c.attrs...), attrs(fields)...)
	return &cc
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	level := slogLevel(e.Level)
	if c.quiet.Load() && level >= slog.LevelWarn {
		level = slog.LevelDebug
	}
	ctx := context.Background() // zap entries carry no context
	if !c.logger.Enabled(ctx, level) {
		return nil
	}
	r := slog.NewRecord(e.Time, level, "etcd: "+e.Message, 0)
	r.AddAttrs(c.attrs...)
	r.AddAttrs(attrs(fields)...)
	return c.logger.Handler().Handle(ctx, r)
}

func (c *slogCore) Sync() error { return nil }

// slogLevel maps a zap level to slog's: DPanic and above are errors.
func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	}
	return slog.LevelError
}

// attrs converts zap fields to slog attributes.
func attrs(fields []zapcore.Field) []slog.Attr {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	out := make([]slog.Attr, 0, len(enc.Fields))
	for _, f := range fields {
		if v, ok := enc.Fields[f.Key]; ok {
			out = append(out, slog.Any(f.Key, v))
		}
	}
	return out
}

// zapLevel parses etcd's log level; "off" disables every level.
func zapLevel(s string) (zapcore.Level, error) {
	if s == "off" {
		return zapcore.Level(math.MaxInt8), nil
	}
	return zapcore.ParseLevel(s)
}
