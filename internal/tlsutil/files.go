package tlsutil

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"
)

// Client authentication modes of Files.ClientAuth.
const (
	// ClientAuthNone accepts clients without asking for a certificate.
	ClientAuthNone = "none"
	// ClientAuthRequest asks clients for a certificate and verifies it
	// against the CA when one is sent; clients without one are accepted.
	ClientAuthRequest = "request"
	// ClientAuthRequire refuses clients without a certificate signed by the CA.
	ClientAuthRequire = "require"
)

// DefaultReloadInterval is how often, at most, the files are read again.
const DefaultReloadInterval = time.Second

// Files names the PEM files of one side of a TLS connection, as given by the
// --tls-cert, --tls-key, --tls-ca and --tls-client-auth flags.
type Files struct {
	// Cert and Key are the certificate (chain) and its private key: the
	// server's certificate, or the client's certificate for mTLS.
	Cert, Key string
	// CA is a bundle of CA certificates: on a server, the CAs that sign
	// client certificates; on a client, the CAs that sign server
	// certificates (empty: the system roots).
	CA string
	// ClientAuth is "none", "request" or "require", for servers only. Empty
	// means "require" when CA is set and "none" otherwise.
	ClientAuth string
}

// Enabled reports whether any TLS file is configured.
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// Validate checks that the files make a consistent configuration, naming the
// flag that is wrong. It does not read the files.
func (f Files) Validate() error {
	switch {
	case f.Cert != "" && f.Key == "":
		return fmt.Errorf("--tls-cert is set but --tls-key is not")
	case f.Key != "" && f.Cert == "":
		return fmt.Errorf("--tls-key is set but --tls-cert is not")
	}
	switch f.ClientAuth {
	case "", ClientAuthNone:
	case ClientAuthRequest, ClientAuthRequire:
		if f.CA == "" {
			return fmt.Errorf("--tls-client-auth=%s needs --tls-ca, the CA that signs client certificates", f.ClientAuth)
		}
	default:
		return fmt.Errorf("--tls-client-auth %q is not %s, %s or %s",
			f.ClientAuth, ClientAuthNone, ClientAuthRequest, ClientAuthRequire)
	}
	return nil
}

// clientAuthType maps ClientAuth to the crypto/tls policy of a server.
func (f Files) clientAuthType() tls.ClientAuthType {
	switch f.ClientAuth {
	case ClientAuthRequire:
		return tls.RequireAndVerifyClientCert
	case ClientAuthRequest:
		return tls.VerifyClientCertIfGiven
	case ClientAuthNone:
		return tls.NoClientCert
	}
	if f.CA != "" {
		return tls.RequireAndVerifyClientCert
	}
	return tls.NoClientCert
}

// Option configures ServerConfig, ClientConfig and ClientCredentials.
type Option func(*options)

type options struct {
	reloadInterval time.Duration
}

// WithReloadInterval sets how often, at most, the certificate, key and CA
// files are read again (default DefaultReloadInterval). Files are read during
// a handshake, never by a background goroutine.
func WithReloadInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.reloadInterval = d
		}
	}
}

func newOptions(opts []Option) options {
	o := options{reloadInterval: DefaultReloadInterval}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
