package butterfly_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/butterfly-mesh/butterfly"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

func TestCheckUTF8(t *testing.T) {
	valid := func() *messagev1.Message {
		return &messagev1.Message{
			Id:      &messagev1.MessageId{ProducerId: "p-é", Incarnation: 1, Seq: 1},
			Headers: map[string]string{"k": "v", "ü": "ß"},
			Payload: []byte{0xff, 0xfe}, // bytes, not a string: anything goes
			Trace:   &messagev1.TraceContext{Traceparent: "00-aa-bb-01", Tracestate: "k=v"},
			Routes:  []*messagev1.Route{{Group: "g", Consumer: "c"}},
		}
	}
	if err := butterfly.CheckUTF8(valid()); err != nil {
		t.Errorf("CheckUTF8(valid) = %v, want nil", err)
	}
	if err := butterfly.CheckUTF8(&messagev1.Message{}); err != nil {
		t.Errorf("CheckUTF8(empty) = %v, want nil", err)
	}
	for _, tc := range []struct {
		field  string
		spoil  func(m *messagev1.Message)
		naming string
	}{
		{"producer id", func(m *messagev1.Message) { m.Id.ProducerId = "p\xff" }, "id.producer_id"},
		{"header key", func(m *messagev1.Message) { m.Headers["\xc3"] = "v" }, "header key"},
		{"header value", func(m *messagev1.Message) { m.Headers["k"] = "v\xed\xa0\x80" }, `header "k": value`},
		{"traceparent", func(m *messagev1.Message) { m.Trace.Traceparent = "\xff" }, "trace.traceparent"},
		{"tracestate", func(m *messagev1.Message) { m.Trace.Tracestate = "\xff" }, "trace.tracestate"},
		{"route group", func(m *messagev1.Message) { m.Routes[0].Group = "\xff" }, "routes[0].group"},
		{"route consumer", func(m *messagev1.Message) { m.Routes[0].Consumer = "\xff" }, "routes[0].consumer"},
	} {
		m := valid()
		tc.spoil(m)
		err := butterfly.CheckUTF8(m)
		if !errors.Is(err, butterfly.ErrInvalidUTF8) || !strings.Contains(err.Error(), tc.naming) {
			t.Errorf("CheckUTF8(bad %s) = %v, want %v naming %s", tc.field, err, butterfly.ErrInvalidUTF8, tc.naming)
		}
	}
}
