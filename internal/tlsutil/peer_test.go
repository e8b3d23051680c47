package tlsutil

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// TestPeerIdentity_ProducerURI checks that a certificate bound to a producer
// id identifies its peer by that id, not by its CommonName.
func TestPeerIdentity_ProducerURI(t *testing.T) {
	pki := newPKI(t, WithClientID("producer-7.eu"))
	addr, ids := startTLSServer(t, serverFiles(t, pki, pki, ClientAuthRequire), nil)
	if _, err := check(t, addr, newClientCreds(t, clientFiles(pki, filepath.Join(pki, CAFile)))); err != nil {
		t.Fatalf("Check() = %v, want nil", err)
	}
	if got, want := receive(t, ids), (identity{"producer-7.eu", true}); got != want {
		t.Fatalf("PeerIdentity() = %+v, want %+v", got, want)
	}
}

// TestPeerIdentity_Unverified checks that a peer without a verified client
// certificate has no identity.
func TestPeerIdentity_Unverified(t *testing.T) {
	pki := newPKI(t)
	cert := readCert(t, filepath.Join(pki, ClientFile))
	unverified := credentials.TLSInfo{}
	unverified.State.PeerCertificates = append(unverified.State.PeerCertificates, cert)
	for _, tc := range []struct {
		name string
		ctx  context.Context
	}{
		{"no peer", context.Background()},
		{"insecure", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: plainAuth{}})},
		{"no AuthInfo", peer.NewContext(context.Background(), &peer.Peer{})},
		{"certificate not verified", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: unverified})},
	} {
		if id, ok := PeerIdentity(tc.ctx); ok {
			t.Errorf("PeerIdentity(%s) = %q, true; want false", tc.name, id)
		}
	}
}

// plainAuth is the AuthInfo of a connection without TLS.
type plainAuth struct{}

func (plainAuth) AuthType() string { return "insecure" }

// TestIdentity_Roles checks that every role certificate GenerateDev writes
// carries its role and id, and that the producer form of WithClientID is the
// producer role.
func TestIdentity_Roles(t *testing.T) {
	var opts []GenerateOption
	for _, r := range Roles {
		opts = append(opts, WithIdentity(r, "x-"+string(r)))
	}
	pki := newPKI(t, append(opts, WithClientID("p1"))...)
	for _, r := range Roles {
		certFile, _ := IdentityFiles(r, "x-"+string(r))
		got := identityOf(readCert(t, filepath.Join(pki, certFile)))
		want := Identity{Role: r, ID: "x-" + string(r), CommonName: string(r) + "-x-" + string(r)}
		if got != want {
			t.Errorf("identityOf(%s) = %+v, want %+v", certFile, got, want)
		}
	}
	if got, want := identityOf(readCert(t, filepath.Join(pki, ClientFile))), (Identity{Role: RoleProducer, ID: "p1", CommonName: ClientCommonName}); got != want {
		t.Errorf("identityOf(%s) = %+v, want %+v", ClientFile, got, want)
	}
}

// TestIdentity_Ambiguous checks that a certificate with two butterfly URIs,
// an unknown role or a malformed id has no role and is not taken for an
// unbound certificate; one with no butterfly URI is unbound.
func TestIdentity_Ambiguous(t *testing.T) {
	for _, tc := range []struct {
		name string
		uris []string
	}{
		{"two roles", []string{"butterfly://producer/p1", "butterfly://admin/a1"}},
		{"unknown role", []string{"butterfly://root/r1"}},
		{"nested id", []string{"butterfly://producer/p1/x"}},
		{"empty id", []string{"butterfly://consumer/"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := &x509.Certificate{Subject: pkix.Name{CommonName: "cn1"}}
			for _, u := range tc.uris {
				parsed, err := url.Parse(u)
				if err != nil {
					t.Fatal(err)
				}
				cert.URIs = append(cert.URIs, parsed)
			}
			got := identityOf(cert)
			if want := (Identity{Unreadable: true, CommonName: "cn1"}); got != want {
				t.Errorf("identityOf(%v) = %+v, want %+v", tc.uris, got, want)
			}
			if got.Unbound() {
				t.Errorf("identityOf(%v).Unbound() = true, want false", tc.uris)
			}
			if got, want := got.String(), "cn=cn1, role unreadable"; got != want {
				t.Errorf("String() = %q, want %q", got, want)
			}
		})
	}
	other, err := url.Parse("spiffe://example.org/p1")
	if err != nil {
		t.Fatal(err)
	}
	got := identityOf(&x509.Certificate{Subject: pkix.Name{CommonName: "cn1"}, URIs: []*url.URL{other}})
	if want := (Identity{CommonName: "cn1"}); got != want || !got.Unbound() {
		t.Errorf("identityOf(a certificate with no butterfly URI) = %+v (unbound %v), want %+v, unbound", got, got.Unbound(), want)
	}
}
