package intermediate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// TestProcessorByName_Choices checks every built-in name and that an unknown
// name's error lists the valid ones.
func TestProcessorByName_Choices(t *testing.T) {
	if diff := cmp.Diff([]string{"passthrough", "sha256", "upper"}, ProcessorNames()); diff != "" {
		t.Errorf("ProcessorNames() (-want +got):\n%s", diff)
	}
	for _, name := range ProcessorNames() {
		p, err := ProcessorByName(name)
		if err != nil || p.Name() != name {
			t.Errorf("ProcessorByName(%q) = %v, %v, want a processor named %q", name, p, err, name)
		}
	}
	_, err := ProcessorByName("nope")
	if err == nil || !strings.Contains(err.Error(), "passthrough, sha256, upper") {
		t.Errorf("ProcessorByName(nope) = %v, want an error naming passthrough, sha256, upper", err)
	}
}

// TestProcessors_Transform checks what each processor makes of a message,
// and that the input is left alone.
func TestProcessors_Transform(t *testing.T) {
	id := &messagev1.MessageId{ProducerId: "p", Incarnation: 1, Seq: 3}
	in := &messagev1.Message{Id: id, Key: []byte("k"), Payload: []byte("Hello, wörld 1")}
	sum := sha256.Sum256(in.Payload)
	for _, tc := range []struct {
		p    Processor
		want *messagev1.Message
	}{
		{Passthrough(), in},
		{Upper(), &messagev1.Message{Id: id, Key: []byte("k"), Payload: []byte("HELLO, WöRLD 1")}},
		{SHA256(), &messagev1.Message{Id: id, Key: []byte("k"), Payload: []byte(hex.EncodeToString(sum[:])),
			Headers: map[string]string{OriginalLengthHeader: "15", OriginalPayloadHeader: "Hello, wörld 1"}}},
	} {
		got, err := tc.p.Process(context.Background(), in)
		if err != nil {
			t.Errorf("%s.Process() = %v", tc.p.Name(), err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, protocmp.Transform()); diff != "" {
			t.Errorf("%s.Process() (-want +got):\n%s", tc.p.Name(), diff)
		}
	}
	if string(in.Payload) != "Hello, wörld 1" || in.Headers != nil {
		t.Errorf("input after processing = %v, want it unchanged", in)
	}
	if _, err := Upper().Process(context.Background(), &messagev1.Message{Payload: []byte{0xff}}); err == nil {
		t.Errorf("upper.Process(invalid UTF-8) = nil error, want an error")
	}
}
