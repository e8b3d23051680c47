package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly"
	"github.com/butterfly-mesh/butterfly/internal/etcdclient"
	"github.com/butterfly-mesh/butterfly/registry"
)

const exitCodesHelp = `Exit codes:
  0  success
  1  runtime error
  2  usage error: a wrong or missing flag or argument
  3  incomplete: unacknowledged or lost messages`

// rootCommand is the butterfly command with the state its subcommands share.
type rootCommand struct {
	*cobra.Command
	// ran is set once a subcommand's RunE starts; an error before that is a
	// usage error.
	ran bool

	etcdEndpoints []string
	prefix        string
	logLevel      string
	dialTimeout   time.Duration
	etcd          etcdclient.Config // TLS and auth flags; endpoints and timeout are set by etcdClient

	logger *slog.Logger
	// plaintextWarned makes the plaintext gRPC warning one per process.
	plaintextWarned sync.Once
	// fromEnv maps the flags set from BUTTERFLY_* variables to the variable.
	fromEnv map[string]string
}

func newRootCommand() *rootCommand {
	r := &rootCommand{fromEnv: map[string]string{}}
	r.Command = &cobra.Command{
		Use:   "butterfly",
		Short: "A fault-tolerant mesh of pipeline components over gRPC and etcd",
		Long: `Butterfly streams messages from producers through any number of intermediate
replicas to consumers, with end-to-end acknowledgements: an intermediate that
crashes, drains or moves to another host loses nothing.

Every flag can also be set in the environment as BUTTERFLY_<FLAG>, with dashes
as underscores: --etcd-endpoints is BUTTERFLY_ETCD_ENDPOINTS.

` + exitCodesHelp,
		Example: `  butterfly demo
  butterfly etcd --data-dir /tmp/etcd
  butterfly intermediate --name i1 --listen 127.0.0.2:0
  butterfly consume --id c1 --out c1.tsv
  butterfly produce --id p1 --count 1000
  butterfly ls`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: r.preRun,
		// Without a command: the help, on stderr, and a usage error.
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(cmd.ErrOrStderr())
			_ = cmd.Help()
			return usagef("a command is required: butterfly COMMAND (butterfly --help lists them)")
		},
	}
	r.CompletionOptions.DisableDefaultCmd = true
	r.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })
	pf := r.PersistentFlags()
	pf.StringSliceVar(&r.etcdEndpoints, "etcd-endpoints", []string{"127.0.0.1:2379"}, "etcd client endpoints, comma-separated")
	pf.StringVar(&r.prefix, "prefix", registry.DefaultPrefix, "etcd key prefix of the mesh")
	pf.StringVar(&r.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	pf.DurationVar(&r.dialTimeout, "etcd-dial-timeout", 5*time.Second, "how long to wait for etcd at start; a command it never answers exits 1")
	pf.StringVar(&r.etcd.CACert, "etcd-cacert", "", "PEM CA bundle that signs the etcd servers' certificates (TLS to etcd)")
	pf.StringVar(&r.etcd.Cert, "etcd-cert", "", "PEM client certificate for etcd")
	pf.StringVar(&r.etcd.Key, "etcd-key", "", "PEM private key of --etcd-cert")
	pf.StringVar(&r.etcd.User, "etcd-user", "", "etcd user, as user or user:password")
	pf.StringVar(&r.etcd.Password, "etcd-password", "", "password of --etcd-user (prefer BUTTERFLY_ETCD_PASSWORD)")
	pf.BoolVar(&r.etcd.InsecureSkipVerify, "etcd-insecure-skip-tls-verify", false, "accept any etcd server certificate (tests only)")

	for _, c := range []*cobra.Command{
		newEtcdCommand(r), newIntermediateCommand(r), newProduceCommand(r), newConsumeCommand(r),
		newStageCommand(r), newLsCommand(r), newGroupCommand(r), newStatusCommand(r), newDrainCommand(r), newDemoCommand(r), newBenchCommand(r), newCertsCommand(r), newVersionCommand(r),
	} {
		c.Long = strings.TrimSpace(c.Long) + "\n\n" + exitCodesHelp
		if c.Args == nil {
			c.Args = noArgs
		}
		for _, sub := range c.Commands() {
			sub.Long = strings.TrimSpace(sub.Long) + "\n\n" + exitCodesHelp
		}
		r.AddCommand(c)
	}
	return r
}

// noArgs rejects positional arguments with a message that names them.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// preRun applies BUTTERFLY_* environment variables to flags not set on the
// command line, and sets up logging.
func (r *rootCommand) preRun(cmd *cobra.Command, _ []string) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		env := "BUTTERFLY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(env)
		if !ok {
			return
		}
		if serr := f.Value.Set(v); serr != nil {
			err = usagef("%s=%q (for --%s): %v", env, v, f.Name, serr)
			return
		}
		f.Changed = true
		r.fromEnv[f.Name] = env
	})
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(r.logLevel)); err != nil {
		return usagef("%s: %q is not debug, info, warn or error", r.flagName("log-level"), r.logLevel)
	}
	if err := registry.CheckName(r.flagName("prefix"), r.prefix); err != nil {
		return &usageError{err}
	}
	if len(r.etcdEndpoints) == 0 {
		return usagef("--etcd-endpoints is empty")
	}
	if r.dialTimeout <= 0 {
		return usagef("%s %v: must be positive", r.flagName("etcd-dial-timeout"), r.dialTimeout)
	}
	r.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	r.ran = true
	return nil
}

// flagName names a flag in an error message: "--name", or "--name (from
// BUTTERFLY_NAME)" when the environment set it.
func (r *rootCommand) flagName(name string) string {
	if env, ok := r.fromEnv[name]; ok {
		return "--" + name + " (from " + env + ")"
	}
	return "--" + name
}

// etcdClient connects to --etcd-endpoints with the --etcd-* TLS and
// authentication flags. A flag combination that cannot work is a usage
// error; an authentication failure names the flag to fix.
func (r *rootCommand) etcdClient() (*clientv3.Client, error) {
	cfg := r.etcd
	cfg.Endpoints = r.etcdEndpoints
	cfg.DialTimeout = r.dialTimeout
	if err := cfg.Validate(); err != nil {
		return nil, &usageError{err}
	}
	cli, err := etcdclient.New(cfg, r.logger)
	if errors.Is(err, etcdclient.ErrUnreachable) || errors.Is(err, etcdclient.ErrNotEtcd) {
		return nil, err // it names the endpoints
	}
	if err != nil {
		return nil, fmt.Errorf("etcd %v: %w", r.etcdEndpoints, err)
	}
	return cli, nil
}

// etcdReadError is the error of a read of what that failed: one that ran
// out of time names the endpoints and the likely cause, a member that takes
// connections and has no leader (its cluster lost its quorum), which
// answers no read.
func etcdReadError(cli *clientv3.Client, what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("etcd at %s answered no read of %s in time (no leader? a cluster that lost its quorum answers no read): %w", strings.Join(cli.Endpoints(), ","), what, err)
	}
	return fmt.Errorf("etcd get %s: %w", what, err)
}

// checkProducerID returns a usage error naming --id when id is longer than
// an intermediate takes a producer id: every stream would be refused.
func checkProducerID(id string) error {
	if len(id) > butterfly.MaxProducerIDBytes {
		return usagef("--id of %d bytes is longer than %d, the most an intermediate takes as a producer id", len(id), butterfly.MaxProducerIDBytes)
	}
	return nil
}

// requireFlag returns a usage error naming flag when value is empty.
func requireFlag(flag, value string) error {
	if value == "" {
		return usagef("--%s is required", flag)
	}
	return nil
}
