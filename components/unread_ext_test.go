package components_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
)

// TestProducer_SaysEtcdDoesNotAnswerReads checks what a producer says while
// etcd takes its connection and answers no read (a member whose cluster
// lost its quorum): not that no instance is registered, which it does not
// know, but that etcd has not answered, naming the endpoints; and so does
// its Close.
func TestProducer_SaysEtcdDoesNotAnswerReads(t *testing.T) {
	m := newMesh(t)
	m.startHub(components.DefaultService, "i1", "127.0.0.1")
	m.waitMembers(components.DefaultService, 1)
	cli, px := m.etc.ProxiedClient(t)
	px.Blackhole(true)
	var logs logtest.Recorder
	p, err := components.NewProducer(cli, "p1", components.WithPrefix(testPrefix), components.WithLogger(logs.Logger()))
	if err != nil {
		t.Fatalf("NewProducer() = %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("x")}); err != nil {
		t.Fatalf("Send() = %v", err)
	}
	want := "etcd has not answered a read of the registry yet at " + px.Addr()
	waitUntil(t, "the producer's warning", func() bool {
		return logs.Has(want + " (no leader? a cluster that lost its quorum answers no read) (waiting)")
	})
	if logs.Has("no instance of service intermediate is registered (waiting)") {
		t.Errorf("the producer said no instance is registered, which it does not know")
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer ccancel()
	var ce *components.CloseError
	if err := p.Close(cctx); !errors.As(err, &ce) || !strings.HasPrefix(ce.Waiting, want) {
		t.Errorf("Close() = %v, want a CloseError waiting for etcd: %q", err, want)
	}
}
