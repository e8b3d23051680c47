package etcdclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultDialTimeout is the dial timeout of a Config that sets none.
const DefaultDialTimeout = 5 * time.Second

// Config is how to reach and authenticate to etcd, with the meaning of
// etcdctl's flags of the same names.
type Config struct {
	// Endpoints are "host:port" or "https://host:port" URLs (--etcd-endpoints).
	Endpoints []string
	// DialTimeout bounds the first connection and authentication
	// (--etcd-dial-timeout); zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// CACert verifies the servers' certificates (--etcd-cacert); empty
	// means the system roots.
	CACert string
	// Cert and Key are the client certificate and key (--etcd-cert, --etcd-key).
	Cert, Key string
	// User is "user" or "user:password" (--etcd-user), like etcdctl --user.
	User string
	// Password is the password of User (--etcd-password), when User does
	// not carry one.
	Password string
	// InsecureSkipVerify accepts any server certificate
	// (--etcd-insecure-skip-tls-verify). For tests only.
	InsecureSkipVerify bool
}

// Validate checks the configuration without touching the network or the
// files, naming the flag that is wrong.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("--etcd-endpoints is empty")
	}
	for _, ep := range c.Endpoints {
		if strings.TrimSpace(ep) == "" {
			return fmt.Errorf("--etcd-endpoints %q has an empty endpoint", strings.Join(c.Endpoints, ","))
		}
		if err := checkEndpoint(ep); err != nil {
			return fmt.Errorf("--etcd-endpoints %q: %w (want host:port or http(s)://host:port)", ep, err)
		}
	}
	if c.DialTimeout < 0 {
		return fmt.Errorf("--etcd-dial-timeout %v is negative", c.DialTimeout)
	}
	switch {
	case c.Cert != "" && c.Key == "":
		return errors.New("--etcd-cert is set but --etcd-key is not")
	case c.Key != "" && c.Cert == "":
		return errors.New("--etcd-key is set but --etcd-cert is not")
	}
	user, password, hasPassword := strings.Cut(c.User, ":")
	switch {
	case c.User == "" && c.Password != "":
		return errors.New("--etcd-password is set but --etcd-user is not")
	case c.User != "" && user == "":
		return fmt.Errorf("--etcd-user %q has no user name before ':'", c.User)
	case hasPassword && c.Password != "":
		return errors.New("--etcd-user carries a password (user:password) and --etcd-password is set too; give one")
	case c.User != "" && !hasPassword && c.Password == "":
		return fmt.Errorf("--etcd-user %q has no password: use --etcd-user %s:PASSWORD or --etcd-password", c.User, user)
	case hasPassword && password == "":
		return fmt.Errorf("--etcd-user %q has an empty password", c.User)
	}
	return nil
}

// checkEndpoint checks the form of one endpoint: host:port, or an http or
// https URL of one (a unix socket URL as it is). An endpoint of another
// form would only show as no answer after the dial timeout.
func checkEndpoint(ep string) error {
	scheme, hostport := splitEndpoint(ep)
	switch scheme {
	case "", "http", "https":
	case "unix", "unixs":
		return nil
	default:
		return fmt.Errorf("scheme %q is not http or https", scheme)
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return errors.New(ae.Err)
		}
		return err
	}
	if host == "" {
		return errors.New("no host")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q is not a number in [1, 65535]", port)
	}
	return nil
}

// splitEndpoint returns an endpoint's URL scheme ("" for host:port) and
// what follows it, without a trailing "/".
func splitEndpoint(ep string) (scheme, hostport string) {
	if scheme, rest, ok := strings.Cut(ep, "://"); ok {
		// etcd's client reads http and https in any case (url.Parse), unix
		// and unixs only in lower case.
		if l := strings.ToLower(scheme); l == "http" || l == "https" {
			scheme = l
		}
		return scheme, strings.TrimSuffix(rest, "/")
	}
	return "", ep
}

// unresolved returns, for the endpoints whose host is a name that does not
// resolve within timeout, "NAME does not resolve", joined: an endpoint that
// cannot answer for want of an address.
func unresolved(endpoints []string, timeout time.Duration) string {
	var out []string
	for _, ep := range endpoints {
		_, hostport := splitEndpoint(ep)
		host, _, err := net.SplitHostPort(hostport)
		if err != nil || host == "" || net.ParseIP(host) != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		_, err = net.DefaultResolver.LookupHost(ctx, host)
		cancel()
		if err != nil {
			out = append(out, host+" does not resolve")
		}
	}
	return strings.Join(out, ", ")
}

// eachEndpoint calls probe with the scheme and host:port of every endpoint
// reached over TCP (not a unix socket) for which want(scheme) holds, every
// one at once, and returns the results in the endpoints' order, the zero
// value for those left out. The probes run on the failure path, after the
// client waited its dial timeout: one after another, each silent endpoint
// would add its own timeout.
func eachEndpoint[T any](endpoints []string, want func(scheme string) bool, probe func(scheme, hostport string) T) []T {
	out := make([]T, len(endpoints))
	var wg sync.WaitGroup
	for i, ep := range endpoints {
		scheme, hostport := splitEndpoint(ep)
		if scheme == "unix" || scheme == "unixs" || !want(scheme) {
			continue
		}
		wg.Go(func() { out[i] = probe(scheme, hostport) })
	}
	wg.Wait()
	return out
}

