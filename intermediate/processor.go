package intermediate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// Processor is the processing step an intermediate runs on every message
// before it delivers the result. Process must not modify msg; it returns a
// new message (or msg itself when nothing changes). The result keeps the id,
// the low-water mark and the routes of msg whatever the processor sets. An
// error hands the message back to its
// producer with NACK_REASON_PROCESSING_FAILED.
type Processor interface {
	Name() string
	Process(ctx context.Context, msg *messagev1.Message) (*messagev1.Message, error)
}

// OriginalLengthHeader is the header in which the sha256 processor keeps
// the length of the original payload.
const OriginalLengthHeader = "butterfly-original-length"

// OriginalPayloadHeader is the header in which the sha256 processor keeps the
// original payload, when it is valid UTF-8 of at most MaxOriginalHeader bytes.
const OriginalPayloadHeader = "butterfly-original-payload"

// MaxOriginalHeader is the largest payload the sha256 processor copies into
// OriginalPayloadHeader.
const MaxOriginalHeader = 1024

var processors = map[string]func() Processor{
	"passthrough": Passthrough,
	"upper":       Upper,
	"sha256":      SHA256,
}

// ProcessorNames returns the names ProcessorByName accepts, sorted.
func ProcessorNames() []string {
	names := make([]string, 0, len(processors))
	for n := range processors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ProcessorByName returns the built-in processor called name.
func ProcessorByName(name string) (Processor, error) {
	f, ok := processors[name]
	if !ok {
		return nil, fmt.Errorf("intermediate: unknown processor %q (valid: %s)", name, strings.Join(ProcessorNames(), ", "))
	}
	return f(), nil
}

// keepsNoMessage reports whether p is a built-in processor: none keeps the
// message it is given, or any part of it, past its return, so a message it
// returned unchanged, or that it replaced, can go back to the codec when
// the intermediate is done with it (vtcodec.Releaser). A Processor of its
// own may keep what it is given; its messages are left to the collector.
func keepsNoMessage(p Processor) bool {
	switch p.(type) {
	case passthrough, upper, sha256Processor:
		return true
	}
	return false
}

type passthrough struct{}

// Passthrough returns the processor that delivers every message unchanged.
func Passthrough() Processor { return passthrough{} }

func (passthrough) Name() string { return "passthrough" }

func (passthrough) Process(_ context.Context, msg *messagev1.Message) (*messagev1.Message, error) {
	return msg, nil
}

type upper struct{}

// Upper returns the processor that ASCII-uppercases the payload. A payload
// that is not valid UTF-8 fails processing.
func Upper() Processor { return upper{} }

func (upper) Name() string { return "upper" }

func (upper) Process(_ context.Context, msg *messagev1.Message) (*messagev1.Message, error) {
	p := msg.GetPayload()
	if !utf8.Valid(p) {
		return nil, fmt.Errorf("upper: payload is not valid UTF-8")
	}
	out := proto.CloneOf(msg)
	b := make([]byte, len(p))
	for i, c := range p {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		b[i] = c
	}
	out.Payload = b
	return out, nil
}

type sha256Processor struct{}

// SHA256 returns the processor that replaces the payload by its lowercase hex
// SHA-256 digest. The original length goes into OriginalLengthHeader, and the
// original payload into OriginalPayloadHeader when it is short UTF-8 text.
func SHA256() Processor { return sha256Processor{} }

func (sha256Processor) Name() string { return "sha256" }

func (sha256Processor) Process(_ context.Context, msg *messagev1.Message) (*messagev1.Message, error) {
	out := proto.CloneOf(msg)
	sum := sha256.Sum256(msg.GetPayload())
	out.Payload = []byte(hex.EncodeToString(sum[:]))
	if out.Headers == nil {
		out.Headers = make(map[string]string, 2)
	}
	out.Headers[OriginalLengthHeader] = fmt.Sprint(len(msg.GetPayload()))
	if len(msg.GetPayload()) <= MaxOriginalHeader && utf8.Valid(msg.GetPayload()) {
		out.Headers[OriginalPayloadHeader] = string(msg.GetPayload())
	}
	return out, nil
}
