package registry

import (
	"google.golang.org/grpc/attributes"
	gresolver "google.golang.org/grpc/resolver"
)

// instanceKey is the attribute key under which the resolver stores the
// Instance of an endpoint and of each of its addresses.
type instanceKey struct{}

// WithInstance returns attrs with inst attached. The resolver attaches the
// instance to every endpoint and address it reports.
func WithInstance(attrs *attributes.Attributes, inst Instance) *attributes.Attributes {
	return attrs.WithValue(instanceKey{}, inst)
}

// InstanceFromEndpoint returns the Instance the resolver attached to ep.
func InstanceFromEndpoint(ep gresolver.Endpoint) (Instance, bool) {
	inst, ok := ep.Attributes.Value(instanceKey{}).(Instance)
	return inst, ok
}

// InstanceFromAddress returns the Instance the resolver attached to addr.
// The balancer attributes of an address are used, so the instance does not
// take part in address equality checks of the transport.
func InstanceFromAddress(addr gresolver.Address) (Instance, bool) {
	//lint:ignore SA1019 the address's own attributes keep the instance out of the transport's address equality; endpoints carry it too
	inst, ok := addr.BalancerAttributes.Value(instanceKey{}).(Instance)
	return inst, ok
}
