package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/bench"
)

// benchFlags are the flags of `butterfly bench`.
type benchFlags struct {
	cfg        bench.Config
	asJSON     bool
	plot       string
	cpuprofile string
	memprofile string
	trace      string
	quick      bool
	processes  bool
	runs       int
}

// quickBench are the settings --quick applies to flags not set explicitly:
// a whole run in a few seconds, for smoke tests (its numbers are not
// steady-state figures).
var quickBench = map[string]string{
	"duration":  "300ms",
	"warmup":    "200ms",
	"fault-gap": "300ms",
	"heartbeat": "50ms",
	"window":    "2000",
}

func newBenchCommand(r *rootCommand) *cobra.Command {
	var f benchFlags
	c := &cobra.Command{
		Use:   "bench",
		Short: "Measure Butterfly beside plain-gRPC baselines, with faults",
		Long: `Measure, in one process and in the same run, so that the numbers mean
something beside each other:

  machine     first, threads that only read the clock, one per core and
              then one alone: how often and for how long a busy thread is
              kept off its core (a virtual machine's host taking a virtual
              core away); then one thread sleeping 1 ms at a time in an
              otherwise idle process: how often and how late it wakes (a
              halted virtual core woken late). Both are floors under the
              latency tails measured here;
  baselines   raw gRPC bidirectional streaming over one hop (one message per
              gRPC message, then batched as Butterfly batches), a
              hand-rolled two-hop relay with end-to-end acks in plain gRPC,
              and, after Butterfly, the same relay again at Butterfly's
              half-load rate, paced as its producers are and timed one way
              (send to sink): the tail a plain relay has at that rate;
  butterfly   producers -> intermediates -> consumers on an embedded etcd,
              with end-to-end acks and dedup: messages/s at saturation,
              end-to-end latency p50/p99/p999 at saturation and at half of it
              (rate-limited producers; --half-load-rate sets that load
              instead, to compare settings that move saturation at one
              rate), CPU seconds per million messages,
              heap allocations per message (also for the baselines: a busy
              machine does not blur them), messages per frame each way of
              each link (from the intermediates' counters) and peak heap;
  faults      under steady load: one intermediate stopped hard (messages lost,
              from exact ids; time until throughput is back to 80%; time until
              every resent message is delivered), the same intermediate back
              at a new address under the same name (etcd update to first
              message through it), frozen behind a blackholing proxy (time to
              detect), and another one drained at full load (Server.Drain).

Every message is counted by id: sent, delivered, lost, handled twice. The
load starts once every consumer is registered in etcd, and the run counts
the consumers whose registration lapsed on the way (a lease that expired
during a long stall, put back under a new one): while a registration is
gone its keys have another owner, so exactly once holds while none lapses,
at least once after. It also counts the messages still unacknowledged at
their producers when it ends (their Close is given 30s): more lost than
that would mean a message acknowledged without being handled.

With --processes it runs instead the same mesh with every intermediate,
producer and consumer a process of this binary (the real intermediate
command; hidden workers for the producers and consumers, which count every
message by id), on an embedded etcd in this process, and measures
saturation and half of it: throughput, end-to-end latency, the children's
CPU per million messages, messages per frame (from the intermediates'
/metrics) and peak RSS. No baselines, no faults.

It prints a table, or one JSON object with --json, and can draw throughput
over time with the faults marked (--plot). With --runs N it runs the whole
benchmark N times, one after the other, and reports the median of each
figure (the worst run's for messages lost, unacknowledged, handled twice or
from no producer of the run, and for consumer registrations that lapsed:
these may come from different runs), with each figure's range in the JSON: a
machine's rates move from run to run. It exits 3 if a message was lost.
Needs nothing running: etcd is embedded and every server listens on loopback
(127.0.0.2 and up stand in for other hosts). Run it on a quiet machine.`,
		Example: `  butterfly bench
  butterfly bench --json --plot bench.svg
  butterfly bench --payload 1024 --producers 4 --duration 10s --cpuprofile cpu.out
  go tool pprof -top cpu.out
  butterfly bench --quick --json
  butterfly bench --runs 5 --json --duration 3s
  butterfly bench --processes --json`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.quick {
				for name, v := range quickBench {
					if fl := cmd.Flags().Lookup(name); fl != nil && !fl.Changed {
						if err := fl.Value.Set(v); err != nil {
							return err
						}
					}
				}
			}
			if err := f.validate(); err != nil {
				return err
			}
			cfg := f.cfg
			cfg.Logger = r.logger
			if f.asJSON && !cmd.Flags().Changed("log-level") && os.Getenv("BUTTERFLY_LOG_LEVEL") == "" {
				cfg.Logger = slog.New(slog.DiscardHandler)
			}
			if f.processes {
				return f.runProcesses(cmd, cfg)
			}
			// Every output file is created before the runs, so that a path
			// that cannot be written is refused at once, naming its flag.
			for _, out := range []struct {
				flag, path string
				w          *io.Writer
			}{{"cpuprofile", f.cpuprofile, &cfg.CPUProfile}, {"memprofile", f.memprofile, &cfg.HeapProfile}, {"trace", f.trace, &cfg.Trace}} {
				if out.path == "" {
					continue
				}
				file, err := os.Create(out.path)
				if err != nil {
					return usagef("%s: %v", r.flagName(out.flag), err)
				}
				defer file.Close()
				*out.w = file
			}
			// The plot is drawn beside its path and put in its place once
			// drawn: a failed run leaves the one before.
			var plot *os.File
			if f.plot != "" {
				var err error
				if plot, err = os.CreateTemp(filepath.Dir(f.plot), filepath.Base(f.plot)+".*.tmp"); err != nil {
					return usagef("%s: %v", r.flagName("plot"), err)
				}
				defer os.Remove(plot.Name())
				defer plot.Close()
				if err := plot.Chmod(0o644); err != nil {
					return fmt.Errorf("%s: %w", r.flagName("plot"), err)
				}
			}
			reps := make([]*bench.Report, 0, f.runs)
			lost, err := f.repeat(cfg.Logger, func() (uint64, error) {
				rep, err := bench.Run(cmd.Context(), cfg)
				if err != nil {
					return 0, err
				}
				reps = append(reps, rep)
				return rep.FailoverLost, nil
			})
			if err != nil {
				return withLosses(err, lost)
			}
			rep := reps[0]
			if f.runs > 1 {
				if rep, err = bench.Summarize(reps); err != nil {
					return withLosses(err, lost)
				}
			}
			if err := f.print(cmd.OutOrStdout(), rep, f.table(rep.Runs, rep.WriteTable)); err != nil {
				return withLosses(err, lost)
			}
			if plot != nil {
				err := bench.WritePlot(plot, rep)
				if cerr := plot.Close(); err == nil {
					err = cerr
				}
				if err == nil {
					err = os.Rename(plot.Name(), f.plot)
				}
				if err != nil {
					return withLosses(fmt.Errorf("%s: %w", r.flagName("plot"), err), lost)
				}
			}
			if lost > 0 {
				return &incompleteError{fmt.Errorf("%d messages lost under faults", lost)}
			}
			return nil
		},
	}
	fl := c.Flags()
	addBenchConfigFlags(fl, &f.cfg)
	fl.BoolVar(&f.asJSON, "json", false, "print one JSON object instead of the table")
	fl.StringVar(&f.plot, "plot", "", "write throughput over time, faults marked, to this SVG file")
	fl.StringVar(&f.cpuprofile, "cpuprofile", "", "write a CPU profile of Butterfly's saturation phase to this file")
	fl.StringVar(&f.memprofile, "memprofile", "", "write a heap profile taken at the end of Butterfly's saturation phase to this file")
	fl.StringVar(&f.trace, "trace", "", "write a runtime execution trace of Butterfly's half-load phase to this file (go tool trace)")
	fl.BoolVar(&f.quick, "quick", false, "short phases and heartbeats: the whole run in a few seconds (smoke test)")
	fl.IntVar(&f.runs, "runs", 1, "run the whole benchmark this many times (odd) and report the median of each figure (--json adds each one's range)")
	fl.BoolVar(&f.processes, "processes", false, "run every intermediate, producer and consumer as a process of this binary instead (no baselines, no faults)")
	c.AddCommand(newBenchWorkerCommand(r))
	return c
}

