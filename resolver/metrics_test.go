package resolver

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
)

// TestResolver_MetricsCountCompaction counts the listed state, the error of
// a watch halted by a compaction and the state of the re-list.
func TestResolver_MetricsCountCompaction(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	register(t, cli, "svc", "a", "127.0.0.1:7001")
	reg := prometheus.NewRegistry()
	cc := newFakeClientConn()
	gate := make(chan struct{})
	cc.gate = gate
	build(t, cli, cc, "svc", WithMetrics(reg))

	// The resolver pushed its listed state and is held before it watches.
	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1")
	register(t, cli, "svc", "b", "127.0.0.1:7002")
	register(t, cli, "svc", "c", "127.0.0.1:7003")
	srv.Compact(t, cli)
	close(gate)

	wantState(t, nextState(t, cc), "a=127.0.0.1:7001/1", "b=127.0.0.1:7002/1", "c=127.0.0.1:7003/1")
	select {
	case err := <-cc.errs:
		if !errors.Is(err, rpctypes.ErrCompacted) {
			t.Errorf("ReportError(%v), want %v", err, rpctypes.ErrCompacted)
		}
	default:
		t.Errorf("ReportError not called, want %v", rpctypes.ErrCompacted)
	}
	const want = `
# HELP butterfly_resolver_errors_total Registry watch errors reported to gRPC (halted watch, failed re-list); each is followed by a re-list.
# TYPE butterfly_resolver_errors_total counter
butterfly_resolver_errors_total{service="svc"} 1
# HELP butterfly_resolver_updates_total Resolver states (full instance lists) pushed to gRPC.
# TYPE butterfly_resolver_updates_total counter
butterfly_resolver_updates_total{service="svc"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Errorf("GatherAndCompare() = %v, want nil", err)
	}
}
