package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/embedetcd"
)

func newDemoCommand(r *rootCommand) *cobra.Command {
	var cfg demoConfig
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole butterfly pipeline in one process, with faults",
		Long: `Run the butterfly pipeline of the original ZeroMQ example on an embedded etcd,
in one process:

  source -> hub "requests" -> component1 x2 -> intermediate x2 -> component2 x2 -> hub "replies" -> sink

While messages flow it crashes one intermediate, brings it back on another
address under the same name, and drains the other, saying what happens as it
happens. It ends with a table of sent, delivered, lost, handled twice,
duplicates dropped, resent, elapsed time and transactions per second, and
exits 3 if anything was lost or handled twice.
Needs nothing running: etcd is embedded and every server listens on loopback
(127.0.0.2, 127.0.0.3 and 127.0.0.4 stand in for other hosts).`,
		Example: `  go run ./cmd/butterfly demo
  butterfly demo --messages 500000`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.messages < 100 {
				return usagef("--messages %d: must be at least 100", cfg.messages)
			}
			cfg.out = cmd.OutOrStdout()
			cfg.logger = r.logger
			if !cmd.Flags().Changed("log-level") && os.Getenv("BUTTERFLY_LOG_LEVEL") == "" {
				cfg.logger = slog.New(slog.DiscardHandler)
			}
			res, err := runDemo(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if res.lost > 0 || res.handledTwice > 0 {
				return &incompleteError{fmt.Errorf("%d lost, %d handled twice", res.lost, res.handledTwice)}
			}
			return nil
		},
	}
	c.Flags().Uint64Var(&cfg.messages, "messages", 100000, "messages the source sends")
	return c
}

type demoConfig struct {
	messages uint64
	out      io.Writer
	logger   *slog.Logger
}

type demoResult struct {
	sent, delivered, lost, handledTwice, dupsDropped, resent uint64
	elapsed                                                  time.Duration
}

// demoMesh is every part of the demo pipeline.
type demoMesh struct {
	cfg     demoConfig
	cli     *clientv3.Client
	start   time.Time
	mu      sync.Mutex // guards servers
	servers map[string]*demoServer
}

type demoServer struct {
	srv  *intermediate.Server
	done chan error
}

func (m *demoMesh) say(format string, args ...any) {
	fmt.Fprintf(m.cfg.out, "[%5.1fs] %s\n", time.Since(m.start).Seconds(), fmt.Sprintf(format, args...))
}

// startServer starts an intermediate of service on host (port chosen by the
// system) under instance name.
func (m *demoMesh) startServer(ctx context.Context, service, name, host string) error {
	lis, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return fmt.Errorf("listen on %s: %w", host, err)
	}
	srv, err := intermediate.New(m.cli, service, name,
		intermediate.WithLogger(m.cfg.logger.With("instance", name)),
		intermediate.WithLeaseTTL(2*time.Second),
		intermediate.WithDrainTimeout(5*time.Second))
	if err != nil {
		lis.Close()
		return err
	}
	ds := &demoServer{srv: srv, done: make(chan error, 1)}
	go func() { ds.done <- srv.Serve(ctx, lis) }()
	select {
	case <-srv.Ready():
	case err := <-ds.done:
		return fmt.Errorf("%s: %w", name, err)
	case <-ctx.Done():
		return ctx.Err()
	}
	m.mu.Lock()
	m.servers[name] = ds
	m.mu.Unlock()
	return nil
}

func (m *demoMesh) server(name string) *demoServer {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.servers[name]
}

