// Package butterfly is a fault-tolerant mesh of pipeline components that
// stream messages to each other over gRPC and find each other through etcd.
//
// Producers (component1) send messages through any number of intermediate
// replicas to consumers (component2). Every message is acknowledged end to
// end, so an intermediate that crashes, drains or moves to another host loses
// nothing: its unacknowledged messages go out again through the others, and
// consumers drop the duplicates.
//
// The packages:
//
//   - registry: the etcd key schema and lease-kept registration.
//   - resolver: a gRPC resolver for "butterfly:///<service>" targets.
//   - balancer: a gRPC load balancer that follows instances, not addresses.
//   - intermediate: the intermediate server.
//   - components: producer, consumer and stage.
package butterfly

//go:generate go tool -modfile=tools/go.mod buf generate