// dialsTLS reports whether the client dials an endpoint of scheme over TLS:
// an https:// URL, or host:port when the client has TLS settings
// (withTLS); http:// is dialed in plaintext whatever the flags say.
func dialsTLS(scheme string, withTLS bool) bool {
	return scheme == "https" || scheme == "" && withTLS
}

// speaksTLS returns the host:port of the first endpoint the client dials in
// plaintext (withTLS: whether it has TLS settings) that completes a TLS
// handshake within timeout: an etcd serving TLS, which a plaintext client
// only sees as silent. The handshake verifies nothing; it only tells the
// protocol apart.
func speaksTLS(endpoints []string, withTLS bool, timeout time.Duration) string {
	plaintext := func(scheme string) bool { return !dialsTLS(scheme, withTLS) }
	done := eachEndpoint(endpoints, plaintext, func(_, hostport string) bool {
		d := &tls.Dialer{
			NetDialer: &net.Dialer{Timeout: timeout},
			Config:    &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // nothing is sent; only the protocol is told apart
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		conn, err := d.DialContext(ctx, "tcp", hostport)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	})
	for i, ep := range endpoints {
		if done[i] {
			_, hostport := splitEndpoint(ep)
			return hostport
		}
	}
	return ""
}

// tlsFailures returns, for each endpoint where a TLS handshake with cfg
// fails, or the server answers one with an alert, "host:port: why (the flag
// to check)": the client's TLS flags against that server, which a client
// only sees as no answer. Endpoints it cannot connect to are left out
// (that is not TLS's doing), and so are those dialed in plaintext (http://)
// and unix sockets.
func tlsFailures(endpoints []string, cfg *tls.Config, timeout time.Duration) []string {
	overTLS := func(scheme string) bool { return dialsTLS(scheme, true) }
	out := eachEndpoint(endpoints, overTLS, func(_, hostport string) string { return tlsFailure(hostport, cfg, timeout) })
	return slices.DeleteFunc(out, func(s string) bool { return s == "" })
}

// tlsFailure is tlsFailures for one endpoint, "" when the handshake holds.
func tlsFailure(hostport string, cfg *tls.Config, timeout time.Duration) string {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return ""
	}
	conn, err := net.DialTimeout("tcp", hostport, timeout)
	if err != nil {
		return ""
	}
	defer conn.Close()
	c := cfg.Clone()
	if c.ServerName == "" {
		c.ServerName = host
	}
	c.NextProtos = []string{"h2"} // as gRPC offers: etcd then speaks first
	_ = conn.SetDeadline(time.Now().Add(timeout))
	tc := tls.Client(conn, c)
	err = tc.Handshake()
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		// etcd's plaintext port takes the client's hello for a protocol
		// it does not serve, and closes the connection.
		return hostport + ": the connection closed during the TLS handshake (it may serve plaintext: give it as http://" + hostport + ", without the TLS flags)"
	}
	if err == nil {
		// Under TLS 1.3 a server refuses the client's certificate, or
		// its want of one, after the client's side of the handshake:
		// on the first read. etcd speaks first over h2 (its settings).
		_ = conn.SetReadDeadline(time.Now().Add(min(timeout, 300*time.Millisecond)))
		_, err = tc.Read(make([]byte, 1))
	}
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() || errors.Is(err, io.EOF) {
		return ""
	}
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		header    tls.RecordHeaderError
	)
	why := hostport + ": " + err.Error()
	switch {
	case errors.As(err, &unknownCA):
		return why + " (--etcd-cacert: the CA that signed etcd's certificate)"
	case errors.As(err, &hostname):
		return why + " (etcd's certificate does not name the host of --etcd-endpoints)"
	case errors.As(err, &header):
		return why + " (it speaks plaintext: give it as http://" + hostport + ", without the TLS flags)"
	case strings.Contains(err.Error(), "remote error: tls:"): // an alert of the server's (its type is unexported)
		return why + " (etcd refused the client's certificate: --etcd-cert and --etcd-key, of a CA it trusts)"
	}
	return why
}

// credentials returns the user name and password, or "" when there is no
// user.
func (c Config) credentials() (user, password string) {
	user, password, ok := strings.Cut(c.User, ":")
	if !ok {
		password = c.Password
	}
	return user, password
}

// tlsEnabled reports whether the client speaks TLS: a TLS flag is set, or an
// endpoint is an https:// or unixs:// URL.
func (c Config) tlsEnabled() bool {
	if c.CACert != "" || c.Cert != "" || c.InsecureSkipVerify {
		return true
	}
	for _, ep := range c.Endpoints {
		if scheme, _ := splitEndpoint(ep); scheme == "https" || strings.HasPrefix(ep, "unixs:") {
			return true
		}
	}
	return false
}

// tlsConfig loads the TLS files, as etcdctl does, or returns nil without TLS.
func (c Config) tlsConfig() (*tls.Config, error) {
	if !c.tlsEnabled() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify}
	if c.CACert != "" {
		pem, err := os.ReadFile(c.CACert)
		if err != nil {
			return nil, fmt.Errorf("etcdclient: --etcd-cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcdclient: --etcd-cacert %s: no PEM certificate found", c.CACert)
		}
		cfg.RootCAs = pool
	}
	if c.Cert != "" {
		cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("etcdclient: --etcd-cert, --etcd-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
