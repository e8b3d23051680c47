package etcdclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
)

// Reconnection: etcd should be found again well within a registration's
// lease TTL after an outage, so the backoff stays short.
const (
	reconnectBaseDelay = 100 * time.Millisecond
	reconnectMaxDelay  = 2 * time.Second
	keepAliveTime      = 10 * time.Second // grpc-go's minimum
	keepAliveTimeout   = 5 * time.Second
)

// New validates cfg and returns a client of etcd with its TLS and
// authentication, a short reconnection backoff (100ms growing to 2s), gRPC
// keepalives on open streams, and no logging of its own (etcd's zap logger is
// a no-op; logger gets one line per client).
//
// New returns once a connection to one of the endpoints is up: when none
// answers within the dial timeout it fails with ErrUnreachable, naming the
// endpoints and the timeout. An outage that starts later is the caller's to
// ride out.
//
// With a user, New authenticates before it returns and fails with
// ErrAuthFailed on a wrong user or password. Later requests that etcd refuses
// for want of a user or of a permission fail with ErrAuthRequired or
// ErrPermissionDenied, naming the flag to fix.
func New(cfg Config, logger *slog.Logger) (*clientv3.Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	user, password := cfg.credentials()
	dialTimeout := cfg.DialTimeout
	if dialTimeout == 0 {
		dialTimeout = DefaultDialTimeout
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          dialTimeout,
		DialKeepAliveTime:    keepAliveTime,
		DialKeepAliveTimeout: keepAliveTimeout,
		TLS:                  tlsCfg,
		Username:             user,
		Password:             password,
		Logger:               zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: backoff.Config{
					BaseDelay:  reconnectBaseDelay,
					Multiplier: backoff.DefaultConfig.Multiplier,
					Jitter:     backoff.DefaultConfig.Jitter,
					MaxDelay:   reconnectMaxDelay,
				},
				MinConnectTimeout: dialTimeout,
			}),
			grpc.WithChainUnaryInterceptor(explainInterceptor(user)),
		},
	})
	if err != nil {
		if errors.Is(err, rpctypes.ErrAuthFailed) {
			return nil, &explainedError{ErrAuthFailed, fmt.Sprintf("user %q or its password is wrong", user), rpctypes.ErrGRPCAuthFailed}
		}
		return nil, fmt.Errorf("etcdclient: connect to %v: %w", cfg.Endpoints, err)
	}
	if !waitReady(cli, dialTimeout) {
		cli.Close()
		hint := ""
		if names := unresolved(cfg.Endpoints, time.Second); names != "" {
			hint = " (" + names + ")"
		}
		if tlsCfg != nil {
			hint += "; with TLS, check --etcd-cacert, --etcd-cert and --etcd-key"
		} else if ep := speaksTLS(cfg.Endpoints, time.Second); ep != "" {
			hint += "; " + ep + " speaks TLS: give it as https://" + ep + " with --etcd-cacert, and --etcd-cert and --etcd-key where it asks for a client certificate"
		}
		return nil, fmt.Errorf("%w: no answer from %s within %v (--etcd-dial-timeout)%s",
			ErrUnreachable, strings.Join(cfg.Endpoints, ","), dialTimeout, hint)
	}
	logger.Debug("etcdclient: client ready", "endpoints", cfg.Endpoints, "tls", tlsCfg != nil, "user", user)
	return cli, nil
}

// waitReady waits up to timeout for the client's connection to one of its
// endpoints to be up, and reports whether it is.
func waitReady(cli *clientv3.Client, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(cli.Ctx(), timeout)
	defer cancel()
	conn := cli.ActiveConnection()
	conn.Connect()
	for {
		s := conn.GetState()
		if s == connectivity.Ready {
			return true
		}
		if !conn.WaitForStateChange(ctx, s) {
			return false
		}
	}
}
