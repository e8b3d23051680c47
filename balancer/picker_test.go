package balancer

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	gbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"

	"github.com/butterfly-mesh/butterfly/registry"
)

// fakeSubConn stands for the SubConn of one instance.
type fakeSubConn struct {
	gbalancer.SubConn
	name string
}

// readyPicker is a pick_first READY picker.
type readyPicker struct{ res gbalancer.PickResult }

func (p *readyPicker) Pick(gbalancer.PickInfo) (gbalancer.PickResult, error) { return p.res, nil }

// testChildren returns n children named i0..i(n-1), READY, weight 1.
func testChildren(n int) []*child {
	parent := &butterflyBalancer{kick: make(chan struct{}, 1)}
	out := make([]*child, n)
	for i := range out {
		name := fmt.Sprintf("i%d", i)
		c := newChild(parent, name)
		c.inst = registry.Instance{Name: name, Addr: fmt.Sprintf("127.0.0.1:%d", 1000+i), Metadata: registry.Metadata{Instance: name}}
		c.state = gbalancer.State{
			ConnectivityState: connectivity.Ready,
			Picker:            &readyPicker{res: gbalancer.PickResult{SubConn: &fakeSubConn{name: name}}},
		}
		out[i] = c
	}
	return out
}

// pickName picks once and returns the picked instance, ending the RPC with
// doneErr.
func pickName(t *testing.T, p *picker, ctx context.Context, doneErr error) string {
	t.Helper()
	res, err := p.Pick(gbalancer.PickInfo{Ctx: ctx})
	if err != nil {
		t.Fatalf("Pick() = %v, want nil", err)
	}
	res.Done(gbalancer.DoneInfo{Err: doneErr, BytesSent: true, BytesReceived: true})
	return res.SubConn.(*fakeSubConn).name
}

// TestPicker_Weights draws unpinned picks in proportion to the weights.
func TestPicker_Weights(t *testing.T) {
	children := testChildren(2)
	children[1].inst.Metadata.Weight = 3
	p := newPicker("svc", "", children, nil)
	got := map[string]int{}
	for range 4000 {
		got[pickName(t, p, context.Background(), nil)]++
	}
	if got["i0"] < 700 || got["i0"] > 1300 || got["i0"]+got["i1"] != 4000 {
		t.Errorf("picks = %v, want i0 about 1000 and i1 about 3000", got)
	}
}

// TestPicker_LeastLoaded prefers the instance with fewer outstanding RPCs.
func TestPicker_LeastLoaded(t *testing.T) {
	children := testChildren(2)
	children[0].stats.outstanding.Store(1000)
	p := newPicker("svc", "", children, nil)
	got := map[string]int{}
	for range 400 {
		got[pickName(t, p, context.Background(), nil)]++
	}
	// i0 wins only when both draws are i0 (1 in 4).
	if got["i1"] < 250 {
		t.Errorf("picks = %v, want most on the unloaded i1", got)
	}
	if n := children[0].stats.outstanding.Load(); n != 1000 {
		t.Errorf("outstanding(i0) = %d, want 1000 after every Done", n)
	}
}

// TestPicker_Tiers chooses READY non-draining, then draining, then ejected
// instances, and reports why nothing can be picked.
func TestPicker_Tiers(t *testing.T) {
	ctx := context.Background()
	children := testChildren(3)
	children[0].inst.Metadata.Draining = true
	children[1].ejectedUntil = time.Now().Add(time.Hour)
	children[2].state = gbalancer.State{ConnectivityState: connectivity.Connecting}
	p := newPicker("svc", "", children, nil)
	for range 20 {
		if got := pickName(t, p, ctx, nil); got != "i0" {
			t.Fatalf("Pick() = %s, want draining i0 while nothing else is ready", got)
		}
	}
	children[0].state.ConnectivityState = connectivity.TransientFailure
	p = newPicker("svc", "", children, nil)
	if got := pickName(t, p, ctx, nil); got != "i1" {
		t.Fatalf("Pick() = %s, want ejected i1 as a last resort", got)
	}
	// Pinned picks ignore draining and ejection but wait for CONNECTING.
	if got := pickName(t, p, WithInstance(ctx, "i1"), nil); got != "i1" {
		t.Errorf("Pick(pinned i1) = %s, want i1", got)
	}
	if _, err := p.Pick(gbalancer.PickInfo{Ctx: WithInstance(ctx, "i2")}); !errors.Is(err, gbalancer.ErrNoSubConnAvailable) {
		t.Errorf("Pick(pinned connecting i2) = %v, want ErrNoSubConnAvailable", err)
	}
	if _, err := p.Pick(gbalancer.PickInfo{Ctx: WithInstance(ctx, "i0")}); !IsInstanceUnavailable(err) {
		t.Errorf("Pick(pinned failing i0) = %v, want instance unavailable", err)
	}

	children[1].state.ConnectivityState = connectivity.TransientFailure
	p = newPicker("svc", "", children, nil)
	if _, err := p.Pick(gbalancer.PickInfo{Ctx: ctx}); !errors.Is(err, gbalancer.ErrNoSubConnAvailable) {
		t.Errorf("Pick() with one CONNECTING = %v, want ErrNoSubConnAvailable", err)
	}
	children[2].state.ConnectivityState = connectivity.TransientFailure
	p = newPicker("svc", "", children, nil)
	_, err := p.Pick(gbalancer.PickInfo{Ctx: ctx})
	if _, isStatus := status.FromError(err); err == nil || isStatus {
		t.Errorf("Pick() with all failing = %v, want a non-status error (wait-for-ready RPCs wait)", err)
	}
}

