package components

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/butterfly-mesh/butterfly"
	"github.com/butterfly-mesh/butterfly/balancer"
	"github.com/butterfly-mesh/butterfly/internal/telemetry"
	"github.com/butterfly-mesh/butterfly/registry"
)

// dial returns the one client connection of a service: the butterfly
// resolver follows its instances and the butterfly balancer routes pinned
// streams to them; its RPCs are observed with c's metrics, logger and
// tracer. The resolver's etcd watch is the component's membership too: it
// calls onView with every view, once the balancer has it, from the
// connection's Connect on (the connection never goes idle).
func dial(cli *clientv3.Client, service string, c commonConfig, onView func(registry.View)) (*grpc.ClientConn, error) {
	observe, err := telemetry.DialOptions(telemetry.Observe{Registry: c.metrics, Logger: c.logger, TracerProvider: c.tracer})
	if err != nil {
		return nil, err
	}
	opts := butterfly.DialOptions(cli, butterfly.WithPrefix(c.prefix), butterfly.WithLogger(c.logger),
		butterfly.WithMetrics(c.metrics), butterfly.WithViews(onView))
	// The membership stops if the connection goes idle: the caller's
	// options may not turn that back on.
	opts = slices.Concat(opts, c.dialOptions, observe, []grpc.DialOption{grpc.WithIdleTimeout(0)})
	conn, err := grpc.NewClient("butterfly:///"+service, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial service %q: %w", service, err)
	}
	return conn, nil
}

// pin returns ctx with its streams pinned to one instance, whose name and
// address the call's log line carries.
func pin(ctx context.Context, inst registry.Instance) context.Context {
	return telemetry.WithPeer(balancer.WithInstance(ctx, inst.Name), inst.Name, inst.Addr)
}

func (c *commonConfig) validate() error {
	var errs []error
	if err := registry.ValidateName("prefix", c.prefix); err != nil {
		errs = append(errs, err)
	}
	if c.heartbeat < time.Millisecond || c.heartbeat > time.Minute {
		errs = append(errs, fmt.Errorf("heartbeat interval %v is out of range [1ms, 1m]", c.heartbeat))
	}
	return errors.Join(errs...)
}

// backoff is an exponential backoff with jitter between minBackoff and
// maxBackoff.
type backoff struct{ n int }

func (b *backoff) reset() { b.n = 0 }

func (b *backoff) next() time.Duration {
	d := minBackoff << min(b.n, 10)
	b.n++
	d = min(d, maxBackoff)
	return d/2 + rand.N(d/2+1)
}

// sleepCtx waits d or until ctx is done; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// beatInterval is the heartbeat interval of a stream: the configured one, or
// the interval the intermediate holds the client to (its welcome's
// peer_heartbeat_interval_ms, the hello's interval lowered to the server's
// cap) when that is shorter, so that a slow configured heartbeat never lets
// the intermediate's deadline pass.
func beatInterval(own time.Duration, peerMs uint32) time.Duration {
	if peerMs == 0 {
		return own
	}
	return min(own, time.Duration(peerMs)*time.Millisecond)
}
