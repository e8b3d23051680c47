package main

import (
	"fmt"
	"log/slog"
	"net"
	"strings"

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
It stops cleanly on SIGINT or SIGTERM.

Off loopback, serve clients and peers over TLS, with etcd's own flags:
--cert-file, --key-file, --trusted-ca-file and --client-cert-auth with an
https:// --listen-client (and their --peer- forms with an https:// --listen-peer).
A member that listens off loopback in plaintext, or over TLS without
--trusted-ca-file (no client certificate required), is warned of: whoever
reaches it can read and change the registry.`,
		Example: `  # a single node
  butterfly etcd --data-dir /tmp/etcd

  # a 3-member cluster on loopback (run one line per terminal)
  CLUSTER=e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380
  butterfly etcd --name e1 --data-dir /tmp/e1 --listen-client http://127.0.0.1:12379 --listen-peer http://127.0.0.1:12380 --initial-cluster $CLUSTER
  butterfly etcd --name e2 --data-dir /tmp/e2 --listen-client http://127.0.0.1:22379 --listen-peer http://127.0.0.1:22380 --initial-cluster $CLUSTER
  butterfly etcd --name e3 --data-dir /tmp/e3 --listen-client http://127.0.0.1:32379 --listen-peer http://127.0.0.1:32380 --initial-cluster $CLUSTER

  # clients over mutual TLS, with the files of butterfly certs (--hosts naming this host)
  butterfly etcd --data-dir /var/lib/butterfly-etcd --listen-client https://10.0.0.5:2379 \
    --cert-file certs/server.pem --key-file certs/server-key.pem --trusted-ca-file certs/ca.pem --client-cert-auth`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.Validate(); err != nil {
				return &usageError{err}
			}
			cfg.Logger = r.logger
			warnPlaintext(r.logger, cfg)
			srv, err := embedetcd.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer srv.Close()
			r.logger.Info("etcd ready", "name", cfg.Name, "client", srv.ClientEndpoints(), "data-dir", cfg.DataDir, "client-tls", cfg.ClientTLS.Cert != "")
			// The URLs it listens on, as --etcd-endpoints takes them (a
			// wildcard address stands for every address of the host).
			scheme := "http://"
			if embedetcd.IsHTTPS(cfg.ListenClient) {
				scheme = "https://"
			}
			urls := make([]string, 0, len(srv.ClientEndpoints()))
			for _, ep := range srv.ClientEndpoints() {
				urls = append(urls, scheme+ep)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "etcd ready on %s\n", strings.Join(urls, ","))
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
	for _, t := range []struct {
		files          *embedetcd.TLSFiles
		prefix, listen string
		whom           string
	}{{&cfg.ClientTLS, "", "--listen-client", "clients"}, {&cfg.PeerTLS, "peer-", "--listen-peer", "other members"}} {
		f.StringVar(&t.files.Cert, t.prefix+"cert-file", "", "certificate (PEM) served to "+t.whom+"; needs an https:// "+t.listen)
		f.StringVar(&t.files.Key, t.prefix+"key-file", "", "key (PEM) of --"+t.prefix+"cert-file")
		f.StringVar(&t.files.TrustedCA, t.prefix+"trusted-ca-file", "", "CA (PEM) whose certificates "+t.whom+" must present: once it is set, etcd requires one")
		f.BoolVar(&t.files.ClientCertAuth, t.prefix+"client-cert-auth", false, "require "+t.whom+" to present a certificate of --"+t.prefix+"trusted-ca-file (which it implies)")
	}
	return c
}

// warnPlaintext warns of a listener off loopback that anyone who reaches it
// may use: in plaintext, or over TLS without a CA of the certificates the
// other side must present. Clients can then read and change the registry;
// peers, join the cluster's traffic.
func warnPlaintext(logger *slog.Logger, cfg embedetcd.Config) {
	for _, l := range []struct {
		flag, url, prefix string
		files             embedetcd.TLSFiles
	}{
		{"--listen-client", cfg.ListenClient, "", cfg.ClientTLS},
		{"--listen-peer", cfg.ListenPeer, "peer-", cfg.PeerTLS},
	} {
		u := l.url
		tls := embedetcd.IsHTTPS(u)
		if tls && l.files.TrustedCA != "" {
			continue
		}
		hostport := u // without a scheme: http's, as etcd reads it
		if _, rest, ok := strings.Cut(u, "://"); ok {
			hostport = rest
		}
		host, _, err := net.SplitHostPort(hostport)
		if err != nil {
			continue // Start says what is wrong with it
		}
		if isLoopback(host) {
			continue
		}
		if tls {
			logger.Warn("etcd takes TLS connections off loopback without asking for a certificate: whoever reaches "+l.flag+" can read and change the registry; give --"+l.prefix+"trusted-ca-file",
				"flag", l.flag, "url", u)
			continue
		}
		logger.Warn("etcd serves in plaintext off loopback: whoever reaches "+l.flag+" can read and change the registry; serve it over TLS with an https:// "+l.flag+
			" and --"+l.prefix+"cert-file, --"+l.prefix+"key-file and --"+l.prefix+"trusted-ca-file",
			"flag", l.flag, "url", u)
	}
}
