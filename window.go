package butterfly

import (
	"errors"
	"fmt"
	"unicode/utf8"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// MaxSeqSpan is the sequence window of a producer incarnation: every message
// it sends has a seq below its low-water mark (Message.low_water_seq, the
// lowest seq it has not settled) plus MaxSeqSpan. A producer waits in Send
// rather than go past it; intermediates refuse a message beyond it
// (NACK_REASON_INVALID), and consumers track at most that many seqs above
// the mark. A forged message far ahead of the mark it carries therefore
// cannot push the consumers' memory of that producer past what it handled;
// one that forges the mark too is taken as the producer's, which is why
// only a client that may publish under a producer's id can send one.
const MaxSeqSpan = 1 << 24

// MaxProducerIDBytes is the longest producer id an intermediate takes, in
// a publish stream's hello and in message ids: a producer (or a stage,
// which produces under its id) with a longer one is refused at the start of
// every stream.
const MaxProducerIDBytes = 256

// ErrInvalidMessageID is wrapped by CheckMessageID's errors.
var ErrInvalidMessageID = errors.New("invalid message id")

// CheckProducerID returns an error when id is not a producer id every
// intermediate takes: non-empty valid UTF-8 of at most MaxProducerIDBytes,
// without '/', spaces or control characters.
func CheckProducerID(id string) error {
	switch {
	case id == "":
		return errors.New("producer_id is empty")
	case len(id) > MaxProducerIDBytes:
		return fmt.Errorf("producer_id of %d bytes is longer than %d", len(id), MaxProducerIDBytes)
	case !utf8.ValidString(id):
		return fmt.Errorf("producer_id %q is not valid UTF-8", id)
	}
	for _, r := range id {
		if r == '/' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("producer_id %q contains %q", id, r)
		}
	}
	return nil
}

// CheckMessageID returns an error, which errors.Is ErrInvalidMessageID,
// when id (with the low-water mark lwm it travels with) is not one every
// intermediate takes: a producer id CheckProducerID takes, an incarnation
// and a seq above 0, and a seq within CheckSeqWindow of lwm. A producer
// checks an id its caller set (a stage forwarding a message) in Send, so
// that a message no intermediate would take is refused there rather than
// handed back for good once sent.
func CheckMessageID(id *messagev1.MessageId, lwm uint64) error {
	var err error
	switch {
	case id == nil:
		err = errors.New("message has no id")
	case id.GetSeq() == 0:
		err = errors.New("message id has seq 0")
	case id.GetIncarnation() == 0:
		// Consumers drop a repeated (producer id, incarnation, seq): a
		// producer that restarted under incarnation 0 and counted from 1
		// again would have its new messages dropped as duplicates.
		err = errors.New("message id has incarnation 0 (it must be new at every producer start)")
	default:
		if err = CheckProducerID(id.GetProducerId()); err == nil {
			// A seq far above the producer's mark would make consumers
			// forget what they handled of that producer (MaxSeqSpan).
			err = CheckSeqWindow(id.GetSeq(), lwm)
		}
	}
	if err != nil {
		return invalidIDError{err}
	}
	return nil
}

// invalidIDError is CheckMessageID's error: its text is the rule broken,
// for a caller to put after its own words.
type invalidIDError struct{ err error }

func (e invalidIDError) Error() string        { return e.err.Error() }
func (e invalidIDError) Unwrap() error        { return e.err }
func (e invalidIDError) Is(target error) bool { return target == ErrInvalidMessageID }

// CheckSeqWindow returns an error when a message's seq lies outside the
// window of its low-water mark lwm: below it (a message is never settled
// before it is sent), or at or above lwm+MaxSeqSpan. A mark of 0 (a sender
// that tracks none) counts as 1: such a sender may send seqs 1 to
// MaxSeqSpan of an incarnation and no more; to send more it must send the
// mark. The error says so, naming the field and the limit.
func CheckSeqWindow(seq, lwm uint64) error {
	base := max(lwm, 1)
	switch {
	case seq < base:
		return fmt.Errorf("seq %d is below its low_water_seq %d", seq, lwm)
	case seq-base >= MaxSeqSpan && lwm == 0:
		return fmt.Errorf("seq %d is beyond the producer window: with low_water_seq 0 a producer may send seqs 1 to %d (2^24) of an incarnation; to send more it must set low_water_seq to its lowest unacknowledged seq", seq, MaxSeqSpan)
	case seq-base >= MaxSeqSpan:
		return fmt.Errorf("seq %d is beyond the producer window: it is %d (2^24) or more above its low_water_seq %d; a producer waits for its lowest unacknowledged seq to be acknowledged before it goes that far", seq, MaxSeqSpan, lwm)
	}
	return nil
}
