package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/registry"
)

func newDrainCommand(r *rootCommand) *cobra.Command {
	var service string
	var wait bool
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "drain INSTANCE",
		Short: "Ask an instance to drain and leave",
		Long: `Ask an instance to drain through its control key
<prefix>/control/<service>/<instance>: it marks itself draining, finishes what
it holds, hands back what it cannot finish, removes its registration and
exits. With --wait the command returns once the registration is gone and
nothing accepts connections at its address any more.`,
		Example: `  butterfly drain intermediate2
  butterfly drain intermediate2 --service requests --wait --timeout 1m`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("drain takes exactly one argument, INSTANCE, got %d", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			instance := args[0]
			if err := registry.CheckName("INSTANCE", instance); err != nil {
				return &usageError{err}
			}
			if err := registry.CheckName("--service", service); err != nil {
				return &usageError{err}
			}
			if wait && timeout <= 0 {
				return usagef("--timeout %v: must be positive", timeout)
			}
			cli, err := r.etcdClient()
			if err != nil {
				return err
			}
			defer cli.Close()
			ctx := cmd.Context()
			key := registry.ServiceKey(r.prefix, service, instance)
			getCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			resp, err := cli.Get(getCtx, key)
			cancel()
			if err != nil {
				return etcdReadError(cli, key, err)
			}
			if len(resp.Kvs) == 0 {
				return fmt.Errorf("no instance %q of service %q is registered (%s)", instance, service, key)
			}
			if err := registry.RequestDrain(ctx, cli, service, instance, registry.WithPrefix(r.prefix)); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "drain requested: %s/%s\n", service, instance)
			if !wait {
				return nil
			}
			waitCtx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			if err := waitKeyGone(waitCtx, cli, key, resp.Header.Revision); err != nil {
				if ctx.Err() == nil && waitCtx.Err() != nil {
					return fmt.Errorf("%s still registered after %s %v: the instance did not finish draining", key, r.flagName("timeout"), timeout)
				}
				return fmt.Errorf("waiting for %s to leave: %w", key, err)
			}
			// The registration goes before the server stops: wait until
			// its address takes no more connections.
			if v, err := registry.ParseValue(instance, resp.Kvs[0].Value); err == nil {
				if err := waitClosed(waitCtx, v.Addr); err != nil {
					if ctx.Err() == nil && waitCtx.Err() != nil {
						return fmt.Errorf("%s/%s still serving at %s after %s %v", service, instance, v.Addr, r.flagName("timeout"), timeout)
					}
					return fmt.Errorf("waiting for %s/%s to stop serving at %s: %w", service, instance, v.Addr, err)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "drained: %s/%s\n", service, instance)
			return nil
		},
	}
	c.Flags().StringVar(&service, "service", registry.DefaultService, "the instance's service")
	c.Flags().BoolVar(&wait, "wait", false, "return only once the instance's registration is gone")
	c.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long --wait waits")
	return c
}

// waitClosed waits until nothing accepts connections at addr.
func waitClosed(ctx context.Context, addr string) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var d net.Dialer
	for {
		dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		conn, err := d.DialContext(dctx, "tcp", addr)
		cancel()
		if err != nil && ctx.Err() == nil {
			return nil
		}
		if conn != nil {
			conn.Close()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// waitKeyGone waits until key is deleted, watching from the revision after rev.
func waitKeyGone(ctx context.Context, cli *clientv3.Client, key string, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range cli.Watch(wctx, key, clientv3.WithRev(rev+1)) {
		if err := wr.Err(); err != nil {
			// Compacted or halted: fall back to a read.
			resp, gerr := cli.Get(ctx, key)
			if gerr != nil {
				return gerr
			}
			if len(resp.Kvs) == 0 {
				return nil
			}
			return waitKeyGone(ctx, cli, key, resp.Header.Revision)
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				return nil
			}
		}
	}
	return ctx.Err()
}
