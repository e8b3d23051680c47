package bench

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/registry"
)

// registrationWait bounds how long a run waits for its consumers to
// register.
const registrationWait = 30 * time.Second

// consumerRegistrations waits until want consumers are registered in the
// run's service and returns each one's key with the revision its
// registration was created at. A consumer registers in the background once
// made, and a load started before every consumer is registered would see
// owners change under its first messages.
func consumerRegistrations(ctx context.Context, cli *clientv3.Client, want int) (map[string]int64, error) {
	ctx, cancel := context.WithTimeout(ctx, registrationWait)
	defer cancel()
	have := 0
	for {
		regs, err := readRegistrations(ctx, cli)
		if err == nil && len(regs) == want {
			return regs, nil
		}
		if err == nil {
			have = len(regs)
		}
		select {
		case <-ctx.Done():
			// The last read's error if it failed, else the deadline's.
			return nil, fmt.Errorf("bench: %d of %d consumers registered in etcd: %w", have, want, cmp.Or(err, ctx.Err()))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// readRegistrations returns the key of every consumer registered in the
// run's service with the revision its registration was created at.
func readRegistrations(ctx context.Context, cli *clientv3.Client) (map[string]int64, error) {
	resp, err := cli.Get(ctx, registry.ConsumersPrefix(registry.DefaultPrefix, service), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("bench: read the consumer registrations: %w", err)
	}
	regs := make(map[string]int64, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		regs[string(kv.Key)] = kv.CreateRevision
	}
	return regs, nil
}

// registrationsLapsed returns how many of the registrations in regs lapsed
// since they were read: gone from etcd, or created again (the lease
// expired, and the consumer's keeper put the key back under a new one).
// While a registration is gone its keys have another owner, so a message
// its consumer handled but had not acknowledged may be handled again by
// the new owner: exactly once holds only while none lapses.
func registrationsLapsed(ctx context.Context, cli *clientv3.Client, regs map[string]int64) (uint64, error) {
	now, err := readRegistrations(ctx, cli)
	if err != nil {
		return 0, err
	}
	var n uint64
	for key, rev := range regs {
		if now[key] != rev {
			n++
		}
	}
	return n, nil
}

// setLapsed sets f.RegistrationsLapsed to the registrations in regs that
// lapsed, and warns on log when any did.
func (f *EndFigures) setLapsed(ctx context.Context, cli *clientv3.Client, regs map[string]int64, log *slog.Logger) error {
	n, err := registrationsLapsed(ctx, cli, regs)
	if err != nil {
		return err
	}
	if n > 0 {
		log.Warn("bench: consumer registrations lapsed during the run: a message may have been handled again by a new owner (at least once)", "consumers", n)
	}
	f.RegistrationsLapsed = n
	return nil
}
