package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/registry"
)

// produceSummary is the JSON line `butterfly produce` prints last.
type produceSummary struct {
	Sent    uint64 `json:"sent"`
	Acked   uint64 `json:"acked"`
	Resent  uint64 `json:"resent"`
	Nacked  uint64 `json:"nacked"`
	Unacked uint64 `json:"unacked"`
}

// newProduceSummary is the summary of a closed producer's counters.
func newProduceSummary(st components.ProducerStats) produceSummary {
	return produceSummary{Sent: st.Sent, Acked: st.Acked, Resent: st.Resent, Nacked: st.Nacked, Unacked: st.Sent - st.Acked - st.Nacked}
}

func newProduceCommand(r *rootCommand) *cobra.Command {
	var (
		id, service  string
		count        uint64
		rate         float64
		size, window int
		maxMsgBytes  int
		closeTimeout time.Duration
		tlsf         *tlsFlags
	)
	var obsf *observeFlags
	c := &cobra.Command{
		Use:   "produce",
		Short: "Send messages into the mesh (component1)",
		Long: `Send messages to the intermediates of --service. With --count it sends
messages with seq 1..N and payloads of --size bytes; without it, one message
per line of standard input. It exits 0 only when every message was
acknowledged end to end. SIGTERM or SIGINT stops taking messages and waits
(up to --close-timeout) for what was sent to be acknowledged.

The last line on stdout is a JSON summary:
  {"sent":…,"acked":…,"resent":…,"nacked":…,"unacked":…}

` + tlsHelp + `
With mutual TLS, the intermediates accept only the producer id bound to the
client certificate (butterfly certs --producer-id ID, or --client-id ID), in
the hello and in every message.`,
		Example: `  butterfly produce --id p1 --count 20000
  butterfly produce --id p1 --count 100000 --rate 5000 --size 256
  printf 'hello\nworld\n' | butterfly produce --id p2`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireFlag("id", id); err != nil {
				return err
			}
			if err := registry.CheckName("--id", id); err != nil {
				return &usageError{err}
			}
			if err := checkProducerID(id); err != nil {
				return err
			}
			if err := registry.CheckName("--service", service); err != nil {
				return &usageError{err}
			}
			if rate < 0 || math.IsNaN(rate) || math.IsInf(rate, 0) {
				return usagef("--rate %v: must be a number of messages a second, 0 or more", rate)
			}
			if size < 0 {
				return usagef("--size %d: must not be negative", size)
			}
			if maxMsgBytes < 1 {
				return usagef("--max-message-bytes %d: must be at least 1", maxMsgBytes)
			}
			if size > maxMsgBytes {
				return usagef("--size %d: over --max-message-bytes %d", size, maxMsgBytes)
			}
			if window < 1 {
				return usagef("--window %d: must be at least 1", window)
			}
			if closeTimeout <= 0 {
				return usagef("--close-timeout %v: must be positive", closeTimeout)
			}
			cs, err := r.setupComponent(cmd.Context(), "producer", tlsf, obsf)
			if err != nil {
				return err
			}
			defer cs.Close()
			p, err := components.NewProducer(cs.cli, id, withCommon[components.ProducerOption](cs,
				components.WithService(service), components.WithWindow(window),
				components.WithMaxMessageBytes(maxMsgBytes))...)
			if err != nil {
				return err
			}
			sendErr := produce(cmd.Context(), p, cmd.InOrStdin(), count, rate, size, cmd.Flags().Changed("count"))
			// Close even after SIGTERM: flush what was accepted.
			closeCtx, cancel := context.WithTimeout(context.WithoutCancel(cmd.Context()), closeTimeout)
			closeErr := p.Close(closeCtx)
			cancel()
			sum := newProduceSummary(p.Stats())
			line, _ := json.Marshal(sum)
			fmt.Fprintln(cmd.OutOrStdout(), string(line))
			if err := p.Err(); err != nil {
				return err // refused for good: a runtime error, not a wait that ran out
			}
			if sendErr != nil && !errors.Is(sendErr, context.Canceled) {
				return sendErr
			}
			if closeErr != nil {
				return &incompleteError{closeErr}
			}
			if sum.Nacked > 0 {
				return &incompleteError{fmt.Errorf("%d messages were handed back (negative acknowledgements)", sum.Nacked)}
			}
			return nil
		},
	}
	f := c.Flags()
	obsf = addObserveFlags(f, true)
	f.StringVar(&id, "id", "", "producer id (required)")
	f.StringVar(&service, "service", registry.DefaultService, "service to send to")
	f.Uint64Var(&count, "count", 0, "send N messages with seq 1..N (default: one per stdin line)")
	f.Float64Var(&rate, "rate", 0, "messages per second, 0 for as fast as the window allows")
	f.IntVar(&size, "size", 64, "payload size in bytes with --count")
	f.IntVar(&window, "window", components.DefaultWindow, "most unacknowledged messages")
	f.IntVar(&maxMsgBytes, "max-message-bytes", components.DefaultMaxMessageBytes, "largest message sent, encoded (an intermediate's --max-message-bytes; the smallest one reached applies)")
	f.DurationVar(&closeTimeout, "close-timeout", 60*time.Second, "how long to wait for acknowledgements at the end")
	tlsf = addTLSFlags(r, f, false)
	return c
}

