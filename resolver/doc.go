// Package resolver is a gRPC resolver for targets "butterfly:///<service>"
// that follows the service's registrations in etcd (see package registry).
//
// Every change pushes the full state: one endpoint per instance, sorted by
// instance name, with the registry.Instance attached to the endpoint and to
// its address (registry.InstanceFromEndpoint, registry.InstanceFromAddress),
// and Addresses filled for address-only policies. A host move (same
// instance, new address and epoch) arrives as one update of the same
// endpoint. When the watch halts, the error goes to the balancer, the last
// state stays in force, and the resolver lists and watches again.
//
//	cc, err := grpc.NewClient("butterfly:///intermediate",
//		grpc.WithResolvers(resolver.NewBuilder(cli)),
//		grpc.WithTransportCredentials(insecure.NewCredentials()),
//		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`),
//	)
package resolver
