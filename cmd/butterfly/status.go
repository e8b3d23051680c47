package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	"github.com/butterfly-mesh/butterfly/internal/etcdclient"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
	"github.com/butterfly-mesh/butterfly/registry"
)

// States of an instance in `butterfly status`.
const (
	stateServing     = "serving"
	stateDraining    = "draining"
	stateUnreachable = "unreachable"
	// stateReplaced: the address answers for another incarnation or instance
	// than the registry names.
	stateReplaced = "replaced"
)

// statusEntry is one row of `butterfly status`, and its JSON form: the
// registration joined with the instance's own GetStatus.
type statusEntry struct {
	lsEntry
	State      string    `json:"state"`
	Error      string    `json:"error,omitempty"`
	InFlight   uint64    `json:"in_flight"`
	Producers  int       `json:"producers"`
	Consumers  int       `json:"consumers"`
	Received   uint64    `json:"received"`
	Acked      uint64    `json:"acked"`
	Nacked     uint64    `json:"nacked"`
	Delivered  uint64    `json:"delivered"`
	RecvRate   float64   `json:"received_per_second"`
	AckRate    float64   `json:"acked_per_second"`
	Processor  string    `json:"processor,omitempty"`
	StatusTime time.Time `json:"status_time"`
}

// statusSample is what rates are computed from.
type statusSample struct {
	epoch           uint64
	at              time.Time
	received, acked uint64
}

func newStatusCommand(r *rootCommand) *cobra.Command {
	var (
		service           string
		watch, asJSON     bool
		interval, timeout time.Duration
		tlsf              *tlsFlags
	)
	c := &cobra.Command{
		Use:   "status",
		Short: "Show the mesh: every registered instance with its live status",
		Long: `Show every instance registered in etcd under <prefix>/services/ joined with
its live status, read from the instance itself (AdminService.GetStatus at its
registered address, within --timeout): state (serving, draining, unreachable,
or replaced when the address answers for another incarnation), messages in
flight, connected producers and consumers, counters and rates. Rates are
per second over the last --interval with --watch, else averaged since the
instance started. --watch prints the table again every --interval until
interrupted. Without --watch, status exits 1 when an instance is unreachable
or replaced (after printing every row), as etcdctl endpoint health does, so a
script or a probe can act on it.

` + statusTLSHelp,
		Example: `  butterfly status
  butterfly status --service intermediate --watch --interval 2s
  butterfly status --json`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if service != "" {
				if err := registry.CheckName("--service", service); err != nil {
					return &usageError{err}
				}
			}
			if interval <= 0 {
				return usagef("--interval %v: must be positive", interval)
			}
			if timeout <= 0 {
				return usagef("--timeout %v: must be positive", timeout)
			}
			creds, err := tlsf.clientCreds(cmd.Context(), r.logger)
			if err != nil {
				return err
			}
			cli, err := r.etcdClient()
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx := cmd.Context()
			prev := make(map[string]statusSample)
			for {
				entries, err := collectStatus(ctx, cli, r.prefix, service, creds, timeout, prev, func(key string, err error) {
					fmt.Fprintf(cmd.ErrOrStderr(), "butterfly: skipping %s: %v\n", key, err)
				})
				switch {
				case err == nil:
				case ctx.Err() != nil:
					return nil
				case watch && !etcdclient.Refused(err):
					// An outage that starts later is ridden out: said,
					// and tried again at the next refresh.
					fmt.Fprintf(cmd.ErrOrStderr(), "butterfly: etcd %v: %v (trying again every --interval %v)\n", r.etcdEndpoints, err, interval)
					if !sleepCtx(ctx, interval) {
						return nil
					}
					continue
				default:
					return fmt.Errorf("etcd %v: %w", r.etcdEndpoints, err)
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					if !watch {
						enc.SetIndent("", "  ")
					}
					if err := enc.Encode(entries); err != nil {
						return err
					}
				} else {
					if watch {
						fmt.Fprintf(cmd.OutOrStdout(), "%s\n", time.Now().Format(time.RFC3339))
					}
					printStatus(cmd.OutOrStdout(), entries, time.Now())
					// Why an instance is unreachable or replaced, which
					// the table has no room for (--json has it as error).
					for _, e := range entries {
						if e.Error != "" {
							fmt.Fprintf(cmd.ErrOrStderr(), "butterfly: %s/%s at %s is %s: %s\n", e.Service, e.Instance, e.Addr, e.State, e.Error)
						}
					}
				}
				sayNoneRegistered(cmd.ErrOrStderr(), entries, r.prefix, service)
				if !watch {
					return unhealthy(entries)
				}
				if !sleepCtx(ctx, interval) {
					return nil
				}
				if !asJSON {
					fmt.Fprintln(cmd.OutOrStdout())
				}
			}
		},
	}
	f := c.Flags()
	f.StringVar(&service, "service", "", "only this service (default all)")
	f.BoolVar(&watch, "watch", false, "refresh every --interval until interrupted")
	f.DurationVar(&interval, "interval", 2*time.Second, "refresh interval of --watch")
	f.DurationVar(&timeout, "timeout", 2*time.Second, "how long to wait for each instance's status")
	f.BoolVar(&asJSON, "json", false, "print JSON instead of a table (one array per refresh)")
	tlsf = addTLSFlags(r, f, false)
	tlsf.readOnly = true
	return c
}

