package intermediate

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	adminv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/admin/v1"
	deliveryv1 "github.com/butterfly-mesh/butterfly/gen/butterfly/delivery/v1"
	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
	"github.com/butterfly-mesh/butterfly/internal/telemetry"
)

// WithMetrics registers the server's metrics on reg: Butterfly's own
// (butterfly_intermediate_*, labeled with service and instance) and the gRPC
// server metrics of go-grpc-middleware (grpc_server_*). Default: none. A
// later server of the same service and instance on the same registry takes
// the series over.
func WithMetrics(reg prometheus.Registerer) Option {
	return func(o *options) { o.observe.metrics = reg }
}

// WithTracerProvider turns tracing on (default off): otelgrpc traces the
// RPCs, and every message that carries a trace context (Message.trace) gets
// a span of its processing, child of the producer's span, whose context the
// processed message carries on to the consumer.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.observe.tracerProvider = tp }
}

// observeOptions are the options of observe.go.
type observeOptions struct {
	metrics        prometheus.Registerer
	tracerProvider trace.TracerProvider
}

// observer is the server's observability: the gRPC health service, its
// metrics and its tracer. Fields are fixed at construction.
type observer struct {
	health        *health.Server
	grpcMetrics   *grpcprom.ServerMetrics  // nil without metrics
	drainDuration *prometheus.HistogramVec // nil without metrics
	watchEnd      chan struct{}            // closed by endHealthWatches
	watchEndOnce  sync.Once
}

// healthServices are the services whose health the server reports, besides
// the whole server ("").
var healthServices = []string{
	"",
	deliveryv1.PublishService_ServiceDesc.ServiceName,
	deliveryv1.SubscribeService_ServiceDesc.ServiceName,
	deliveryv1.ProcessService_ServiceDesc.ServiceName,
	adminv1.AdminService_ServiceDesc.ServiceName,
}

// observeServerOptions returns the gRPC server options that observe the
// server (metrics, logging, otelgrpc) and, when tracing is on, wraps the
// processor in a span.
func (s *Server) observeServerOptions() ([]grpc.ServerOption, error) {
	opts, sm, err := telemetry.ServerOptions(telemetry.Observe{
		Registry:       s.opts.observe.metrics,
		Logger:         s.log,
		TracerProvider: s.opts.observe.tracerProvider,
	})
	if err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	s.obs.grpcMetrics = sm
	if tracer := telemetry.Tracer(s.opts.observe.tracerProvider); tracer != nil {
		s.opts.processor = tracedProcessor{Processor: s.opts.processor, tracer: tracer, service: s.service, instance: s.instance}
	}
	return opts, nil
}

// observe registers the health and reflection services on the gRPC server
// and the server's metrics; call it once every service is registered.
func (s *Server) observe() error {
	s.obs.health = health.NewServer()
	s.obs.watchEnd = make(chan struct{})
	for _, name := range healthServices {
		s.obs.health.SetServingStatus(name, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	healthpb.RegisterHealthServer(s.grpc, &healthService{Server: s.obs.health, end: s.obs.watchEnd})
	reflection.Register(s.grpc)
	reg := s.opts.observe.metrics
	if reg == nil {
		return nil
	}
	s.obs.grpcMetrics.InitializeMetrics(s.grpc)
	if err := telemetry.Replace(reg, &serverCollector{s: s, descs: newServerDescs(s.service, s.instance)}); err != nil {
		return fmt.Errorf("intermediate: register metrics: %w", err)
	}
	dd, err := telemetry.Shared(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: telemetry.Namespace, Name: "intermediate_drain_duration_seconds",
		Help:    "How long drains took, from their start to the end of the gRPC server, by reason.",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120},
	}, []string{"service", "instance", "reason"}))
	if err != nil {
		return fmt.Errorf("intermediate: register metrics: %w", err)
	}
	// Every reason's series exists from the start, at 0, so a scrape (and
	// a rate or an alert on it) sees the histogram before the first drain.
	for _, r := range []messagev1.DrainReason{messagev1.DrainReason_DRAIN_REASON_SHUTDOWN,
		messagev1.DrainReason_DRAIN_REASON_OPERATOR, messagev1.DrainReason_DRAIN_REASON_FENCED} {
		dd.WithLabelValues(s.service, s.instance, drainReasonLabel(r))
	}
	s.obs.drainDuration = dd
	return nil
}

