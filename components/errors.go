package components

import (
	"errors"
	"fmt"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// ErrClosed is returned by Send after Close.
var ErrClosed = errors.New("components: closed")

// Errors a consumer stops with on its own (Consumer.Err).
var (
	// ErrReplaced: another process registered the same consumer id.
	ErrReplaced = errors.New("components: consumer taken over by another process with the same id")
	// ErrGroupDeleted: the consumer's group was deleted.
	ErrGroupDeleted = errors.New("components: consumer group deleted")
	// ErrPermissionDenied: an intermediate refused the consumer's
	// certificate the consumer id (PERMISSION_DENIED).
	ErrPermissionDenied = errors.New("components: permission denied")
	// ErrLimitReached: the handler handled as many messages as WithLimit
	// allows.
	ErrLimitReached = errors.New("components: consumer handled its limit of messages")
	// ErrHandlerStopped: the handler returned an error made by Stop.
	ErrHandlerStopped = errors.New("components: the handler stopped the consumer")
)

// Stop wraps err, for a handler to return, to say that the consumer cannot
// handle messages at all any more (its output is gone: a full disk, a
// closed pipe), not that this message failed. The message is not handed
// back to its producer: it is left unanswered, and so is every message the
// consumer holds and has not handled, for the group's other consumers; the
// consumer stops on its own (Done), and Err returns an error that wraps
// ErrHandlerStopped and err. Stop(nil) is nil.
func Stop(err error) error {
	if err == nil {
		return nil
	}
	return &handlerStop{err}
}

// handlerStop is the error Stop makes.
type handlerStop struct{ err error }

// stoppedBy returns the cause given to Stop when err was made by it. Its
// target escapes to the heap: call it on an error, not on every answer.
func stoppedBy(err error) (error, bool) {
	var hs *handlerStop
	if errors.As(err, &hs) {
		return hs.err, true
	}
	return nil, false
}

func (e *handlerStop) Error() string { return e.err.Error() }
func (e *handlerStop) Unwrap() error { return e.err }

// NackError is a message handed back for good; SendWait returns it.
type NackError struct {
	ID     *messagev1.MessageId
	Reason messagev1.NackReason
	Detail string
}

func (e *NackError) Error() string {
	return fmt.Sprintf("components: message %s/%d/%d handed back: %s: %s",
		e.ID.GetProducerId(), e.ID.GetIncarnation(), e.ID.GetSeq(), e.Reason, e.Detail)
}

// CloseError is returned by Producer.Close when not every message sent was
// acknowledged.
type CloseError struct {
	// Unacked is how many messages were still unacknowledged.
	Unacked int
	// Failed is how many messages were handed back for good.
	Failed int
	// Err is why Close stopped waiting, if it did (the context's error).
	Err error
	// Waiting is what the unacknowledged messages waited for when Close
	// gave up, when the producer knew: "no instance of service S is
	// registered", "group G has no registered consumer".
	Waiting string
}

func (e *CloseError) Error() string {
	msg := fmt.Sprintf("components: producer closed with %d messages unacknowledged and %d handed back", e.Unacked, e.Failed)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	if e.Waiting != "" {
		msg += " (waiting: " + e.Waiting + ")"
	}
	return msg
}

func (e *CloseError) Unwrap() error { return e.Err }

// ProducerStats are a producer's counters.
type ProducerStats struct {
	// Sent is how many messages Send accepted.
	Sent uint64
	// Acked is how many were acknowledged end to end.
	Acked uint64
	// Resent is how many times a message went out again after its stream
	// broke, drained, moved or handed it back transiently.
	Resent uint64
	// Nacked is how many were handed back for good.
	Nacked uint64
	// InFlight is how many are accepted and not yet acknowledged or handed
	// back for good.
	InFlight uint64
}
