package bench

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/butterfly-mesh/butterfly/intermediate"
)

// addStats returns the counters of a and b added up.
func addStats(a, b intermediate.Stats) intermediate.Stats {
	return intermediate.Stats{
		Received:        a.Received + b.Received,
		Acked:           a.Acked + b.Acked,
		Nacked:          a.Nacked + b.Nacked,
		Delivered:       a.Delivered + b.Delivered,
		PublishBatches:  a.PublishBatches + b.PublishBatches,
		PublishAcks:     a.PublishAcks + b.PublishAcks,
		DeliveryBatches: a.DeliveryBatches + b.DeliveryBatches,
		DeliveryAcks:    a.DeliveryAcks + b.DeliveryAcks,
		DeliveryAnswers: a.DeliveryAnswers + b.DeliveryAnswers,
	}
}

// statsSince returns what the counters of now added since then.
func statsSince(now, then intermediate.Stats) intermediate.Stats {
	return intermediate.Stats{
		Received:        now.Received - then.Received,
		Acked:           now.Acked - then.Acked,
		Nacked:          now.Nacked - then.Nacked,
		Delivered:       now.Delivered - then.Delivered,
		PublishBatches:  now.PublishBatches - then.PublishBatches,
		PublishAcks:     now.PublishAcks - then.PublishAcks,
		DeliveryBatches: now.DeliveryBatches - then.DeliveryBatches,
		DeliveryAcks:    now.DeliveryAcks - then.DeliveryAcks,
		DeliveryAnswers: now.DeliveryAnswers - then.DeliveryAnswers,
	}
}

// scrapeTimeout bounds one read of an intermediate's metrics.
const scrapeTimeout = 5 * time.Second

// scrapeStats reads an intermediate's counters from the metrics its admin
// endpoint at addr serves: the same values as its Server.Stats.
func scrapeStats(ctx context.Context, addr string) (intermediate.Stats, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return intermediate.Stats{}, fmt.Errorf("bench: metrics of %s: %w", addr, err)
	}
	// Plain text: the format the parser reads, whatever else the server
	// could offer.
	req.Header.Set("Accept", "text/plain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return intermediate.Stats{}, fmt.Errorf("bench: metrics of %s: %w", addr, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return intermediate.Stats{}, fmt.Errorf("bench: metrics of %s: %s", addr, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return intermediate.Stats{}, fmt.Errorf("bench: metrics of %s: %w", addr, err)
	}
	var st intermediate.Stats
	for name, field := range map[string]*uint64{
		"butterfly_intermediate_received_total":            &st.Received,
		"butterfly_intermediate_acked_total":               &st.Acked,
		"butterfly_intermediate_nacked_total":              &st.Nacked,
		"butterfly_intermediate_delivered_total":           &st.Delivered,
		"butterfly_intermediate_publish_batches_total":     &st.PublishBatches,
		"butterfly_intermediate_publish_ack_frames_total":  &st.PublishAcks,
		"butterfly_intermediate_delivery_batches_total":    &st.DeliveryBatches,
		"butterfly_intermediate_delivery_ack_frames_total": &st.DeliveryAcks,
		"butterfly_intermediate_delivery_answers_total":    &st.DeliveryAnswers,
	} {
		f, ok := families[name]
		if !ok || len(f.GetMetric()) == 0 {
			return intermediate.Stats{}, fmt.Errorf("bench: metrics of %s have no %s", addr, name)
		}
		for _, m := range f.GetMetric() {
			*field += uint64(m.GetCounter().GetValue())
		}
	}
	return st, nil
}
