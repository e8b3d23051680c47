package butterfly

import (
	"errors"
	"fmt"
	"unicode/utf8"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// ErrInvalidUTF8 is wrapped by CheckUTF8's errors.
var ErrInvalidUTF8 = errors.New("not valid UTF-8")

// CheckUTF8 returns an error naming the first string field of m that is not
// valid UTF-8: the producer id, a header key or value, the trace context or
// a route. Protobuf requires valid UTF-8 in string fields, and clients in
// other languages refuse a message without it. Butterfly's codec leaves the
// check to this function, which producers call on Send and intermediates on
// every published message, so a bad string is refused, with its field named,
// before it is sent or held.
func CheckUTF8(m *messagev1.Message) error {
	if id := m.GetId().GetProducerId(); !utf8.ValidString(id) {
		return fmt.Errorf("id.producer_id %q: %w", id, ErrInvalidUTF8)
	}
	for k, v := range m.GetHeaders() {
		switch {
		case !utf8.ValidString(k):
			return fmt.Errorf("header key %q: %w", k, ErrInvalidUTF8)
		case !utf8.ValidString(v):
			return fmt.Errorf("header %q: value %q: %w", k, v, ErrInvalidUTF8)
		}
	}
	if t := m.GetTrace(); t != nil {
		switch {
		case !utf8.ValidString(t.GetTraceparent()):
			return fmt.Errorf("trace.traceparent %q: %w", t.GetTraceparent(), ErrInvalidUTF8)
		case !utf8.ValidString(t.GetTracestate()):
			return fmt.Errorf("trace.tracestate %q: %w", t.GetTracestate(), ErrInvalidUTF8)
		}
	}
	for i, r := range m.GetRoutes() {
		switch {
		case !utf8.ValidString(r.GetGroup()):
			return fmt.Errorf("routes[%d].group %q: %w", i, r.GetGroup(), ErrInvalidUTF8)
		case !utf8.ValidString(r.GetConsumer()):
			return fmt.Errorf("routes[%d].consumer %q: %w", i, r.GetConsumer(), ErrInvalidUTF8)
		}
	}
	return nil
}