// addBenchConfigFlags registers the flags that set cfg.
func addBenchConfigFlags(fl *pflag.FlagSet, cfg *bench.Config) {
	fl.IntVar(&cfg.Payload, "payload", bench.DefaultPayload, "payload size in bytes")
	fl.IntVar(&cfg.Producers, "producers", bench.DefaultProducers, "producers (and baseline streams)")
	fl.IntVar(&cfg.Intermediates, "intermediates", bench.DefaultIntermediates, "intermediates (at least 2)")
	fl.IntVar(&cfg.Consumers, "consumers", bench.DefaultConsumers, "consumers")
	fl.DurationVar(&cfg.Duration, "duration", bench.DefaultDuration, "length of each measured phase")
	fl.DurationVar(&cfg.Warmup, "warmup", time.Second, "load before each measured phase")
	fl.DurationVar(&cfg.FaultGap, "fault-gap", time.Second, "steady load between two faults")
	fl.Float64Var(&cfg.FaultLoad, "fault-load", bench.DefaultFaultLoad, "load during the faults, as a fraction of saturation (the drain runs at full load)")
	fl.IntVar(&cfg.Window, "window", components.DefaultWindow, "most unacknowledged messages per producer")
	fl.IntVar(&cfg.BatchMessages, "batch-messages", components.DefaultBatchMessages, "most messages per batch")
	fl.IntVar(&cfg.BatchBytes, "batch-bytes", components.DefaultBatchBytes, "most bytes per batch")
	fl.DurationVar(&cfg.Linger, "linger", components.DefaultLinger, "how long a batch that is not full waits for more")
	fl.IntVar(&cfg.Credit, "credit", components.DefaultCredit, "deliveries each intermediate may send a consumer ahead of its acks")
	fl.DurationVar(&cfg.Heartbeat, "heartbeat", components.DefaultHeartbeatInterval, "heartbeat interval of every stream (a freeze is detected after five)")
	fl.DurationVar(&cfg.LeaseTTL, "lease-ttl", intermediate.DefaultLeaseTTL, "intermediates' registration lease TTL")
	fl.DurationVar(&cfg.SampleInterval, "sample-interval", bench.DefaultSampleInterval, "resolution of the throughput series")
	fl.Float64Var(&cfg.HalfLoadRate, "half-load-rate", 0, "messages a second of the half-load phase and the relay's run beside it (0: half of the saturation measured): settings that move saturation, GOGC or --window, compared at one rate")
}

