package etcdclient

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

// startTLSEtcd starts an etcd that serves clients over TLS and requires
// client certificates of the CA in pki, and returns its client endpoint.
func startTLSEtcd(t *testing.T, pki string) string {
	t.Helper()
	var (
		clientURL url.URL
		e         *embed.Etcd
	)
	err := etcdtest.OnFreeAddrs(t, func(client, peer string) error {
		clientURL = url.URL{Scheme: "https", Host: client}
		peerURL := url.URL{Scheme: "http", Host: peer}
		cfg := embed.NewConfig()
		cfg.Name = "tls"
		cfg.Dir = t.TempDir()
		cfg.ListenClientUrls = []url.URL{clientURL}
		cfg.AdvertiseClientUrls = []url.URL{clientURL}
		cfg.ListenPeerUrls = []url.URL{peerURL}
		cfg.AdvertisePeerUrls = []url.URL{peerURL}
		cfg.InitialCluster = fmt.Sprintf("%s=%s", cfg.Name, peerURL.String())
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfg.TickMs = 10
		cfg.ElectionMs = 100
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile:       filepath.Join(pki, tlsutil.ServerFile),
			KeyFile:        filepath.Join(pki, tlsutil.ServerKeyFile),
			TrustedCAFile:  filepath.Join(pki, tlsutil.CAFile),
			ClientCertAuth: true,
		}
		var err error
		e, err = embed.StartEtcd(cfg)
		return err
	})
	if err != nil {
		t.Fatalf("embed.StartEtcd(TLS) = %v", err)
	}
	t.Cleanup(func() {
		e.Close()
		<-e.Server.StopNotify()
	})
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("TLS etcd not ready after %v", defaultTestTimeout)
	}
	return clientURL.String()
}

// TestNew_MutualTLS checks that a client with --etcd-cacert, --etcd-cert and
// --etcd-key works against an etcd that requires client certificates, with
// the endpoint given as an https:// URL or as host:port, and with
// --etcd-insecure-skip-tls-verify instead of the CA.
func TestNew_MutualTLS(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.GenerateDev(pki, []string{"127.0.0.1"}); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	endpoint := startTLSEtcd(t, pki)
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatalf("url.Parse(%s) = %v", endpoint, err)
	}
	ctx := testContext(t)
	ca := filepath.Join(pki, tlsutil.CAFile)
	cert, key := filepath.Join(pki, tlsutil.ClientFile), filepath.Join(pki, tlsutil.ClientKeyFile)
	for _, cfg := range []Config{
		{Endpoints: []string{endpoint}, CACert: ca, Cert: cert, Key: key},
		{Endpoints: []string{u.Host}, CACert: ca, Cert: cert, Key: key},
		{Endpoints: []string{u.Host}, Cert: cert, Key: key, InsecureSkipVerify: true},
	} {
		ep := cfg.Endpoints[0]
		cli := newClient(t, cfg)
		if _, err := cli.Put(ctx, "butterfly/tls", ep); err != nil {
			t.Fatalf("Put(butterfly/tls) via %s = %v, want nil", ep, err)
		}
		resp, err := cli.Get(ctx, "butterfly/tls")
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != ep {
			t.Fatalf("Get(butterfly/tls) via %s = %v, %v; want %s", ep, resp, err, ep)
		}
	}
}

// TestNew_PlaintextToTLSSaysSo checks that a client without TLS flags, given
// the host:port of an etcd that serves TLS, is told that the endpoint speaks
// TLS and how to reach it, where it saw only silence.
func TestNew_PlaintextToTLSSaysSo(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.GenerateDev(pki, []string{"127.0.0.1"}); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	ep := strings.TrimPrefix(startTLSEtcd(t, pki), "https://")
	cli, err := New(Config{Endpoints: []string{ep}, DialTimeout: 500 * time.Millisecond}, nil)
	if err == nil {
		cli.Close()
		t.Fatalf("New(%s) without TLS = nil error, want ErrUnreachable", ep)
	}
	want := "; " + ep + " speaks TLS: give it as https://" + ep + " with --etcd-cacert, and --etcd-cert and --etcd-key where it asks for a client certificate"
	if !errors.Is(err, ErrUnreachable) || !strings.HasSuffix(err.Error(), want) {
		t.Errorf("New(%s) without TLS = %v, want ErrUnreachable ending %q", ep, err, want)
	}
}

