package components_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/butterfly-mesh/butterfly/components"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/intermediate"
	"github.com/butterfly-mesh/butterfly/internal/logtest"
)

// scrape GETs /metrics from a promhttp handler of reg and returns every
// sample by its series, as written: name{label="value",...}.
func scrape(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics = %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics = %s, want 200", resp.Status)
	}
	samples := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading /metrics: %v", err)
	}
	return samples
}

// TestMetrics_ExactCountersAfterKnownRun sends 1000 messages of which the
// handler refuses 10, scrapes /metrics and finds every Butterfly counter of
// the producer, the intermediate and the consumer at its exact value.
func TestMetrics_ExactCountersAfterKnownRun(t *testing.T) {
	const n, refused = 1000, 10
	reg := prometheus.NewRegistry()
	m := newMesh(t)
	h := m.startHub("intermediate", "i1", "127.0.0.1", intermediate.WithMetrics(reg))
	m.waitMembers("intermediate", 1)
	led := newLedger()
	c := m.consumer("c1", func(ctx context.Context, d *components.Delivery) error {
		if d.Message.GetId().GetSeq()%(n/refused) == 0 {
			return errors.New("refused")
		}
		return led.handler()(ctx, d)
	}, components.WithMetrics(reg))
	waitConsumers(t, 1, h)
	p := m.producer("p1", components.WithMetrics(reg), components.WithWindow(500))

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	for i := range n {
		if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatalf("Send(%d) = %v", i, err)
		}
	}
	var ce *components.CloseError
	if err := p.Close(ctx); !errors.As(err, &ce) || ce.Failed != refused || ce.Unacked != 0 {
		t.Fatalf("Close() = %v, want a CloseError with %d handed back and 0 unacknowledged", err, refused)
	}
	waitUntil(t, "the consumer's counters", func() bool {
		st := c.Stats()
		return st.Delivered == n-refused && st.Nacked == refused
	})

	got := scrape(t, reg)
	const (
		pl = `{producer="p1",service="intermediate"}`
		cl = `{consumer="c1",group="default",service="intermediate"}`
		il = `{instance="i1",service="intermediate"}`
	)
	want := map[string]float64{
		"butterfly_producer_published_total" + pl:                                                                                          n,
		"butterfly_producer_acked_total" + pl:                                                                                              n - refused,
		`butterfly_producer_nacked_total{producer="p1",reason="handler_failed",service="intermediate"}`:                                    refused,
		`butterfly_producer_nacked_total{producer="p1",reason="invalid",service="intermediate"}`:                                           0,
		`butterfly_producer_resent_total{producer="p1",reason="crash",service="intermediate"}`:                                             0,
		`butterfly_producer_resent_total{producer="p1",reason="drain",service="intermediate"}`:                                             0,
		`butterfly_producer_resent_total{producer="p1",reason="move",service="intermediate"}`:                                              0,
		`butterfly_producer_resent_total{producer="p1",reason="heartbeat",service="intermediate"}`:                                         0,
		`butterfly_producer_resent_total{producer="p1",reason="unavailable",service="intermediate"}`:                                       0,
		`butterfly_producer_stream_ends_total{producer="p1",reason="close",service="intermediate"}`:                                        1,
		`butterfly_producer_stream_ends_total{producer="p1",reason="crash",service="intermediate"}`:                                        0,
		"butterfly_consumer_delivered_total" + cl:                                                                                          n - refused,
		"butterfly_consumer_duplicates_total" + cl:                                                                                         0,
		"butterfly_consumer_nacked_total" + cl:                                                                                             refused,
		"butterfly_consumer_latency_seconds_count" + cl:                                                                                    n - refused,
		"butterfly_consumer_in_flight" + cl:                                                                                                0,
		"butterfly_intermediate_received_total" + il:                                                                                       n,
		"butterfly_intermediate_acked_total" + il:                                                                                          n - refused,
		`butterfly_intermediate_nacked_total{instance="i1",reason="handler_failed",service="intermediate"}`:                                refused,
		`butterfly_intermediate_nacked_total{instance="i1",reason="invalid",service="intermediate"}`:                                       0,
		`butterfly_intermediate_nacked_total{instance="i1",reason="owner_unreachable",service="intermediate"}`:                             0,
		"butterfly_intermediate_delivered_total" + il:                                                                                      n,
		"butterfly_intermediate_delivery_answers_total" + il:                                                                               n,
		"butterfly_intermediate_in_flight" + il:                                                                                            0,
		"butterfly_intermediate_draining" + il:                                                                                             0,
		`butterfly_intermediate_drain_duration_seconds_count{instance="i1",reason="shutdown",service="intermediate"}`:                      0,
		`butterfly_intermediate_drain_duration_seconds_count{instance="i1",reason="operator",service="intermediate"}`:                      0,
		`butterfly_intermediate_drain_duration_seconds_count{instance="i1",reason="fenced",service="intermediate"}`:                        0,
		`grpc_server_started_total{grpc_method="Publish",grpc_service="butterfly.delivery.v1.PublishService",grpc_type="bidi_stream"}`:     1,
		`grpc_client_started_total{grpc_method="Subscribe",grpc_service="butterfly.delivery.v1.SubscribeService",grpc_type="bidi_stream"}`: 1,
	}
	for series, w := range want {
		v, ok := got[series]
		if !ok {
			t.Errorf("/metrics has no %s", series)
			continue
		}
		if v != w {
			t.Errorf("/metrics %s = %v, want %v", series, v, w)
		}
	}
	if v := got["butterfly_consumer_membership_updates_total"+cl]; v < 1 {
		t.Errorf("/metrics butterfly_consumer_membership_updates_total%s = %v, want at least 1", cl, v)
	}
	// Closed producers leave their gauges out; their counters stay.
	if _, ok := got["butterfly_producer_in_flight"+pl]; ok {
		t.Errorf("/metrics has butterfly_producer_in_flight%s after Close, want it gone", pl)
	}
}

