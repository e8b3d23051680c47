package tlsutil

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// ServerConfig returns the TLS configuration of a server (TLS 1.2 or later)
// presenting f.Cert and f.Key, and verifying client certificates against
// f.CA as f.ClientAuth says. The certificate, key and CA files are read again
// when they change, at most once per reload interval, during a handshake:
// rotated files reach new connections without a restart. A file that cannot
// be read or parsed keeps the last good one in force. A new certificate that
// no longer names a host the one before it named is logged, and a
// connection that reaches the server at that host (by its SNI, else the
// local IP address it reached) keeps getting the earlier certificate while
// it is valid. Reloading stops when ctx is done; the configuration then
// keeps what it loaded last.
//
// For gRPC: grpc.Creds(credentials.NewTLS(cfg)).
func ServerConfig(ctx context.Context, f Files, logger *slog.Logger, opts ...Option) (*tls.Config, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if f.Cert == "" {
		return nil, errors.New("tlsutil: a server needs --tls-cert and --tls-key")
	}
	logger = orDiscard(logger)
	o := newOptions(opts)
	keyPair, err := keyPairReloader(ctx, f, o, logger)
	if err != nil {
		return nil, err
	}
	cas, err := poolReloader(ctx, f, o, logger)
	if err != nil {
		return nil, err
	}
	certs := &serverCertificates{file: f.Cert, keyPair: keyPair, logger: logger, current: keyPair.get()}
	getCertificate := certs.get
	clientAuth := f.clientAuthType()
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: getCertificate,
		ClientAuth:     clientAuth,
	}
	if cas == nil {
		return cfg, nil
	}
	cfg.ClientCAs = cas.get()
	// The client CAs can only change per handshake through a fresh config;
	// it offers HTTP/2 (gRPC) and HTTP/1.1 by ALPN.
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: getCertificate,
			ClientAuth:     clientAuth,
			ClientCAs:      cas.get(),
			NextProtos:     []string{"h2", "http/1.1"},
		}, nil
	}
	return cfg, nil
}

// serverCertificates picks the certificate of each handshake. Servers are
// reached at the hosts their certificate names, and certificate files are
// rewritten in place (butterfly certs does): a new certificate that no
// longer names one of those hosts would cut every client off that reaches
// the server there, from the next handshake on. So the certificates it
// replaced are kept, newest first, while each names a host the current one
// does not and is unexpired, and a connection that reached the server at
// such a host gets the newest of them that names it.
type serverCertificates struct {
	file    string // --tls-cert, for logs
	keyPair *reloader[*tls.Certificate]
	logger  *slog.Logger

	mu       sync.Mutex // guards the fields below; taken before keyPair's
	current  *tls.Certificate
	previous []*tls.Certificate // newest first
	warned   map[string]bool    // hosts given a previous certificate, logged once per current
}

// get is the tls.Config's GetCertificate.
func (s *serverCertificates) get(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Reading under s.mu: a handshake holding an older value must not
	// replace the newer one.
	cert := s.keyPair.get()
	if cert != s.current {
		s.replaceLocked(cert)
	}
	if len(s.previous) == 0 {
		return cert, nil
	}
	host := reachedHost(hello)
	if host == "" || cert.Leaf == nil || names(cert.Leaf, host) {
		return cert, nil
	}
	now := time.Now()
	for _, p := range s.previous {
		if !now.After(p.Leaf.NotAfter) && names(p.Leaf, host) {
			if !s.warned[host] {
				s.warned[host] = true
				s.logger.Warn("tlsutil: a connection reached the server at a host its certificate no longer names; it gets the previous certificate, which names it",
					"file", s.file, "host", host, "names", strings.Join(certNames(cert.Leaf), ", "), "previous_not_after", p.Leaf.NotAfter)
			}
			return p, nil
		}
	}
	return cert, nil
}

// replaceLocked makes next the current certificate, keeping the ones it
// replaces that name hosts next does not.
func (s *serverCertificates) replaceLocked(next *tls.Certificate) {
	last := s.current
	s.current, s.warned = next, map[string]bool{}
	if next.Leaf == nil {
		s.previous = nil
		return
	}
	if last.Leaf != nil {
		if dropped := droppedNames(last.Leaf, next.Leaf); len(dropped) > 0 {
			s.logger.Warn("tlsutil: the reloaded certificate no longer names every host the last one did; connections that reach the server at those hosts keep getting the last one while it is valid, not after a restart: give --tls-cert every host the server is reached at",
				"file", s.file, "dropped", strings.Join(dropped, ", "), "names", strings.Join(certNames(next.Leaf), ", "))
		}
	}
	now := time.Now()
	var kept []*tls.Certificate
	for _, c := range append([]*tls.Certificate{last}, s.previous...) {
		if c.Leaf != nil && !now.After(c.Leaf.NotAfter) && len(droppedNames(c.Leaf, next.Leaf)) > 0 {
			kept = append(kept, c)
		}
	}
	s.previous = kept
}

// reachedHost returns the host a connection reached the server at: the
// name the client asked for (SNI), else the local IP address.
func reachedHost(hello *tls.ClientHelloInfo) string {
	if hello.ServerName != "" {
		return hello.ServerName
	}
	if hello.Conn == nil {
		return ""
	}
	if a, ok := hello.Conn.LocalAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return ""
}

// certNames returns the DNS names and IP addresses of cert.
func certNames(cert *x509.Certificate) []string {
	n := append([]string(nil), cert.DNSNames...)
	for _, ip := range cert.IPAddresses {
		n = append(n, ip.String())
	}
	return n
}

// names reports whether cert is valid for host, or names it literally (a
// wildcard).
func names(cert *x509.Certificate, host string) bool {
	if cert.VerifyHostname(host) == nil {
		return true
	}
	for _, n := range cert.DNSNames {
		if strings.EqualFold(n, host) {
			return true
		}
	}
	return false
}

// droppedNames returns the names of last that next is not valid for.
func droppedNames(last, next *x509.Certificate) []string {
	var dropped []string
	for _, n := range certNames(last) {
		if !names(next, n) {
			dropped = append(dropped, n)
		}
	}
	return dropped
}

// DroppedHosts returns the hosts (DNS names and IP addresses) the PEM
// certificate in file names that a certificate GenerateDev writes for hosts
// would not be valid for, in the order file lists them.
func DroppedHosts(file string, hosts []string) ([]string, error) {
	cert, err := readCertFile(file)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return droppedNames(cert, leafTemplate("", hosts, now, now)), nil
}
