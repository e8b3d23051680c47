package tlsutil

import (
	"context"
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
