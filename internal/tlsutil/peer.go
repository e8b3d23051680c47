package tlsutil

import (
	"context"
	"net/url"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// The URI SAN that binds a client certificate to a producer id:
// butterfly://producer/<id>.
const (
	identityScheme = "butterfly"
	identityKind   = "producer"
)

// producerURI returns butterfly://producer/<id>.
func producerURI(id string) *url.URL {
	return &url.URL{Scheme: identityScheme, Host: identityKind, Path: "/" + id}
}

// PeerIdentity returns the identity of the verified client certificate of
// the gRPC peer in ctx (a server handler's context): the <id> of its URI SAN
// butterfly://producer/<id> when it has one, else its subject CommonName. It
// reports false when the peer did not connect over TLS, sent no certificate,
// or sent one the server did not verify against its CA (only a verified
// chain is an identity), or when the certificate names nobody.
//
// A server that requires client certificates uses it to hold a producer to
// the producer id bound to its certificate:
//
//	if id, ok := tlsutil.PeerIdentity(ctx); !ok || id != req.GetProducerId() {
//		return status.Error(codes.PermissionDenied, "producer id is not the certificate's")
//	}
func PeerIdentity(ctx context.Context) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return "", false
	}
	leaf := info.State.VerifiedChains[0][0]
	for _, u := range leaf.URIs {
		if u.Scheme == identityScheme && u.Host == identityKind {
			if id := strings.TrimPrefix(u.Path, "/"); id != "" && !strings.Contains(id, "/") {
				return id, true
			}
		}
	}
	if cn := leaf.Subject.CommonName; cn != "" {
		return cn, true
	}
	return "", false
}