// TestMetrics_FramesCountedEachWay sends messages one at a time, each
// waiting for its acknowledgement, so that each crosses every link in a
// frame of its own, then a burst that the producer batches, and finds the
// intermediate's frame counters at the frames that went.
func TestMetrics_FramesCountedEachWay(t *testing.T) {
	const one, burst = 20, 2000
	reg := prometheus.NewRegistry()
	m := newMesh(t)
	h := m.startHub("intermediate", "i1", "127.0.0.1", intermediate.WithMetrics(reg))
	m.waitMembers("intermediate", 1)
	led := newLedger()
	m.consumer("c1", led.handler())
	waitConsumers(t, 1, h)
	p := m.producer("p1", components.WithBatch(100, 1<<20, 5*time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	for i := range one {
		if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte(strconv.Itoa(i))}); err != nil {
			t.Fatalf("SendWait(%d) = %v", i, err)
		}
	}
	st := h.srv.Stats()
	want := intermediate.Stats{
		Received: one, Acked: one, Delivered: one,
		PublishBatches: one, PublishAcks: one, DeliveryBatches: one, DeliveryAcks: one, DeliveryAnswers: one,
	}
	if st != want {
		t.Fatalf("after %d messages one at a time, Stats() = %+v, want %+v", one, st, want)
	}
	got := scrape(t, reg)
	const il = `{instance="i1",service="intermediate"}`
	for series, w := range map[string]float64{
		"butterfly_intermediate_publish_batches_total" + il:     one,
		"butterfly_intermediate_publish_ack_frames_total" + il:  one,
		"butterfly_intermediate_delivery_batches_total" + il:    one,
		"butterfly_intermediate_delivery_ack_frames_total" + il: one,
		"butterfly_intermediate_delivery_answers_total" + il:    one,
	} {
		if v, ok := got[series]; !ok || v != w {
			t.Errorf("/metrics %s = %v (present %v), want %v", series, v, ok, w)
		}
	}

	for i := range burst {
		if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte(strconv.Itoa(one + i))}); err != nil {
			t.Fatalf("Send(%d) = %v", one+i, err)
		}
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	led.waitHandled(t, one+burst)
	st = h.srv.Stats()
	if st.Received != one+burst || st.Acked != one+burst || st.Delivered != one+burst || st.DeliveryAnswers != one+burst {
		t.Fatalf("after the burst, Stats() = %+v, want %d received, acknowledged, delivered and answered", st, one+burst)
	}
	t.Logf("after the burst: %+v", st)
	// The burst goes in batches of at most 100: at least 20 of them, and far
	// fewer than a frame a message.
	if b := st.PublishBatches - one; b < burst/100 || b > burst/4 {
		t.Errorf("the burst of %d came in %d publish batches, want %d to %d", burst, b, burst/100, burst/4)
	}
	for name, n := range map[string]uint64{"publish ack": st.PublishAcks, "delivery": st.DeliveryBatches, "delivery ack": st.DeliveryAcks} {
		if f := n - one; f < 1 || f > burst/4 {
			t.Errorf("the burst of %d took %d %s frames, want 1 to %d", burst, f, name, burst/4)
		}
	}
}

// TestTracing_OneTraceProducerIntermediateConsumer sends one message with
// tracing on and finds one trace: the producer's span, the intermediate's
// span as its child and the consumer's span as the intermediate's child.
func TestTracing_OneTraceProducerIntermediateConsumer(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	m := newMesh(t)
	h := m.startHub("intermediate", "i1", "127.0.0.1", intermediate.WithTracerProvider(tp))
	m.waitMembers("intermediate", 1)
	led := newLedger()
	m.consumer("c1", led.handler(), components.WithTracerProvider(tp))
	waitConsumers(t, 1, h)
	p := m.producer("p1", components.WithTracerProvider(tp))

	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("traced")}); err != nil {
		t.Fatalf("SendWait() = %v", err)
	}
	led.waitHandled(t, 1)

	byName := func() map[string][]sdktrace.ReadOnlySpan {
		out := make(map[string][]sdktrace.ReadOnlySpan)
		for _, s := range rec.Ended() {
			out[s.Name()] = append(out[s.Name()], s)
		}
		return out
	}
	const (
		produce = "butterfly.produce intermediate"
		process = "butterfly.intermediate intermediate"
		consume = "butterfly.consume intermediate"
	)
	waitUntil(t, "the consumer's span to end", func() bool { return len(byName()[consume]) > 0 })
	spans := byName()
	for _, name := range []string{produce, process, consume} {
		if len(spans[name]) != 1 {
			t.Fatalf("spans named %q = %d, want 1 (ended: %v)", name, len(spans[name]), names(rec.Ended()))
		}
	}
	ps, is, cs := spans[produce][0], spans[process][0], spans[consume][0]
	if ps.Parent().IsValid() {
		t.Errorf("producer span parent = %v, want none (a root)", ps.Parent())
	}
	checkChild(t, "intermediate", is, ps)
	checkChild(t, "consumer", cs, is)
	if k := ps.SpanKind(); k != trace.SpanKindProducer {
		t.Errorf("producer span kind = %v, want %v", k, trace.SpanKindProducer)
	}
	if k := cs.SpanKind(); k != trace.SpanKindConsumer {
		t.Errorf("consumer span kind = %v, want %v", k, trace.SpanKindConsumer)
	}
}

