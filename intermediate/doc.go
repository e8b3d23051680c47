// Package intermediate is the Butterfly intermediate: a gRPC server that
// receives messages from producers, runs a processing step on each, and hands
// the results to consumers, acknowledging every message to its producer only
// once a consumer's handler acknowledged it (end to end). Any number of
// replicas run under their own instance names in etcd; none holds state that
// matters, so one that crashes, drains or moves loses nothing.
//
//	srv, err := intermediate.New(cli, "intermediate", "i1",
//		intermediate.WithProcessor(intermediate.Upper()))
//	if err != nil {
//		return err
//	}
//	lis, err := net.Listen("tcp", "127.0.0.1:0")
//	if err != nil {
//		return err
//	}
//	// Serve registers the instance once it serves, and drains when ctx is
//	// done (SIGTERM), on srv.Drain, on `butterfly drain i1`, or when another
//	// process takes the instance name over.
//	return srv.Serve(ctx, lis)
//
// Routing: every admitted message gets one delivery for each consumer group
// declared in etcd at that moment; within a group it goes to one registered,
// non-draining consumer, chosen by rendezvous hashing of the message key (or
// of the producer id when the key is empty) over the group's registered
// consumer ids, so that a message sent again through another replica reaches
// the same consumer, which drops the duplicate. Deliveries respect the
// consumers' credits. When the chosen consumer is registered but not
// connected here, the message waits for it (WithOwnerWait) and is then handed
// back with NACK_REASON_OWNER_UNREACHABLE; a group with no registered
// consumer holds its messages until the no-consumer timeout and hands them
// back with NACK_REASON_NO_CONSUMER. Either way the producer sends them again.
//
// Concurrency: every stream has one receive goroutine and one send goroutine;
// the handler only waits for the stream to end. A janitor goroutine checks
// heartbeats and waiting messages. One mutex, Server.mu, guards all routing
// state and is never held across I/O.
package intermediate
