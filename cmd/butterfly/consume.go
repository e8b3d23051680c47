package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/registry"
)

// consumeSummary is the JSON line `butterfly consume` prints last.
type consumeSummary struct {
	Delivered         uint64 `json:"delivered"`
	DuplicatesDropped uint64 `json:"duplicates_dropped"`
}

// newConsumeSummary is the summary of a closed consumer's counters.
func newConsumeSummary(st components.ConsumerStats) consumeSummary {
	return consumeSummary{Delivered: st.Delivered, DuplicatesDropped: st.DuplicatesDropped}
}

func newConsumeCommand(r *rootCommand) *cobra.Command {
	var (
		id, service, group, out string
		count                   uint64
		maxRecv                 int
		closeTimeout, leaseTTL  time.Duration
		createGroup             bool
		tlsf                    *tlsFlags
	)
	var obsf *observeFlags
	c := &cobra.Command{
		Use:   "consume",
		Short: "Receive messages from every intermediate (component2)",
		Long: `Receive processed messages from every intermediate of --service (fan-in) and
hand each to a handler: it prints the payload, or with --out appends one line
per handled message to FILE:
  producer_id<TAB>seq<TAB>intermediate<TAB>incarnation
(incarnation tells a producer's runs apart: each numbers its messages from 1).
A message is acknowledged only after its line is written; when a write
fails (a full disk), the consumer stops and exits 1, and what it held goes,
unhandled, to the group's other consumers. Duplicates (a
message sent again after an intermediate failed) are dropped. With --count it
handles exactly N messages and exits: what it received beyond them goes,
unhandled, to the group's other consumers (or waits for the group's next
one). SIGTERM or SIGINT drains: no new deliveries, the messages in hand are
finished and acknowledged.

The consumer registers in etcd at <prefix>/consumers/<service>/<group>/<id>
(on a lease, with an epoch) and declares its group at
<prefix>/groups/<service>/<group> unless --create-group=false. Intermediates
route only to registered consumers. A second process started with the same
--id takes over: this one drains and exits 0. When its group is deleted
(butterfly group delete) it drains and exits 1.

The last line on stdout is a JSON summary:
  {"delivered":…,"duplicates_dropped":…}

` + tlsHelp + `
With mutual TLS, the intermediates accept only the consumer id bound to the
client certificate (butterfly certs --consumer-id ID).`,
		Example: `  butterfly consume --id c1
  butterfly consume --id c1 --group audit --out c1.tsv --count 40000`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireFlag("id", id); err != nil {
				return err
			}
			if err := registry.CheckName("--id", id); err != nil {
				return &usageError{err}
			}
			if err := registry.CheckName("--service", service); err != nil {
				return &usageError{err}
			}
			if err := registry.CheckName("--group", group); err != nil {
				return &usageError{err}
			}
			if leaseTTL < time.Second {
				return usagef("--lease-ttl %v: must be at least 1s", leaseTTL)
			}
			if closeTimeout <= 0 {
				return usagef("--close-timeout %v: must be positive", closeTimeout)
			}
			if err := checkMaxReceiveBytes(maxRecv); err != nil {
				return err
			}
			if err := tlsf.checkBound(tlsutil.RoleConsumer, id); err != nil {
				return err
			}
			var w io.Writer = cmd.OutOrStdout()
			if out != "" {
				f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
				if err != nil {
					return usagef("--out: %v", err)
				}
				defer f.Close()
				w = f
			}
			cs, err := r.setupComponent(cmd.Context(), "consumer", tlsf, obsf)
			if err != nil {
				return err
			}
			defer cs.Close()
			ctx := cmd.Context()
			var mu sync.Mutex // serialises writes to w
			handler := func(_ context.Context, d *components.Delivery) error {
				mu.Lock()
				defer mu.Unlock()
				var err error
				if out != "" {
					id := d.Message.GetId()
					// One write per line: a line on disk survives SIGKILL.
					_, err = fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", id.GetProducerId(), strconv.FormatUint(id.GetSeq(), 10), d.Instance,
						strconv.FormatUint(id.GetIncarnation(), 10))
				} else {
					_, err = fmt.Fprintf(w, "%s\n", d.Message.GetPayload())
				}
				if err != nil {
					// The output is gone (a full disk, a closed pipe): no
					// message can be handled here, so none is handed back
					// as failed; the group's other consumers take them.
					if out != "" {
						return components.Stop(fmt.Errorf("--out: %w", err))
					}
					return components.Stop(fmt.Errorf("stdout: %w", err))
				}
				return nil
			}
			cons, err := components.NewConsumer(cs.cli, id, handler, withCommon[components.ConsumerOption](cs,
				components.WithService(service), components.WithGroup(group), components.WithLimit(count),
				components.WithCreateGroup(createGroup), components.WithLeaseTTL(leaseTTL), components.WithMaxReceiveBytes(maxRecv),
				components.WithVersion(buildVersion()))...)
			if err != nil {
				return err
			}
			select {
			case <-ctx.Done():
			case <-cons.Done():
			}
			closeCtx, cancelClose := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
			closeErr := cons.Close(closeCtx)
			cancelClose()
			line, _ := json.Marshal(newConsumeSummary(cons.Stats()))
			fmt.Fprintln(cmd.OutOrStdout(), string(line))
			stopErr := cons.Err()
			if errors.Is(stopErr, components.ErrLimitReached) {
				stopErr = nil // --count: done
			}
			if stopErr = handedOver(cmd, stopErr); stopErr != nil {
				return r.stoppedLast("consumer closed", stopErr, closeErr)
			}
			return closeErr
		},
	}
	f := c.Flags()
	obsf = addObserveFlags(f, true)
	f.StringVar(&id, "id", "", "consumer id, stable across restarts (required)")
	f.StringVar(&service, "service", registry.DefaultService, "service to receive from")
	f.StringVar(&group, "group", "default", "consumer group: every group gets every message")
	f.StringVar(&out, "out", "", "append producer_id<TAB>seq<TAB>intermediate<TAB>incarnation per message to FILE instead of printing payloads")
	f.Uint64Var(&count, "count", 0, "handle exactly N messages, then exit; the rest go to the group's other consumers")
	f.DurationVar(&closeTimeout, "close-timeout", 30*time.Second, "how long draining may take at the end")
	f.BoolVar(&createGroup, "create-group", true, "declare --group in etcd if it is not declared yet")
	f.DurationVar(&leaseTTL, "lease-ttl", components.DefaultConsumerLeaseTTL, "TTL of the consumer's registration lease: how long a crashed consumer keeps its messages")
	addMaxReceiveBytesFlag(f, &maxRecv)
	tlsf = addTLSFlags(r, f, false)
	return c
}

// addMaxReceiveBytesFlag adds --max-receive-bytes, a consumer's receive
// limit, to f.
func addMaxReceiveBytesFlag(f *pflag.FlagSet, v *int) {
	f.IntVar(v, "max-receive-bytes", components.DefaultMaxReceiveBytes, "largest delivery batch received, encoded: intermediates send none larger and hand back, as INVALID, a message that alone is larger")
}

// checkMaxReceiveBytes checks the value of --max-receive-bytes.
func checkMaxReceiveBytes(n int) error {
	if n < components.MinMaxReceiveBytes || n > math.MaxInt32 {
		return usagef("--max-receive-bytes %d: must be in [%d, %d]", n, components.MinMaxReceiveBytes, math.MaxInt32)
	}
	return nil
}