// produce sends --count messages, or one per line of in. It stops early,
// returning ctx's error, when ctx is canceled.
func produce(ctx context.Context, p *components.Producer, in io.Reader, count uint64, rate float64, size int, counted bool) error {
	pc := newPacer(rate)
	defer pc.stop()
	pace := func() error { return pc.wait(ctx) }
	if counted {
		for i := uint64(1); i <= count; i++ {
			if err := pace(); err != nil {
				return err
			}
			if _, err := p.Send(ctx, &messagev1.Message{Payload: payload(i, size)}); err != nil {
				return err
			}
		}
		return nil
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64*1024), 4<<20)
	n := 0
	for sc.Scan() {
		n++
		if err := pace(); err != nil {
			return err
		}
		line := append([]byte(nil), sc.Bytes()...)
		if _, err := p.Send(ctx, &messagev1.Message{Payload: line}); err != nil {
			if errors.Is(err, components.ErrMessageTooLarge) {
				// What follows is not read: the line is named, so that
				// the operator knows where to start again.
				return fmt.Errorf("stdin line %d (--max-message-bytes): %w; the lines after it were not sent", n, err)
			}
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading stdin after line %d: %w; the lines after it were not sent", n, err)
	}
	return nil
}

// pacer spaces sends at rate a second on average: the n-th is due n/rate
// after the first, and one that is late goes at once, so that what a sleep
// overshoots is made up by the sends after it (a ticker drops the ticks a
// slow send misses, and cannot tick faster than the timers allow). After a
// stall of more than a second (the window full), it counts afresh rather
// than catch up with a burst.
type pacer struct {
	rate  float64 // per second; 0: no pacing
	start time.Time
	n     uint64 // sends since start
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
	timer *time.Timer
}

func newPacer(rate float64) *pacer {
	pc := &pacer{rate: rate, now: time.Now}
	pc.sleep = pc.timerSleep
	return pc
}

// wait returns when the next send is due, or ctx's error.
func (pc *pacer) wait(ctx context.Context) error {
	if err := ctx.Err(); err != nil || pc.rate <= 0 {
		return err
	}
	now := pc.now()
	if pc.start.IsZero() {
		pc.start = now
	}
	due := pc.start.Add(time.Duration(float64(pc.n) / pc.rate * float64(time.Second)))
	pc.n++
	if now.Sub(due) > time.Second {
		pc.start, pc.n = now, 1
		return nil
	}
	if d := due.Sub(now); d > 0 {
		return pc.sleep(ctx, d)
	}
	return nil
}

func (pc *pacer) timerSleep(ctx context.Context, d time.Duration) error {
	if pc.timer == nil {
		pc.timer = time.NewTimer(d)
	} else {
		pc.timer.Reset(d)
	}
	select {
	case <-pc.timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (pc *pacer) stop() {
	if pc.timer != nil {
		pc.timer.Stop()
	}
}

// payload returns size bytes that start with the message number, so a
// printed payload says which message it is.
func payload(i uint64, size int) []byte {
	b := make([]byte, size)
	for j := range b {
		b[j] = 'x'
	}
	copy(b, strconv.AppendUint(nil, i, 10))
	return b
}
