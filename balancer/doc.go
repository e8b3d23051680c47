// Package balancer is a gRPC load balancing policy, registered as "butterfly",
// that follows instances rather than addresses.
//
// It keeps one connection per instance (a pick_first child keyed by the
// registry instance name), so an instance that moves to a new address keeps
// its identity: its connection moves to the new address, pinned picks wait
// until the new connection is READY, and the old connection is shut down
// (its open streams end on their own; the components move them).
//
// Unpinned picks use power of two choices on outstanding RPCs, weighted by
// Metadata.Weight, among READY instances that are neither draining nor
// ejected, preferring Config.LocalZone; when only draining instances are
// READY they are used rather than failing. Pinned picks (WithInstance) go to
// exactly that instance. An instance whose last ConsecutiveFailures RPCs
// ended with Unavailable, Unknown, Internal, DataLoss or DeadlineExceeded is
// ejected from unpinned picks for a growing time.
//
// With no instance at all, an RPC fails with Unavailable naming the service,
// or waits for one if it is wait-for-ready.
//
// Select it with a service config (butterfly.DialOptions does this):
//
//	conn, err := grpc.NewClient("butterfly:///intermediate",
//		grpc.WithResolvers(resolver.NewBuilder(cli)),
//		grpc.WithDefaultServiceConfig(balancer.ServiceConfig(`{"localZone":"eu-1a"}`)),
//		grpc.WithTransportCredentials(insecure.NewCredentials()))
//
//	// Pin a stream to one instance:
//	stream, err := client.Publish(balancer.WithInstance(ctx, "im-1"))
//	if balancer.IsInstanceUnavailable(err) { ... }
//
// The members of a connection's balancer (each instance with the state of
// its connection) are published to the Members attached to its resolver
// state; butterfly.WithMembers attaches one:
//
//	m := balancer.NewMembers()
//	conn, err := grpc.NewClient("butterfly:///intermediate",
//		butterfly.DialOptions(cli, butterfly.WithMembers(m))...)
//	members, cancel := m.Subscribe()
//	defer cancel()
//	for ms := range members { ... }
package balancer
