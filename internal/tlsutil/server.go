package tlsutil

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
)

// ServerConfig returns the TLS configuration of a server (TLS 1.2 or later)
// presenting f.Cert and f.Key, and verifying client certificates against
// f.CA as f.ClientAuth says. The certificate, key and CA files are read again
// when they change, at most once per reload interval, during a handshake:
// rotated files reach new connections without a restart. A file that cannot
// be read or parsed keeps the last good one in force. Reloading stops when
// ctx is done; the configuration then keeps what it loaded last.
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
	getCertificate := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return keyPair.get(), nil }
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
