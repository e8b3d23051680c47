package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/butterfly-mesh/butterfly/intermediate"
)

// ProcessConfig is a run of the mesh as separate processes of the real
// binary: what a deployment gets, beside the run in one process.
type ProcessConfig struct {
	Config
	// Executable is the butterfly binary: the run starts its `intermediate`
	// command and its hidden `bench worker produce` and `bench worker
	// consume` commands, which take the bench's flags.
	Executable string
}

// Timeouts of a run in separate processes.
const (
	childStartTimeout = 30 * time.Second // an intermediate serving, a worker's hello
	childCallTimeout  = 10 * time.Second // a worker's answer
	// childFinishTimeout bounds a worker's finish: closing its component.
	childFinishTimeout = workerCloseTimeout + 10*time.Second
)

// procMesh is a run in separate processes: the embedded etcd in this
// process, and the intermediates, producers and consumers as children.
type procMesh struct {
	cfg           ProcessConfig
	log           *slog.Logger
	etcd          *benchEtcd
	intermediates []*child
	admins        []string // each intermediate's admin endpoint, for its metrics
	producers     []*child
	consumers     []*child
	incarnations  []uint64 // per producer
	// regs is each consumer's registration key with the revision it was
	// created at, once every consumer is up; read-only after.
	regs map[string]int64
}

// RunProcesses measures Butterfly at saturation and at half of it with
// every intermediate, producer and consumer in a process of its own, on an
// embedded etcd in this process. CPU and memory are the children's: etcd
// and the bench's own coordination are not counted. It returns a report
// once the run got to its end, with an error if something went wrong on
// the way (a producer that could not send, a worker that failed).
func RunProcesses(ctx context.Context, cfg ProcessConfig) (*ProcessReport, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Executable == "" {
		return nil, errors.New("bench: invalid config: no executable to run")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	platform := measurePlatform(ctx, cfg.Duration, cfg.Logger)
	pm := &procMesh{cfg: cfg, log: cfg.Logger}
	defer pm.close()
	if err := pm.start(ctx); err != nil {
		return nil, err
	}
	r, err := pm.run(ctx)
	if r != nil {
		r.PlatformFigures = platform
	}
	return r, err
}

// start starts etcd, the intermediates, the consumers and the producers,
// each waited for until it is up.
func (pm *procMesh) start(ctx context.Context) error {
	cfg := pm.cfg
	var err error
	pm.log.Info("bench: processes: starting embedded etcd")
	if pm.etcd, err = startEtcd(ctx); err != nil {
		return err
	}
	common := []string{"--etcd-endpoints", strings.Join(pm.etcd.endpoints(), ","), "--log-level", "warn"}
	for i := range cfg.Intermediates {
		name := fmt.Sprintf("i%d", i)
		c, err := startChild(name, cfg.Executable, append([]string{"intermediate",
			"--name", name, "--listen", fmt.Sprintf("127.0.0.%d:0", 2+i), "--service", service,
			"--lease-ttl", cfg.LeaseTTL.String(),
			"--max-in-flight", strconv.Itoa(max(cfg.Window, intermediate.DefaultMaxInFlight)),
			"--admin", fmt.Sprintf("127.0.0.%d:0", 2+i),
		}, common...))
		if err != nil {
			return err
		}
		pm.intermediates = append(pm.intermediates, c)
	}
	for _, c := range pm.intermediates {
		var serving struct {
			Event, Addr, Admin string
		}
		if err := c.read(ctx, childStartTimeout, &serving); err != nil {
			return err
		}
		if serving.Admin == "" {
			return fmt.Errorf("bench: processes: intermediate %s named no admin endpoint when serving", c.name)
		}
		pm.admins = append(pm.admins, serving.Admin)
		pm.log.Info("bench: processes: intermediate serving", "name", c.name, "addr", serving.Addr, "admin", serving.Admin, "pid", c.pid())
	}
	worker := func(role, id string) (*child, error) {
		args := append([]string{"bench", "worker", role, "--id", id}, pm.workerFlags()...)
		return startChild(id, cfg.Executable, append(args, common...))
	}
	for i := range cfg.Consumers {
		c, err := worker("consume", fmt.Sprintf("c%d", i))
		if err != nil {
			return err
		}
		pm.consumers = append(pm.consumers, c)
	}
	if _, err := pm.callAll(ctx, pm.consumers, childStartTimeout, workerRequest{}, true); err != nil {
		return err
	}
	if pm.regs, err = consumerRegistrations(ctx, pm.etcd.cli, len(pm.consumers)); err != nil {
		return err
	}
	for i := range cfg.Producers {
		c, err := worker("produce", fmt.Sprintf("p%d", i))
		if err != nil {
			return err
		}
		pm.producers = append(pm.producers, c)
	}
	hellos, err := pm.callAll(ctx, pm.producers, childStartTimeout, workerRequest{}, true)
	if err != nil {
		return err
	}
	for _, h := range hellos {
		pm.incarnations = append(pm.incarnations, h.Incarnation)
	}
	return nil
}

// workerFlags are the bench flags a worker needs.
func (pm *procMesh) workerFlags() []string {
	c := pm.cfg
	return []string{
		"--payload", strconv.Itoa(c.Payload), "--window", strconv.Itoa(c.Window),
		"--batch-messages", strconv.Itoa(c.BatchMessages), "--batch-bytes", strconv.Itoa(c.BatchBytes),
		"--linger", c.Linger.String(), "--credit", strconv.Itoa(c.Credit), "--heartbeat", c.Heartbeat.String(),
	}
}

// callAll sends req to every worker in cs, then reads their replies; with
// hello, it only reads their hellos.
func (pm *procMesh) callAll(ctx context.Context, cs []*child, timeout time.Duration, req workerRequest, hello bool) ([]workerReply, error) {
	if !hello {
		for _, c := range cs {
			if err := c.enc.Encode(req); err != nil {
				return nil, c.failed(err)
			}
		}
	}
	replies := make([]workerReply, len(cs))
	var errs []error
	for i, c := range cs {
		if err := c.read(ctx, timeout, &replies[i]); err != nil {
			return nil, err
		}
		if r := replies[i].Err; r != "" {
			op := req.Op
			if hello {
				op = "start"
			}
			errs = append(errs, fmt.Errorf("bench: %s: %s: %s", c.name, op, r))
		}
	}
	return replies, errors.Join(errs...)
}

// children are every child process.
func (pm *procMesh) children() []*child {
	return append(append(append([]*child(nil), pm.intermediates...), pm.producers...), pm.consumers...)
}

// cpu is the CPU time the children used so far; 0 where the platform does
// not tell.
func (pm *procMesh) cpu() time.Duration {
	var sum time.Duration
	for _, c := range pm.children() {
		d, err := processCPU(c.pid())
		if err != nil {
			pm.log.Debug("bench: processes: CPU time", "child", c.name, "err", err)
			return 0
		}
		sum += d
	}
	return sum
}

// close kills every child still running and stops etcd. Safe after a
// partial start and after a clean end.
func (pm *procMesh) close() {
	for _, c := range pm.children() {
		c.kill()
	}
	if pm.etcd != nil {
		pm.etcd.close()
	}
}