// repeat calls run, one whole benchmark, f.runs times, one after the
// other, and returns the messages lost in the runs. It stops at the first
// run that fails, with that run's error, naming the run when there are
// several.
func (f *benchFlags) repeat(log *slog.Logger, run func() (lost uint64, err error)) (uint64, error) {
	var lost uint64
	for i := range f.runs {
		if f.runs > 1 {
			log.Info("bench: run", "run", i+1, "of", f.runs)
		}
		n, err := run()
		lost += n
		if err != nil {
			if f.runs > 1 {
				err = fmt.Errorf("run %d of %d: %w", i+1, f.runs, err)
			}
			return lost, err
		}
	}
	return lost, nil
}

// table is write, followed for a report of several runs by a line that
// says so.
func (f *benchFlags) table(runs int, write func(io.Writer) error) func(io.Writer) error {
	return func(w io.Writer) error {
		if err := write(w); err != nil {
			return err
		}
		if runs > 1 {
			_, err := fmt.Fprintf(w, "\nEvery figure is the median of %d runs (lost, unacknowledged, handled twice, unknown messages and lapsed registrations: the worst run's); --json adds each one's range.\n", runs)
			return err
		}
		return nil
	}
}

// print writes rep as JSON with --json, else with table.
func (f *benchFlags) print(out io.Writer, rep any, table func(io.Writer) error) error {
	if !f.asJSON {
		return table(out)
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// validate checks the flags, naming the wrong one.
func (f *benchFlags) validate() error {
	c := &f.cfg
	switch {
	case f.runs < 1 || f.runs > 99 || f.runs%2 == 0:
		return usagef("--runs %d: must be odd, from 1 to 99 (the median of an even number of runs is no run's figure)", f.runs)
	case f.runs > 1 && f.plot != "":
		return usagef("--plot: not with --runs %d (it draws one run)", f.runs)
	case f.runs > 1 && f.cpuprofile != "":
		return usagef("--cpuprofile: not with --runs %d (it profiles one run)", f.runs)
	case f.runs > 1 && f.memprofile != "":
		return usagef("--memprofile: not with --runs %d (it profiles one run)", f.runs)
	case f.runs > 1 && f.trace != "":
		return usagef("--trace: not with --runs %d (it traces one run)", f.runs)
	case f.processes && f.plot != "":
		return usagef("--plot: not with --processes (a run in separate processes has no faults to plot)")
	case f.processes && f.cpuprofile != "":
		return usagef("--cpuprofile: not with --processes (the components run in processes of their own)")
	case f.processes && f.memprofile != "":
		return usagef("--memprofile: not with --processes (the components run in processes of their own)")
	case f.processes && f.trace != "":
		return usagef("--trace: not with --processes (the components run in processes of their own)")
	case c.Payload < 0 || c.Payload > 4<<20:
		return usagef("--payload %d: must be in [0, 4194304]", c.Payload)
	case c.Producers < 1:
		return usagef("--producers %d: must be at least 1", c.Producers)
	case c.Intermediates < 2:
		return usagef("--intermediates %d: must be at least 2 (one breaks, one carries on)", c.Intermediates)
	case c.Intermediates > 200:
		return usagef("--intermediates %d: at most 200 (one loopback address each)", c.Intermediates)
	case c.Consumers < 1:
		return usagef("--consumers %d: must be at least 1", c.Consumers)
	case c.Duration <= 0:
		return usagef("--duration %v: must be positive", c.Duration)
	case c.Warmup < 0:
		return usagef("--warmup %v: must not be negative", c.Warmup)
	case c.FaultGap <= 0:
		return usagef("--fault-gap %v: must be positive", c.FaultGap)
	case c.FaultLoad <= 0 || c.FaultLoad > 1:
		return usagef("--fault-load %v: must be in (0, 1]", c.FaultLoad)
	case c.Window < 1:
		return usagef("--window %d: must be at least 1", c.Window)
	case c.BatchMessages < 1:
		return usagef("--batch-messages %d: must be at least 1", c.BatchMessages)
	case c.BatchBytes < 1:
		return usagef("--batch-bytes %d: must be at least 1", c.BatchBytes)
	case c.Linger < 0:
		return usagef("--linger %v: must not be negative", c.Linger)
	case c.Credit < 1 || c.Credit > 1<<20:
		return usagef("--credit %d: must be in [1, 1048576]", c.Credit)
	case c.Heartbeat < time.Millisecond || c.Heartbeat > time.Minute:
		return usagef("--heartbeat %v: must be in [1ms, 1m]", c.Heartbeat)
	case c.LeaseTTL < time.Second:
		return usagef("--lease-ttl %v: must be at least 1s", c.LeaseTTL)
	case c.SampleInterval < time.Millisecond:
		return usagef("--sample-interval %v: must be at least 1ms", c.SampleInterval)
	case c.HalfLoadRate < 0 || math.IsInf(c.HalfLoadRate, 0) || math.IsNaN(c.HalfLoadRate):
		return usagef("--half-load-rate %v: must be a rate in messages a second, or 0 for half of saturation", c.HalfLoadRate)
	}
	return nil
}
