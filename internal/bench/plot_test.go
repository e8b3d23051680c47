package bench

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// svgText is a text element of the SVG WritePlot writes: its position, font
// size and content.
var svgText = regexp.MustCompile(`<text x="([-0-9.]+)" y="([-0-9.]+)"()[^>]*font-size:([0-9.]+)px[^>]*>([^<]*)</text>`)

// TestWritePlot_TextInside checks that every text of the plot (title, axes,
// legend, event numbers and their key) lies inside the picture, even for an
// event at the very end of the run, and that the key names every event.
func TestWritePlot_TextInside(t *testing.T) {
	r := &Report{Setup: Setup{Payload: 256, Producers: 2, Intermediates: 2, Consumers: 2}}
	for i := range 200 {
		r.Samples = append(r.Samples, Sample{End: time.Duration(i) * 100 * time.Millisecond, Rate: 200000})
	}
	for i, at := range []time.Duration{0, 13 * time.Second, 13*time.Second + 6*time.Millisecond, 19900 * time.Millisecond} {
		r.Events = append(r.Events, Event{At: at, Name: fmt.Sprintf("event %d with a rather long name to read", i+1)})
	}
	var svg bytes.Buffer
	if err := WritePlot(&svg, r); err != nil {
		t.Fatalf("WritePlot() = %v", err)
	}
	width, height := plotWidth.Points(), plotHeight.Points() // the viewBox is in points
	texts := svgText.FindAllStringSubmatch(svg.String(), -1)
	if len(texts) < 10 {
		t.Fatalf("WritePlot() wrote %d texts, want the title, axes, legend and events", len(texts))
	}
	seen := map[string]bool{}
	for _, m := range texts {
		seen[m[5]] = true
		x, _ := strconv.ParseFloat(m[1], 64)
		y, _ := strconv.ParseFloat(m[2], 64)
		if y > 0 {
			continue // the y axis label, in a rotated group along the left edge
		}
		size, _ := strconv.ParseFloat(m[4], 64)
		// Wider than the font's glyphs on average: a conservative end.
		end := x + 0.6*size*float64(len(m[5]))
		if x < 0 || end > width || -y < 0 || -y > height {
			t.Errorf("text %q at (%.1f, %.1f) to x %.1f, want inside %.0fx%.0f", m[5], x, -y, end, width, height)
		}
	}
	for i, ev := range r.Events {
		if !seen[ev.Name] || !seen[strconv.Itoa(i+1)] {
			t.Errorf("plot texts %v, want event %d named %q in the key and numbered", seen, i+1, ev.Name)
		}
	}
}
