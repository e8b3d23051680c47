package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/registry"
)

// stageSummary is the JSON line `butterfly stage` prints last.
type stageSummary struct {
	Consumer consumeSummary `json:"consumer"`
	Producer produceSummary `json:"producer"`
}

func newStageCommand(r *rootCommand) *cobra.Command {
	var (
		id, from, to, group, processor string
		maxRecv                        int
		closeTimeout                   time.Duration
		tlsf                           *tlsFlags
	)
	var obsf *observeFlags
	c := &cobra.Command{
		Use:   "stage",
		Short: "Consume from one service and produce to the next",
		Long: `Run a stage: a consumer of --from whose handler runs --processor on each
message and sends the result to --to under the message's original id. A
message is acknowledged upstream only once the downstream send is
acknowledged (ack chaining), so a pipeline of stages is loss-free end to end
with no durable state in the middle. SIGTERM or SIGINT drains.

The last line on stdout is a JSON summary of the stage's consumer and
producer, each as consume and produce print theirs:
  {"consumer":{"delivered":…,"duplicates_dropped":…},"producer":{"sent":…,"acked":…,"resent":…,"nacked":…,"unacked":…}}

` + tlsHelp + `
With mutual TLS, the client certificate must be a stage certificate for the
stage's --id (butterfly certs --stage-id ID): it subscribes as that consumer
id, publishes under it, and forwards messages under their original ids.`,
		Example: `  butterfly stage --id component1-a --from requests --to intermediate
  butterfly stage --id component2-a --from intermediate --to replies --processor upper`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, f := range []struct{ flag, v string }{{"id", id}, {"from", from}, {"to", to}} {
				if err := requireFlag(f.flag, f.v); err != nil {
					return err
				}
				if err := registry.CheckName("--"+f.flag, f.v); err != nil {
					return &usageError{err}
				}
			}
			if err := checkProducerID(id); err != nil {
				return err // it produces under its id
			}
			if from == to {
				return usagef("--from and --to are both %q", from)
			}
			if err := registry.CheckName("--group", group); err != nil {
				return &usageError{err}
			}
			if closeTimeout <= 0 {
				return usagef("--close-timeout %v: must be positive", closeTimeout)
			}
			if err := checkMaxReceiveBytes(maxRecv); err != nil {
				return err
			}
			if err := tlsf.checkBound(tlsutil.RoleStage, id); err != nil {
				return err
			}
			proc, err := intermediate.ProcessorByName(processor)
			if err != nil {
				return usagef("--processor %q is unknown (valid: %s)", processor, strings.Join(intermediate.ProcessorNames(), ", "))
			}
			cs, err := r.setupComponent(cmd.Context(), "stage", tlsf, obsf)
			if err != nil {
				return err
			}
			defer cs.Close()
			st, err := components.NewStage(cs.cli, id, from, to, withCommon[components.StageOption](cs,
				components.WithConsumerOptions(components.WithGroup(group), components.WithMaxReceiveBytes(maxRecv), components.WithVersion(buildVersion())), components.WithProcessor(proc))...)
			if err != nil {
				return err
			}
			select {
			case <-cmd.Context().Done():
			case <-st.Done():
			}
			closeCtx, cancel := context.WithTimeout(context.WithoutCancel(cmd.Context()), closeTimeout)
			defer cancel()
			stopErr := handedOver(cmd, st.Err())
			closeErr := st.Close(closeCtx)
			if stopErr == nil && (errors.Is(closeErr, components.ErrRefused) || errors.Is(closeErr, components.ErrTLSMismatch)) {
				// Refused downstream while it drained: a refusal all the same.
				stopErr, closeErr = closeErr, nil
			}
			stats := st.Stats()
			line, _ := json.Marshal(stageSummary{
				Consumer: newConsumeSummary(stats.Consumer),
				Producer: newProduceSummary(stats.Producer),
			})
			fmt.Fprintln(cmd.OutOrStdout(), string(line))
			// A stage that stopped on its own (refused) exits 1 with why as
			// its last line, whatever it left unacknowledged (the summary
			// counts it); one that only could not finish in time exits 3.
			if stopErr != nil {
				return r.stoppedLast("stage closed", stopErr, closeErr)
			}
			var ce *components.CloseError
			if errors.As(closeErr, &ce) {
				return &incompleteError{closeErr}
			}
			return closeErr
		},
	}
	f := c.Flags()
	obsf = addObserveFlags(f, true)
	f.StringVar(&id, "id", "", "stage id, used as consumer and producer id (required)")
	f.StringVar(&from, "from", "", "service to consume from (required)")
	f.StringVar(&to, "to", "", "service to produce to (required)")
	f.StringVar(&group, "group", "default", "consumer group on --from")
	f.StringVar(&processor, "processor", "passthrough", "processing step: "+strings.Join(intermediate.ProcessorNames(), ", "))
	f.DurationVar(&closeTimeout, "close-timeout", 30*time.Second, "how long draining may take at the end")
	addMaxReceiveBytesFlag(f, &maxRecv)
	tlsf = addTLSFlags(r, f, false)
	return c
}