// setServing reports SERVING on the health service: the server is registered
// and serves.
func (s *Server) setServing() {
	for _, name := range healthServices {
		s.obs.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
}

// setNotServing reports NOT_SERVING for good: the server drains or stopped.
func (s *Server) setNotServing() { s.obs.health.Shutdown() }

// endHealthWatches ends every health Watch stream, and any opened later,
// once the server stops serving for good: grpc's health server keeps them
// open, which would hold GracefulStop open until its timer ran out.
func (s *Server) endHealthWatches() {
	s.obs.watchEndOnce.Do(func() { close(s.obs.watchEnd) })
}

// healthService is grpc's health server whose Watch streams end with
// UNAVAILABLE when end is closed.
type healthService struct {
	*health.Server
	end <-chan struct{}
}

func (h *healthService) Watch(in *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		select {
		case <-h.end:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := h.Server.Watch(in, &watchStream{Health_WatchServer: stream, ctx: ctx})
	cancel()
	<-ended
	select {
	case <-h.end:
		return status.Error(codes.Unavailable, "intermediate: stopped serving")
	default:
		return err
	}
}

// watchStream is a Watch stream with the context of healthService.Watch.
type watchStream struct {
	healthpb.Health_WatchServer
	ctx context.Context
}

func (w *watchStream) Context() context.Context { return w.ctx }

// drained records how long a drain took.
func (s *Server) drained(reason messagev1.DrainReason, d time.Duration) {
	if s.obs.drainDuration != nil {
		s.obs.drainDuration.WithLabelValues(s.service, s.instance, drainReasonLabel(reason)).Observe(d.Seconds())
	}
	s.log.Info("intermediate: drain took", "duration", d, "reason", reason.String())
}

func drainReasonLabel(r messagev1.DrainReason) string {
	switch r {
	case messagev1.DrainReason_DRAIN_REASON_SHUTDOWN:
		return "shutdown"
	case messagev1.DrainReason_DRAIN_REASON_OPERATOR:
		return "operator"
	case messagev1.DrainReason_DRAIN_REASON_FENCED:
		return "fenced"
	}
	return "unspecified"
}

// frameCounters count the frames that carry messages and their
// acknowledgements, each way. Against the messages they carry, they say
// how well the mesh batches: a mesh whose links each carry a thin share of
// the traffic sends more frames a message.
type frameCounters struct {
	publishBatches  atomic.Uint64 // batches received from producers
	publishAcks     atomic.Uint64 // acknowledgement frames sent to producers
	deliveryBatches atomic.Uint64 // batches sent to consumers
	deliveryAcks    atomic.Uint64 // acknowledgement frames received from consumers
	deliveryAnswers atomic.Uint64 // deliveries those frames acknowledged or handed back
}

// Stats are a server's counters since it was created.
type Stats struct {
	// Received is how many messages producers published to the server.
	Received uint64
	// Acked and Nacked are how many it acknowledged to their producers end
	// to end, and handed back.
	Acked, Nacked uint64
	// Delivered is how many deliveries it sent to consumers, redeliveries
	// included.
	Delivered uint64
	// PublishBatches is how many batches producers published, and
	// PublishAcks how many acknowledgement frames it sent them back.
	PublishBatches, PublishAcks uint64
	// DeliveryBatches is how many batches it sent to consumers, and
	// DeliveryAcks how many acknowledgement frames they sent back, which
	// acknowledged or handed back DeliveryAnswers deliveries.
	DeliveryBatches, DeliveryAcks, DeliveryAnswers uint64
}

// Stats returns the server's counters. They are the ones its metrics
// report; reading them takes no lock.
func (s *Server) Stats() Stats {
	return Stats{
		Received:        s.received.Load(),
		Acked:           s.acked.Load(),
		Nacked:          s.nacked.total(),
		Delivered:       s.delivered.Load(),
		PublishBatches:  s.frames.publishBatches.Load(),
		PublishAcks:     s.frames.publishAcks.Load(),
		DeliveryBatches: s.frames.deliveryBatches.Load(),
		DeliveryAcks:    s.frames.deliveryAcks.Load(),
		DeliveryAnswers: s.frames.deliveryAnswers.Load(),
	}
}

// serverDescs are the descriptors of a server's own metrics.
type serverDescs struct {
	received, acked, nacked, delivered          *prometheus.Desc
	inFlight, publishers, subscribers, draining *prometheus.Desc
	publishBatches, publishAcks                 *prometheus.Desc
	deliveryBatches, deliveryAcks               *prometheus.Desc
	deliveryAnswers                             *prometheus.Desc
}

func newServerDescs(service, instance string) serverDescs {
	labels := prometheus.Labels{"service": service, "instance": instance}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(telemetry.Namespace, "intermediate", name), help, nil, labels)
	}
	return serverDescs{
		received: d("received_total", "Messages received from producers."),
		acked:    d("acked_total", "Messages acknowledged to producers, end to end."),
		nacked: prometheus.NewDesc(prometheus.BuildFQName(telemetry.Namespace, "intermediate", "nacked_total"),
			"Messages handed back to producers, by nack reason.", []string{"reason"}, labels),
		delivered:   d("delivered_total", "Deliveries sent to consumers, redeliveries included."),
		inFlight:    d("in_flight", "Messages held: received and not yet acknowledged or handed back."),
		publishers:  d("publish_streams", "Open publish streams."),
		subscribers: d("subscribe_streams", "Open subscribe streams."),
		draining:    d("draining", "1 while the server drains or after it drained."),

		publishBatches:  d("publish_batches_total", "Batches received from producers, refused ones included."),
		publishAcks:     d("publish_ack_frames_total", "Acknowledgement frames sent to producers."),
		deliveryBatches: d("delivery_batches_total", "Batches sent to consumers."),
		deliveryAcks:    d("delivery_ack_frames_total", "Acknowledgement frames received from consumers."),
		deliveryAnswers: d("delivery_answers_total", "Deliveries consumers acknowledged or handed back."),
	}
}

