package tlsutil

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// reloader holds a value parsed from files and reads the files again, at
// most once per interval, when the value is asked for while ctx lives. A
// file that cannot be read or parsed (a rotation half done, say) keeps the
// last good value in force; the failure is logged once.
type reloader[T any] struct {
	what     string // "certificate" or "CA", for logs and errors
	files    []string
	parse    func(contents [][]byte) (T, error)
	interval time.Duration
	ctx      context.Context
	logger   *slog.Logger

	mu      sync.Mutex // guards the fields below
	checked time.Time  // when the files were last read
	loaded  [][]byte   // contents value was parsed from
	value   T
	failed  string // the last failure logged, to log each one once
}

// newReloader reads and parses the files once; an error here is the
// caller's configuration error.
func newReloader[T any](ctx context.Context, what string, files []string, parse func([][]byte) (T, error), interval time.Duration, logger *slog.Logger) (*reloader[T], error) {
	r := &reloader[T]{what: what, files: files, parse: parse, interval: interval, ctx: ctx, logger: logger}
	contents, err := readFiles(files)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: %s: %w", what, err)
	}
	v, err := parse(contents)
	if err != nil {
		return nil, fmt.Errorf("tlsutil: %s %s: %w", what, strings.Join(files, ", "), err)
	}
	r.checked, r.loaded, r.value = time.Now(), contents, v
	return r, nil
}

// get returns the current value, reading the files first when the last read
// is older than the interval and ctx is not done.
func (r *reloader[T]) get() T {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx.Err() != nil || time.Since(r.checked) < r.interval {
		return r.value
	}
	r.checked = time.Now()
	contents, err := readFiles(r.files)
	if err == nil && sameContents(contents, r.loaded) {
		r.failed = ""
		return r.value
	}
	if err == nil {
		var v T
		if v, err = r.parse(contents); err == nil {
			r.loaded, r.value, r.failed = contents, v, ""
			r.logger.Info("tlsutil: reloaded "+r.what, "files", r.files)
			return r.value
		}
	}
	if msg := err.Error(); msg != r.failed {
		r.failed = msg
		r.logger.Warn("tlsutil: cannot reload "+r.what+", keeping the last good one", "files", r.files, "err", err)
	}
	return r.value
}

func readFiles(files []string) ([][]byte, error) {
	contents := make([][]byte, len(files))
	for i, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, err
		}
		contents[i] = b
	}
	return contents, nil
}

func sameContents(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// parseKeyPair parses contents[0] (certificate chain) and contents[1] (key).
func parseKeyPair(contents [][]byte) (*tls.Certificate, error) {
	cert, err := tls.X509KeyPair(contents[0], contents[1])
	if err != nil {
		return nil, err
	}
	return &cert, nil
}

// parsePool parses a bundle of PEM CA certificates.
func parsePool(contents [][]byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(contents[0]) {
		return nil, errors.New("no PEM certificate found")
	}
	return pool, nil
}

// keyPairReloader loads f.Cert and f.Key, or returns nil when there are none.
func keyPairReloader(ctx context.Context, f Files, o options, logger *slog.Logger) (*reloader[*tls.Certificate], error) {
	if f.Cert == "" {
		return nil, nil
	}
	r, err := newReloader(ctx, "certificate (--tls-cert, --tls-key)", []string{f.Cert, f.Key}, parseKeyPair, o.reloadInterval, logger)
	if err != nil {
		return nil, err
	}
	if leaf := r.value.Leaf; leaf != nil && time.Now().After(leaf.NotAfter) {
		logger.Warn("tlsutil: certificate has expired", "file", f.Cert, "not_after", leaf.NotAfter)
	}
	return r, nil
}

// warnNotForClients warns when the client certificate in r may not be used
// for client authentication: a server that checks client certificates
// refuses it with an alert ("bad certificate") that does not say why.
func warnNotForClients(r *reloader[*tls.Certificate], file string, logger *slog.Logger) {
	leaf := r.value.Leaf
	if leaf == nil || len(leaf.ExtKeyUsage) == 0 {
		return // no extended key usage: any
	}
	for _, u := range leaf.ExtKeyUsage {
		if u == x509.ExtKeyUsageClientAuth || u == x509.ExtKeyUsageAny {
			return
		}
	}
	logger.Warn("tlsutil: the client certificate (--tls-cert) is not for client authentication: its extended key usage leaves it out, and a server that checks client certificates refuses it; use one issued for clients (butterfly certs writes client.pem and <role>-<id>.pem)", "file", file)
}

// poolReloader loads f.CA, or returns nil when there is none.
func poolReloader(ctx context.Context, f Files, o options, logger *slog.Logger) (*reloader[*x509.CertPool], error) {
	if f.CA == "" {
		return nil, nil
	}
	return newReloader(ctx, "CA (--tls-ca)", []string{f.CA}, parsePool, o.reloadInterval, logger)
}
