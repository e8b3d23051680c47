package intermediate

import "time"

// WithAckObserver makes the server report, for every ack frame of a
// subscribe stream, how long it held the server's lock and how long the
// frame took in all.
func WithAckObserver(f func(consumer string, held, total time.Duration)) Option {
	return func(o *options) { o.ackObserver = f }
}