// serverCollector reads a server's counters when scraped: the hot path
// only updates the atomics it already keeps.
type serverCollector struct {
	s     *Server
	descs serverDescs
}

var _ prometheus.Collector = (*serverCollector)(nil)

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	d := c.descs
	for _, desc := range []*prometheus.Desc{d.received, d.acked, d.nacked, d.delivered, d.inFlight, d.publishers, d.subscribers, d.draining, d.publishBatches, d.publishAcks, d.deliveryBatches, d.deliveryAcks, d.deliveryAnswers} {
		ch <- desc
	}
}

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	s, d := c.s, c.descs
	s.mu.Lock()
	held, pubs, subs, draining := s.heldTotal, len(s.pubs), len(s.subs), s.draining
	s.mu.Unlock()
	drainingV := 0.0
	if draining {
		drainingV = 1
	}
	ch <- prometheus.MustNewConstMetric(d.received, prometheus.CounterValue, float64(s.received.Load()))
	ch <- prometheus.MustNewConstMetric(d.acked, prometheus.CounterValue, float64(s.acked.Load()))
	for r := range s.nacked {
		ch <- prometheus.MustNewConstMetric(d.nacked, prometheus.CounterValue, float64(s.nacked[r].Load()), telemetry.NackReasonLabel(messagev1.NackReason(r)))
	}
	ch <- prometheus.MustNewConstMetric(d.delivered, prometheus.CounterValue, float64(s.delivered.Load()))
	ch <- prometheus.MustNewConstMetric(d.inFlight, prometheus.GaugeValue, float64(held))
	ch <- prometheus.MustNewConstMetric(d.publishers, prometheus.GaugeValue, float64(pubs))
	ch <- prometheus.MustNewConstMetric(d.subscribers, prometheus.GaugeValue, float64(subs))
	ch <- prometheus.MustNewConstMetric(d.draining, prometheus.GaugeValue, drainingV)
	ch <- prometheus.MustNewConstMetric(d.publishBatches, prometheus.CounterValue, float64(s.frames.publishBatches.Load()))
	ch <- prometheus.MustNewConstMetric(d.publishAcks, prometheus.CounterValue, float64(s.frames.publishAcks.Load()))
	ch <- prometheus.MustNewConstMetric(d.deliveryBatches, prometheus.CounterValue, float64(s.frames.deliveryBatches.Load()))
	ch <- prometheus.MustNewConstMetric(d.deliveryAcks, prometheus.CounterValue, float64(s.frames.deliveryAcks.Load()))
	ch <- prometheus.MustNewConstMetric(d.deliveryAnswers, prometheus.CounterValue, float64(s.frames.deliveryAnswers.Load()))
}

// tracedProcessor runs a processor in a span, child of the span the message
// carries, and hands the span's context on in the result. A message without
// a trace context is processed without a span: its trace, if any, starts at
// its producer.
type tracedProcessor struct {
	Processor
	tracer            trace.Tracer
	service, instance string
}

func (p tracedProcessor) Process(ctx context.Context, msg *messagev1.Message) (*messagev1.Message, error) {
	if msg.GetTrace().GetTraceparent() == "" {
		return p.Processor.Process(ctx, msg)
	}
	ctx, span := p.tracer.Start(telemetry.Extract(ctx, msg), "butterfly.intermediate "+p.service,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("butterfly.service", p.service),
			attribute.String("butterfly.instance", p.instance),
			attribute.String("butterfly.processor", p.Processor.Name()),
			attribute.String("butterfly.producer_id", msg.GetId().GetProducerId()),
			attribute.Int64("butterfly.seq", int64(msg.GetId().GetSeq())),
		))
	defer span.End()
	res, err := p.Processor.Process(ctx, msg)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(otelcodes.Error, err.Error())
		return nil, err
	}
	if res != nil {
		// The message was decoded for this server alone: carrying the
		// span's context in it (res may be msg itself) touches nobody
		// else's copy.
		telemetry.Inject(ctx, res)
	}
	return res, nil
}

// nackCounts counts the messages handed back to producers, by reason; a
// reason this version does not know is counted as unspecified.
type nackCounts [messagev1.NackReason_NACK_REASON_OWNER_UNREACHABLE + 1]atomic.Uint64

func (c *nackCounts) add(nacks []*messagev1.Nack) {
	for _, n := range nacks {
		r := int(n.GetReason())
		if r < 0 || r >= len(*c) {
			r = int(messagev1.NackReason_NACK_REASON_UNSPECIFIED)
		}
		(*c)[r].Add(1)
	}
}

func (c *nackCounts) total() uint64 {
	var t uint64
	for r := range *c {
		t += (*c)[r].Load()
	}
	return t
}
