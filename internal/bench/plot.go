package bench

import (
	"fmt"
	"image/color"
	"io"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// plotSmoothing is how many samples the plotted throughput is averaged over.
const plotSmoothing = 5

// WritePlot draws the throughput of the Butterfly run over time, with the
// phases and faults marked, as SVG.
func WritePlot(w io.Writer, r *Report) error {
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
	line.Color = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	line.Width = vg.Points(1)
	p.Add(line)
	p.Legend.Add(fmt.Sprintf("throughput (%d-sample mean)", plotSmoothing), line)
	top *= 1.35
	p.Y.Min, p.Y.Max = 0, top

	labels := plotter.XYLabels{}
	for i, ev := range r.Events {
		x := ev.At.Seconds()
		mark, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: top}})
		if err != nil {
			return fmt.Errorf("bench: plot: %w", err)
		}
		mark.Color = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
		mark.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
		mark.Width = vg.Points(0.5)
		p.Add(mark)
		labels.XYs = append(labels.XYs, plotter.XY{X: x, Y: top * (0.97 - 0.045*float64(i%7))})
		labels.Labels = append(labels.Labels, " "+ev.Name)
	}
	if len(labels.XYs) > 0 {
		l, err := plotter.NewLabels(labels)
		if err != nil {
			return fmt.Errorf("bench: plot: %w", err)
		}
		for i := range l.TextStyle {
			l.TextStyle[i].Font.Size = vg.Points(7)
			l.TextStyle[i].Color = color.RGBA{R: 0x80, G: 0x10, B: 0x10, A: 0xff}
		}
		p.Add(l)
	}
	c := vgsvg.New(32*vg.Centimeter, 16*vg.Centimeter)
	p.Draw(draw.New(c))
	if _, err := c.WriteTo(w); err != nil {
		return fmt.Errorf("bench: plot: %w", err)
	}
	return nil
}
