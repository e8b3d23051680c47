package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/internal/etcdclient"
)

// componentSetup is what the produce, consume and stage commands set up
// before their component: the etcd client, the observability of the process
// (with its admin endpoint), and the options every component takes.
type componentSetup struct {
	cli  *clientv3.Client
	obs  *observability
	opts []components.Option // prefix, logger, credentials, metrics, tracing
}

// setupComponent builds the transport credentials from tlsf, connects to
// etcd and starts the observability of a process running role.
func (r *rootCommand) setupComponent(ctx context.Context, role string, tlsf *tlsFlags, obsf *observeFlags) (*componentSetup, error) {
	creds, err := tlsf.clientCreds(ctx, r.logger)
	if err != nil {
		return nil, err
	}
	cli, err := r.etcdClient()
	if err != nil {
		return nil, err
	}
	if err := r.checkAccess(ctx, cli); err != nil {
		cli.Close()
		return nil, err
	}
	obs, err := obsf.start(ctx, role, r.logger)
	if err != nil {
		cli.Close()
		return nil, err
	}
	if err := obs.serveAdmin(obsf.admin, nil); err != nil {
		obs.Close()
		cli.Close()
		return nil, err
	}
	return &componentSetup{cli: cli, obs: obs, opts: []components.Option{
		components.WithPrefix(r.prefix), components.WithLogger(r.logger),
		components.WithTransportCredentials(creds),
		components.WithMetrics(obs.Registry), components.WithTracerProvider(obs.TracerProvider),
	}}, nil
}

// Close stops the observability, then closes the etcd client.
func (c *componentSetup) Close() {
	c.obs.Close()
	c.cli.Close()
}

// withCommon returns the common options of c followed by more, as options
// of one component kind O.
func withCommon[O any](c *componentSetup, more ...O) []O {
	out := make([]O, 0, len(c.opts)+len(more))
	for _, o := range c.opts {
		out = append(out, any(o).(O)) // a components.Option is every kind of option
	}
	return append(out, more...)
}

// handedOver returns nil for a consumer or stage taken over by another
// process with its id, saying so on stderr: a handover, not a failure. Any
// other err it returns as it is.
func handedOver(cmd *cobra.Command, err error) error {
	if errors.Is(err, components.ErrReplaced) {
		fmt.Fprintf(cmd.ErrOrStderr(), "butterfly: %v; drained and exiting\n", err)
		return nil
	}
	return err
}

// stoppedLast returns stopErr, why a consumer or stage stopped on its own,
// as its command's last line, after logging what its Close returned as
// what (its summary counts what it left).
func (r *rootCommand) stoppedLast(what string, stopErr, closeErr error) error {
	if closeErr != nil {
		r.logger.Warn(what, "err", closeErr)
	}
	return stopErr
}

// checkAccess reads one key of the mesh's prefix, so that a component whose
// etcd user may not read it stops at once, naming the user and the prefix
// (etcdclient explains the refusal), instead of waiting for ever for
// instances it cannot see. Any other error is left to the component to ride
// out.
func (r *rootCommand) checkAccess(ctx context.Context, cli *clientv3.Client) error {
	ctx, cancel := context.WithTimeout(ctx, r.dialTimeout)
	defer cancel()
	_, err := cli.Get(ctx, r.prefix+"/", clientv3.WithPrefix(), clientv3.WithLimit(1), clientv3.WithKeysOnly())
	if etcdclient.Refused(err) {
		return err
	}
	return nil
}