func runDemo(ctx context.Context, cfg demoConfig) (demoResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	m := &demoMesh{cfg: cfg, start: time.Now(), servers: map[string]*demoServer{}}

	dir, err := os.MkdirTemp("", "butterfly-demo-etcd-")
	if err != nil {
		return demoResult{}, err
	}
	defer os.RemoveAll(dir)
	etcd, err := embedetcd.StartOnLoopback(ctx, embedetcd.Config{DataDir: dir, LogLevel: "off"})
	if err != nil {
		return demoResult{}, err
	}
	defer etcd.Close()
	m.cli, err = clientv3.New(clientv3.Config{Endpoints: etcd.ClientEndpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return demoResult{}, err
	}
	defer m.cli.Close()
	m.say("embedded etcd ready on %s", etcd.ClientEndpoints()[0])

	for _, s := range []struct{ service, name, host string }{
		{"requests", "requests1", "127.0.0.1"},
		{"intermediate", "intermediate1", "127.0.0.2"},
		{"intermediate", "intermediate2", "127.0.0.3"},
		{"replies", "replies1", "127.0.0.1"},
	} {
		if err := m.startServer(ctx, s.service, s.name, s.host); err != nil {
			return demoResult{}, err
		}
		m.say("hub %-13s %-14s serving at %s", s.service, s.name, m.server(s.name).srv.Addr())
	}
	defer func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, ds := range m.servers {
			ds.srv.Stop()
		}
	}()

	var stages []*components.Stage
	defer func() {
		for _, st := range stages {
			closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			if err := st.Close(closeCtx); err != nil {
				m.say("stage close: %v", err)
			}
			cancel()
		}
	}()
	for _, s := range []struct{ id, from, to string }{
		{"component1-a", "requests", "intermediate"}, {"component1-b", "requests", "intermediate"},
		{"component2-a", "intermediate", "replies"}, {"component2-b", "intermediate", "replies"},
	} {
		st, err := components.NewStage(m.cli, s.id, s.from, s.to, components.WithLogger(cfg.logger.With("stage", s.id)))
		if err != nil {
			return demoResult{}, err
		}
		stages = append(stages, st)
		m.say("stage %s: %s -> %s", s.id, s.from, s.to)
	}

	// The sink records every seq it handles.
	seen := make([]atomic.Uint32, cfg.messages+1)
	var delivered, handledTwice atomic.Uint64
	allIn := make(chan struct{})
	var allOnce sync.Once
	sink, err := components.NewConsumer(m.cli, "sink", func(_ context.Context, d *components.Delivery) error {
		seq := d.Message.GetId().GetSeq()
		if seq == 0 || seq > cfg.messages {
			return fmt.Errorf("unexpected seq %d", seq)
		}
		if seen[seq].Add(1) > 1 {
			handledTwice.Add(1)
			return nil
		}
		if delivered.Add(1) == cfg.messages {
			allOnce.Do(func() { close(allIn) })
		}
		return nil
	}, components.WithService("replies"), components.WithLogger(cfg.logger.With("consumer", "sink")))
	if err != nil {
		return demoResult{}, err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		if err := sink.Close(closeCtx); err != nil {
			m.say("sink close: %v", err)
		}
		cancel()
	}()
	m.say("sink subscribed to replies")

	source, err := components.NewProducer(m.cli, "source", components.WithService("requests"),
		components.WithLogger(cfg.logger.With("producer", "source")))
	if err != nil {
		return demoResult{}, err
	}
	m.say("source sending %d messages", cfg.messages)
	sendStart := time.Now()
	sendDone := make(chan error, 1)
	go func() {
		for i := uint64(1); i <= cfg.messages; i++ {
			if _, err := source.Send(ctx, &messagev1.Message{Payload: payload(i, 64)}); err != nil {
				sendDone <- err
				return
			}
		}
		sendDone <- nil
	}()

	faults := m.faultPlan(ctx)
	progress := time.NewTicker(500 * time.Millisecond)
	defer progress.Stop()
	faultCheck := time.NewTicker(20 * time.Millisecond)
	defer faultCheck.Stop()
	deadline := time.NewTimer(5 * time.Minute)
	defer deadline.Stop()
	var sendErr error
wait:
	for {
		select {
		case <-allIn:
			break wait
		case err := <-sendDone:
			sendErr = err
			if err != nil {
				break wait
			}
		case <-progress.C:
			d := delivered.Load()
			st := source.Stats()
			m.say("delivered %7d/%d  %6.0f msg/s  in flight %5d  resent %d", d, cfg.messages,
				float64(d)/time.Since(sendStart).Seconds(), st.InFlight, resentTotal(source, stages))
		case <-faultCheck.C:
			// Checked often, so that each fault strikes near its point in
			// the run however fast the machine is.
			d := delivered.Load()
			for len(faults) > 0 && float64(d) >= faults[0].at*float64(cfg.messages) {
				f := faults[0]
				faults = faults[1:]
				if err := f.do(); err != nil {
					m.say("fault %q failed: %v", f.name, err)
				}
			}
		case <-deadline.C:
			m.say("gave up waiting after 5m")
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	elapsed := time.Since(sendStart)
	closeCtx, cancelClose := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	closeErr := source.Close(closeCtx)
	cancelClose()
	if sendErr != nil && !errors.Is(sendErr, context.Canceled) {
		m.say("source stopped: %v", sendErr)
	}
	if closeErr != nil {
		m.say("source close: %v", closeErr)
	}

	res := demoResult{
		sent: source.Stats().Sent, delivered: delivered.Load(), handledTwice: handledTwice.Load(),
		elapsed: elapsed, resent: resentTotal(source, stages),
	}
	res.lost = res.sent - res.delivered
	if res.delivered > res.sent {
		res.lost = 0
	}
	res.dupsDropped = sink.Stats().DuplicatesDropped
	for _, st := range stages {
		res.dupsDropped += st.Stats().Consumer.DuplicatesDropped
	}
	tw := tabwriter.NewWriter(cfg.out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(cfg.out)
	fmt.Fprintf(tw, "sent\t%d\t\n", res.sent)
	fmt.Fprintf(tw, "delivered\t%d\t\n", res.delivered)
	fmt.Fprintf(tw, "lost\t%d\t\n", res.lost)
	fmt.Fprintf(tw, "handled twice\t%d\t\n", res.handledTwice)
	fmt.Fprintf(tw, "duplicates dropped\t%d\t\n", res.dupsDropped)
	fmt.Fprintf(tw, "resent\t%d\t\n", res.resent)
	fmt.Fprintf(tw, "elapsed\t%.2fs\t\n", res.elapsed.Seconds())
	fmt.Fprintf(tw, "transactions/s\t%.0f\t\n", float64(res.delivered)/res.elapsed.Seconds())
	tw.Flush()
	return res, nil
}

func resentTotal(source *components.Producer, stages []*components.Stage) uint64 {
	n := source.Stats().Resent
	for _, st := range stages {
		n += st.Stats().Producer.Resent
	}
	return n
}

type demoFault struct {
	at   float64 // fraction of messages delivered
	name string
	do   func() error
}

// faultPlan is what the demo does to the intermediate tier as messages flow.
func (m *demoMesh) faultPlan(ctx context.Context) []demoFault {
	return []demoFault{
		{0.15, "crash intermediate1", func() error {
			ds := m.server("intermediate1")
			m.say("CRASH  intermediate1 at %s: stopped hard, its streams reset; its unacknowledged messages go out through intermediate2", ds.srv.Addr())
			ds.srv.Stop()
			return nil
		}},
		{0.35, "move intermediate1", func() error {
			if err := m.startServer(ctx, "intermediate", "intermediate1", "127.0.0.4"); err != nil {
				return err
			}
			ds := m.server("intermediate1")
			m.say("MOVE   intermediate1 is back on another host, %s (epoch %d); running components follow it, nothing restarts", ds.srv.Addr(), ds.srv.Epoch())
			return nil
		}},
		{0.6, "drain intermediate2", func() error {
			ds := m.server("intermediate2")
			m.say("DRAIN  intermediate2: marked draining, finishes what it holds, hands back the rest, leaves")
			go func() {
				start := time.Now()
				drainCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if err := ds.srv.Drain(drainCtx); err != nil {
					m.say("drain of intermediate2: %v", err)
					return
				}
				m.say("DRAIN  intermediate2 left after %v", time.Since(start).Round(time.Millisecond))
			}()
			return nil
		}},
	}
}
