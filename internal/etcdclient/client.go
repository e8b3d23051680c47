package etcdclient

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
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
// endpoints and the timeout; when the server that answers is not etcd (its
// KV service unknown), with ErrNotEtcd naming --etcd-endpoints. An outage
// that starts later is the caller's to ride out.
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
	start := time.Now()
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
		if status.Code(err) == codes.Unimplemented { // its authentication
			if bad, kvErr := notEtcdEndpoints(cfg.Endpoints, tlsCfg, min(dialTimeout, time.Second)); len(bad) > 0 {
				return nil, notEtcd(bad, kvErr)
			}
			return nil, notEtcd(cfg.Endpoints, err)
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
			failures := tlsFailures(cfg.Endpoints, tlsCfg, time.Second)
			if ep := speaksTLS(cfg.Endpoints, true, time.Second); ep != "" { // an http:// one
				failures = append(failures, ep+" speaks TLS: give it as https://"+ep)
			}
			if len(failures) > 0 {
				hint += "; " + strings.Join(failures, "; ")
			} else {
				hint += "; with TLS, check --etcd-cacert, --etcd-cert and --etcd-key"
			}
		} else if ep := speaksTLS(cfg.Endpoints, false, time.Second); ep != "" {
			hint += "; " + ep + " speaks TLS: give it as https://" + ep + " with --etcd-cacert, and --etcd-cert and --etcd-key where it asks for a client certificate"
		}
		return nil, fmt.Errorf("%w: no answer from %s within %v (--etcd-dial-timeout)%s",
			ErrUnreachable, strings.Join(cfg.Endpoints, ","), dialTimeout, hint)
	}
	// Within what is left of the dial timeout, which bounds the whole wait
	// for an etcd at start, but at least half a second and at most one: a
	// silent endpoint beside one that answers only delays the command.
	if bad, err := notEtcdEndpoints(cfg.Endpoints, tlsCfg, min(max(time.Until(start.Add(dialTimeout)), 500*time.Millisecond), time.Second)); len(bad) > 0 {
		cli.Close()
		return nil, notEtcd(bad, err)
	}
	logger.Debug("etcdclient: client ready", "endpoints", cfg.Endpoints, "tls", tlsCfg != nil, "user", user)
	return cli, nil
}

// notEtcdEndpoints asks every endpoint at once, on a connection of its own,
// for a serializable count of the key etcdctl's endpoint health reads (a
// member without a leader answers it), and returns the error of the first
// that does not know etcd's KV service, with the host:port of each such: the
// address of another gRPC server, which would refuse the requests the
// client sends it, or have the command wait as for an etcd without a leader.
// Each is asked without the client's user: an etcd that wants one says so,
// which is etcd all the same, as is any other answer. One that does not
// answer within timeout is left out, as is a unix socket.
func notEtcdEndpoints(endpoints []string, tlsCfg *tls.Config, timeout time.Duration) (bad []string, first error) {
	every := func(string) bool { return true }
	errs := eachEndpoint(endpoints, every, func(scheme, hostport string) error {
		creds := insecure.NewCredentials()
		if dialsTLS(scheme, tlsCfg != nil) {
			creds = credentials.NewTLS(tlsCfg)
		}
		conn, err := grpc.NewClient("passthrough:///"+hostport, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		// Fail-fast: an endpoint that refuses connections is left out at
		// once.
		_, err = pb.NewKVClient(conn).Range(ctx, &pb.RangeRequest{Key: []byte("health"), Serializable: true, CountOnly: true})
		if status.Code(err) == codes.Unimplemented {
			return err
		}
		return nil
	})
	for i, err := range errs {
		if err != nil {
			_, hostport := splitEndpoint(endpoints[i])
			bad = append(bad, hostport)
			first = cmp.Or(first, err)
		}
	}
	return bad, first
}

// notEtcd is the error of endpoints that answer gRPC but not as etcd, err
// the answer of one.
func notEtcd(endpoints []string, err error) error {
	return fmt.Errorf("%w: --etcd-endpoints %s answers gRPC but is not etcd (another server's address?): %w",
		ErrNotEtcd, strings.Join(endpoints, ","), err)
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
