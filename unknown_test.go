package butterfly

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// TestUnknownFieldOf_ReadsWhatReflectionReads checks that CheckMessage
// reads the generated structs' unknown fields directly (not through the
// reflective fallback) and gets exactly what ProtoReflect().GetUnknown()
// returns, for each message type it checks, decoded with unknown fields
// and without.
func TestUnknownFieldOf_ReadsWhatReflectionReads(t *testing.T) {
	extra := protowire.AppendTag(nil, 99, protowire.BytesType)
	extra = protowire.AppendString(extra, "from a newer message.proto")
	decode := func(t *testing.T, m proto.Message, known []byte, unknown bool) {
		t.Helper()
		b := bytes.Clone(known)
		if unknown {
			b = append(b, extra...)
		}
		if err := proto.Unmarshal(b, m); err != nil {
			t.Fatal(err)
		}
	}
	known, err := proto.Marshal(&messagev1.Message{Payload: []byte("x"), LowWaterSeq: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, unknown := range []bool{false, true} {
		want := []byte(nil)
		if unknown {
			want = extra
		}
		m, id, tr, r := new(messagev1.Message), new(messagev1.MessageId), new(messagev1.TraceContext), new(messagev1.Route)
		decode(t, m, known, unknown)
		decode(t, id, nil, unknown)
		decode(t, tr, nil, unknown)
		decode(t, r, nil, unknown)
		for _, c := range []struct {
			name          string
			direct        bool
			got, reflects []byte
		}{
			{"Message", unknownMessage.direct, unknownMessage.of(m), m.ProtoReflect().GetUnknown()},
			{"MessageId", unknownID.direct, unknownID.of(id), id.ProtoReflect().GetUnknown()},
			{"TraceContext", unknownTrace.direct, unknownTrace.of(tr), tr.ProtoReflect().GetUnknown()},
			{"Route", unknownRoute.direct, unknownRoute.of(r), r.ProtoReflect().GetUnknown()},
		} {
			if !c.direct {
				t.Errorf("%s: unknown fields read through reflection, want the struct's field", c.name)
			}
			if !bytes.Equal(c.got, c.reflects) || !bytes.Equal(c.got, want) {
				t.Errorf("%s (unknown %v): read %x, reflection %x, want %x", c.name, unknown, c.got, c.reflects, want)
			}
		}
	}
}
