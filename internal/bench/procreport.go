package bench

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// ProcessReport is what a run in separate processes measured. CPU is the
// children's (intermediates, producers and consumers), not the embedded
// etcd's nor the bench's own; peak memory is each child's peak resident
// set, 0 where the platform does not tell.
type ProcessReport struct {
	// Mode is "processes", telling this report from a Report.
	Mode string `json:"mode"`
	Setup
	Summary
	MeshFigures
	FrameFigures
	// PeakRSSBytes is the sum of the children's peaks: at most what the
	// mesh held at once.
	PeakRSSBytes uint64 `json:"peak_rss_bytes"`
	// The largest peak of one process of each role.
	IntermediatePeakRSS uint64 `json:"intermediate_peak_rss_bytes"`
	ProducerPeakRSS     uint64 `json:"producer_peak_rss_bytes"`
	ConsumerPeakRSS     uint64 `json:"consumer_peak_rss_bytes"`

	// How often the machine kept a busy thread off its core, before the
	// run.
	PlatformFigures

	Sent              uint64 `json:"sent"`
	Delivered         uint64 `json:"delivered"`
	Lost              uint64 `json:"lost"`
	HandledTwice      uint64 `json:"handled_twice"`
	DuplicatesDropped uint64 `json:"duplicates_dropped"`
	Resent            uint64 `json:"resent"`
	Strangers         uint64 `json:"unknown_messages"`
	EndFigures
}

// setPeakRSS fills the peak memory figures from the exited children.
func (r *ProcessReport) setPeakRSS(intermediates, producers, consumers []*child) {
	for _, role := range []struct {
		cs   []*child
		peak *uint64
	}{{intermediates, &r.IntermediatePeakRSS}, {producers, &r.ProducerPeakRSS}, {consumers, &r.ConsumerPeakRSS}} {
		for _, c := range role.cs {
			select {
			case <-c.done:
			default:
				continue // still running: no rusage
			}
			rss := peakRSS(c.state)
			r.PeakRSSBytes += rss
			*role.peak = max(*role.peak, rss)
		}
	}
}

// WriteTable writes r as a readable table.
func (r *ProcessReport) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	mib := func(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	r.writeSetup(w)
	fmt.Fprintf(tw, "BUTTERFLY, ONE PROCESS PER COMPONENT\tthroughput\tend-to-end p50 / p99 / p999\tCPU s per M msgs\t\n")
	fmt.Fprintf(tw, "saturation\t%s\t%s / %s / %s\t%.2f\t\n", fmtRate(r.Butterfly), fmtLat(r.P50US), fmtLat(r.P99US), fmtLat(r.P999US), r.CPUPerMillion)
	r.halfLoadRow(tw)
	fmt.Fprintf(tw, "slower than 2 ms at that rate\t%.1f %%\t\t\n", 100*r.Over2msHalfLoad)
	r.frameRows(tw)
	fmt.Fprintf(tw, "peak RSS: largest intermediate / producer / consumer\t%s / %s / %s\t\n", mib(r.IntermediatePeakRSS), mib(r.ProducerPeakRSS), mib(r.ConsumerPeakRSS))
	fmt.Fprintf(tw, "peak RSS: sum of all processes\t%s\t\n", mib(r.PeakRSSBytes))
	r.machineRows(tw)
	fmt.Fprintf(tw, "\t\t\n")
	fmt.Fprintf(tw, "sent / delivered / lost / handled twice / dups dropped / resent\t%d / %d / %d / %d / %d / %d\t\n",
		r.Sent, r.Delivered, r.Lost, r.HandledTwice, r.DuplicatesDropped, r.Resent)
	r.endRows(tw)
	if r.Strangers > 0 {
		fmt.Fprintf(tw, "messages from no producer of this run\t%d\t\n", r.Strangers)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, "\nCPU and memory are the components' processes'; etcd runs in the bench process.")
	return err
}