// TestSpeaksTLS_NamesTheEndpointThatDoes checks that the probe names the
// endpoint that completes a TLS handshake, in the order given, past one
// that takes the connection and never answers and one that refuses it.
func TestSpeaksTLS_NamesTheEndpointThatDoes(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.GenerateDev(pki, []string{"127.0.0.1"}); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	tlsEP := strings.TrimPrefix(startTLSEtcd(t, pki), "https://")
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	t.Cleanup(func() { silent.Close() })
	refused := etcdtest.FreeAddr(t)
	for _, tc := range []struct {
		endpoints []string
		want      string
	}{
		{[]string{silent.Addr().String(), refused, "http://" + tlsEP}, tlsEP},
		{[]string{"https://" + tlsEP, silent.Addr().String()}, ""}, // https already speaks TLS
		{[]string{silent.Addr().String(), refused}, ""},
	} {
		if got := speaksTLS(tc.endpoints, false, 300*time.Millisecond); got != tc.want {
			t.Errorf("speaksTLS(%v) = %q, want %q", tc.endpoints, got, tc.want)
		}
	}
	// Three silent endpoints are asked at once: one after another they
	// took three timeouts.
	silents := []string{silent.Addr().String(), silent.Addr().String(), silent.Addr().String()}
	start := time.Now()
	speaksTLS(silents, false, time.Second)
	if took := time.Since(start); took >= 2500*time.Millisecond {
		t.Errorf("speaksTLS(three silent endpoints, 1s) took %v, want them asked at once (about 1s)", took)
	}
}

// TestNew_TLSFailureSaysWhy checks that a client whose TLS flags do not
// fit the etcd it reaches is told what the handshake found, with the flag
// to check, where it saw only no answer: etcd's certificate of a CA it was
// not given, its own certificate missing where etcd requires one, an
// http:// URL of an etcd that serves TLS (dialed in plaintext whatever the
// flags), and TLS against an etcd that serves plaintext.
func TestNew_TLSFailureSaysWhy(t *testing.T) {
	pki := t.TempDir()
	if err := tlsutil.GenerateDev(pki, []string{"127.0.0.1"}); err != nil {
		t.Fatalf("GenerateDev() = %v", err)
	}
	tlsEP := startTLSEtcd(t, pki)
	plainEP := etcdtest.Start(t).Endpoint()
	ca := filepath.Join(pki, tlsutil.CAFile)
	cert, key := filepath.Join(pki, tlsutil.ClientFile), filepath.Join(pki, tlsutil.ClientKeyFile)
	host := strings.TrimPrefix(tlsEP, "https://")
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no CA", Config{Endpoints: []string{tlsEP}, Cert: cert, Key: key},
			host + ": tls: failed to verify certificate: x509: certificate signed by unknown authority (--etcd-cacert: the CA that signed etcd's certificate)"},
		{"no client certificate", Config{Endpoints: []string{tlsEP}, CACert: ca},
			"(etcd refused the client's certificate: --etcd-cert and --etcd-key, of a CA it trusts)"},
		{"an http:// URL with TLS flags", Config{Endpoints: []string{"http://" + host}, CACert: ca, Cert: cert, Key: key},
			host + " speaks TLS: give it as https://" + host},
		{"plaintext etcd", Config{Endpoints: []string{"https://" + plainEP}, CACert: ca},
			plainEP + ": the connection closed during the TLS handshake (it may serve plaintext: give it as http://" + plainEP + ", without the TLS flags)"},
	} {
		tc.cfg.DialTimeout = 500 * time.Millisecond
		cli, err := New(tc.cfg, nil)
		if err == nil {
			cli.Close()
			t.Fatalf("%s: New() = nil error, want ErrUnreachable", tc.name)
		}
		if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New() = %v, want ErrUnreachable saying %q", tc.name, err, tc.want)
		}
	}
}
