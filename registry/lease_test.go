package registry

import (
	"context"

	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	gbackoff "google.golang.org/grpc/backoff"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/tcpproxy"
)

// cutRig is a registration whose client reaches etcd through a proxy that
// the test blackholes (a partition: connections open, nothing answered) at
// a precise point of the keeper's work.
type cutRig struct {
	srv    *etcdtest.Server
	direct *clientv3.Client
	px     *tcpproxy.Proxy
	cli    *clientv3.Client
	// cutAfterTxn: blackhole once a Txn of the keeper's client returns.
	cutAfterTxn atomic.Bool
	// cutAfterWatchCreated: blackhole once a watch of the keeper's client is created.
	cutAfterWatchCreated atomic.Bool
	cut                  atomic.Pointer[time.Time]
	// heldGets: the next so many Ranges of the keeper's client are held
	// until their context ends (a linearizable read on a member without a
	// leader), etcd healthy otherwise; each sends on getsHeld as it ends.
	heldGets atomic.Int32
	getsHeld chan struct{}
	// slowNextGrant: the next LeaseGrant of the keeper's client reaches
	// etcd this much later (a grant waiting on an election or a slow disk).
	slowNextGrant atomic.Int64
}

func (c *cutRig) doCut() {
	c.px.Blackhole(true)
	now := time.Now()
	c.cut.Store(&now)
}

type watchCutStream struct {
	grpc.ClientStream
	rig *cutRig
}

func (s watchCutStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if wr, ok := m.(*pb.WatchResponse); ok && err == nil && wr.Created && s.rig.cutAfterWatchCreated.CompareAndSwap(true, false) {
		s.rig.doCut()
	}
	return err
}

func newCutRig(t *testing.T) *cutRig {
	t.Helper()
	rig := &cutRig{srv: etcdtest.Start(t), getsHeld: make(chan struct{}, 8)}
	rig.direct = newClient(t, rig.srv)
	px, err := tcpproxy.Listen("127.0.0.1:0", rig.srv.Endpoint())
	if err != nil {
		t.Fatalf("tcpproxy.Listen() = %v", err)
	}
	rig.px = px
	t.Cleanup(func() { px.Close() })
	// The settings of internal/etcdclient.New (gRPC keepalives 10s/5s,
	// dial timeout 5s; a copy, to keep in step), plus the cut points.
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            []string{px.Addr()},
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           gbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
				MinConnectTimeout: 5 * time.Second,
			}),
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				switch method {
				case "/etcdserverpb.KV/Range":
					if rig.heldGets.Add(-1) >= 0 {
						<-ctx.Done()
						rig.getsHeld <- struct{}{}
						return ctx.Err()
					}
				case "/etcdserverpb.Lease/LeaseGrant":
					if d := rig.slowNextGrant.Swap(0); d > 0 {
						select {
						case <-time.After(time.Duration(d)):
						case <-ctx.Done():
							return ctx.Err()
						}
					}
				}
				err := invoker(ctx, method, req, reply, cc, opts...)
				if tr, ok := reply.(*pb.TxnResponse); ok && err == nil && tr.Succeeded && rig.cutAfterTxn.CompareAndSwap(true, false) {
					rig.doCut()
				}
				return err
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				s, err := streamer(ctx, desc, cc, method, opts...)
				if err != nil || method != "/etcdserverpb.Watch/Watch" {
					return s, err
				}
				return watchCutStream{s, rig}, nil
			}),
		},
	})
	if err != nil {
		t.Fatalf("clientv3.New() = %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	rig.cli = cli
	return rig
}

// checkLeaseLost waits for etcd to expire lease, then expects r.LeaseLost()
// closed within 1.5 s of seeing it expired.
func (rig *cutRig) checkLeaseLost(t *testing.T, r *Registration, lease clientv3.LeaseID) {
	t.Helper()
	cut := *rig.cut.Load()
	waitUntil(t, "etcd to expire the lease", func() bool {
		ttl, err := rig.direct.TimeToLive(testContext(t), lease)
		return err == nil && ttl.TTL == -1
	})
	expired := time.Now()
	t.Logf("etcd expired lease %x %v after the cut (TTL 2s)", int64(lease), expired.Sub(cut).Round(time.Millisecond))
	select {
	case <-r.LeaseLost():
		t.Logf("LeaseLost closed by then")
		return
	case <-time.After(1500 * time.Millisecond):
	}
	select {
	case <-r.LeaseLost():
		t.Errorf("LeaseLost closed only %v after the cut, %v after etcd expired the lease (TTL 2s)",
			time.Since(cut).Round(time.Millisecond), time.Since(expired).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Errorf("LeaseLost still open %v after the cut, %v after etcd expired the lease (TTL 2s)",
			time.Since(cut).Round(time.Millisecond), time.Since(expired).Round(time.Millisecond))
	}
}

// TestRegistration_LeaseLostWhenCutAsASessionOpens checks partitions that
// start as the keeper opens a session, once its resync put back the key an
// operator deleted: right after the put, when the session's watch is never
// confirmed (clientv3's Watch waits for that), and once the watch is
// confirmed, when a keep-alive begun then would give up only after
// clientv3's first keep-alive timeout (the dial timeout and a second, 6 s,
// where the TTL is 2 s). Either way the lease must be lost as etcd expires
// it (within 1.5 s of the test seeing it), not once the partition heals.
func TestRegistration_LeaseLostWhenCutAsASessionOpens(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  func(*cutRig) *atomic.Bool
	}{
		{"after the put", func(rig *cutRig) *atomic.Bool { return &rig.cutAfterTxn }},
		{"after the watch opens", func(rig *cutRig) *atomic.Bool { return &rig.cutAfterWatchCreated }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := newCutRig(t)
			r := register(t, rig.cli, "svc", "i1", "127.0.0.1:7001", WithTTL(2*time.Second), WithLogger(testLogger(t)))
			t.Cleanup(func() { rig.px.Blackhole(false) }) // before r.Close
			_, lease, _ := getValue(t, rig.direct, r.Key())

			tc.cut(rig).Store(true)
			if _, err := rig.direct.Delete(testContext(t), r.Key()); err != nil {
				t.Fatalf("Delete() = %v", err)
			}
			waitUntil(t, "the cut", func() bool { return rig.cut.Load() != nil })
			rig.checkLeaseLost(t, r, clientv3.LeaseID(lease))
		})
	}
}

