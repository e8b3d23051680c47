package components_test

import (
	"context"
	"strings"
	"testing"

	"github.com/butterfly-mesh/butterfly/components"
	"github.com/butterfly-mesh/butterfly/intermediate"
)

// TestStage_ThreeHop checks that source -> hub -> stage -> hub -> sink
// delivers every message exactly once, processed by the stage, through the
// crash of a replica of each hub.
func TestStage_ThreeHop(t *testing.T) {
	m := newMesh(t)
	r1 := m.startHub("requests", "r1", "127.0.0.1")
	r2 := m.startHub("requests", "r2", "127.0.0.2")
	s1 := m.startHub("replies", "s1", "127.0.0.1")
	s2 := m.startHub("replies", "s2", "127.0.0.2")
	m.waitMembers("requests", 2)
	m.waitMembers("replies", 2)

	led := newLedger()
	sink := m.consumer("sink", func(ctx context.Context, d *components.Delivery) error {
		if p := string(d.Message.GetPayload()); p != strings.ToUpper(p) {
			t.Errorf("sink got payload %q, want it upper-cased by the stage", p)
		}
		return led.handler()(ctx, d)
	}, components.WithService("replies"), components.WithConcurrency(4))
	stage, err := components.NewStage(m.cli, "stage", "requests", "replies",
		components.WithPrefix(testPrefix),
		components.WithLogger(m.log),
		components.WithProcessor(intermediate.Upper()))
	if err != nil {
		t.Fatalf("NewStage() = %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
		defer cancel()
		_ = stage.Close(ctx)
	})
	waitConsumers(t, 1, r1, r2, s1, s2)
	src := m.producer("src", components.WithService("requests"), components.WithWindow(2000))

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	l := startLoad(ctx, maxLoad, src)
	led.waitHandled(t, 1000)
	r1.srv.Stop()
	before := led.handled()
	led.waitHandled(t, before+1000)
	s2.srv.Stop()
	before = led.handled()
	led.waitHandled(t, before+1000)
	sent := l.halt(t)
	closeProducers(t, src)
	led.checkExactlyOnce(t, sent)

	st := stage.Stats()
	if st.Producer.Acked != uint64(sent["src"]) || st.Producer.Nacked != 0 {
		t.Errorf("stage producer Stats() = %+v, want Acked=%d Nacked=0", st.Producer, sent["src"])
	}
	if got := st.Consumer.Delivered; got != uint64(sent["src"]) {
		t.Errorf("stage consumer Delivered = %d, want %d", got, sent["src"])
	}
	if got := sink.Stats().Delivered; got != uint64(sent["src"]) {
		t.Errorf("sink Delivered = %d, want %d", got, sent["src"])
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel2()
	if err := stage.Close(ctx2); err != nil {
		t.Errorf("stage Close() = %v, want nil", err)
	}
}
