package telemetry

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Namespace prefixes every Butterfly metric.
const Namespace = "butterfly"

// Shared returns the collector registered on reg under the same descriptors
// as c, registering c when there is none, so that every producer, consumer
// or server of one process shares one vector and adds its own label values.
// A collector of another type under the same names is an error.
func Shared[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	var zero C
	return zero, err
}

// Replace registers c on reg, unregistering first a collector with the same
// descriptors: a new incarnation of a server or producer of the same name
// takes over its series.
func Replace(reg prometheus.Registerer, c prometheus.Collector) error {
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		reg.Unregister(are.ExistingCollector)
		err = reg.Register(c)
	}
	return err
}
