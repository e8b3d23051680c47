// Package vtcodec is the gRPC codec of Butterfly's own connections. It
// speaks protobuf, as grpc-go's "proto" codec does, and takes its name, so
// peers see no difference on the wire; but it encodes, decodes and sizes
// Butterfly's messages with the methods vtprotobuf generates for them
// (MarshalToSizedBufferVT, UnmarshalVT, SizeVT), which work without
// protobuf-go's reflection. Any other message (health checks, reflection,
// a user's own services on the same server) goes through grpc-go's codec
// unchanged.
//
// Where the generated code and protobuf-go disagree on a frame, protobuf-go
// decides (see Codec.Marshal and Codec.Unmarshal). Inside a message it
// reads, the generated decoder does not check what protobuf-go does: that
// strings are valid UTF-8 and that unknown fields parse. butterfly.CheckMessage
// checks both where messages enter (Producer.Send, the intermediate's
// admission and Process), and the intermediate checks the ids and group of
// a hello, so a bad message is refused with a status or a nack naming its
// field, not forwarded to peers that cannot read it.
package vtcodec

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
)

// Message is what vtprotobuf generates with its marshal, unmarshal and size
// features.
type Message interface {
	SizeVT() int
	MarshalToSizedBufferVT(dAtA []byte) (int, error)
	UnmarshalVT(dAtA []byte) error
}

// Codec is the encoding.CodecV2. Its zero value is ready to use.
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

// fallback is grpc-go's own protobuf codec, for messages without the
// generated methods.
var fallback = encoding.GetCodecV2(grpcproto.Name)

// Name is "proto": the content-subtype does not change.
func (Codec) Name() string { return grpcproto.Name }

// Marshal encodes v into one buffer of its exact size, taken from the
// default buffer pool when it is large enough to be worth it (as grpc-go's
// codec does).
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(Message)
	if !ok {
		return fallback.Marshal(v)
	}
	size := m.SizeVT()
	// MarshalToSizedBufferVT fills its slice from the end. It writes fewer
	// bytes than SizeVT counts in one case, a oneof set to a nil message
	// (SizeVT counts 3 bytes, the encoding is 2); such a frame goes through
	// protobuf-go instead of going out with a stray byte in front.
	if mem.IsBelowBufferPoolingThreshold(size) {
		buf := make([]byte, size)
		n, err := m.MarshalToSizedBufferVT(buf)
		if err != nil {
			return nil, err
		}
		if n != size {
			return fallback.Marshal(v)
		}
		return mem.BufferSlice{mem.SliceBuffer(buf)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(size)
	n, err := m.MarshalToSizedBufferVT((*buf)[:size])
	if err != nil || n != size {
		pool.Put(buf)
		if err != nil {
			return nil, err
		}
		return fallback.Marshal(v)
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

// Unmarshal decodes data into v, which it resets first (as proto.Unmarshal
// does). The message copies what it keeps: data goes back to its pool. The
// messages of a publish batch are those given back (Releaser) when there are
// some; one of them whose payload array is more than maxSlack bytes larger
// than the payload decoded into it gets an array of its own size.
//
// protobuf-go has the last word on what a frame means. The generated
// decoder refuses some frames protobuf-go reads (a known field number with
// another wire type, which protobuf-go keeps as an unknown field) and reads
// some it refuses (a map entry's key running past the entry). So a frame
// the generated decoder refuses, or reads into a message whose encoding is
// not the frame's size (which also holds for repeated scalar fields and
// varints longer than they need be, both rare), or a batch with a message
// whose id is empty (see presize), is decoded again by protobuf-go, whose
// result or error stands.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(Message)
	pm, isProto := v.(proto.Message)
	if !ok || !isProto {
		return fallback.Unmarshal(data, v)
	}
	proto.Reset(pm)
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	presized, reused := presize(v, b)
	if err := decode(b, m, pm, presized); err != nil {
		return err
	}
	if len(reused) > 0 {
		// Unless protobuf-go decoded the frame again, into messages of
		// its own, the batch's first messages are those reused.
		if ms := v.(*deliveryv1.PublishRequest).GetBatch().GetMessages(); len(ms) >= len(reused) && ms[0] == reused[0] {
			trim(ms[:len(reused)])
		}
	}
	return nil
}

// decode decodes b into m, pm being m as a protobuf message, reset and
// presized (see presize) or not: with vtprotobuf, or with protobuf-go when
// vtprotobuf refuses b, reads it into a message of another size, or leaves
// a presized id empty.
func decode(b []byte, m Message, pm proto.Message, presized bool) error {
	if err := m.UnmarshalVT(b); err == nil && m.SizeVT() == len(b) && (!presized || idsDecoded(m)) {
		return nil
	}
	proto.Reset(pm)
	if err := proto.Unmarshal(b, pm); err != nil {
		return fmt.Errorf("vtcodec: %T: %w", m, err)
	}
	return nil
}

// Decode decodes b into m as Unmarshal decodes a frame: with vtprotobuf,
// and with protobuf-go where vtprotobuf refuses it (a known field of the
// wrong wire type, which protobuf-go keeps as an unknown field). What
// Unmarshal decoded, encoded again, decodes so.
func Decode(b []byte, m Message) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("vtcodec: %T is not a protobuf message", m)
	}
	proto.Reset(pm)
	return decode(b, m, pm, false)
}

// ServerOption makes a server use the codec for every call.
func ServerOption() grpc.ServerOption { return grpc.ForceServerCodecV2(Codec{}) }

// DialOption makes a client use the codec for every call.
func DialOption() grpc.DialOption {
	return grpc.WithDefaultCallOptions(grpc.ForceCodecV2(Codec{}))
}
