package butterfly

import (
	"errors"
	"fmt"
	"reflect"
	"unicode/utf8"
	"unsafe"

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
	if !wellFormed(unknownMessage.of(m)) {
		return fmt.Errorf("message: %w", ErrMalformedUnknown)
	}
	if id := m.GetId(); id != nil && !wellFormed(unknownID.of(id)) {
		return fmt.Errorf("id: %w", ErrMalformedUnknown)
	}
	if t := m.GetTrace(); t != nil && !wellFormed(unknownTrace.of(t)) {
		return fmt.Errorf("trace: %w", ErrMalformedUnknown)
	}
	for i, r := range m.GetRoutes() {
		if r != nil && !wellFormed(unknownRoute.of(r)) {
			return fmt.Errorf("routes[%d]: %w", i, ErrMalformedUnknown)
		}
	}
	return nil
}

// Where the generated structs keep their unknown fields. CheckMessage runs
// twice a message, and ProtoReflect().GetUnknown() costs it an atomic store
// on a message not reflected on before (every message, on both calls): in
// a saturated mesh that was 3.5 % of the CPU. The generated struct's field
// is read directly instead, at the offset reflect finds for it once; should
// a generator ever lay the struct out otherwise, the reflective call is
// used.
var (
	unknownMessage = unknownFieldOf[messagev1.Message]()
	unknownID      = unknownFieldOf[messagev1.MessageId]()
	unknownTrace   = unknownFieldOf[messagev1.TraceContext]()
	unknownRoute   = unknownFieldOf[messagev1.Route]()
)

// unknownField reads a generated message's unknown fields.
type unknownField[T any, PT interface {
	*T
	proto.Message
}] struct {
	offset uintptr
	direct bool // the struct has the field, of protobuf-go's type
}

func unknownFieldOf[T any, PT interface {
	*T
	proto.Message
}]() unknownField[T, PT] {
	// A field promoted from an embedded struct has its offset in that
	// struct, not in T: only a field of T itself is read directly.
	f, ok := reflect.TypeFor[T]().FieldByName("unknownFields")
	return unknownField[T, PT]{offset: f.Offset, direct: ok && len(f.Index) == 1 && f.Type == reflect.TypeFor[[]byte]()}
}

// of returns m's unknown fields, as ProtoReflect().GetUnknown() would.
func (u unknownField[T, PT]) of(m PT) []byte {
	if !u.direct {
		return m.ProtoReflect().GetUnknown()
	}
	return *(*[]byte)(unsafe.Add(unsafe.Pointer(m), u.offset))
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

// routesField is the field number of Message.routes (message.proto).
const routesField protowire.Number = 8

// RouteSize is the encoded size of r in a Message (Message.routes).
func RouteSize(r *messagev1.Route) int {
	return protowire.SizeTag(routesField) + protowire.SizeBytes(r.SizeVT())
}

// RoutesSize is the encoded size of routes in a Message: what intermediates
// hold a resend's routes to (max-batch-bytes) apart from the rest of the
// message, and producers count the same way before they send one.
func RoutesSize(routes []*messagev1.Route) int {
	n := 0
	for _, r := range routes {
		n += RouteSize(r)
	}
	return n
}
