package main

import (
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/registry"
)

func newIntermediateCommand(r *rootCommand) *cobra.Command {
	var (
		name, listen, advertise, service, processor, admin, zone string
		weight                                                   uint32
		leaseTTL, drainTimeout                                   time.Duration
	)
	c := &cobra.Command{
		Use:   "intermediate",
		Short: "Run an intermediate: receive, process and deliver messages",
		Long: `Run an intermediate replica. It serves the publish, subscribe, process and
admin services on --listen, and registers in etcd as
<prefix>/services/<service>/<name> once it is serving (port 0 picks a free
port; the registered address is the real one, or --advertise).

SIGTERM or SIGINT drains it: it marks itself draining, finishes what it holds,
hands back what it cannot finish in --drain-timeout, removes its registration
and exits 0. Starting another process with the same --name elsewhere moves the
instance: this one sees its key taken, drains and exits.

When ready it prints one JSON line on stdout:
  {"event":"serving","service":…,"instance":…,"addr":…,"epoch":…}`,
		Example: `  butterfly intermediate --name intermediate1 --listen 127.0.0.2:7001
  butterfly intermediate --name intermediate2 --listen 0.0.0.0:7001 --advertise host2.example:7001 --processor upper`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireFlag("name", name); err != nil {
				return err
			}
			if err := registry.ValidateName("--name", name); err != nil {
				return &usageError{err}
			}
			if err := registry.ValidateName("--service", service); err != nil {
				return &usageError{err}
			}
			if err := requireFlag("listen", listen); err != nil {
				return err
			}
			if _, _, err := net.SplitHostPort(listen); err != nil {
				return usagef("--listen %q: %v", listen, err)
			}
			if advertise != "" {
				if err := registry.ValidateAddr(advertise); err != nil {
					return usagef("--advertise: %v", err)
				}
			}
			proc, err := intermediate.ProcessorByName(processor)
			if err != nil {
				return usagef("--processor: %v", err)
			}
			if leaseTTL < time.Second {
				return usagef("--lease-ttl %v: must be at least 1s", leaseTTL)
			}
			if drainTimeout <= 0 {
				return usagef("--drain-timeout %v: must be positive", drainTimeout)
			}
			cli, err := r.etcdClient()
			if err != nil {
				return err
			}
			defer cli.Close()
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("listen %s: %w", listen, err)
			}
			logger := r.logger.With("service", service, "instance", name)
			opts := []intermediate.Option{
				intermediate.WithPrefix(r.prefix),
				intermediate.WithLogger(r.logger),
				intermediate.WithProcessor(proc),
				intermediate.WithLeaseTTL(leaseTTL),
				intermediate.WithDrainTimeout(drainTimeout),
				intermediate.WithRegistryOptions(registry.WithWeight(weight), registry.WithZone(zone), registry.WithVersion(buildVersion())),
			}
			if advertise != "" {
				opts = append(opts, intermediate.WithAdvertiseAddr(advertise))
			}
			srv, err := intermediate.New(cli, service, name, opts...)
			if err != nil {
				lis.Close()
				return err
			}
			var adminSrv *adminServer
			if admin != "" {
				adminSrv, err = startAdmin(admin, srv, logger)
				if err != nil {
					lis.Close()
					return err
				}
				defer adminSrv.Close()
			}
			ready := make(chan struct{})
			go func() {
				select {
				case <-srv.Ready():
					line, _ := json.Marshal(map[string]any{
						"event": "serving", "service": service, "instance": name,
						"addr": srv.Addr(), "epoch": srv.Epoch(),
					})
					fmt.Fprintln(cmd.OutOrStdout(), string(line))
				case <-ready:
				}
			}()
			err = srv.Serve(cmd.Context(), lis)
			close(ready)
			if err != nil {
				return err
			}
			logger.Info("intermediate stopped")
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&name, "name", "", "instance name, stable across restarts and moves (required)")
	f.StringVar(&listen, "listen", "", "host:port to listen on; port 0 picks a free port (required)")
	f.StringVar(&advertise, "advertise", "", "host:port to register (default: the listener's address)")
	f.StringVar(&service, "service", registry.DefaultService, "service to register under")
	f.StringVar(&processor, "processor", "passthrough", "processing step: "+strings.Join(intermediate.ProcessorNames(), ", "))
	f.StringVar(&admin, "admin", "", "host:port for the HTTP admin endpoint (/healthz, /readyz)")
	f.DurationVar(&leaseTTL, "lease-ttl", 5*time.Second, "etcd lease TTL of the registration")
	f.DurationVar(&drainTimeout, "drain-timeout", 10*time.Second, "how long a drain may take before the rest is handed back")
	f.Uint32Var(&weight, "weight", 1, "relative share of new work")
	f.StringVar(&zone, "zone", "", "zone of the instance, for zone-local picks")
	return c
}
