package telemetry

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	messagev1 "github.com/butterfly-mesh/butterfly/gen/butterfly/message/v1"
)

// Why a producer's stream ended, or why a message went out again: the values
// of the reason label.
const (
	// ReasonCrash: the stream broke (connection reset, server stopped).
	ReasonCrash = "crash"
	// ReasonMove: the instance moved to a new address or incarnation.
	ReasonMove = "move"
	// ReasonDrain: the instance drains (in-band notice, registry flag or a
	// DRAINING hand-back).
	ReasonDrain = "drain"
	// ReasonHeartbeat: nothing arrived on the stream for too long.
	ReasonHeartbeat = "heartbeat"
	// ReasonConnect: the stream was never welcomed (connection or hello
	// failed).
	ReasonConnect = "connect"
	// ReasonUnavailable: the intermediate handed the message back because no
	// consumer took it in time.
	ReasonUnavailable = "unavailable"
	// ReasonNoConsumer: a group had no registered consumer (NO_CONSUMER).
	ReasonNoConsumer = "no_consumer"
	// ReasonOwnerUnreachable: the message's owner was not connected to the
	// intermediate (OWNER_UNREACHABLE); it goes through another one.
	ReasonOwnerUnreachable = "owner_unreachable"
	// ReasonClose: the producer closed.
	ReasonClose = "close"
)

var streamEndReasons = []string{ReasonCrash, ReasonMove, ReasonDrain, ReasonHeartbeat, ReasonConnect, ReasonClose}

var resendReasons = []string{ReasonCrash, ReasonMove, ReasonDrain, ReasonHeartbeat, ReasonConnect, ReasonUnavailable, ReasonNoConsumer, ReasonOwnerUnreachable}

// NackReasonLabel is the label value of a NackReason: its name without the
// prefix, in lower case ("processing_failed").
func NackReasonLabel(r messagev1.NackReason) string {
	return strings.ToLower(strings.TrimPrefix(r.String(), "NACK_REASON_"))
}

// LatencyBuckets are the buckets of the end-to-end latency histogram, in
// seconds: 100µs to about 13s.
var LatencyBuckets = prometheus.ExponentialBuckets(0.0001, 2, 18)

// ProducerMetrics are one producer's series. A nil *ProducerMetrics records
// nothing.
type ProducerMetrics struct {
	reg          prometheus.Registerer
	published    prometheus.Counter
	acked        prometheus.Counter
	resent       map[string]prometheus.Counter
	nacked       map[messagev1.NackReason]prometheus.Counter
	streamEnds   map[string]prometheus.Counter
	memberUpdate prometheus.Counter
	gauges       []prometheus.Collector
}

