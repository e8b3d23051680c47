package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/butterfly-mesh/butterfly/internal/embedetcd"
)

func newEtcdCommand(r *rootCommand) *cobra.Command {
	var cfg embedetcd.Config
	c := &cobra.Command{
		Use:   "etcd",
		Short: "Run an embedded etcd server for development and tests",
		Long: `Run an etcd member inside this process. By default a single-member cluster on
127.0.0.1:2379 (clients) and 127.0.0.1:2380 (peers); with --name,
--initial-cluster and the URL flags, three of them form a cluster on loopback.
It stops cleanly on SIGINT or SIGTERM.`,
		Example: `  # a single node
  butterfly etcd --data-dir /tmp/etcd

  # a 3-member cluster on loopback (run one line per terminal)
  CLUSTER=e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380
  butterfly etcd --name e1 --data-dir /tmp/e1 --listen-client http://127.0.0.1:12379 --listen-peer http://127.0.0.1:12380 --initial-cluster $CLUSTER
  butterfly etcd --name e2 --data-dir /tmp/e2 --listen-client http://127.0.0.1:22379 --listen-peer http://127.0.0.1:22380 --initial-cluster $CLUSTER
  butterfly etcd --name e3 --data-dir /tmp/e3 --listen-client http://127.0.0.1:32379 --listen-peer http://127.0.0.1:32380 --initial-cluster $CLUSTER`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.Validate(); err != nil {
				return &usageError{err}
			}
			cfg.Logger = r.logger
			srv, err := embedetcd.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer srv.Close()
			r.logger.Info("etcd ready", "name", cfg.Name, "client", srv.ClientEndpoints(), "data-dir", cfg.DataDir)
			fmt.Fprintf(cmd.OutOrStdout(), "etcd ready on %v\n", srv.ClientEndpoints())
			select {
			case <-cmd.Context().Done():
				r.logger.Info("etcd stopping")
				return nil
			case err := <-srv.Err():
				return fmt.Errorf("etcd: %w", err)
			}
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.Name, "name", "default", "member name")
	f.StringVar(&cfg.DataDir, "data-dir", "", "data directory (required)")
	f.StringVar(&cfg.ListenClient, "listen-client", "http://127.0.0.1:2379", "client URL to listen on")
	f.StringVar(&cfg.AdvertiseClient, "advertise-client", "", "client URL to advertise (default --listen-client)")
	f.StringVar(&cfg.ListenPeer, "listen-peer", "http://127.0.0.1:2380", "peer URL to listen on")
	f.StringVar(&cfg.AdvertisePeer, "advertise-peer", "", "peer URL to advertise (default --listen-peer)")
	f.StringVar(&cfg.InitialCluster, "initial-cluster", "", "initial cluster, name=peerURL,… (default this member alone)")
	f.StringVar(&cfg.InitialClusterState, "initial-cluster-state", "new", "new or existing")
	f.StringVar(&cfg.InitialClusterToken, "initial-cluster-token", "butterfly", "initial cluster token")
	f.StringVar(&cfg.LogLevel, "etcd-log-level", "error", "etcd's own log level, or off")
	return c
}
