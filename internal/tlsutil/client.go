package tlsutil

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"google.golang.org/grpc/credentials"
)

// ErrNoServerName is returned by a handshake of a ClientConfig that has no
// server name to verify: serverName was empty and the connection was made to
// an IP address (no SNI). Use ClientCredentials for gRPC, or pass serverName.
var ErrNoServerName = errors.New("tlsutil: no server name to verify the server certificate against")

// ClientConfig returns the TLS configuration of a client (TLS 1.2 or later)
// that presents f.Cert and f.Key when the server asks for a certificate, and
// verifies the server's certificate against f.CA (the system roots when
// empty) and serverName. The files are read again when they change, at most
// once per reload interval, during a handshake, while ctx lives.
//
// Because the CA pool is reloaded, the server's chain is verified by the
// configuration itself (VerifyConnection), against serverName, or when that
// is empty against the name the connection sent by SNI. A connection to an
// IP address sends no SNI: with an empty serverName it fails with
// ErrNoServerName. gRPC clients should use ClientCredentials, which verifies
// each connection against its own authority or the IP address it reached.
func ClientConfig(ctx context.Context, f Files, serverName string, logger *slog.Logger, opts ...Option) (*tls.Config, error) {
	c, err := newClientTLS(ctx, f, logger, opts)
	if err != nil {
		return nil, err
	}
	if serverName == "" {
		return c.config(), nil
	}
	return c.config(serverName), nil
}

// ClientCredentials returns gRPC transport credentials with the behaviour of
// ClientConfig. Each connection's server certificate is verified against
// serverName when it is set; otherwise it must be valid for either the
// authority gRPC gives the connection (the target's host, or for a resolver
// target such as butterfly:///intermediate the service name) or the IP
// address the connection actually reached, which for the butterfly resolver
// is the address the instance registered. Certificates for the hosts, as
// `butterfly certs --hosts` writes, and certificates for the service names
// both work.
//
//	creds, err := tlsutil.ClientCredentials(ctx, files, "", logger)
//	conn, err := grpc.NewClient("butterfly:///intermediate", grpc.WithTransportCredentials(creds))
func ClientCredentials(ctx context.Context, f Files, serverName string, logger *slog.Logger, opts ...Option) (credentials.TransportCredentials, error) {
	c, err := newClientTLS(ctx, f, logger, opts)
	if err != nil {
		return nil, err
	}
	return &clientCreds{tls: c, serverName: serverName}, nil
}

// clientTLS is the reloading material of a client.
type clientTLS struct {
	keyPair *reloader[*tls.Certificate] // nil: no client certificate
	cas     *reloader[*x509.CertPool]   // nil: the system roots
}

func newClientTLS(ctx context.Context, f Files, logger *slog.Logger, opts []Option) (*clientTLS, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	logger = orDiscard(logger)
	o := newOptions(opts)
	keyPair, err := keyPairReloader(ctx, f, o, logger)
	if err != nil {
		return nil, err
	}
	if keyPair != nil {
		warnNotForClients(keyPair, f.Cert, logger)
	}
	cas, err := poolReloader(ctx, f, o, logger)
	if err != nil {
		return nil, err
	}
	return &clientTLS{keyPair: keyPair, cas: cas}, nil
}

// config returns a configuration that accepts a server certificate valid
// for any of names, or for the SNI name of the connection when names is
// empty.
func (c *clientTLS) config(names ...string) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain is verified by VerifyConnection against the current
		// CA pool, which crypto/tls cannot reload by itself.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return c.verify(cs, names)
		},
	}
	if len(names) == 1 {
		cfg.ServerName = names[0]
	}
	if c.keyPair != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.keyPair.get(), nil
		}
	}
	return cfg
}

// verify checks the server's chain against the current CA pool, as
// crypto/tls would, and that its certificate is valid for one of names (or
// the SNI name).
func (c *clientTLS) verify(cs tls.ConnectionState, names []string) error {
	if len(names) == 0 && cs.ServerName != "" {
		names = []string{cs.ServerName}
	}
	if len(names) == 0 {
		return ErrNoServerName
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tlsutil: the server sent no certificate")
	}
	var roots *x509.CertPool // nil: the system roots
	if c.cas != nil {
		roots = c.cas.get()
	}
	intermediates := x509.NewCertPool()
	for _, cert := range cs.PeerCertificates[1:] {
		intermediates.AddCert(cert)
	}
	leaf := cs.PeerCertificates[0]
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("tlsutil: server certificate: %w", err)
	}
	var errs []error
	for _, name := range names {
		err := leaf.VerifyHostname(name)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("tlsutil: server certificate: %w", errors.Join(errs...))
}

// clientCreds verifies each connection against its authority or the IP
// address it reached.
type clientCreds struct {
	tls        *clientTLS
	serverName string // when set, the only name accepted
}

var _ credentials.TransportCredentials = (*clientCreds)(nil)

func (c *clientCreds) ClientHandshake(ctx context.Context, authority string, rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	names := []string{c.serverName}
	if c.serverName == "" {
		names[0] = authority
		if host, _, err := net.SplitHostPort(authority); err == nil {
			names[0] = host
		}
		if tcp, ok := rawConn.RemoteAddr().(*net.TCPAddr); ok && tcp.IP.String() != names[0] {
			names = append(names, tcp.IP.String())
		}
	}
	return credentials.NewTLS(c.tls.config(names...)).ClientHandshake(ctx, authority, rawConn)
}

func (c *clientCreds) ServerHandshake(rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("tlsutil: client credentials cannot accept connections; use ServerConfig")
}

func (c *clientCreds) Info() credentials.ProtocolInfo {
	//lint:ignore SA1019 grpc still takes the :authority from ServerName when set; WithAuthority would be per channel, --tls-server-name is per process
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.2", ServerName: c.serverName}
}

func (c *clientCreds) Clone() credentials.TransportCredentials {
	clone := *c
	return &clone
}

// OverrideServerName sets the name every server certificate is verified
// against.
//
// Deprecated: pass serverName to ClientCredentials, or use grpc.WithAuthority.
func (c *clientCreds) OverrideServerName(name string) error {
	c.serverName = name
	return nil
}