// NewProducerMetrics registers the series of producer id on service with
// reg; inFlight and window report the producer's unsettled messages and its
// window when scraped. It returns nil when reg is nil.
func NewProducerMetrics(reg prometheus.Registerer, service, id string, inFlight func() float64, window int) (*ProducerMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	lv := prometheus.Labels{"service": service, "producer": id}
	names := []string{"service", "producer"}
	published, err := counterVec(reg, "producer_published_total", "Messages accepted by Send.", names)
	if err != nil {
		return nil, err
	}
	acked, err := counterVec(reg, "producer_acked_total", "Messages acknowledged end to end.", names)
	if err != nil {
		return nil, err
	}
	withReason := append(names[:len(names):len(names)], "reason")
	resent, err := counterVec(reg, "producer_resent_total", "Messages sent again, by why their first stream gave them back.", withReason)
	if err != nil {
		return nil, err
	}
	nacked, err := counterVec(reg, "producer_nacked_total", "Messages handed back for good, by nack reason.", withReason)
	if err != nil {
		return nil, err
	}
	ends, err := counterVec(reg, "producer_stream_ends_total", "Publish streams that ended, by reason; each is followed by a reconnect or a move unless the producer closes.", withReason)
	if err != nil {
		return nil, err
	}
	updates, err := counterVec(reg, "producer_membership_updates_total", "Membership views of the service received from the registry.", names)
	if err != nil {
		return nil, err
	}
	m := &ProducerMetrics{
		reg:          reg,
		published:    published.With(lv),
		acked:        acked.With(lv),
		resent:       make(map[string]prometheus.Counter, len(resendReasons)),
		nacked:       make(map[messagev1.NackReason]prometheus.Counter),
		streamEnds:   make(map[string]prometheus.Counter, len(streamEndReasons)),
		memberUpdate: updates.With(lv),
	}
	for _, r := range resendReasons {
		m.resent[r] = resent.WithLabelValues(service, id, r)
	}
	for _, r := range streamEndReasons {
		m.streamEnds[r] = ends.WithLabelValues(service, id, r)
	}
	for v := range messagev1.NackReason_name {
		r := messagev1.NackReason(v)
		m.nacked[r] = nacked.WithLabelValues(service, id, NackReasonLabel(r))
	}
	m.gauges = []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "producer_in_flight", ConstLabels: lv,
			Help: "Messages accepted and not yet acknowledged or handed back for good.",
		}, inFlight),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "producer_window_occupancy", ConstLabels: lv,
			Help: "Fraction of the window of unacknowledged messages in use; Send blocks at 1.",
		}, func() float64 { return inFlight() / float64(window) }),
		prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "producer_window", ConstLabels: lv,
			Help: "Size of the window of unacknowledged messages.",
		}),
	}
	m.gauges[2].(prometheus.Gauge).Set(float64(window))
	for _, g := range m.gauges {
		if err := Replace(reg, g); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Published counts n messages accepted.
func (m *ProducerMetrics) Published(n int) {
	if m != nil {
		m.published.Add(float64(n))
	}
}

// Acked counts n messages acknowledged.
func (m *ProducerMetrics) Acked(n int) {
	if m != nil && n > 0 {
		m.acked.Add(float64(n))
	}
}

// Resent counts n messages sent again for reason.
func (m *ProducerMetrics) Resent(reason string, n int) {
	if m != nil && n > 0 {
		if c := m.resent[reason]; c != nil {
			c.Add(float64(n))
		}
	}
}

// Nacked counts one message handed back for good.
func (m *ProducerMetrics) Nacked(reason messagev1.NackReason) {
	if m == nil {
		return
	}
	if c := m.nacked[reason]; c != nil {
		c.Inc()
	}
}

// StreamEnded counts one publish stream that ended for reason.
func (m *ProducerMetrics) StreamEnded(reason string) {
	if m != nil {
		if c := m.streamEnds[reason]; c != nil {
			c.Inc()
		}
	}
}

// MembershipUpdate counts one membership view received.
func (m *ProducerMetrics) MembershipUpdate() {
	if m != nil {
		m.memberUpdate.Inc()
	}
}

// Close unregisters the gauges, which read the producer's state; the
// counters stay.
func (m *ProducerMetrics) Close() {
	if m == nil {
		return
	}
	for _, g := range m.gauges {
		m.reg.Unregister(g)
	}
}

// ConsumerMetrics are one consumer's series. A nil *ConsumerMetrics records
// nothing.
type ConsumerMetrics struct {
	reg          prometheus.Registerer
	delivered    prometheus.Counter
	duplicates   prometheus.Counter
	nacked       prometheus.Counter
	memberUpdate prometheus.Counter
	latency      prometheus.Observer
	gauges       []prometheus.Collector
}

// NewConsumerMetrics registers the series of consumer id of group on service
// with reg; inFlight reports the deliveries in hand when scraped. It returns
// nil when reg is nil.
func NewConsumerMetrics(reg prometheus.Registerer, service, group, id string, inFlight func() float64) (*ConsumerMetrics, error) {
	if reg == nil {
		return nil, nil
	}
	if group == "" {
		group = "default" // what intermediates call a consumer that names no group
	}
	lv := prometheus.Labels{"service": service, "group": group, "consumer": id}
	names := []string{"service", "group", "consumer"}
	delivered, err := counterVec(reg, "consumer_delivered_total", "Messages the handler handled without error.", names)
	if err != nil {
		return nil, err
	}
	dups, err := counterVec(reg, "consumer_duplicates_total", "Deliveries of an already handled (or being handled) message, acknowledged without calling the handler.", names)
	if err != nil {
		return nil, err
	}
	nacked, err := counterVec(reg, "consumer_nacked_total", "Handler calls that returned an error; the message went back to its producer.", names)
	if err != nil {
		return nil, err
	}
	updates, err := counterVec(reg, "consumer_membership_updates_total", "Membership views of the service received from the registry.", names)
	if err != nil {
		return nil, err
	}
	latency, err := Shared(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "consumer_latency_seconds", Buckets: LatencyBuckets,
		Help: "End-to-end latency, from the producer's Send to the end of the handler call.",
	}, names))
	if err != nil {
		return nil, err
	}
	m := &ConsumerMetrics{
		reg:          reg,
		delivered:    delivered.With(lv),
		duplicates:   dups.With(lv),
		nacked:       nacked.With(lv),
		memberUpdate: updates.With(lv),
		latency:      latency.With(lv),
		gauges: []prometheus.Collector{prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "consumer_in_flight", ConstLabels: lv,
			Help: "Deliveries received and not yet handled.",
		}, inFlight)},
	}
	for _, g := range m.gauges {
		if err := Replace(reg, g); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Delivered counts one message handled and observes its end-to-end latency
// from createUnixNano (skipped when 0).
func (m *ConsumerMetrics) Delivered(createUnixNano int64) {
	if m == nil {
		return
	}
	m.delivered.Inc()
	if createUnixNano > 0 {
		m.latency.Observe(max(time.Since(time.Unix(0, createUnixNano)).Seconds(), 0))
	}
}

// Duplicates counts n duplicates dropped.
func (m *ConsumerMetrics) Duplicates(n int) {
	if m != nil && n > 0 {
		m.duplicates.Add(float64(n))
	}
}

// Nacked counts one handler failure.
func (m *ConsumerMetrics) Nacked() {
	if m != nil {
		m.nacked.Inc()
	}
}

// MembershipUpdate counts one membership view received.
func (m *ConsumerMetrics) MembershipUpdate() {
	if m != nil {
		m.memberUpdate.Inc()
	}
}

// Close unregisters the gauges; the counters stay.
func (m *ConsumerMetrics) Close() {
	if m == nil {
		return
	}
	for _, g := range m.gauges {
		m.reg.Unregister(g)
	}
}

func counterVec(reg prometheus.Registerer, name, help string, labels []string) (*prometheus.CounterVec, error) {
	return Shared(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, labels))
}
