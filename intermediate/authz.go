package intermediate

import (
	"context"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/internal/tlsutil"
)

// Authorization follows the verified client certificate of a peer, whose URI
// SAN butterfly://<role>/<id> binds it to a role and an id:
//
//   - producer: publishes under its own producer id only, in the hello and
//     in every message's id;
//   - consumer: subscribes as its own consumer id only;
//   - stage: subscribes as its own id, publishes under its own id, and
//     forwards messages that keep the producer ids they came with;
//   - admin: drains the instance and sees every stream in GetStatus.
//
// A peer without a verified certificate (plaintext, or TLS that does not
// require client certificates) has no identity to check and may do
// everything: roles hold only with mutual TLS. A verified certificate
// without a role (no butterfly URI, such as a CommonName-only certificate)
// is refused everything but its own, empty, status, unless the server trusts
// unbound certificates (WithTrustUnboundCertificates): then it may do
// everything, as mutual TLS without roles did. A certificate whose butterfly
// URIs name no single valid role (two of them, an unknown role, a malformed
// id) is not unbound: it is refused everything but that status whatever
// the server trusts.

// access is what the peer of a call may do.
type access struct {
	id       tlsutil.Identity
	verified bool // a verified client certificate names the peer
	all      bool // no identity to check, or an unbound certificate the server trusts
}

// accessOf returns the access of the peer in ctx.
func (s *Server) accessOf(ctx context.Context) access {
	id, ok := tlsutil.Peer(ctx)
	if !ok {
		return access{all: true}
	}
	return access{id: id, verified: true, all: id.Unbound() && s.opts.trustUnbound}
}

// may reports whether the peer has one of roles with id ("" matches any id).
func (a access) may(id string, roles ...tlsutil.Role) bool {
	if a.all {
		return true
	}
	for _, r := range roles {
		if a.id.Role == r && (id == "" || a.id.ID == id) {
			return true
		}
	}
	return false
}

// denied is the PermissionDenied status of a peer refused what.
func (a access) denied(what string) error {
	return status.Errorf(codes.PermissionDenied, "intermediate: the client certificate (%s) may not %s", a.id, what)
}

// publish checks a publish hello of producerID and reports whether the
// stream may carry messages of other producers (a stage's that forwarders
// allows, nil allowing every stage, or an unchecked peer's).
func (a access) publish(producerID string, forwarders map[string]bool) (forwards bool, err error) {
	if !a.may(producerID, tlsutil.RoleProducer, tlsutil.RoleStage) {
		return false, a.denied("publish as producer " + quote(producerID))
	}
	return a.all || (a.id.Role == tlsutil.RoleStage && (forwarders == nil || forwarders[a.id.ID])), nil
}

// subscribe checks a subscribe hello of consumerID.
func (a access) subscribe(consumerID string) error {
	if !a.may(consumerID, tlsutil.RoleConsumer, tlsutil.RoleStage) {
		return a.denied("subscribe as consumer " + quote(consumerID))
	}
	return nil
}

// registeredAs checks a subscribe stream of consumer in group against the
// role its registration names (registry.RoleConsumer or RoleStage, "" for
// none): with a role certificate, a stage subscribes only under a stage's
// registration and a consumer only under a consumer's, since the two roles'
// ids may be the same. A registration that names no role (written by hand,
// or by a component that did not record it) is not checked.
func (a access) registeredAs(group, consumer, role string) error {
	if a.all || role == "" || role == string(a.id.Role) {
		return nil
	}
	return a.denied(fmt.Sprintf("subscribe as %q of group %q, registered by a %s", consumer, group, role))
}

// admin checks a call only admins may make.
func (a access) admin(what string) error {
	if !a.may("", tlsutil.RoleAdmin) {
		return a.denied(what + " (admin only)")
	}
	return nil
}

func quote(s string) string { return `"` + s + `"` }
