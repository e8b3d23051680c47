package butterfly

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// Errors wrapped by CheckMessage's.
var (
	ErrInvalidUTF8      = errors.New("not valid UTF-8")
	ErrMalformedUnknown = errors.New("unknown fields are not well-formed protobuf")
)

// CheckMessage returns an error naming the first part of m that a protobuf
// decoder would refuse but Butterfly's codec (vtprotobuf's generated code)
// lets through: a string field that is not valid UTF-8 (the producer id, a
// header key or value, the trace context, a route), or unknown fields that
// are not well-formed (a group closed under another number, a field number
// out of range). Producers call it on Send and intermediates on every
// published message, so such a message is refused, with its field named,
// before it is sent or held, and no consumer receives a frame its protobuf
// library cannot read. Well-formed unknown fields, from a newer version of
// message.proto, pass and are forwarded.
func CheckMessage(m *messagev1.Message) error {
	if err := checkUTF8(m); err != nil {
		return err
	}
	if m == nil {
		return nil
	}
	if !wellFormed(m.ProtoReflect().GetUnknown()) {
		return fmt.Errorf("message: %w", ErrMalformedUnknown)
	}
	if id := m.GetId(); id != nil && !wellFormed(id.ProtoReflect().GetUnknown()) {
		return fmt.Errorf("id: %w", ErrMalformedUnknown)
	}
	if t := m.GetTrace(); t != nil && !wellFormed(t.ProtoReflect().GetUnknown()) {
		return fmt.Errorf("trace: %w", ErrMalformedUnknown)
	}
	for i, r := range m.GetRoutes() {
		if r != nil && !wellFormed(r.ProtoReflect().GetUnknown()) {
			return fmt.Errorf("routes[%d]: %w", i, ErrMalformedUnknown)
		}
	}
	return nil
}

// wellFormed reports whether b, a message's unknown fields, parses as
// protobuf fields, as protobuf-go requires of them.
func wellFormed(b []byte) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num > protowire.MaxValidNumber {
			return false
		}
		b = b[n:]
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return false
		}
		b = b[n:]
	}
	return true
}

func checkUTF8(m *messagev1.Message) error {
	if id := m.GetId().GetProducerId(); !utf8.ValidString(id) {
		return fmt.Errorf("id.producer_id %q: %w", id, ErrInvalidUTF8)
	}
	// A range over a map starts an iterator even when the map is empty:
	// most messages have no headers, and this runs twice a message.
	if h := m.GetHeaders(); len(h) > 0 {
		for k, v := range h {
			switch {
			case !utf8.ValidString(k):
				return fmt.Errorf("header key %q: %w", k, ErrInvalidUTF8)
			case !utf8.ValidString(v):
				return fmt.Errorf("header %q: value %q: %w", k, v, ErrInvalidUTF8)
			}
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

// KeepIdentity gives out, what a processor made of in, in's identity: its
// id and its producer's low-water mark, which consumers dedup by. out gets
// a copy of in's id, not in's own (even where the processor put it there):
// Butterfly's codec allocates a decoded message and its id together, so
// out pointing at in's id would keep in, payload and all, for as long as
// out is held. An out that is in is left as it is.
func KeepIdentity(out, in *messagev1.Message) {
	if out == in {
		return
	}
	if id := out.GetId(); id == in.GetId() || !proto.Equal(id, in.GetId()) {
		out.Id = proto.CloneOf(in.GetId())
	}
	out.LowWaterSeq = in.GetLowWaterSeq()
}
