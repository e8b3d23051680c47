package components_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
	"github.com/butterfly-mesh/butterfly/registry"
)

// TestStreams_HeartbeatAtTheWelcomesPace checks that a producer and a
// consumer configured with a heartbeat slower than the intermediate's cap
// beat at the pace the welcome states: their streams outlive several of the
// intermediate's deadlines while idle, and the same two streams carry every
// message.
func TestStreams_HeartbeatAtTheWelcomesPace(t *testing.T) {
	m := newMesh(t)
	hub := m.startHub("intermediate", "i1", "127.0.0.1", intermediate.WithMaxPeerHeartbeat(100*time.Millisecond))
	m.waitMembers("intermediate", 1)
	led := newLedger()
	slow := components.WithHeartbeatInterval(4 * time.Second)
	m.consumer("c1", led.handler(), slow)
	waitConsumers(t, 1, hub)
	p := m.producer("p1", slow)
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("before")}); err != nil {
		t.Fatalf("Send() = %v", err)
	}
	led.waitHandled(t, 1)
	// Idle for four of the intermediate's 500ms deadlines (a cap of 100ms
	// leaves room for a busy machine; 4s heartbeats would miss them all).
	idle := time.NewTimer(2 * time.Second)
	<-idle.C
	if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("after")}); err != nil {
		t.Fatalf("Send() = %v", err)
	}
	led.waitHandled(t, 2)
	led.checkExactlyOnce(t, map[string]int{"p1": 2})
	st := hub.status(t)
	if len(st.GetProducers()) != 1 || st.GetProducers()[0].GetReceived() != 2 {
		t.Errorf("producer streams = %v, want one that received both messages", st.GetProducers())
	}
	if len(st.GetConsumers()) != 1 || st.GetConsumers()[0].GetDelivered() != 2 {
		t.Errorf("consumer streams = %v, want one that delivered both messages", st.GetConsumers())
	}
}

// TestConsumer_RegistrationCarriesVersion checks that WithVersion puts the
// consumer's version in its registration, where etcdctl shows it.
func TestConsumer_RegistrationCarriesVersion(t *testing.T) {
	m := newMesh(t)
	m.consumer("c-ver", func(context.Context, *components.Delivery) error { return nil }, components.WithVersion("v1.2.3"))
	key := registry.ConsumerKey(testPrefix, components.DefaultService, components.DefaultGroup, "c-ver")
	var val registry.ConsumerValue
	waitUntil(t, "the consumer's registration", func() bool {
		resp, err := m.cli.Get(context.Background(), key)
		if err != nil || len(resp.Kvs) != 1 {
			return false
		}
		return json.Unmarshal(resp.Kvs[0].Value, &val) == nil
	})
	if val.Version != "v1.2.3" || val.Consumer != "c-ver" {
		t.Errorf("registration %s = %+v, want consumer c-ver, version v1.2.3", key, val)
	}
}

