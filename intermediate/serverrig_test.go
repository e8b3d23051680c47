package intermediate

import "testing"

// newRigServer returns a server built as New builds it, without etcd or a
// listener, with processor proc, its messages given back to the codec or
// not (release), one producer stream of "producer-1" (incarnation 1) and,
// for each of groups, a declared group with one registered consumer,
// "consumer-<group>", and its stream.
func newRigServer(tb testing.TB, proc Processor, release bool, groups ...string) (*Server, *pubStream, []*subStream) {
	opts := defaultOptions()
	opts.processor = proc
	s := &Server{
		opts:            opts,
		pubs:            make(map[*pubStream]struct{}),
		subs:            make(map[*subStream]struct{}),
		groups:          make(map[string]*group),
		parked:          make(map[string][]*delivery),
		releaseMessages: release,
	}
	ctx := tb.Context()
	p := &pubStream{srv: s, producerID: "producer-1", producerKey: []byte("producer-1"), incarnation: 1, expectSeq: 1}
	p.init(ctx, func(error) {}, 0, &s.opts)
	s.pubs[p] = struct{}{}
	var subs []*subStream
	for _, name := range groups {
		consumer := "consumer-" + name
		g := s.groupLocked(name)
		s.updateGroupLocked(g, true, []string{consumer}, map[string]uint64{consumer: 1})
		sub := &subStream{srv: s, consumerID: consumer, group: name, epoch: 1, maxFrame: grpcDefaultMaxRecv}
		sub.init(ctx, func(error) {}, 0, &s.opts)
		s.joinLocked(sub)
		subs = append(subs, sub)
	}
	return s, p, subs
}
