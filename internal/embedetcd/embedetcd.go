// Package embedetcd runs an etcd member inside the process, for the
// development set-up (`butterfly etcd`, `butterfly demo`, `butterfly bench`).
//
//	srv, err := embedetcd.Start(ctx, embedetcd.Config{DataDir: dir})
//	if err != nil { ... }
//	defer srv.Close()
//	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.ClientEndpoints()})
package embedetcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/butterfly-mesh/butterfly/internal/freeport"
)

// Config describes one member. Zero values give a single-member cluster
// listening on 127.0.0.1:2379 (clients) and 127.0.0.1:2380 (peers).
type Config struct {
	// Name is the member name; default "default".
	Name string
	// DataDir is where the member keeps its data; required.
	DataDir string
	// ListenClient is the client URL, e.g. "http://127.0.0.1:2379".
	ListenClient string
	// AdvertiseClient is the client URL told to clients; default ListenClient.
	AdvertiseClient string
	// ListenPeer is the peer URL, e.g. "http://127.0.0.1:2380".
	ListenPeer string
	// AdvertisePeer is the peer URL told to other members; default ListenPeer.
	AdvertisePeer string
	// InitialCluster is "name=peerURL,…"; default this member alone.
	InitialCluster string
	// InitialClusterState is "new" or "existing"; default "new".
	InitialClusterState string
	// InitialClusterToken identifies the cluster; default "butterfly".
	InitialClusterToken string
	// LogLevel is etcd's own log level ("debug", "info", "warn", "error");
	// default "error", logs off when "off".
	LogLevel string
	// Logger receives etcd's log entries at LogLevel and above, without
	// stack traces; while the member starts or stops, its warnings and
	// errors are logged at debug level. Default: no logs.
	Logger *slog.Logger
	// StartTimeout bounds how long Start waits for the member to be ready;
	// default 60s (a member of a new cluster waits for a quorum).
	StartTimeout time.Duration
	// ClientTLS is how clients are served over TLS: required when
	// ListenClient is https://, refused when it is http://.
	ClientTLS TLSFiles
	// PeerTLS is the same for other members and ListenPeer.
	PeerTLS TLSFiles
}

// TLSFiles are a listener's TLS files, as etcd's --cert-file, --key-file,
// --trusted-ca-file and --client-cert-auth (or their --peer- forms) name
// them.
type TLSFiles struct {
	// Cert and Key are the PEM certificate and key served.
	Cert, Key string
	// TrustedCA is the PEM file of the CAs whose certificates the other
	// side may present.
	TrustedCA string
	// ClientCertAuth requires the other side to present a certificate of
	// TrustedCA.
	ClientCertAuth bool
}

func (f TLSFiles) enabled() bool {
	return f.Cert != "" || f.Key != "" || f.TrustedCA != "" || f.ClientCertAuth
}

func (f TLSFiles) info() transport.TLSInfo {
	return transport.TLSInfo{CertFile: f.Cert, KeyFile: f.Key, TrustedCAFile: f.TrustedCA, ClientCertAuth: f.ClientCertAuth}
}

// validate checks f for the listener at listen, flagPrefix being "" or
// "peer-" and listenFlag the flag of listen.
func (f TLSFiles) validate(listen, listenFlag, flagPrefix string) error {
	https := IsHTTPS(listen)
	switch {
	case https && (f.Cert == "" || f.Key == ""):
		return fmt.Errorf("%s %s is https: it needs --%scert-file and --%skey-file", listenFlag, listen, flagPrefix, flagPrefix)
	case !https && f.enabled():
		return fmt.Errorf("--%scert-file, --%skey-file, --%strusted-ca-file and --%sclient-cert-auth need an https:// %s, not %s", flagPrefix, flagPrefix, flagPrefix, flagPrefix, listenFlag, listen)
	case f.ClientCertAuth && f.TrustedCA == "":
		return fmt.Errorf("--%sclient-cert-auth needs --%strusted-ca-file, the CA the certificates it requires are checked against", flagPrefix, flagPrefix)
	}
	return nil
}