// TestConsumer_SaysWhatItWaitsFor checks that a consumer with no stream
// welcomed says so, naming the instances it tries and why each did not
// welcome it: one registered at an address where nothing answers; and
// every instance refusing it because its group is not declared (a refusal
// that comes after the intermediate waited for the registration, which the
// consumer must wait for rather than drop the stream as silent), which it
// says as its headline, not that no instance answers.
func TestConsumer_SaysWhatItWaitsFor(t *testing.T) {
	m := newMesh(t)
	registerInstance(t, m, "silent", "i1", etcdtest.FreeAddr(t))
	m.startHub("intermediate", "i2", "127.0.0.1")
	m.waitMembers("intermediate", 1)

	for _, tc := range []struct {
		name string
		opts []components.ConsumerOption
		msg  string // the warning
		want string // in the warning's errors, "" for none
	}{
		{"silent", []components.ConsumerOption{components.WithService("silent")}, "no instance of service silent answers (waiting)", "i1: "},
		{"undeclared", []components.ConsumerOption{components.WithGroup("nope"), components.WithCreateGroup(false)},
			`every instance of service intermediate refuses the consumer: intermediate: group "nope" is not declared at ` + testPrefix + `/groups/intermediate/nope (waiting)`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var logs logtest.Recorder
			m.consumer("c-"+tc.name, newLedger().handler(), append(tc.opts, components.WithLogger(logs.Logger()))...)
			first := ""
			waitUntil(t, "a warning", func() bool {
				for _, msg := range logs.Messages() {
					if strings.HasSuffix(msg, "(waiting)") {
						first = msg
						return true
					}
				}
				return false
			})
			// The first warning says why already: it waits for the
			// instances' answers (the intermediate holds the hello of an
			// undeclared group's consumer for 2 s before it refuses).
			if first != tc.msg {
				t.Errorf("first warning %q, want %q", first, tc.msg)
			}
			if tc.want != "" {
				if got := fmt.Sprint(logs.Attrs(tc.msg)[0]["errors"]); !strings.Contains(got, tc.want) {
					t.Errorf("first warning's errors = %s, want %q in them", got, tc.want)
				}
			}
			if n := logs.Count("stream missed its heartbeats"); n != 0 {
				t.Errorf("%d warnings that a stream missed its heartbeats, want none before a welcome", n)
			}
		})
	}
}

// frozenInstance registers instance name of service at an address that
// accepts connections and never answers.
func frozenInstance(t *testing.T, m *mesh, service, name string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("net.Listen() = %v", err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	registerInstance(t, m, service, name, l.Addr().String())
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
}

// TestConsumer_CloseDoesNotWaitForAWelcome checks that Close ends a stream
// still waiting for its welcome from an instance that never answers, rather
// than waiting until it counts as silent.
func TestConsumer_CloseDoesNotWaitForAWelcome(t *testing.T) {
	m := newMesh(t)
	h := m.startHub("intermediate", "i1", "127.0.0.1")
	frozenInstance(t, m, "intermediate", "i2")
	m.waitMembers("intermediate", 2)
	c, err := components.NewConsumer(m.cli, "c1", newLedger().handler(), components.WithPrefix(testPrefix),
		components.WithLogger(m.log), components.WithHeartbeatInterval(2*time.Second))
	if err != nil {
		t.Fatalf("NewConsumer() = %v", err)
	}
	waitConsumers(t, 1, h)
	time.Sleep(500 * time.Millisecond) // a stream to i2 opens and waits
	// Without ending it, Close waited about 4s for that stream; with
	// nothing else to wait for it takes a fraction of a second.
	ctx, cancel := context.WithTimeout(context.Background(), 2500*time.Millisecond)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		t.Errorf("Close() with i2 never answering = %v, want nil: nothing is owed on a stream not welcomed", err)
	}
}

// TestConsumer_StoppedSaysNotThatItWaits checks that a consumer stopped by
// its group's deletion does not then warn that it waits for an instance.
func TestConsumer_StoppedSaysNotThatItWaits(t *testing.T) {
	m := newMesh(t)
	h := m.startHub("intermediate", "i1", "127.0.0.1")
	m.waitMembers("intermediate", 1)
	var logs logtest.Recorder
	c := m.consumer("c1", newLedger().handler(), components.WithGroup("g1"), components.WithLogger(logs.Logger()))
	waitConsumers(t, 1, h)
	if _, err := registry.DeleteGroup(context.Background(), m.cli, components.DefaultService, "g1", registry.WithPrefix(testPrefix)); err != nil {
		t.Fatalf("registry.DeleteGroup(g1) = %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(defaultTestTimeout):
		t.Fatalf("c1 not stopped by its group's deletion")
	}
	if !errors.Is(c.Err(), components.ErrGroupDeleted) {
		t.Fatalf("Err() = %v, want %v", c.Err(), components.ErrGroupDeleted)
	}
	time.Sleep(2 * time.Second) // twice the second a warning waits for
	const msg = "no instance of service " + components.DefaultService + " answers (waiting)"
	if n := logs.Count(msg); n > 0 {
		t.Errorf("a consumer stopped with %v warned %d times %q: %v", c.Err(), n, msg, logs.Attrs(msg))
	}
}
