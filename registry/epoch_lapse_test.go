package registry

import (
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
)

// TestRegisterConsumer_EpochsAboveEveryLapsedOne checks that a new
// incarnation's epoch is above every earlier one's, whatever became of the
// key: Q registers c1 and is cut off from etcd until its key lapses; L
// registers c1 on the empty key and is cut off in turn; Q reaches etcd
// again and puts its own, older epoch back on the empty key; then R and S
// take c1 over. Counting up from Q's epoch, R or S would reach L's, and
// intermediates, which route by (id, epoch), would take L's streams, still
// open, for the registered c1's.
func TestRegisterConsumer_EpochsAboveEveryLapsedOne(t *testing.T) {
	srv := etcdtest.Start(t)
	obs := newClient(t, srv)
	reg := func(cli *clientv3.Client, who string) *Registration {
		t.Helper()
		r, err := RegisterConsumer(testContext(t), cli, "svc", "g", "c1", WithTTL(1), WithLogger(testLogger(t).With("proc", who)))
		if err != nil {
			t.Fatalf("RegisterConsumer(%s) = %v", who, err)
		}
		t.Cleanup(func() { r.Close(testContext(t)) })
		return r
	}
	key := ConsumerKey(DefaultPrefix, "svc", "g", "c1")
	gone := func() bool {
		resp, err := obs.Get(testContext(t), key)
		return err == nil && len(resp.Kvs) == 0
	}
	cliQ, pxQ := srv.ProxiedClient(t)
	cliL, pxL := srv.ProxiedClient(t)
	q := reg(cliQ, "Q")
	pxQ.Blackhole(true)
	waitUntil(t, "Q's key to lapse", gone)
	l := reg(cliL, "L")
	pxL.Blackhole(true)
	waitUntil(t, "L's key to lapse", gone)
	pxQ.Blackhole(false)
	waitUntil(t, "Q to put its key back", func() bool { return !gone() })
	resp, err := obs.Get(testContext(t), key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("Get(%s) = %v, %v", key, resp, err)
	}
	if v, err := ParseConsumerValue("g", "c1", resp.Kvs[0].Value); err != nil || v.Epoch != q.Epoch() {
		t.Fatalf("value Q put back = %+v, %v, want its own epoch %d", v, err, q.Epoch())
	}
	r := reg(newClient(t, srv), "R")
	s := reg(newClient(t, srv), "S")
	if !(q.Epoch() < l.Epoch() && l.Epoch() < r.Epoch() && r.Epoch() < s.Epoch()) {
		t.Errorf("epochs Q %d, L %d (lapsed, runs on), R %d, S %d; want each above every one before it", q.Epoch(), l.Epoch(), r.Epoch(), s.Epoch())
	}
	pxL.Blackhole(false)
}