// TestRegistration_LeaseLostWhenCutAfterRegister checks the same with the
// partition starting as Register's claim returns.
func TestRegistration_LeaseLostWhenCutAfterRegister(t *testing.T) {
	rig := newCutRig(t)
	rig.cutAfterTxn.Store(true)
	r := register(t, rig.cli, "svc", "i1", "127.0.0.1:7001", WithTTL(2*time.Second), WithLogger(testLogger(t)))
	t.Cleanup(func() { rig.px.Blackhole(false) }) // before r.Close
	_, lease, _ := getValue(t, rig.direct, r.Key())
	rig.checkLeaseLost(t, r, clientv3.LeaseID(lease))
}

// TestRegistration_SlowResyncKeepsTheLease checks that the lease is kept
// alive while the keeper resyncs: with etcd answering keep-alives, two reads
// of its resyncs held until their call timeout (2 s each, 4 s against a
// TTL of 2 s; a linearizable read on a member without a leader waits as
// long) must neither let the lease lapse nor call it lost: the key is put
// back on the lease it had.
func TestRegistration_SlowResyncKeepsTheLease(t *testing.T) {
	rig := newCutRig(t)
	r := register(t, rig.cli, "svc", "i1", "127.0.0.1:7001", WithTTL(2*time.Second), WithLogger(testLogger(t)))
	_, lease, _ := getValue(t, rig.direct, r.Key())

	rig.heldGets.Store(2)
	if _, err := rig.direct.Delete(testContext(t), r.Key()); err != nil {
		t.Fatalf("Delete() = %v", err)
	}
	for i := range 2 {
		select {
		case <-rig.getsHeld:
		case <-time.After(defaultTestTimeout):
			t.Fatalf("read %d of the resyncs not held to its timeout", i+1)
		}
	}
	waitUntil(t, "the key put back", func() bool {
		_, _, ok := getValue(t, rig.direct, r.Key())
		return ok
	})
	if _, got, _ := getValue(t, rig.direct, r.Key()); got != lease {
		t.Errorf("key put back on lease %x, want %x: the lease lapsed while the keeper resynced", got, lease)
	}
	if isClosed(r.LeaseLost()) {
		t.Errorf("LeaseLost() closed with etcd answering every keep-alive")
	}
}

// TestRegistration_SlowGrantIsNotALostLease checks that a lease whose grant
// took longer than its TTL (2.2 s against 2 s), with etcd answering
// everything after it, is not called lost before its first keep-alive had
// its chance: nothing went unanswered, and etcd has the lease.
func TestRegistration_SlowGrantIsNotALostLease(t *testing.T) {
	rig := newCutRig(t)
	rig.slowNextGrant.Store(int64(2200 * time.Millisecond))
	r := register(t, rig.cli, "svc", "i1", "127.0.0.1:7001", WithTTL(2*time.Second), WithLogger(testLogger(t)))
	_, lease, _ := getValue(t, rig.direct, r.Key())
	select {
	case <-r.LeaseLost():
		t.Errorf("LeaseLost() closed after a slow grant, with etcd answering every keep-alive")
	case <-time.After(4 * time.Second):
	}
	// etcd gives the whole seconds left, -1 for a lease it does not have.
	if ttl, err := rig.direct.TimeToLive(testContext(t), clientv3.LeaseID(lease)); err != nil || ttl.TTL < 0 {
		t.Errorf("TimeToLive(%x) = %v, %v, want the lease alive", lease, ttl.TTL, err)
	}
}
