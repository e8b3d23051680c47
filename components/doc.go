// Package components holds the connecting roles of a Butterfly pipeline: the
// Producer (component1), the Consumer (component2) and the Stage, a consumer
// of one service that forwards to the next.
//
// Every component keeps one gRPC connection per service, made with
// butterfly.DialOptions, follows the service's membership in etcd through
// that connection's own resolver (butterfly.WithViews: one etcd watch per
// connection), and keeps one stream pinned (balancer.WithInstance) to every
// live instance. When an instance crashes, freezes (no heartbeat for five
// intervals), drains or moves to a new address, the producer sends what that
// instance held through the others at once; the consumer drops the
// duplicates this may cause.
//
//	p, err := components.NewProducer(cli, "p1")
//	if err != nil {
//		return err
//	}
//	defer p.Close(ctx) // waits until everything sent is acknowledged
//	id, err := p.Send(ctx, &messagev1.Message{Payload: []byte("hello")})
//
//	c, err := components.NewConsumer(cli, "c1",
//		func(ctx context.Context, d *components.Delivery) error {
//			return store(ctx, d.Message) // nil acknowledges, an error hands it back
//		},
//		components.WithConcurrency(8))
//	if err != nil {
//		return err
//	}
//	defer c.Close(ctx) // finishes and acknowledges what it holds
//
//	s, err := components.NewStage(cli, "st1", "requests", "intermediate",
//		components.WithProcessor(myProcessor))
//
// Guarantee: nothing is lost; every message reaches a handler of every
// group at least once, and exactly once while each consumer's registration
// lives, whatever the network does between consumers and intermediates (a
// message routes to its owner by the registrations in etcd, and a consumer
// drops a repeated (producer, incarnation, seq) within its dedup window).
// A registration ends with its lease, a takeover by another process of the
// same id, or a drain (Close): from then on its messages have another
// owner, and what it handled and had not acknowledged (a handler still
// running when Close's context ends) may be handled again. A producer's Close returns nil only once every message it sent
// was acknowledged end to end.
//
// Concurrency: each producer and consumer has one mutex, never held across
// I/O or callbacks. Every stream has a receive goroutine and a send
// goroutine; a watchdog goroutine cancels streams that missed their
// heartbeats; consumers run WithConcurrency handler goroutines.
package components
