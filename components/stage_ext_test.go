package components_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
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
	stage := m.stage(intermediate.Upper())
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

// rebuild is a processor that returns a new message with only the payload
// of msg, reversed: whatever else the result should keep is the caller's to
// restore.
type rebuild struct {
	mu  sync.Mutex
	lwm map[uint64]uint64 // low_water_seq of each seq it processed
}

func (*rebuild) Name() string { return "rebuild" }

func (r *rebuild) Process(_ context.Context, msg *messagev1.Message) (*messagev1.Message, error) {
	r.mu.Lock()
	r.lwm[msg.GetId().GetSeq()] = msg.GetLowWaterSeq()
	r.mu.Unlock()
	p := slices.Clone(msg.GetPayload())
	slices.Reverse(p)
	return &messagev1.Message{Payload: p}, nil
}

// TestStage_ProcessorKeepsLowWater checks that a message rewritten by a
// processor keeps the low-water mark its producer gave it, through an
// intermediate's processor and through a stage's.
func TestStage_ProcessorKeepsLowWater(t *testing.T) {
	m := newMesh(t)
	hubProc, stageProc := &rebuild{lwm: map[uint64]uint64{}}, &rebuild{lwm: map[uint64]uint64{}}
	r1 := m.startHub("requests", "r1", "127.0.0.1", intermediate.WithProcessor(hubProc))
	s1 := m.startHub("replies", "s1", "127.0.0.1")
	var (
		mu     sync.Mutex
		atSink = map[uint64]uint64{}
	)
	m.consumer("sink", func(_ context.Context, d *components.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		atSink[d.Message.GetId().GetSeq()] = d.Message.GetLowWaterSeq()
		return nil
	}, components.WithService("replies"))
	m.stage(stageProc)
	waitConsumers(t, 1, r1, s1)
	src := m.producer("src", components.WithService("requests"))
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	const n = 5
	// One at a time: each message is the oldest unacknowledged one, so its
	// mark is its own seq.
	for i := range n {
		if err := src.SendWait(ctx, &messagev1.Message{Payload: []byte(fmt.Sprint("m", i+1))}); err != nil {
			t.Fatalf("SendWait(#%d) = %v", i+1, err)
		}
	}
	want := map[uint64]uint64{}
	for seq := uint64(1); seq <= n; seq++ {
		want[seq] = seq
	}
	stageProc.mu.Lock()
	defer stageProc.mu.Unlock()
	if diff := cmp.Diff(want, stageProc.lwm); diff != "" {
		t.Errorf("low_water_seq by seq at the stage, after the intermediate's processor (-want +got):\n%s", diff)
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff(want, atSink); diff != "" {
		t.Errorf("low_water_seq by seq at the sink, after the stage's processor (-want +got):\n%s", diff)
	}
}

// stage starts a stage from service "requests" to "replies" running proc,
// closed when the test ends.
func (m *mesh) stage(proc components.Processor) *components.Stage {
	m.t.Helper()
	return m.startStage(m.cli, "stage", components.WithProcessor(proc))
}

// startStage starts stage id from service "requests" to "replies" on cli,
// closed when the test ends (within stageCloseWait: a stage whose
// downstream side is gone would wait for its whole context).
func (m *mesh) startStage(cli *clientv3.Client, id string, opts ...components.StageOption) *components.Stage {
	m.t.Helper()
	stage, err := components.NewStage(cli, id, "requests", "replies",
		append([]components.StageOption{components.WithPrefix(testPrefix), components.WithLogger(m.log)}, opts...)...)
	if err != nil {
		m.t.Fatalf("NewStage(%s) = %v", id, err)
	}
	m.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), stageCloseWait)
		defer cancel()
		_ = stage.Close(ctx)
	})
	return stage
}

// stageCloseWait bounds a stage's Close when its test ends.
const stageCloseWait = 5 * time.Second
