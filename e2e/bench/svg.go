package bench

import (
	"fmt"
	"math"
	"strings"
)

// Line styles of plotSVG.
const (
	solid  = ""
	dashed = "6 4"
	dotted = "2 3"
)

// series is one line of a plot: medians ys at xs, with the spread lo..hi
// drawn as error bars.
type series struct {
	name  string
	color string
	// dash is an SVG stroke-dasharray ("" draws a solid line).
	dash   string
	faint  bool
	xs     []float64
	ys     []float64
	lo, hi []float64
}

// palette colours the implementation/mode pairs of a plot.
var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"}

// logRange returns decade bounds that cover vs (positive values only).
func logRange(vs []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, v := range vs {
		if v > 0 {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	if math.IsInf(lo, 1) {
		return 1, 10
	}
	lo, hi = math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
	if lo == hi {
		hi *= 10
	}
	return lo, hi
}

// plotSVG draws series on log-log axes as a standalone SVG document.
func plotSVG(title, xlabel, ylabel string, ss []series) string {
	const w, h, left, right, top, bottom = 900, 460, 70, 340, 40, 50
	pw, ph := float64(w-left-right), float64(h-top-bottom)
	var xsAll, ysAll []float64
	for _, s := range ss {
		xsAll = append(xsAll, s.xs...)
		ysAll = append(ysAll, s.ys...)
		ysAll = append(ysAll, s.lo...)
		ysAll = append(ysAll, s.hi...)
	}
	x0, x1 := logRange(xsAll)
	y0, y1 := logRange(ysAll)
	px := func(x float64) float64 {
		return float64(left) + pw*(math.Log10(x)-math.Log10(x0))/(math.Log10(x1)-math.Log10(x0))
	}
	py := func(y float64) float64 {
		y = math.Max(y, y0)
		return float64(top) + ph*(1-(math.Log10(y)-math.Log10(y0))/(math.Log10(y1)-math.Log10(y0)))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", left, esc(title))
	// Grid and ticks, one per decade.
	for x := x0; x <= x1*1.001; x *= 10 {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", px(x), top, px(x), h-bottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", px(x), h-bottom+16, tick(x))
	}
	for y := y0; y <= y1*1.001; y *= 10 {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, py(y), w-right, py(y))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, py(y)+4, tick(y))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", left, top, pw, ph)
	fmt.Fprintf(&b, `<text x="%.0f" y="%d" text-anchor="middle">%s</text>`+"\n", float64(left)+pw/2, h-12, esc(xlabel))
	fmt.Fprintf(&b, `<text transform="translate(16 %.0f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", float64(top)+ph/2, esc(ylabel))
	for i, s := range ss {
		dash := ""
		if s.dash != "" {
			dash = ` stroke-dasharray="` + s.dash + `"`
		}
		if s.faint {
			dash += ` stroke-opacity="0.55"`
		}
		var pts []string
		for j := range s.xs {
			if s.ys[j] <= 0 {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(s.xs[j]), py(s.ys[j])))
			if j < len(s.lo) && s.hi[j] > s.lo[j] {
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", px(s.xs[j]), py(s.lo[j]), px(s.xs[j]), py(s.hi[j]), s.color)
			}
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", px(s.xs[j]), py(s.ys[j]), s.color)
		}
		fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", strings.Join(pts, " "), s.color, dash)
		ly := top + 10 + 18*i
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", w-right+12, ly, w-right+40, ly, s.color, dash)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", w-right+46, ly+4, esc(s.name))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// tick formats an axis value compactly (1m, 10m, 1, 1k, 10k ...).
func tick(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gk", v/1e3)
	case v >= 1:
		return fmt.Sprintf("%g", v)
	case v >= 1e-3:
		return fmt.Sprintf("%gm", math.Round(v*1e3*1000)/1000)
	default:
		return fmt.Sprintf("%gµ", math.Round(v*1e6*1000)/1000)
	}
}

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
