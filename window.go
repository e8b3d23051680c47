package butterfly

import "fmt"

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
