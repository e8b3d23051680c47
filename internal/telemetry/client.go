package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"
)

// ResolverMetrics are the series of the butterfly resolvers of one service.
// A nil *ResolverMetrics records nothing.
type ResolverMetrics struct {
	updates prometheus.Counter
	errors  prometheus.Counter
}

// NewResolverMetrics registers the resolver series of service with reg,
// shared by every resolver of that service on reg. It returns nil when reg
// is nil.
func NewResolverMetrics(reg prometheus.Registerer, service string) (*ResolverMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	names := []string{"service"}
	updates, err := counterVec(reg, "resolver_updates_total", "Resolver states (full instance lists) pushed to gRPC.", names)
	if err != nil {
		return nil, err
	}
	errs, err := counterVec(reg, "resolver_errors_total", "Registry watch errors reported to gRPC (halted watch, failed re-list); each is followed by a re-list.", names)
	if err != nil {
		return nil, err
	}
	lv := prometheus.Labels{"service": service}
	return &ResolverMetrics{updates: updates.With(lv), errors: errs.With(lv)}, nil
}

// Update counts one state pushed.
func (m *ResolverMetrics) Update() {
	if m != nil {
		m.updates.Inc()
	}
}

// Error counts one error reported.
func (m *ResolverMetrics) Error() {
	if m != nil {
		m.errors.Inc()
	}
}

// BalancerMetrics are the series of the butterfly balancers of one service.
// A nil *BalancerMetrics records nothing.
type BalancerMetrics struct {
	ejections prometheus.Counter
	ejected   prometheus.Gauge
}

// NewBalancerMetrics registers the balancer series of service with reg,
// shared by every balancer of that service on reg: the ejected gauge is the
// sum over them. It returns nil when reg is nil.
func NewBalancerMetrics(reg prometheus.Registerer, service string) (*BalancerMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	names := []string{"service"}
	ejections, err := counterVec(reg, "balancer_ejections_total", "Instances ejected from picks after consecutive RPC failures.", names)
	if err != nil {
		return nil, err
	}
	ejected, err := Shared(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "balancer_ejected",
		Help: "Instances ejected from picks now, summed over the client connections.",
	}, names))
	if err != nil {
		return nil, err
	}
	lv := prometheus.Labels{"service": service}
	return &BalancerMetrics{ejections: ejections.With(lv), ejected: ejected.With(lv)}, nil
}

// Ejected counts one instance ejected.
func (m *BalancerMetrics) Ejected() {
	if m != nil {
		m.ejections.Inc()
		m.ejected.Inc()
	}
}

// Returned records that n ejected instances are ejected no more: their
// ejection ended, or they left the balancer while ejected.
func (m *BalancerMetrics) Returned(n int) {
	if m != nil && n > 0 {
		m.ejected.Sub(float64(n))
	}
}
