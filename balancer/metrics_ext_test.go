package balancer_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/balancer"
)

// TestBalancer_MetricsEjectionEnds counts an ejection on the registry
// attached to the resolver state, and takes it off the ejected gauge when
// the ejection expires or the ejected instance leaves the service.
func TestBalancer_MetricsEjectionEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  string
	}{
		{"expires", `{"ejection":{"consecutiveFailures":3,"baseEjectionTime":"100ms","maxEjectionTime":"100ms"}}`},
		{"removed", `{"ejection":{"consecutiveFailures":3,"baseEjectionTime":"1h","maxEjectionTime":"1h"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := startServer(t, "a", "127.0.0.1")
			b := startServer(t, "b", "127.0.0.2")
			c := startServer(t, "c", "127.0.0.3")
			c.fail.Store(true)
			reg := prometheus.NewRegistry()
			st := resolverState(a.instance(), b.instance(), c.instance())
			st.Attributes = balancer.AttachMetrics(st.Attributes, reg)
			cl := newTestClient(t, tc.cfg, st)

			ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
			defer cancel()
			for c.checks.Load() < 3 {
				if err := cl.check(ctx); err != nil && status.Code(err) != codes.Unavailable {
					t.Fatalf("Check() = %v, want nil or Unavailable", err)
				}
			}
			waitFor(t, "one ejection counted", func() bool {
				return gatherValue(t, reg, "butterfly_balancer_ejections_total") == 1
			})
			if tc.name == "removed" {
				if got := gatherValue(t, reg, "butterfly_balancer_ejected"); got != 1 {
					t.Errorf("butterfly_balancer_ejected = %v, want 1", got)
				}
				st := resolverState(a.instance(), b.instance())
				st.Attributes = balancer.AttachMetrics(st.Attributes, reg)
				cl.update(st)
			}
			waitFor(t, "no instance ejected", func() bool {
				return gatherValue(t, reg, "butterfly_balancer_ejected") == 0
			})
			if got := gatherValue(t, reg, "butterfly_balancer_ejections_total"); got != 1 {
				t.Errorf("butterfly_balancer_ejections_total = %v, want 1", got)
			}
		})
	}
}

// gatherValue returns the value of the counter or gauge name for
// testService on reg, or -1 when it is missing.
func gatherValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather() = %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabel(m, "service", testService) {
				continue
			}
			if mf.GetType() == dto.MetricType_COUNTER {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name && lp.GetValue() == value {
			return true
		}
	}
	return false
}