// TestPicker_Zone prefers the local zone while it has an eligible instance.
func TestPicker_Zone(t *testing.T) {
	children := testChildren(3)
	children[2].inst.Metadata.Zone = "z1"
	p := newPicker("svc", "z1", children, nil)
	for range 20 {
		if got := pickName(t, p, context.Background(), nil); got != "i2" {
			t.Fatalf("Pick() = %s, want local i2", got)
		}
	}
	children[2].inst.Metadata.Draining = true
	p = newPicker("svc", "z1", children, nil)
	if got := pickName(t, p, context.Background(), nil); got == "i2" {
		t.Errorf("Pick() = %s, want a non-draining instance of another zone", got)
	}
}

// TestPicker_DoneCountsFailures counts failures in a row and resets them on
// success; Canceled is neutral.
func TestPicker_DoneCountsFailures(t *testing.T) {
	children := testChildren(1)
	children[0].stats.threshold.Store(2)
	p := newPicker("svc", "", children, nil)
	ctx := context.Background()
	unavailable := status.Error(codes.Unavailable, "down")
	pickName(t, p, ctx, unavailable)
	pickName(t, p, ctx, status.Error(codes.Canceled, "gone"))
	pickName(t, p, ctx, status.Error(codes.DeadlineExceeded, "slow"))
	if got := children[0].stats.failures.Load(); got != 2 {
		t.Errorf("failures = %d, want 2", got)
	}
	if len(children[0].parent.kick) != 1 {
		t.Errorf("kicks pending = %d, want 1 at the threshold", len(children[0].parent.kick))
	}
	pickName(t, p, ctx, status.Error(codes.NotFound, "app error"))
	if got := children[0].stats.failures.Load(); got != 0 {
		t.Errorf("failures after an application error = %d, want 0", got)
	}
}

// TestPicker_NoInstances returns the given error when there are no children.
func TestPicker_NoInstances(t *testing.T) {
	want := fmt.Errorf("butterfly: no instances of service %q", "svc")
	p := newPicker("svc", "", nil, want)
	if _, err := p.Pick(gbalancer.PickInfo{Ctx: context.Background()}); !errors.Is(err, want) {
		t.Errorf("Pick() = %v, want %v", err, want)
	}
}

// TestPicker_ZeroAllocs picks without allocating, pinned or not.
func TestPicker_ZeroAllocs(t *testing.T) {
	for _, n := range []int{1, 3, 30, 300} {
		p := newPicker("svc", "", testChildren(n), nil)
		info := gbalancer.PickInfo{Ctx: context.Background()}
		pinned := gbalancer.PickInfo{Ctx: WithInstance(context.Background(), fmt.Sprintf("i%d", n-1))}
		for _, tc := range []struct {
			name string
			info gbalancer.PickInfo
		}{{"unpinned", info}, {"pinned", pinned}} {
			allocs := testing.AllocsPerRun(1000, func() {
				res, err := p.Pick(tc.info)
				if err != nil {
					t.Fatalf("Pick() = %v", err)
				}
				res.Done(gbalancer.DoneInfo{})
			})
			if allocs != 0 {
				t.Errorf("AllocsPerRun(Pick %s, %d endpoints) = %v, want 0", tc.name, n, allocs)
			}
		}
	}
}

func BenchmarkPicker_Pick(b *testing.B) {
	for _, n := range []int{3, 30, 300} {
		b.Run(fmt.Sprintf("endpoints=%d", n), func(b *testing.B) {
			p := newPicker("svc", "", testChildren(n), nil)
			info := gbalancer.PickInfo{Ctx: context.Background()}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					res, err := p.Pick(info)
					if err != nil {
						b.Fatalf("Pick() = %v", err)
					}
					res.Done(gbalancer.DoneInfo{})
				}
			})
		})
	}
}

// TestReconnectDelay is immediate first, then doubles up to the maximum.
func TestReconnectDelay(t *testing.T) {
	cfg := BackoffConfig{BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second}
	for drops, want := range []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second} {
		if got := reconnectDelay(cfg, drops); got != want {
			t.Errorf("reconnectDelay(%d) = %v, want %v", drops, got, want)
		}
	}
}
