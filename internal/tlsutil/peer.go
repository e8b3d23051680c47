package tlsutil

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Role is what a client certificate lets its holder do in the mesh. It is
// bound to the certificate with the URI SAN butterfly://<role>/<id>.
type Role string

// The roles a certificate can carry.
const (
	// RoleProducer publishes under its own producer id only.
	RoleProducer Role = "producer"
	// RoleConsumer subscribes as its own consumer id only.
	RoleConsumer Role = "consumer"
	// RoleStage subscribes as its own id, publishes under its own id, and
	// forwards messages that keep the producer ids they came with.
	RoleStage Role = "stage"
	// RoleAdmin drains instances and sees the status of every stream.
	RoleAdmin Role = "admin"
)

// Roles lists every role, in the order the CLI documents them.
var Roles = []Role{RoleProducer, RoleConsumer, RoleStage, RoleAdmin}

// Valid reports whether r is one of Roles.
func (r Role) Valid() bool {
	switch r {
	case RoleProducer, RoleConsumer, RoleStage, RoleAdmin:
		return true
	}
	return false
}

const identityScheme = "butterfly"

// roleURI returns butterfly://<role>/<id>.
func roleURI(r Role, id string) *url.URL {
	return &url.URL{Scheme: identityScheme, Host: string(r), Path: "/" + id}
}

// Identity is what a verified client certificate says about its holder.
type Identity struct {
	// Role and ID come from the certificate's URI SAN
	// butterfly://<role>/<id>; Role is "" when it has none (or more than
	// one, or an unknown role).
	Role Role
	ID   string
	// Unreadable is set when the certificate carries butterfly URIs but not
	// exactly one that names a known role and a valid id: it was meant to
	// be bound to a role, and no role can be read from it. Such a
	// certificate is not an unbound one.
	Unreadable bool
	// CommonName is the certificate's subject CommonName.
	CommonName string
}

// Unbound reports whether the certificate carries no butterfly URI at all.
func (i Identity) Unbound() bool { return i.Role == "" && !i.Unreadable }

// String names the identity: "<role>/<id>", or "cn=<CommonName>" for a
// certificate without a role ("cn=<CommonName>, role unreadable" for one
// whose butterfly URIs name no single role).
func (i Identity) String() string {
	switch {
	case i.Role != "":
		return string(i.Role) + "/" + i.ID
	case i.Unreadable:
		return "cn=" + i.CommonName + ", role unreadable"
	}
	return "cn=" + i.CommonName
}

// Is reports whether the identity has role r and id.
func (i Identity) Is(r Role, id string) bool { return i.Role == r && i.ID == id }

// Peer returns the identity of the verified client certificate of the gRPC
// peer in ctx (a server handler's context). It reports false when the peer
// did not connect over TLS, sent no certificate, or sent one the server did
// not verify against its CA: only a verified chain is an identity.
func Peer(ctx context.Context) (Identity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, false
	}
	return identityOf(info.State.VerifiedChains[0][0]), true
}

// CertIdentity returns the identity the PEM certificate in file carries,
// as a server that verified it would read it (Peer).
func CertIdentity(file string) (Identity, error) {
	cert, err := readCertFile(file)
	if err != nil {
		return Identity{}, err
	}
	return identityOf(cert), nil
}

// identityOf reads the role and id of a certificate. A certificate with
// more than one butterfly URI, or one with an unknown role or a malformed
// id, has no role and is Unreadable: it cannot be trusted to mean one
// thing, nor taken for a certificate that was never bound.
func identityOf(leaf *x509.Certificate) Identity {
	id := Identity{CommonName: leaf.Subject.CommonName}
	found := 0
	for _, u := range leaf.URIs {
		if u.Scheme != identityScheme {
			continue
		}
		found++
		name := strings.TrimPrefix(u.Path, "/")
		if r := Role(u.Host); r.Valid() && validateID(name) == nil && u.RawQuery == "" && u.Fragment == "" {
			id.Role, id.ID = r, name
		}
	}
	if found != 1 {
		id.Role, id.ID = "", ""
	}
	id.Unreadable = found > 0 && id.Role == ""
	return id
}

// PeerIdentity returns the name of the verified client certificate of the
// gRPC peer in ctx: the <id> of its URI SAN butterfly://<role>/<id> when it
// has one, else its subject CommonName. It reports false when Peer does, or
// when the certificate names nobody. Authorization needs the role too: see
// Peer.
func PeerIdentity(ctx context.Context) (string, bool) {
	id, ok := Peer(ctx)
	switch {
	case !ok:
		return "", false
	case id.Role != "":
		return id.ID, true
	case id.CommonName != "":
		return id.CommonName, true
	}
	return "", false
}

// validateID applies the rules of producer and consumer ids: non-empty valid
// UTF-8 without '/', spaces or control characters.
func validateID(id string) error {
	if id == "" {
		return fmt.Errorf("tlsutil: empty id")
	}
	return validateClientID(id)
}
