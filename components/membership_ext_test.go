package components_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// etcdWatchers reads the embedded etcd servers' count of open watchers
// (etcd_debugging_mvcc_watcher_total, a process-wide gauge), once it has
// not changed for 200ms.
func etcdWatchers(t *testing.T) float64 {
	t.Helper()
	read := func() float64 {
		mfs, err := prometheus.DefaultGatherer.Gather()
		if err != nil {
			t.Fatalf("Gather() = %v", err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "etcd_debugging_mvcc_watcher_total" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatalf("no etcd_debugging_mvcc_watcher_total in the default registry")
		return 0
	}
	prev := read()
	for {
		time.Sleep(200 * time.Millisecond)
		n := read()
		if n == prev {
			return n
		}
		prev = n
	}
}

// TestComponents_OneMembershipWatch counts the etcd watches a producer and
// a consumer open: the membership of their service comes through their
// connection's resolver, so the producer opens one watch and the consumer
// two (the membership, and its own registration's key, which tells it
// when another process takes its id over).
func TestComponents_OneMembershipWatch(t *testing.T) {
	m := newMesh(t)
	h := m.startHub("svc", "i1", "127.0.0.1")
	before := etcdWatchers(t)

	m.producer("p1", components.WithService("svc"))
	waitProducer(t, "p1", h)
	afterProducer := etcdWatchers(t)
	if got := afterProducer - before; got != 1 {
		t.Errorf("etcd watchers opened by a producer = %v, want 1 (its connection's resolver)", got)
	}

	m.consumer("c1", newLedger().handler(), components.WithService("svc"))
	waitConsumers(t, 1, h)
	if got := etcdWatchers(t) - afterProducer; got != 2 {
		t.Errorf("etcd watchers opened by a consumer = %v, want 2 (its connection's resolver, its registration)", got)
	}
}

// TestProducer_MembershipOutlivesIdleness gives a producer a connection
// idle timeout of 50ms and no instance for longer than that: an idle
// connection would close its resolver, and with it the membership. The
// instance that registers afterwards is found, and a message goes through.
func TestProducer_MembershipOutlivesIdleness(t *testing.T) {
	m := newMesh(t)
	l := newLedger()
	m.consumer("c1", l.handler(), components.WithService("svc"))
	p := m.producer("p1", components.WithService("svc"),
		components.WithDialOptions(grpc.WithIdleTimeout(50*time.Millisecond)))
	time.Sleep(300 * time.Millisecond)

	h := m.startHub("svc", "i1", "127.0.0.1")
	waitProducer(t, "p1", h)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("after idle")}); err != nil {
		t.Fatalf("SendWait() = %v, want nil", err)
	}
	l.waitHandled(t, 1)
}