// IsHTTPS reports whether u is an https URL, its scheme in any case, as
// etcd reads it (url.Parse).
func IsHTTPS(u string) bool {
	scheme, _, ok := strings.Cut(u, "://")
	return ok && strings.EqualFold(scheme, "https")
}

// load reads f's files, so that a missing or wrong one is said naming its
// flag before etcd starts.
func (f TLSFiles) load(flagPrefix string) error {
	if f.Cert == "" {
		return nil
	}
	if _, err := tls.LoadX509KeyPair(f.Cert, f.Key); err != nil {
		return fmt.Errorf("--%scert-file %s, --%skey-file %s: %w", flagPrefix, f.Cert, flagPrefix, f.Key, err)
	}
	if f.TrustedCA != "" {
		pem, err := os.ReadFile(f.TrustedCA)
		if err != nil {
			return fmt.Errorf("--%strusted-ca-file: %w", flagPrefix, err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return fmt.Errorf("--%strusted-ca-file %s: no PEM certificate in it", flagPrefix, f.TrustedCA)
		}
	}
	return nil
}

func (c *Config) setDefaults() {
	// A URL without a scheme is http's, here and where it is copied to
	// (the initial cluster): etcd parses those itself.
	for _, u := range []*string{&c.ListenClient, &c.AdvertiseClient, &c.ListenPeer, &c.AdvertisePeer} {
		if *u != "" && !strings.Contains(*u, "://") {
			*u = "http://" + *u
		}
	}
	if c.Name == "" {
		c.Name = "default"
	}
	if c.ListenClient == "" {
		c.ListenClient = "http://127.0.0.1:2379"
	}
	if c.AdvertiseClient == "" {
		c.AdvertiseClient = c.ListenClient
	}
	if c.ListenPeer == "" {
		c.ListenPeer = "http://127.0.0.1:2380"
	}
	if c.AdvertisePeer == "" {
		c.AdvertisePeer = c.ListenPeer
	}
	if c.InitialCluster == "" {
		c.InitialCluster = c.Name + "=" + c.AdvertisePeer
	}
	if c.InitialClusterState == "" {
		c.InitialClusterState = embed.ClusterStateFlagNew
	}
	if c.InitialClusterToken == "" {
		c.InitialClusterToken = "butterfly"
	}
	if c.LogLevel == "" {
		c.LogLevel = "error"
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 60 * time.Second
	}
}

// Validate reports the first field that is wrong, naming it as the
// command-line flag that sets it.
func (c Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	for flag, v := range map[string]string{
		"--listen-client": c.ListenClient, "--advertise-client": c.AdvertiseClient,
		"--listen-peer": c.ListenPeer, "--advertise-peer": c.AdvertisePeer,
	} {
		if v == "" {
			continue
		}
		if _, err := parseURL(v); err != nil {
			return fmt.Errorf("%s: %w", flag, err)
		}
	}
	if _, err := initialCluster(c.InitialCluster); err != nil {
		return fmt.Errorf("--initial-cluster: %w", err)
	}
	if c.InitialClusterState != "" && c.InitialClusterState != embed.ClusterStateFlagNew && c.InitialClusterState != embed.ClusterStateFlagExisting {
		return fmt.Errorf("--initial-cluster-state: %q is neither new nor existing", c.InitialClusterState)
	}
	d := c
	d.setDefaults()
	if err := d.ClientTLS.validate(d.ListenClient, "--listen-client", ""); err != nil {
		return err
	}
	return d.PeerTLS.validate(d.ListenPeer, "--listen-peer", "peer-")
}

// initialCluster returns s, a list of name=peerURL, with every URL as
// parseURL reads it: one without a scheme is http's, as in the URL flags.
func initialCluster(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	members := strings.Split(s, ",")
	for i, m := range members {
		name, raw, ok := strings.Cut(m, "=")
		if !ok || name == "" {
			return "", fmt.Errorf("%q is not name=peerURL", m)
		}
		u, err := parseURL(raw)
		if err != nil {
			return "", fmt.Errorf("member %s: %w", name, err)
		}
		members[i] = name + "=" + u.String()
	}
	return strings.Join(members, ","), nil
}

func parseURL(s string) (url.URL, error) {
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return url.URL{}, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return url.URL{}, fmt.Errorf("%q: the scheme is neither http nor https", s)
	}
	if u.Host == "" {
		return url.URL{}, fmt.Errorf("%q has no host:port", s)
	}
	return *u, nil
}

