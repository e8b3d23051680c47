package bench

import (
	"fmt"
	"image/color"
	"io"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// plotSmoothing is how many samples the plotted throughput is averaged over.
const plotSmoothing = 5

// The picture: the plot on the left, its key on the right. Events are
// numbered beside their lines, staggered over plotRows rows so that events
// close in time keep apart, and named in the key.
const (
	plotWidth  = 32 * vg.Centimeter
	plotHeight = 16 * vg.Centimeter
	keyWidth   = 10 * vg.Centimeter
	keyMargin  = 10 // points around the key
	keyFont    = 8  // points
	keyLeading = 1.4
	plotRows   = 4
)

var (
	throughputColor = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	eventColor      = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	eventTextColor  = color.RGBA{R: 0x80, G: 0x10, B: 0x10, A: 0xff}
)

// WritePlot draws the throughput of the Butterfly run over time, with the
// phases and faults marked, as SVG.
func WritePlot(w io.Writer, r *Report) error {
	c := vgsvg.New(plotWidth, plotHeight)
	if err := drawPlot(draw.New(c), r); err != nil {
		return err
	}
	if _, err := c.WriteTo(w); err != nil {
		return fmt.Errorf("bench: plot: %w", err)
	}
	return nil
}

// drawPlot draws the plot of r and its key on dc.
func drawPlot(dc draw.Canvas, r *Report) error {
	if len(r.Samples) == 0 {
		return fmt.Errorf("bench: plot: no throughput samples")
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Butterfly throughput (%d B payload, %d producers, %d intermediates, %d consumers)",
		r.Payload, r.Producers, r.Intermediates, r.Consumers)
	p.X.Label.Text = "time since start (s)"
	p.Y.Label.Text = "messages handled per second (thousands)"
	p.Add(plotter.NewGrid())

	xys := make(plotter.XYs, len(r.Samples))
	var top float64
	for i, s := range r.Samples {
		lo := max(0, i-plotSmoothing+1)
		var sum float64
		for _, t := range r.Samples[lo : i+1] {
			sum += t.Rate
		}
		xys[i].X = s.End.Seconds()
		xys[i].Y = sum / float64(i+1-lo) / 1000
		top = max(top, xys[i].Y)
	}
	line, err := plotter.NewLine(xys)
	if err != nil {
		return fmt.Errorf("bench: plot: %w", err)
	}
	line.Color = throughputColor
	line.Width = vg.Points(1)
	p.Add(line)
	// Headroom above the line for the event numbers.
	top *= 1.3
	p.Y.Min, p.Y.Max = 0, top

	marks := make([]*plotter.Line, len(r.Events))
	numbers := plotter.XYLabels{}
	for i, ev := range r.Events {
		x := ev.At.Seconds()
		mark, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: top}})
		if err != nil {
			return fmt.Errorf("bench: plot: %w", err)
		}
		mark.Color = eventColor
		mark.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
		mark.Width = vg.Points(0.5)
		p.Add(mark)
		marks[i] = mark
		numbers.XYs = append(numbers.XYs, plotter.XY{X: x, Y: top * (0.96 - 0.05*float64(i%plotRows))})
		numbers.Labels = append(numbers.Labels, strconv.Itoa(i+1))
	}
	if len(numbers.XYs) > 0 {
		l, err := plotter.NewLabels(numbers)
		if err != nil {
			return fmt.Errorf("bench: plot: %w", err)
		}
		for i := range l.TextStyle {
			l.TextStyle[i].Font.Size = vg.Points(keyFont)
			l.TextStyle[i].Color = eventTextColor
		}
		// Beside its line, not across it.
		l.Offset = vg.Point{X: vg.Points(2)}
		p.Add(l)
	}
	p.Draw(draw.Crop(dc, 0, -keyWidth, 0, 0))
	drawKey(draw.Crop(dc, plotWidth-keyWidth, 0, 0, 0), line, r.Events)
	return nil
}

// drawKey writes, top down on c, what the line is and the numbered events.
func drawKey(c draw.Canvas, line *plotter.Line, events []Event) {
	sty := draw.TextStyle{
		Color:   color.Black,
		Font:    font.From(plot.DefaultFont, vg.Points(keyFont)),
		Handler: plot.DefaultTextHandler,
		YAlign:  draw.YTop,
	}
	step := vg.Points(keyFont * keyLeading)
	x0 := c.Min.X + vg.Points(keyMargin)
	y := c.Max.Y - vg.Points(keyMargin)
	sample := vg.Points(18)
	mid := y - vg.Points(keyFont)/2
	c.StrokeLine2(line.LineStyle, x0, mid, x0+sample, mid)
	c.FillText(sty, vg.Point{X: x0 + sample + vg.Points(4), Y: y}, fmt.Sprintf("throughput (%d-sample mean)", plotSmoothing))
	y -= step
	if len(events) == 0 {
		return
	}
	mid = y - vg.Points(keyFont)/2
	c.StrokeLine2(draw.LineStyle{Color: eventColor, Width: vg.Points(0.5), Dashes: []vg.Length{vg.Points(3), vg.Points(3)}}, x0, mid, x0+sample, mid)
	c.FillText(sty, vg.Point{X: x0 + sample + vg.Points(4), Y: y}, "events, numbered beside their lines:")
	y -= 1.5 * step
	num := sty
	num.Color = eventTextColor
	num.XAlign = draw.XRight
	for i, ev := range events {
		c.FillText(num, vg.Point{X: x0 + sample, Y: y}, strconv.Itoa(i+1))
		c.FillText(sty, vg.Point{X: x0 + sample + vg.Points(4), Y: y}, ev.Name)
		y -= step
	}
}
