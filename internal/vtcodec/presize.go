package vtcodec

import (
	"google.golang.org/protobuf/encoding/protowire"

	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// Field numbers of the batches in their frames (publish.proto,
// subscribe.proto).
const (
	publishRequestBatchField     protowire.Number = 2
	publishBatchMessagesField    protowire.Number = 2
	subscribeResponseBatchField  protowire.Number = 2
	deliveryBatchDeliveriesField protowire.Number = 1
)

// presize prepares v, reset, for a frame b that is a batch and nothing
// else: the batch is there already, its slice of messages (or deliveries)
// as long as the frame has of them, so that decoding does not grow it
// step by step; and a delivery batch's deliveries are allocated at once.
// The generated decoders (built with vtprotobuf's pool option for the two
// batch types) fill elements already in a slice's capacity instead of
// allocating them. Deliveries are not kept past their batch (the consumer
// keeps their messages); messages are allocated one by one, since a message
// kept longer than its batch would keep all of a slab, but each in one
// allocation with its id (see newMessage); a publish batch's messages are
// those given back (Releaser) when there are some.
//
// A frame that is not one batch field, or is malformed, leaves v as it is:
// decoding then reports what is wrong as it would have. presize reports
// whether it put messages in v.
//
// reused are the messages of a publish batch that were given back
// (Releaser), the batch's first: trim looks at their payload arrays once
// the frame is decoded.
func presize(v any, b []byte) (presized bool, reused []*messagev1.Message) {
	switch f := v.(type) {
	case *deliveryv1.PublishRequest:
		batch := soleField(b, publishRequestBatchField)
		if n := countField(batch, publishBatchMessagesField); n > 0 {
			ms := make([]*messagev1.Message, n)
			k := takeReleased(ms)
			for i := k; i < n; i++ {
				ms[i] = newMessage()
			}
			f.Kind = &deliveryv1.PublishRequest_Batch{Batch: &deliveryv1.PublishBatch{Messages: ms[:0]}}
			return true, ms[:k]
		}
	case *deliveryv1.SubscribeResponse:
		batch := soleField(b, subscribeResponseBatchField)
		if n := countField(batch, deliveryBatchDeliveriesField); n > 0 {
			slab := make([]deliveryv1.Delivery, n)
			ds := make([]*deliveryv1.Delivery, n)
			for i := range slab {
				slab[i].Message = newMessage()
				ds[i] = &slab[i]
			}
			f.Kind = &deliveryv1.SubscribeResponse_Batch{Batch: &deliveryv1.DeliveryBatch{Deliveries: ds[:0]}}
			return true, nil
		}
	}
	return false, nil
}

// idsDecoded reports whether every message of v's batch, decoded into
// what presize put there, has an id that is not empty. A message without
// an id on the wire (or a delivery without a message) is left with the
// empty id presize gave it; SizeVT counts it, but other bytes the
// encoding does not need (a scalar field twice, a varint longer than it
// need be) can make up the difference, so the frame's size alone does not
// tell. An empty id on the wire looks the same; either way the frame is
// decoded again by protobuf-go. No traffic an intermediate accepts takes
// that path: it refuses a message with an empty id.
func idsDecoded(v any) bool {
	switch f := v.(type) {
	case *deliveryv1.PublishRequest:
		for _, m := range f.GetBatch().GetMessages() {
			if emptyID(m.GetId()) {
				return false
			}
		}
	case *deliveryv1.SubscribeResponse:
		for _, d := range f.GetBatch().GetDeliveries() {
			if emptyID(d.GetMessage().GetId()) {
				return false
			}
		}
	}
	return true
}

// emptyID reports whether id has none of its known fields set (or is nil).
func emptyID(id *messagev1.MessageId) bool {
	return id.GetProducerId() == "" && id.GetIncarnation() == 0 && id.GetSeq() == 0
}

// messageWithID is a message and its id in one allocation: each lives as
// long as the other.
type messageWithID struct {
	msg messagev1.Message
	id  messagev1.MessageId
}

// newMessage returns an empty message whose id is already there, so that
// decoding fills it instead of allocating it. A message that has no id on
// the wire is then left with an empty one, and so is a delivery without a
// message: Unmarshal sees it (idsDecoded) and decodes the frame again with
// protobuf-go, which leaves them unset.
func newMessage() *messagev1.Message {
	m := new(messageWithID)
	m.msg.Id = &m.id
	return &m.msg
}

// soleField returns the value of b's only field when it is field num of
// the bytes wire type and b holds nothing else; nil otherwise.
func soleField(b []byte, num protowire.Number) []byte {
	n, typ, l := protowire.ConsumeTag(b)
	if l < 0 || n != num || typ != protowire.BytesType {
		return nil
	}
	v, m := protowire.ConsumeBytes(b[l:])
	if m < 0 || l+m != len(b) {
		return nil
	}
	return v
}

// countField returns how many times field num, of the bytes wire type,
// occurs in b; 0 when b does not parse.
func countField(b []byte, num protowire.Number) int {
	count := 0
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return 0
		}
		m := protowire.ConsumeFieldValue(n, typ, b[l:])
		if m < 0 {
			return 0
		}
		if n == num && typ == protowire.BytesType {
			count++
		}
		b = b[l+m:]
	}
	return count
}