func checkChild(t *testing.T, what string, child, parent sdktrace.ReadOnlySpan) {
	t.Helper()
	if child.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("%s span trace = %s, want %s", what, child.SpanContext().TraceID(), parent.SpanContext().TraceID())
	}
	if child.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("%s span parent = %s, want %s", what, child.Parent().SpanID(), parent.SpanContext().SpanID())
	}
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	out := make([]string, len(spans))
	for i, s := range spans {
		out[i] = fmt.Sprintf("%s(%s)", s.Name(), s.SpanContext().TraceID())
	}
	return out
}

// TestLogs_ClientFinishedCallNamesPeer checks that a component's line at the
// end of a stream names the instance and the address it was pinned to: a
// client call has no peer in its context when it starts.
func TestLogs_ClientFinishedCallNamesPeer(t *testing.T) {
	m := newMesh(t)
	h := m.startHub("intermediate", "i1", "127.0.0.1")
	m.waitMembers("intermediate", 1)
	led := newLedger()
	m.consumer("c1", led.handler())
	waitConsumers(t, 1, h)
	var logs logtest.Recorder
	p := m.producer("p1", components.WithLogger(logs.Logger()))
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if err := p.SendWait(ctx, &messagev1.Message{Payload: []byte("x")}); err != nil {
		t.Fatalf("SendWait() = %v", err)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	var found []map[string]any
	waitUntil(t, "the publish stream's finished call", func() bool {
		found = found[:0]
		for _, rec := range logs.Attrs("finished call") {
			if rec["grpc.method"] == "Publish" {
				found = append(found, rec)
			}
		}
		return len(found) > 0
	})
	for _, rec := range found {
		if rec["grpc.component"] != "client" || rec["peer"] != h.addr || rec["instance"] != "i1" {
			t.Errorf("finished call = %v, want a client line with peer %q and instance i1", rec, h.addr)
		}
	}
}

// TestLogs_StreamLimitRefusalsAreSaid checks that a stream refused by a
// stream limit (max-streams-per-peer here) is said at both ends: the
// intermediate's "finished call" line with its code, which the limit's
// interceptor once returned before the logging one saw the call, and the
// producer's warning and Close error, which said only that no instance
// answered.
func TestLogs_StreamLimitRefusalsAreSaid(t *testing.T) {
	m := newMesh(t)
	var hubLogs logtest.Recorder
	h := m.startHub("intermediate", "i1", "127.0.0.1", intermediate.WithMaxStreamsPerPeer(1), intermediate.WithLogger(hubLogs.Logger()))
	m.waitMembers("intermediate", 1)
	m.consumer("c1", newLedger().handler()) // the one stream this address may open
	waitConsumers(t, 1, h)
	var logs logtest.Recorder
	p := m.producer("p1", components.WithLogger(logs.Logger()))
	ctx, cancel := context.WithTimeout(context.Background(), defaultTestTimeout)
	defer cancel()
	if _, err := p.Send(ctx, &messagev1.Message{Payload: []byte("x")}); err != nil {
		t.Fatalf("Send() = %v", err)
	}
	waitUntil(t, "the producer's warning naming the limit", func() bool {
		for _, rec := range logs.Attrs("no instance of service intermediate answers (waiting)") {
			if strings.Contains(fmt.Sprint(rec["errors"]), "i1: intermediate: 127.0.0.1 has 1 streams open, the limit of max-streams-per-peer") {
				return true
			}
		}
		return false
	})
	refused := 0
	for _, rec := range hubLogs.Attrs("finished call") {
		if rec["grpc.method"] == "Publish" && rec["grpc.code"] == "ResourceExhausted" {
			refused++
		}
	}
	if refused == 0 {
		t.Errorf("the intermediate logged no finished call for the refused Publish streams: %v", hubLogs.Attrs("finished call"))
	}
	closeCtx, closeCancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer closeCancel()
	if err := p.Close(closeCtx); err == nil || !strings.Contains(err.Error(), "max-streams-per-peer") {
		t.Errorf("Close() = %v, want an error naming the limit that refused its streams", err)
	}
}