// collectStatus lists the instances and asks each, concurrently, for its
// status. prev holds the last sample per instance key, for rates; it is
// updated.
func collectStatus(ctx context.Context, cli *clientv3.Client, prefix, service string, creds credentials.TransportCredentials,
	timeout time.Duration, prev map[string]statusSample, bad func(key string, err error)) ([]statusEntry, error) {
	listed, err := listInstances(ctx, cli, prefix, service, bad)
	if err != nil {
		return nil, err
	}
	entries := make([]statusEntry, len(listed))
	var wg sync.WaitGroup
	for i, e := range listed {
		entries[i].lsEntry = e
		wg.Add(1)
		go func() {
			defer wg.Done()
			fillStatus(ctx, &entries[i], creds, timeout)
		}()
	}
	wg.Wait()
	seen := make(map[string]bool, len(entries))
	for i := range entries {
		e := &entries[i]
		seen[e.Key] = true
		if e.State == stateUnreachable || e.State == stateReplaced {
			continue
		}
		cur := statusSample{epoch: e.Epoch, at: e.StatusTime, received: e.Received, acked: e.Acked}
		if p, ok := prev[e.Key]; ok && p.epoch == cur.epoch && cur.at.After(p.at) && cur.received >= p.received && cur.acked >= p.acked {
			secs := cur.at.Sub(p.at).Seconds()
			e.RecvRate = float64(cur.received-p.received) / secs
			e.AckRate = float64(cur.acked-p.acked) / secs
		} else if !e.Started.IsZero() && e.StatusTime.After(e.Started) {
			secs := e.StatusTime.Sub(e.Started).Seconds()
			e.RecvRate = float64(e.Received) / secs
			e.AckRate = float64(e.Acked) / secs
		}
		prev[e.Key] = cur
	}
	for k := range prev {
		if !seen[k] {
			delete(prev, k)
		}
	}
	return entries, nil
}

