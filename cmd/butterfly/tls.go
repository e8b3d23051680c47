package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

// tlsHelpRules is what tlsHelp and statusTLSHelp share.
const tlsHelpRules = `Transport security: with --tls-cert and --tls-key (servers), or --tls-ca
(clients, plus --tls-cert and --tls-key for mutual TLS), every gRPC connection
uses TLS 1.2 or later, and the files are read again when they change.
Without them gRPC is plaintext, which is allowed only with --insecure, or when
every --etcd-endpoints (and an intermediate's --listen) is a loopback address`

// tlsHelp is the part of a gRPC command's help about transport security.
const tlsHelp = tlsHelpRules + `;
either way a warning is logged. Otherwise the command refuses to start.`

// statusTLSHelp is tlsHelp for status, which only reads and warns of
// nothing.
const statusTLSHelp = tlsHelpRules + `.
Otherwise the command refuses to start.`

// tlsFlags are the --tls-* and --insecure flags of a command that speaks
// gRPC.
type tlsFlags struct {
	root       *rootCommand
	server     bool
	files      tlsutil.Files
	serverName string
	insecure   bool
	// readOnly is set by commands that only read (status): they log no
	// plaintext warning.
	readOnly bool
}

// addTLSFlags registers the flags on f: --tls-client-auth only for servers,
// --tls-server-name only for clients.
func addTLSFlags(r *rootCommand, f *pflag.FlagSet, server bool) *tlsFlags {
	t := &tlsFlags{root: r, server: server}
	if server {
		f.StringVar(&t.files.Cert, "tls-cert", "", "PEM certificate (chain) the server presents")
		f.StringVar(&t.files.Key, "tls-key", "", "PEM private key of --tls-cert")
		f.StringVar(&t.files.CA, "tls-ca", "", "PEM bundle of the CAs that sign client certificates")
		f.StringVar(&t.files.ClientAuth, "tls-client-auth", "", "client certificates: none, request or require (default require with --tls-ca, else none)")
	} else {
		f.StringVar(&t.files.Cert, "tls-cert", "", "PEM client certificate for mutual TLS")
		f.StringVar(&t.files.Key, "tls-key", "", "PEM private key of --tls-cert")
		f.StringVar(&t.files.CA, "tls-ca", "", "PEM bundle of the CAs that sign server certificates (default: the system roots)")
		f.StringVar(&t.serverName, "tls-server-name", "", "name every server certificate must be valid for (default: the service name, or the IP address the connection reached)")
	}
	f.BoolVar(&t.insecure, "insecure", false, "use plaintext gRPC even off loopback (a warning is logged)")
	return t
}

// checkBound returns a usage error when --tls-cert is bound to another
// role or id than role/id, the --id of a consumer or stage: every
// intermediate would refuse it, and registering under that id first would
// take the id from the process that runs as it. A certificate bound to
// nobody (for --tls-allow-unbound) is left to the intermediates, and one
// that cannot be read to the TLS set-up, which names the flag.
func (t *tlsFlags) checkBound(role tlsutil.Role, id string) error {
	if t.files.Cert == "" {
		return nil
	}
	ident, err := tlsutil.CertIdentity(t.files.Cert)
	if err != nil {
		return nil //nolint:nilerr // the TLS set-up says it, naming the flag
	}
	if ident.Unbound() || ident.Is(role, id) {
		return nil
	}
	return usagef("--tls-cert %s is bound to %s, not %s/%s (--id): every intermediate would refuse it, and registering first would take %q from the process that runs as it; use the certificate of %s/%s (butterfly certs --%s-id %s)",
		t.files.Cert, ident, role, id, id, role, id, role, id)
}

// enabled reports whether any TLS flag is set.
func (t *tlsFlags) enabled() bool {
	return t.files.Enabled() || t.files.ClientAuth != "" || t.serverName != ""
}

// plaintext reports whether gRPC runs without TLS, logging a warning when it
// does, or returns a usage error when plaintext was not asked for and the
// mesh is not on loopback. hosts are the server's --listen addresses, which
// must be loopback for plaintext without --insecure as --etcd-endpoints must.
func (t *tlsFlags) plaintext(logger *slog.Logger, hosts ...string) (bool, error) {
	if t.enabled() {
		if t.insecure {
			return false, usagef("--insecure and --tls-* are both set; give one")
		}
		if err := t.files.Validate(); err != nil {
			return false, &usageError{err}
		}
		if t.server && t.files.Cert == "" {
			return false, usagef("--tls-ca or --tls-client-auth without --tls-cert and --tls-key: a TLS server needs its certificate")
		}
		return false, nil
	}
	if t.insecure {
		t.warnPlaintext(logger, "plaintext gRPC (--insecure): connections are neither encrypted nor authenticated")
		return true, nil
	}
	for _, set := range []struct {
		flag  string
		hosts []string
	}{{"--etcd-endpoints", t.root.etcdEndpoints}, {"--listen", hosts}} {
		for _, h := range set.hosts {
			if !isLoopback(h) {
				return false, usagef("no --tls-cert, --tls-key or --tls-ca and %s %q is not a loopback address: "+
					"pass the TLS flags (see `butterfly certs`), or --insecure to accept plaintext gRPC", set.flag, h)
			}
		}
	}
	t.warnPlaintext(logger, "plaintext gRPC on loopback: no --tls-* flags; pass them (or --insecure) for other networks")
	return true, nil
}

