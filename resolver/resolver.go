package resolver

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"google.golang.org/grpc/balancer"
	gresolver "google.golang.org/grpc/resolver"

	"github.com/butterfly-mesh/butterfly/internal/telemetry"
	"github.com/butterfly-mesh/butterfly/registry"
)

// etcdResolver pushes the views of registry.Watch to gRPC.
type etcdResolver struct {
	cc      gresolver.ClientConn
	onView  func(registry.View) // nil: none
	logger  *slog.Logger
	metrics *telemetry.ResolverMetrics // nil: not counted
	cancel  context.CancelFunc
	resync  chan struct{} // capacity 1: pending ResolveNow requests coalesce
	wg      sync.WaitGroup
}

var _ gresolver.Resolver = (*etcdResolver)(nil)

// update pushes the full state of one view, then hands the view to onView.
// It runs on the watch goroutine.
func (r *etcdResolver) update(v registry.View) {
	s := stateOf(v)
	r.metrics.Update()
	err := r.cc.UpdateState(s)
	if r.onView != nil {
		r.onView(v)
	}
	if err != nil {
		// The watch pushes every change as it happens, so resolving again
		// would not give the balancer anything new.
		// An empty service is refused by most policies: that is no news.
		log := r.logger.Warn
		if len(s.Endpoints) == 0 && errors.Is(err, balancer.ErrBadResolverState) {
			log = r.logger.Debug
		}
		log("resolver: state rejected", "endpoints", len(s.Endpoints), "revision", v.Revision, "err", err)
	}
}

// stateOf turns a view into a resolver state: one endpoint per instance, in
// the view's order, with the instance attached to the endpoint and to its
// address; Addresses is filled too for address-only policies.
func stateOf(v registry.View) gresolver.State {
	s := gresolver.State{
		Endpoints: make([]gresolver.Endpoint, 0, len(v.Instances)),
		Addresses: make([]gresolver.Address, 0, len(v.Instances)),
	}
	for _, inst := range v.Instances {
		addr := gresolver.Address{
			Addr: inst.Addr,
			//lint:ignore SA1019 the address's own attributes keep the instance out of the transport's address equality (registry.InstanceFromAddress)
			BalancerAttributes: registry.WithInstance(nil, inst),
		}
		s.Endpoints = append(s.Endpoints, gresolver.Endpoint{
			Addresses:  []gresolver.Address{addr},
			Attributes: registry.WithInstance(nil, inst),
		})
		s.Addresses = append(s.Addresses, addr)
	}
	return s
}

func (r *etcdResolver) reportError(err error) {
	r.metrics.Error()
	r.cc.ReportError(err)
}

// ResolveNow makes the watch list the service again. It never blocks.
func (r *etcdResolver) ResolveNow(gresolver.ResolveNowOptions) {
	select {
	case r.resync <- struct{}{}:
	default:
	}
}

// Close stops the watch and waits for it.
func (r *etcdResolver) Close() {
	r.cancel()
	r.wg.Wait()
}
