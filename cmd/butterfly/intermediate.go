package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/credentials"

	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/registry"
)

func newIntermediateCommand(r *rootCommand) *cobra.Command {
	var (
		name, listen, advertise, service, processor, admin, zone string
		forwarders                                               string
		weight                                                   uint32
		allowUnbound, fenceOnLeaseLoss, advertiseCheck           bool
		leaseTTL, drainTimeout, stopTimeout                      time.Duration
		tlsf                                                     *tlsFlags
		lim                                                      *limitFlags
		obsf                                                     *observeFlags
	)
	c := &cobra.Command{
		Use:   "intermediate",
		Short: "Run an intermediate: receive, process and deliver messages",
		Long: `Run an intermediate replica. It serves the publish, subscribe, process and
admin services on --listen, and registers in etcd as
<prefix>/services/<service>/<name> once it is serving (port 0 picks a free
port; the registered address is the real one, or --advertise). Before it
registers at --advertise, it dials that address (TLS when it serves TLS,
presenting its own --tls-cert) and asks who answers, knowing itself by its
service, name and start time: when another instance answers there, another
process of this --name (a copied command line), or a server that is not an
intermediate, it exits 1 naming --advertise and registers nothing, so that
the instance answering there is not fenced; when it cannot reach the
address from its own host within 3s, it logs a warning and registers.

SIGTERM or SIGINT drains it: it marks itself draining, finishes what it holds,
hands back what it cannot finish in --drain-timeout, removes its registration
and exits 0. Starting another process with the same --name elsewhere moves the
instance: this one sees its key taken, drains and exits.

Cut off from etcd for longer than --lease-ttl, its key expires and the
components stop using it; it goes on serving whoever still reaches it and
puts its key back when etcd answers, since it cannot tell the cut from an
etcd outage, through which traffic must not stop. With
--fence-on-lease-loss it fences itself instead: it drains as a replaced
instance does, leaves the key alone and exits 1, for its supervisor to
start it again (and every intermediate stops while etcd is down).

When ready it prints one JSON line on stdout:
  {"event":"serving","service":…,"instance":…,"addr":…,"epoch":…}
with "admin":… as well under --admin (its real address: port 0 picks one).

` + tlsHelp + `
With --tls-ca, client certificates are required (--tls-client-auth require)
and a verified certificate binds its holder to the role and id of its URI
SAN butterfly://<role>/<id> (butterfly certs --producer-id, --consumer-id,
--stage-id, --admin-id). A producer publishes only under its id, in the
hello and in every message; a consumer subscribes only as its id; a stage
does both under its id and forwards messages under their original ids; only
an admin may call AdminService/Drain and see every stream in GetStatus
(others see their own). Anything else is refused with PERMISSION_DENIED. A
certificate without a butterfly URI (CommonName only) may do nothing unless
--tls-allow-unbound trusts it with every role. A stage forwards messages
under the ids and low-water marks they came with, which the intermediate
cannot tell from forged ones: --forwarders names the stages that may
(default *: every stage certificate; s1,s2; or empty for none), and any
other stage publishes only under its own id. Without client certificates
(plaintext, or --tls-client-auth none or request) no role can be checked.

Limits: a message over --max-message-bytes, --max-headers or
--max-header-bytes is handed back (INVALID) naming the limit, and its stream
goes on; a batch over --max-batch-messages or --max-batch-bytes, a stream
over --max-in-flight, a peer over --max-streams-per-peer (per certificate
identity, else per IP address) or a stream over --max-streams (all peers) is
refused with RESOURCE_EXHAUSTED naming the limit. Held messages count in
bytes (their size and 640 bytes each) against --max-in-flight-bytes per
publish stream and --memory-budget for the process: a batch that does not
fit waits up to --budget-wait, its stream read no further, then is handed
back UNAVAILABLE for its producer to send again. A connection that has not
finished its TLS handshake and HTTP/2 preface within --connection-timeout
is closed. A message whose seq lies outside its producer's window
(low_water_seq + 2^24) is handed back INVALID.`,
		Example: `  butterfly intermediate --name intermediate1 --listen 127.0.0.2:7001
  butterfly intermediate --name intermediate2 --listen 0.0.0.0:7001 --advertise host2.example:7001 --processor upper \
    --tls-cert certs/server.pem --tls-key certs/server-key.pem --tls-ca certs/ca.pem`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireFlag("name", name); err != nil {
				return err
			}
			if err := registry.CheckName("--name", name); err != nil {
				return &usageError{err}
			}
			if err := registry.CheckName("--service", service); err != nil {
				return &usageError{err}
			}
			if err := requireFlag("listen", listen); err != nil {
				return err
			}
			host, port, err := net.SplitHostPort(listen)
			if err != nil {
				return usagef("--listen %q: %v", listen, err)
			}
			if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
				return usagef("--listen %q: port %q is not a number in [0, 65535]", listen, port)
			}
			if intermediate.EveryAddress(host) && advertise == "" {
				return usagef("--listen %q listens on every address, which others cannot dial: give --advertise HOST:PORT", listen)
			}
			var forwarderOpts []intermediate.Option // none for *: every stage
			if forwarders != "*" {
				var ids []string
				for id := range strings.SplitSeq(forwarders, ",") {
					if id = strings.TrimSpace(id); id == "" {
						continue
					}
					if err := registry.CheckName(r.flagName("forwarders")+" stage id", id); err != nil {
						return &usageError{err}
					}
					ids = append(ids, id)
				}
				forwarderOpts = append(forwarderOpts, intermediate.WithForwarders(ids...))
			}
			if advertise != "" {
				if err := registry.ValidateAddr(advertise); err != nil {
					return usagef("--advertise: %v", err)
				}
				if h, _, _ := net.SplitHostPort(advertise); intermediate.EveryAddress(h) {
					return usagef("--advertise %q names every address, which others cannot dial: give the address they reach this host at", advertise)
				}
			}
			proc, err := intermediate.ProcessorByName(processor)
			if err != nil {
				return usagef("--processor %q is unknown (valid: %s)", processor, strings.Join(intermediate.ProcessorNames(), ", "))
			}
			if leaseTTL < time.Second {
				return usagef("--lease-ttl %v: must be at least 1s", leaseTTL)
			}
			if weight == 0 {
				// The registry reads a missing weight as 1, so 0 would not
				// mean "no new work": draining does that.
				return usagef("%s 0: must be at least 1 (to take no new work, drain the instance)", r.flagName("weight"))
			}
			if drainTimeout <= 0 {
				return usagef("--drain-timeout %v: must be positive", drainTimeout)
			}
			if stopTimeout <= 0 {
				return usagef("--stop-timeout %v: must be positive", stopTimeout)
			}
			limitOpts, err := lim.options()
			if err != nil {
				return err
			}
			creds, err := tlsf.serverOption(cmd.Context(), r.logger, listen)
			if err != nil {
				return err
			}
			var checkCreds credentials.TransportCredentials // nil: no check
			if advertise != "" && advertiseCheck {
				if checkCreds, err = tlsf.advertiseCheckCreds(cmd.Context()); err != nil {
					return err
				}
			}
			cli, err := r.etcdClient()
			if err != nil {
				return err
			}
			defer cli.Close()
			lis, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			logger := r.logger.With("service", service, "instance", name)
			opts := []intermediate.Option{
				intermediate.WithPrefix(r.prefix),
				intermediate.WithLogger(r.logger),
				intermediate.WithProcessor(proc),
				intermediate.WithLeaseTTL(leaseTTL),
				intermediate.WithDrainTimeout(drainTimeout),
				intermediate.WithStopTimeout(stopTimeout),
				intermediate.WithVersion(buildVersion()),
				intermediate.WithRegistryOptions(registry.WithWeight(weight), registry.WithZone(zone), registry.WithVersion(buildVersion())),
				intermediate.WithGRPCServerOptions(creds),
				intermediate.WithAdvertiseCheck(checkCreds),
				intermediate.WithTrustUnboundCertificates(allowUnbound),
				intermediate.WithFenceOnLeaseLoss(fenceOnLeaseLoss),
			}
			opts = append(opts, forwarderOpts...)
			opts = append(opts, limitOpts...)
			obs, err := obsf.start(cmd.Context(), "intermediate", logger)
			if err != nil {
				lis.Close()
				return err
			}
			defer obs.Close()
			opts = append(opts, intermediate.WithMetrics(obs.Registry), intermediate.WithTracerProvider(obs.TracerProvider))
			if advertise != "" {
				opts = append(opts, intermediate.WithAdvertiseAddr(advertise))
			}
			srv, err := intermediate.New(cli, service, name, opts...)
			if err != nil {
				lis.Close()
				return err
			}
			if err := obs.serveAdmin(admin, srv); err != nil {
				lis.Close()
				return err
			}
			ready := make(chan struct{})
			go func() {
				select {
				case <-srv.Ready():
					ev := map[string]any{
						"event": "serving", "service": service, "instance": name,
						"addr": srv.Addr(), "epoch": srv.Epoch(),
					}
					if obs.admin != nil {
						ev["admin"] = obs.admin.Addr() // the real port, where --admin gave 0
					}
					line, _ := json.Marshal(ev)
					fmt.Fprintln(cmd.OutOrStdout(), string(line))
				case <-ready:
				}
			}()
			err = srv.Serve(cmd.Context(), lis)
			close(ready)
			if err != nil && cmd.Context().Err() != nil && !isClosed(srv.Ready()) {
				// Stopped by a signal before it was registered: nothing was
				// served, nothing is held.
				logger.Info("intermediate stopped before it was registered", "err", err)
				return nil
			}
			var ae *intermediate.AdvertiseError
			if errors.As(err, &ae) {
				if ae.Service == service && ae.Instance == name {
					// Another process of this instance: a copied command
					// line, or a predecessor at an address both share.
					return fmt.Errorf("--advertise %s reaches another process of instance %s (%s): nothing was registered; give the address that reaches this process, stop the other first, or, behind an address both share, --advertise-check=false",
						ae.Addr, name, ae.Answers())
				}
				return fmt.Errorf("--advertise %s reaches another server, not this instance (%s): nothing was registered; give the address that reaches this instance, or leave --advertise out",
					ae.Addr, ae.Answers())
			}
			if err != nil {
				return err
			}
			logger.Info("intermediate stopped")
			return nil
		},
	}
	c.Long += "\n\n" + observeHelp
	f := c.Flags()
	f.StringVar(&name, "name", "", "instance name, stable across restarts and moves (required)")
	f.StringVar(&listen, "listen", "", "host:port to listen on; port 0 picks a free port (required)")
	f.StringVar(&advertise, "advertise", "", "host:port to register (default: the listener's address)")
	f.BoolVar(&advertiseCheck, "advertise-check", true, "before registering at --advertise, ask who answers there and exit 1 when another server does (false: behind an address that successive processes of one instance share while both run)")
	f.StringVar(&service, "service", registry.DefaultService, "service to register under")
	f.StringVar(&processor, "processor", "passthrough", "processing step: "+strings.Join(intermediate.ProcessorNames(), ", "))
	f.StringVar(&admin, "admin", "", "host:port for the HTTP admin endpoint (/metrics, /healthz, /readyz)")
	f.DurationVar(&leaseTTL, "lease-ttl", 5*time.Second, "etcd lease TTL of the registration")
	f.DurationVar(&drainTimeout, "drain-timeout", 10*time.Second, "how long a drain may take before the rest is handed back")
	f.BoolVar(&fenceOnLeaseLoss, "fence-on-lease-loss", false, "drain and exit 1 once the registration's lease is lost (etcd unreachable for --lease-ttl, or the lease revoked), instead of serving on")
	f.DurationVar(&stopTimeout, "stop-timeout", intermediate.DefaultStopTimeout, "bound of each etcd update and of the final graceful stop of a drain")
	f.Uint32Var(&weight, "weight", 1, "relative share of new work, at least 1")
	f.StringVar(&zone, "zone", "", "zone of the instance, for zone-local picks")
	tlsf = addTLSFlags(r, f, true)
	f.BoolVar(&allowUnbound, "tls-allow-unbound", false, "trust a verified client certificate without a butterfly://<role>/<id> URI SAN with every role")
	f.StringVar(&forwarders, "forwarders", "*", "stage ids whose certificates may forward other producers' messages here, comma-separated (*: every stage; empty: none)")
	lim = addLimitFlags(f)
	obsf = addObserveFlags(f, false)
	return c
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