// warnPlaintext logs msg at WARN once per process, and never for a
// read-only command.
func (t *tlsFlags) warnPlaintext(logger *slog.Logger, msg string) {
	if t.readOnly {
		return
	}
	t.root.plaintextWarned.Do(func() { logger.Warn(msg) })
}

// clientCreds returns the transport credentials of a client: TLS from the
// flags, or plaintext as plaintext allows.
func (t *tlsFlags) clientCreds(ctx context.Context, logger *slog.Logger) (credentials.TransportCredentials, error) {
	plain, err := t.plaintext(logger)
	if err != nil {
		return nil, err
	}
	if plain {
		return insecure.NewCredentials(), nil
	}
	return tlsutil.ClientCredentials(ctx, t.files, t.serverName, logger)
}

// serverOption returns the gRPC server option of the transport credentials
// of a server listening on listen.
func (t *tlsFlags) serverOption(ctx context.Context, logger *slog.Logger, listen string) (grpc.ServerOption, error) {
	plain, err := t.plaintext(logger, listen)
	if err != nil {
		return nil, err
	}
	if plain {
		return grpc.Creds(insecure.NewCredentials()), nil
	}
	cfg, err := tlsutil.ServerConfig(ctx, t.files, logger)
	if err != nil {
		return nil, err
	}
	logger.Info("gRPC over TLS", "cert", t.files.Cert, "client_auth", clientAuthName(cfg.ClientAuth))
	return grpc.Creds(credentials.NewTLS(cfg)), nil
}