// Server is a running member.
type Server struct {
	e       *embed.Etcd
	clients []string
	quiet   *atomic.Bool // etcd's warnings and errors at debug level: set while it stops
}

// Start starts the member and waits until it serves clients.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	var err error
	var lc, ac, lp, ap url.URL
	if lc, err = parseURL(cfg.ListenClient); err != nil {
		return nil, err
	}
	if ac, err = parseURL(cfg.AdvertiseClient); err != nil {
		return nil, err
	}
	if lp, err = parseURL(cfg.ListenPeer); err != nil {
		return nil, err
	}
	if ap, err = parseURL(cfg.AdvertisePeer); err != nil {
		return nil, err
	}
	ec.ListenClientUrls = []url.URL{lc}
	ec.AdvertiseClientUrls = []url.URL{ac}
	ec.ListenPeerUrls = []url.URL{lp}
	ec.AdvertisePeerUrls = []url.URL{ap}
	if ec.InitialCluster, err = initialCluster(cfg.InitialCluster); err != nil {
		return nil, fmt.Errorf("--initial-cluster: %w", err)
	}
	ec.ClusterState = cfg.InitialClusterState
	ec.InitialClusterToken = cfg.InitialClusterToken
	if err := cfg.ClientTLS.load(""); err != nil {
		return nil, fmt.Errorf("embedetcd: %w", err)
	}
	if err := cfg.PeerTLS.load("peer-"); err != nil {
		return nil, fmt.Errorf("embedetcd: %w", err)
	}
	ec.ClientTLSInfo = cfg.ClientTLS.info()
	ec.PeerTLSInfo = cfg.PeerTLS.info()
	level, err := zapLevel(cfg.LogLevel)
	if err != nil {
		return nil, fmt.Errorf("embedetcd: log level: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	quiet := new(atomic.Bool)
	quiet.Store(true)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(&slogCore{logger: logger, level: level, quiet: quiet}))
	if err := checkDataDir(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("embedetcd: %w", err)
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("embedetcd: an address is taken (another etcd running?): %w", err)
		}
		return nil, fmt.Errorf("embedetcd: start: %w", err)
	}
	timer := time.NewTimer(cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedetcd: %w", err)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("embedetcd: not ready after %v (is a quorum of --initial-cluster up?)", cfg.StartTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	quiet.Store(false)
	s := &Server{e: e, quiet: quiet}
	for _, l := range e.Clients {
		s.clients = append(s.clients, l.Addr().String())
	}
	return s, nil
}

// ClientEndpoints returns the "host:port" addresses clients reach the member at.
func (s *Server) ClientEndpoints() []string { return s.clients }

// Err reports a fatal error of the running member.
func (s *Server) Err() <-chan error { return s.e.Err() }

// Close stops the member and waits for it.
func (s *Server) Close() {
	s.quiet.Store(true)
	s.e.Close()
	<-s.e.Server.StopNotify()
}

// StartOnLoopback starts a single member listening for clients and peers
// on loopback ports that were free when picked, cfg's listen URLs aside,
// picking others when one is taken before etcd binds it (freeport.Pair).
func StartOnLoopback(ctx context.Context, cfg Config) (*Server, error) {
	var srv *Server
	err := freeport.Pair(func(client, peer string) error {
		cfg.ListenClient, cfg.ListenPeer = "http://"+client, "http://"+peer
		cfg.AdvertiseClient, cfg.AdvertisePeer, cfg.InitialCluster = "", "", ""
		var err error
		srv, err = Start(ctx, cfg)
		return err
	})
	if err != nil {
		return nil, err // Start's, or the pick's, each saying it
	}
	return srv, nil
}
