package components_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
)

// TestConsumer_SaysWhileCutFromOneInstance checks what a consumer says while
// it receives from one instance and cannot reach the other: a warning that
// repeats while the cut lasts (not one line when its stream broke, then
// silence), and a line when the stream is open again.
func TestConsumer_SaysWhileCutFromOneInstance(t *testing.T) {
	m := newMesh(t)
	h1 := m.startHub(components.DefaultService, "i1", "127.0.0.1")
	h2 := m.startHub(components.DefaultService, "i2", "127.0.0.1")
	m.waitMembers(components.DefaultService, 2)
	var cut atomic.Bool
	cut.Store(true)
	dialer := grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		if addr == h2.addr && cut.Load() {
			return nil, errors.New("cut off from i2")
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	})
	var logs logtest.Recorder
	m.consumer("c1", newLedger().handler(), components.WithDialOptions(dialer), components.WithLogger(logs.Logger()))
	waitConsumers(t, 1, h1)
	const warning = "no stream to this instance (waiting): what it routes to this consumer goes back to the producers, and around through the other instances"
	waitUntil(t, "the warning said twice", func() bool { return logs.Count(warning) >= 2 })
	if attrs := logs.Attrs(warning); attrs[0]["error"] == "" {
		t.Errorf("warning %v, want the link's error", attrs[0])
	}
	cut.Store(false)
	waitConsumers(t, 1, h2)
	waitUntil(t, "the stream said open again", func() bool { return logs.Has("stream open again") })
}
