package main

import (
	"context"
	"io"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/internal/bench"
)

// newBenchWorkerCommand is `butterfly bench worker`, hidden: the producer
// and consumer processes of `butterfly bench --processes`, driven through
// their standard input and output.
func newBenchWorkerCommand(r *rootCommand) *cobra.Command {
	c := &cobra.Command{
		Use:    "worker",
		Short:  "A producer or consumer process of bench --processes",
		Hidden: true,
		Args:   noArgs,
	}
	c.AddCommand(
		newBenchWorkerRoleCommand(r, "produce", bench.ServeProducer),
		newBenchWorkerRoleCommand(r, "consume", bench.ServeConsumer),
	)
	return c
}

// benchWorker is bench.ServeProducer or bench.ServeConsumer.
type benchWorker func(ctx context.Context, cli *clientv3.Client, id string, cfg bench.Config, in io.Reader, out io.Writer) error

func newBenchWorkerRoleCommand(r *rootCommand, role string, serve benchWorker) *cobra.Command {
	var (
		id  string
		cfg bench.Config
	)
	c := &cobra.Command{
		Use:    role,
		Short:  "The " + role + " process of bench --processes",
		Hidden: true,
		Args:   noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireFlag("id", id); err != nil {
				return err
			}
			cli, err := r.etcdClient()
			if err != nil {
				return err
			}
			defer cli.Close()
			cfg.Logger = r.logger
			return serve(cmd.Context(), cli, id, cfg, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&id, "id", "", "producer or consumer id (required)")
	addBenchConfigFlags(c.Flags(), &cfg)
	return c
}