// fillStatus dials the instance's registered address directly and reads its
// status into e.
func fillStatus(ctx context.Context, e *statusEntry, creds credentials.TransportCredentials, timeout time.Duration) {
	e.State = stateUnreachable
	conn, err := grpc.NewClient(e.Addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		e.Error = err.Error()
		return
	}
	defer conn.Close()
	callCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// An instance's status lists every producer and consumer connected to
	// it: thousands are over gRPC's default 4 MiB. Not WaitForReady: a
	// refused connection ends the call at once, a silent one at --timeout.
	st, err := adminv1.NewAdminServiceClient(conn).GetStatus(callCtx, &adminv1.GetStatusRequest{}, grpc.MaxCallRecvMsgSize(statusMaxRecv))
	if err != nil {
		// A connection that never came up because the two ends disagree on
		// TLS is said as such, with the flags that mend it (which may take
		// a TLS handshake of its own, up to a second).
		if c := status.Code(err); c == codes.Unavailable || c == codes.DeadlineExceeded {
			if why := tlsutil.Mismatch(ctx, e.Addr, creds, status.Convert(err).Message()); why != "" {
				e.Error = "TLS mismatch: " + why
				return
			}
		}
		switch e.Error = err.Error(); {
		case strings.Contains(e.Error, "connect: connection refused"):
			e.Error = "nothing listens at " + e.Addr + " (connection refused)"
		case status.Code(err) == codes.DeadlineExceeded:
			e.Error = "no answer from " + e.Addr + " within --timeout " + timeout.String() + " (packets dropped on the way, or a stopped or frozen process or host)"
		case status.Code(err) == codes.Unimplemented:
			e.Error = e.Addr + " answers gRPC but is not a Butterfly intermediate (" + status.Convert(err).Message() + ")"
		}
		return
	}
	if st.GetInstance() != e.Instance || st.GetService() != e.Service || st.GetEpoch() != e.Epoch {
		// Another process answers at the address: its figures are not this
		// registration's.
		e.State = stateReplaced
		e.Error = fmt.Sprintf("%s answers as %s/%s epoch %d", e.Addr, st.GetService(), st.GetInstance(), st.GetEpoch())
		return
	}
	e.StatusTime = time.Now()
	e.InFlight, e.Producers, e.Consumers = st.GetInFlight(), len(st.GetProducers()), len(st.GetConsumers())
	e.Received, e.Acked, e.Nacked, e.Delivered = st.GetReceived(), st.GetAcked(), st.GetNacked(), st.GetDelivered()
	e.Processor = st.GetProcessor()
	if e.Started.IsZero() {
		e.Started = st.GetStartTime().AsTime()
	}
	switch {
	case st.GetDraining() || e.Draining:
		e.State = stateDraining
	default:
		e.State = stateServing
	}
}

func printStatus(w io.Writer, entries []statusEntry, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tINSTANCE\tADDRESS\tEPOCH\tSTATE\tIN-FLIGHT\tPRODUCERS\tCONSUMERS\tRECV/S\tACK/S\tRECEIVED\tACKED\tNACKED\tDELIVERED\tAGE")
	for _, e := range entries {
		age := "-"
		if !e.Started.IsZero() {
			age = now.Sub(e.Started).Truncate(time.Second).String()
		}
		if e.State == stateUnreachable || e.State == stateReplaced {
			// Nothing of this registration's own to show.
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t%s\n", e.Service, e.Instance, e.Addr, e.Epoch, e.State, age)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%.1f\t%.1f\t%d\t%d\t%d\t%d\t%s\n",
			e.Service, e.Instance, e.Addr, e.Epoch, e.State, e.InFlight, e.Producers, e.Consumers,
			e.RecvRate, e.AckRate, e.Received, e.Acked, e.Nacked, e.Delivered, age)
	}
	tw.Flush()
}

// sleepCtx waits d, or less when ctx ends first; it reports whether it
// waited d.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// statusMaxRecv is the largest GetStatus answer status takes.
const statusMaxRecv = 256 << 20

// unhealthy is the error of a status without --watch whose entries include
// an instance it could not read at its registered address: the rows are
// printed all the same and the exit status says it.
func unhealthy(entries []statusEntry) error {
	var bad []string
	for _, e := range entries {
		if e.State == stateUnreachable || e.State == stateReplaced {
			bad = append(bad, e.Service+"/"+e.Instance)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d registered instances unreachable or replaced: %s", len(bad), len(entries), strings.Join(bad, ", "))
}