// advertiseCheckCreds returns the credentials with which an intermediate
// dials its own --advertise address to ask who answers there: plaintext
// without TLS; with TLS, a client that presents --tls-cert and --tls-key to a
// server that asks for a certificate (mutual TLS) and verifies neither the
// chain nor the name of the certificate it gets. The check knows this
// process by what it answers (service, instance, start time), not by its
// certificate, and the answer only decides whether this process registers or
// leaves: a server able to answer at the advertised address could take this
// instance's clients' connections there anyway. Verifying would need a CA the
// intermediate does not have (its --tls-ca signs client certificates, and
// server-only TLS has none) and a certificate naming the address as given
// (one for a DNS name, advertised by IP, does not). The flags were checked by
// serverOption.
func (t *tlsFlags) advertiseCheckCreds(ctx context.Context) (credentials.TransportCredentials, error) {
	if t.files.Cert == "" {
		return insecure.NewCredentials(), nil
	}
	// The server's own set-up reports what is wrong with the files, and
	// calls the certificate a server's.
	cfg, err := tlsutil.ClientConfig(ctx, tlsutil.Files{Cert: t.files.Cert, Key: t.files.Key}, "", slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	// ClientConfig verifies the chain and the name in VerifyConnection:
	// without it, and with InsecureSkipVerify, nothing of the server's
	// certificate is checked, as said above.
	cfg.InsecureSkipVerify = true //nolint:gosec // the answer, not the certificate, identifies the server
	cfg.VerifyConnection = nil
	return credentials.NewTLS(cfg), nil
}

func clientAuthName(a tls.ClientAuthType) string {
	switch a {
	case tls.RequireAndVerifyClientCert:
		return tlsutil.ClientAuthRequire
	case tls.VerifyClientCertIfGiven:
		return tlsutil.ClientAuthRequest
	}
	return tlsutil.ClientAuthNone
}

// isLoopback reports whether an address ("host:port", "host", or a URL such
// as http://127.0.0.1:2379) names a loopback host. An empty host (all
// interfaces) is not loopback.
func isLoopback(addr string) bool {
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		if err != nil {
			return false
		}
		addr = u.Host
	}
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// limitFlags are the intermediate's limits on what peers send.
type limitFlags struct {
	maxMessageBytes, maxHeaders, maxHeaderBytes, maxStreamsPerPeer int
	maxBatchMessages, maxBatchBytes, maxInFlight                   int
	maxInFlightBytes, memoryBudget, maxStreams, maxCredit          int
	budgetWait, connectionTimeout, maxPeerHeartbeat                time.Duration
}

func addLimitFlags(f *pflag.FlagSet) *limitFlags {
	l := &limitFlags{}
	f.IntVar(&l.maxMessageBytes, "max-message-bytes", 0, "largest message accepted, encoded (default: --max-batch-bytes)")
	f.IntVar(&l.maxHeaders, "max-headers", intermediate.DefaultMaxHeaders, "most headers per message")
	f.IntVar(&l.maxHeaderBytes, "max-header-bytes", intermediate.DefaultMaxHeaderBytes, "most bytes of header names and values per message")
	f.IntVar(&l.maxStreamsPerPeer, "max-streams-per-peer", intermediate.DefaultMaxStreamsPerPeer, "most open streams per client certificate identity, else per IP address (0: no limit)")
	f.IntVar(&l.maxBatchMessages, "max-batch-messages", intermediate.DefaultMaxBatchMessages, "most messages per batch")
	f.IntVar(&l.maxBatchBytes, "max-batch-bytes", intermediate.DefaultMaxBatchBytes, "most bytes per batch")
	f.IntVar(&l.maxInFlight, "max-in-flight", intermediate.DefaultMaxInFlight, "most unacknowledged messages per publish stream")
	f.IntVar(&l.maxInFlightBytes, "max-in-flight-bytes", intermediate.DefaultMaxInFlightBytes, "most bytes of unacknowledged messages per publish stream")
	f.IntVar(&l.memoryBudget, "memory-budget", intermediate.DefaultMemoryBudget, "most bytes of unacknowledged messages in the whole process")
	f.DurationVar(&l.budgetWait, "budget-wait", intermediate.DefaultBudgetWait, "how long a batch over --max-in-flight-bytes or --memory-budget waits for room before it is handed back (UNAVAILABLE) to be sent again")
	f.IntVar(&l.maxStreams, "max-streams", intermediate.DefaultMaxStreams, "most open streams in the whole process (0: no limit)")
	f.DurationVar(&l.connectionTimeout, "connection-timeout", intermediate.DefaultConnectionTimeout, "how long a new connection may take to finish its TLS handshake and HTTP/2 preface before it is closed")
	f.DurationVar(&l.maxPeerHeartbeat, "max-peer-heartbeat", intermediate.DefaultMaxPeerHeartbeat, "longest heartbeat interval a client may declare; a silent stream ends after five of it (the welcome states both)")
	f.IntVar(&l.maxCredit, "max-credit", intermediate.DefaultMaxCredit, "most unspent credit a consumer may hold on a subscribe stream (the welcome states it)")
	return l
}

// minBatchBytes is the least --max-batch-bytes: a smaller batch would make
// the instance hand back for good (INVALID) messages every other instance
// takes, and the consumers' least receive limit is as much.
const minBatchBytes = components.MinMaxReceiveBytes

// options returns the intermediate options of the limits, or a usage error
// naming a flag out of range.
func (l *limitFlags) options() ([]intermediate.Option, error) {
	for _, f := range []struct {
		name string
		v    int
		min  int
	}{
		{"max-message-bytes", l.maxMessageBytes, 0}, {"max-headers", l.maxHeaders, 0}, {"max-header-bytes", l.maxHeaderBytes, 0},
		{"max-streams-per-peer", l.maxStreamsPerPeer, 0}, {"max-batch-messages", l.maxBatchMessages, 1},
		{"max-batch-bytes", l.maxBatchBytes, minBatchBytes}, {"max-in-flight", l.maxInFlight, 1},
		{"max-in-flight-bytes", l.maxInFlightBytes, l.maxBatchBytes}, {"memory-budget", l.memoryBudget, l.maxInFlightBytes},
		{"max-streams", l.maxStreams, 0}, {"max-credit", l.maxCredit, 1},
	} {
		if f.v < f.min {
			return nil, usagef("--%s %d: must be at least %d", f.name, f.v, f.min)
		}
	}
	if l.budgetWait <= 0 {
		return nil, usagef("--budget-wait %v: must be positive", l.budgetWait)
	}
	if l.connectionTimeout <= 0 {
		return nil, usagef("--connection-timeout %v: must be positive", l.connectionTimeout)
	}
	if l.maxPeerHeartbeat < time.Millisecond || l.maxPeerHeartbeat > time.Minute {
		return nil, usagef("--max-peer-heartbeat %v: must be within [1ms, 1m]", l.maxPeerHeartbeat)
	}
	if l.maxCredit > 1<<31 {
		return nil, usagef("--max-credit %d: must be at most %d", l.maxCredit, 1<<31)
	}
	if l.maxMessageBytes > l.maxBatchBytes {
		return nil, usagef("--max-message-bytes %d exceeds --max-batch-bytes %d", l.maxMessageBytes, l.maxBatchBytes)
	}
	return []intermediate.Option{
		intermediate.WithMaxMessageBytes(l.maxMessageBytes),
		intermediate.WithMaxHeaders(l.maxHeaders, l.maxHeaderBytes),
		intermediate.WithMaxStreamsPerPeer(l.maxStreamsPerPeer),
		intermediate.WithMaxBatch(l.maxBatchMessages, l.maxBatchBytes),
		intermediate.WithMaxInFlight(l.maxInFlight),
		intermediate.WithMaxInFlightBytes(l.maxInFlightBytes),
		intermediate.WithMemoryBudget(l.memoryBudget, l.budgetWait),
		intermediate.WithMaxStreams(l.maxStreams),
		intermediate.WithConnectionTimeout(l.connectionTimeout),
		intermediate.WithMaxPeerHeartbeat(l.maxPeerHeartbeat),
		intermediate.WithMaxCredit(l.maxCredit),
	}, nil
}
