package bench

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/butterfly-mesh/butterfly/intermediate"
)

// TestScrapeStats reads an intermediate's counters from metrics text, adds
// up the series of each, and names the counter a text lacks.
func TestScrapeStats(t *testing.T) {
	names := []string{
		"received_total", "acked_total", "nacked_total", "delivered_total",
		"publish_batches_total", "publish_ack_frames_total", "delivery_batches_total", "delivery_ack_frames_total",
		"delivery_answers_total",
	}
	var full strings.Builder
	for i, n := range names {
		fmt.Fprintf(&full, "# TYPE butterfly_intermediate_%s counter\n", n)
		fmt.Fprintf(&full, "butterfly_intermediate_%s{instance=\"i1\",service=\"s\"} %d\n", n, 10*(i+1))
		fmt.Fprintf(&full, "butterfly_intermediate_%s{instance=\"i2\",service=\"s\"} %d\n", n, i+1)
	}
	serve := func(text string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, text)
		}))
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	body := full.String()

	got, err := scrapeStats(t.Context(), serve(body))
	want := intermediate.Stats{
		Received: 11, Acked: 22, Nacked: 33, Delivered: 44,
		PublishBatches: 55, PublishAcks: 66, DeliveryBatches: 77, DeliveryAcks: 88, DeliveryAnswers: 99,
	}
	if err != nil || got != want {
		t.Fatalf("scrapeStats() = %+v, %v, want %+v", got, err, want)
	}

	// Without the answers' counter (an older intermediate).
	older := body[:strings.Index(body, "# TYPE butterfly_intermediate_delivery_answers_total")]
	if _, err := scrapeStats(t.Context(), serve(older)); err == nil || !strings.Contains(err.Error(), "butterfly_intermediate_delivery_answers_total") {
		t.Errorf("scrapeStats() without a counter = %v, want an error naming it", err)
	}
}

// TestNewBatchFigures divides each link's messages by its frames, and
// gives 0 for a link that carried no frame.
func TestNewBatchFigures(t *testing.T) {
	got := newBatchFigures(intermediate.Stats{
		Received: 1000, Acked: 990, Nacked: 10, Delivered: 1020,
		PublishBatches: 20, PublishAcks: 4, DeliveryBatches: 10, DeliveryAcks: 8, DeliveryAnswers: 1000,
	})
	if want := (BatchFigures{PublishBatch: 50, PublishAck: 250, DeliveryBatch: 102, DeliveryAck: 125}); got != want {
		t.Errorf("newBatchFigures() = %+v, want %+v", got, want)
	}
	if got := newBatchFigures(intermediate.Stats{Received: 5, Delivered: 5}); got != (BatchFigures{}) {
		t.Errorf("newBatchFigures() without frames = %+v, want zeros", got)
	}
}
