package butterfly_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/testing/protocmp"

	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// wireFiles are the files of the wire contracts.
var wireFiles = []protoreflect.FileDescriptor{
	messagev1.File_butterfly_message_v1_message_proto,
	deliveryv1.File_butterfly_delivery_v1_publish_proto,
	deliveryv1.File_butterfly_delivery_v1_subscribe_proto,
	deliveryv1.File_butterfly_delivery_v1_process_proto,
	adminv1.File_butterfly_admin_v1_admin_proto,
}

// TestWire_RoundTrip fills every field of every wire message (each oneof case
// in turn), and checks that binary and JSON encodings give it back unchanged.
func TestWire_RoundTrip(t *testing.T) {
	var count int
	for _, fd := range wireFiles {
		msgs := fd.Messages()
		for i := 0; i < msgs.Len(); i++ {
			md := msgs.Get(i)
			mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
			if err != nil {
				t.Fatalf("FindMessageByName(%s) = %v", md.FullName(), err)
			}
			for _, variant := range oneofVariants(md) {
				name := string(md.FullName()) + variant.name
				t.Run(name, func(t *testing.T) {
					m := mt.New()
					fill(m, 0, variant.pick)
					if md.Fields().Len() > 0 && proto.Size(m.Interface()) == 0 {
						t.Fatalf("fill(%s) left the message empty", md.FullName())
					}
					roundTrip(t, m.Interface())
				})
				count++
			}
		}
	}
	if count < 30 {
		t.Fatalf("round-tripped %d messages, want at least 30 (a file is missing from wireFiles?)", count)
	}
}

type variant struct {
	name string
	pick map[protoreflect.FullName]protoreflect.Name // oneof -> the field to set
}

// oneofVariants returns one variant per case of the message's first oneof
// (or a single variant when it has none), so every case is round-tripped.
func oneofVariants(md protoreflect.MessageDescriptor) []variant {
	oneofs := md.Oneofs()
	if oneofs.Len() == 0 {
		return []variant{{}}
	}
	od := oneofs.Get(0)
	var out []variant
	for i := 0; i < od.Fields().Len(); i++ {
		f := od.Fields().Get(i)
		out = append(out, variant{
			name: "/" + string(f.Name()),
			pick: map[protoreflect.FullName]protoreflect.Name{od.FullName(): f.Name()},
		})
	}
	return out
}

// fill sets every field of m to a non-zero value, recursing into messages up
// to a small depth. For a oneof, the case named in pick (or the first) is set.
func fill(m protoreflect.Message, depth int, pick map[protoreflect.FullName]protoreflect.Name) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		if od := f.ContainingOneof(); od != nil && !od.IsSynthetic() {
			want, ok := pick[od.FullName()]
			if !ok {
				want = od.Fields().Get(0).Name()
			}
			if f.Name() != want {
				continue
			}
		}
		switch {
		case f.IsList():
			l := m.Mutable(f).List()
			for j := 0; j < 2; j++ {
				if f.Kind() == protoreflect.MessageKind {
					e := l.NewElement()
					if depth < 3 {
						fill(e.Message(), depth+1, nil)
					}
					l.Append(e)
				} else {
					l.Append(scalar(f, j))
				}
			}
		case f.IsMap():
			mp := m.Mutable(f).Map()
			mp.Set(scalar(f.MapKey(), 0).MapKey(), scalar(f.MapValue(), 1))
		case f.Kind() == protoreflect.MessageKind:
			if depth < 3 {
				fill(m.Mutable(f).Message(), depth+1, nil)
			}
		default:
			m.Set(f, scalar(f, 1))
		}
	}
}

func scalar(f protoreflect.FieldDescriptor, n int) protoreflect.Value {
	switch f.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(string(f.Name()) + "-" + strings.Repeat("x", n+1))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{byte(n + 1), 0xff})
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(7 + n))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(1e9) + int64(n))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(7 + n))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(1<<60) + uint64(n))
	case protoreflect.EnumKind:
		vals := f.Enum().Values()
		return protoreflect.ValueOfEnum(vals.Get(vals.Len() - 1).Number())
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(1.5)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(2.5)
	}
	panic("unhandled kind " + f.Kind().String())
}

func roundTrip(t *testing.T, in proto.Message) {
	t.Helper()
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatalf("proto.Marshal() = %v", err)
	}
	out := in.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatalf("proto.Unmarshal() = %v", err)
	}
	if diff := cmp.Diff(in, out, protocmp.Transform()); diff != "" {
		t.Fatalf("binary round trip mismatch (-in +out):\n%s", diff)
	}
	j, err := protojson.Marshal(in)
	if err != nil {
		t.Fatalf("protojson.Marshal() = %v", err)
	}
	outJSON := in.ProtoReflect().New().Interface()
	if err := protojson.Unmarshal(j, outJSON); err != nil {
		t.Fatalf("protojson.Unmarshal(%s) = %v", j, err)
	}
	if diff := cmp.Diff(in, outJSON, protocmp.Transform()); diff != "" {
		t.Fatalf("JSON round trip mismatch (-in +out):\n%s", diff)
	}
}

// TestWire_ServicesRegistered checks that every service of the contracts is
// in the global registry under the name its gRPC service descriptor uses, so
// server reflection serves it.
func TestWire_ServicesRegistered(t *testing.T) {
	descs := []grpc.ServiceDesc{
		deliveryv1.PublishService_ServiceDesc,
		deliveryv1.SubscribeService_ServiceDesc,
		deliveryv1.ProcessService_ServiceDesc,
		adminv1.AdminService_ServiceDesc,
	}
	var services int
	for _, fd := range wireFiles {
		services += fd.Services().Len()
	}
	if services != len(descs) {
		t.Fatalf("the contracts declare %d services, want %d (add the new one here)", services, len(descs))
	}
	for _, sd := range descs {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(sd.ServiceName))
		if err != nil {
			t.Fatalf("FindDescriptorByName(%q) = %v", sd.ServiceName, err)
		}
		svc, ok := d.(protoreflect.ServiceDescriptor)
		if !ok {
			t.Fatalf("FindDescriptorByName(%q) = %T, want a service", sd.ServiceName, d)
		}
		if got, want := svc.Methods().Len(), len(sd.Methods)+len(sd.Streams); got != want {
			t.Errorf("%s has %d methods in its descriptor, %d in its ServiceDesc", sd.ServiceName, got, want)
		}
		if !strings.HasSuffix(sd.ServiceName, "Service") {
			t.Errorf("service %q does not end in Service", sd.ServiceName)
		}
	}
}
