package integration

import (
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/internal/tcpproxy"
)

// TestIntegration_PartialPartition cuts the traffic between the components
// and intermediate1 without closing connections (etcd still reaches it): the
// components detect the silence by heartbeats and go through intermediate2.
func TestIntegration_PartialPartition(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	listen := freePort(t, "127.0.0.2")
	proxy, err := tcpproxy.Listen("127.0.0.5:0", listen)
	if err != nil {
		t.Fatalf("tcpproxy.Listen() = %v", err)
	}
	t.Cleanup(func() { proxy.Close() })
	m.startIntermediateAt("intermediate1", listen, proxy.Addr())
	m.startIntermediate("intermediate2", "127.0.0.3")
	m.startConsumer("c1")
	m.startConsumer("c2")
	ps, want := produce(m)
	waitProgress(t, m, perProducer/2)
	proxy.Blackhole(true)
	before := m.handledCount()
	waitUntil(t, 10*time.Second, "progress through intermediate2 while intermediate1 is cut off", func() bool {
		return m.handledCount() >= before+4000
	})
	finish(t, m, ps, want)
	proxy.Blackhole(false)
}

// TestIntegration_FullButterfly runs the whole butterfly with stages —
// source -> hub requests -> component1 x2 -> intermediate x2 -> component2 x2
// -> hub replies -> sink — through the crash of an intermediate.
func TestIntegration_FullButterfly(t *testing.T) {
	m := newMesh(t)
	m.startEtcd()
	m.startIntermediate("requests1", "127.0.0.2", "--service", "requests")
	i1, _ := m.startIntermediate("intermediate1", "127.0.0.3")
	m.startIntermediate("intermediate2", "127.0.0.4")
	m.startIntermediate("replies1", "127.0.0.5", "--service", "replies")
	for _, s := range []struct{ id, from, to string }{
		{"component1-a", "requests", "intermediate"}, {"component1-b", "requests", "intermediate"},
		{"component2-a", "intermediate", "replies"}, {"component2-b", "intermediate", "replies"},
	} {
		m.start(s.id, "stage", "--id", s.id, "--from", s.from, "--to", s.to)
	}
	m.startConsumer("sink", "--service", "replies")
	p := m.startProducer("source", perProducer, rate, "--service", "requests")
	waitProgress(t, m, perProducer/3)
	i1.kill()
	m.waitProducer(p, perProducer, runTimeout)
	m.checkExactlyOnce(map[string]int{"source": perProducer}, false)
}
