package bench

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Output file names in the output directory.
const (
	ReportFile  = "REPORT.md"
	JSONFile    = "results.json"
	CSVFile     = "results.csv"
	SyncPlot    = "sync.svg"
	LatencyPlot = "latency.svg"
)

// Write writes the table to out and REPORT.md, results.json, results.csv
// and the plots to dir.
func Write(r *Report, dir string, out io.Writer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	if err := r.Table(out); err != nil {
		return fmt.Errorf("printing the table: %w", err)
	}
	if err := writeJSON(filepath.Join(dir, JSONFile), r); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, CSVFile))
	if err != nil {
		return fmt.Errorf("creating the CSV file: %w", err)
	}
	if err := r.CSV(f); err != nil {
		f.Close()
		return fmt.Errorf("writing the CSV file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing the CSV file: %w", err)
	}
	plots := map[string]string{SyncPlot: r.SyncSVG(), LatencyPlot: r.LatencySVG()}
	for name, svg := range plots {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(svg), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ReportFile), []byte(r.Markdown()), 0o644); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	fmt.Fprintf(out, "\nwrote %s, %s, %s, %s, %s in %s\n", ReportFile, JSONFile, CSVFile, SyncPlot, LatencyPlot, dir)
	return nil
}

// CSV writes one line per record.
func (r *Report) CSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	if err := cw.Write([]string{"impl", "mode", "where", "services", "endpoints", "metric", "median", "min", "max", "n", "ratio_to_direct"}); err != nil {
		return err
	}
	for _, rec := range r.Records {
		ratio := ""
		if rec.RatioToDirect != nil {
			ratio = strconv.FormatFloat(*rec.RatioToDirect, 'g', 6, 64)
		}
		g := func(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }
		if err := cw.Write([]string{rec.Impl, rec.Mode, rec.Where, strconv.Itoa(rec.Services), strconv.Itoa(rec.Endpoints),
			rec.Metric, g(rec.Median), g(rec.Min), g(rec.Max), strconv.Itoa(rec.N), ratio}); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// row is one implementation/mode at one size.
type row struct {
	impl, mode, where string
	n                 int
}

// rows returns the distinct rows that have any of metrics, ordered by
// implementation/mode (record order) then size.
func (r *Report) rows(metrics ...string) []row {
	var out []row
	for _, rec := range r.Records {
		if !slices.ContainsFunc(metrics, func(m string) bool { return m == rec.Metric || strings.HasPrefix(rec.Metric, m) }) {
			continue
		}
		rw := row{rec.Impl, rec.Mode, rec.Where, rec.Services}
		if !slices.Contains(out, rw) {
			out = append(out, rw)
		}
	}
	order := r.Impls()
	slices.SortStableFunc(out, func(a, b row) int {
		ia := slices.Index(order, [3]string{a.impl, a.mode, a.where})
		ib := slices.Index(order, [3]string{b.impl, b.mode, b.where})
		if ia != ib {
			return ia - ib
		}
		return a.n - b.n
	})
	return out
}

// cell formats a metric of a row; spread adds (min–max), ratio adds the
// ratio to direct.
type cellFmt struct {
	metric string
	format func(float64) string
	spread bool
	ratio  bool
}

func (r *Report) cell(rw row, c cellFmt) string {
	rec, ok := r.FindAt(rw.impl, rw.mode, rw.where, rw.n, c.metric)
	if !ok {
		return "—"
	}
	s := c.format(rec.Median)
	if c.spread && rec.N > 1 {
		s += " (" + c.format(rec.Min) + "–" + c.format(rec.Max) + ")"
	}
	if c.ratio && rec.RatioToDirect != nil {
		s += fmt.Sprintf(" ×%.2f", *rec.RatioToDirect)
	}
	return s
}

// rules formats the rule counts of a row.
func (r *Report) rules(rw row) string {
	var parts []string
	for _, rec := range r.Records {
		if rec.key() == (key{rw.impl, rw.mode, rw.where, rw.n}) {
			if k, ok := strings.CutPrefix(rec.Metric, MetricRulesPrefix); ok {
				parts = append(parts, fmt.Sprintf("%s=%.0f", k, rec.Median))
			}
		}
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, " ")
}

// FormatSeconds prints a duration in seconds with a fitting unit.
func FormatSeconds(s float64) string {
	switch {
	case math.IsNaN(s):
		return "—"
	case s >= 1:
		return fmt.Sprintf("%.2f s", s)
	case s >= 1e-3:
		return fmt.Sprintf("%.3g ms", s*1e3)
	default:
		return fmt.Sprintf("%.3g µs", s*1e6)
	}
}

func num(format string) func(float64) string {
	return func(v float64) string { return fmt.Sprintf(format, v) }
}

// section is one table: its title, the metrics that select its rows and
// its columns.
type section struct {
	title   string
	select_ []string
	heads   []string
	cells   []cellFmt
	rules   bool
	// failedDirect appends the direct failures to the last cell.
	failedDirect bool
}

func (r *Report) sections(spread bool) []section {
	return []section{
		{
			title:   "Control plane (in-process proxier, fresh namespace per repetition)",
			select_: []string{MetricFullSync},
			heads:   []string{"full sync", "1-endpoint change p50", "p99", "Go heap MB"},
			cells: []cellFmt{{MetricFullSync, FormatSeconds, spread, false}, {MetricChangeP50, FormatSeconds, spread, false},
				{MetricChangeP99, FormatSeconds, spread, false}, {MetricHeap, num("%.1f"), false, false}},
			rules: true,
		},
		{
			title:   "Proxy process (file source)",
			select_: []string{MetricProcFirstSync},
			heads:   []string{"start → first sync", "RSS MB", "CPU s", "new Service → traffic"},
			cells: []cellFmt{{MetricProcFirstSync, FormatSeconds, false, false}, {MetricRSS, num("%.1f"), false, false},
				{MetricCPU, num("%.2f"), false, false}, {MetricChangeToTraffic, FormatSeconds, spread, false}},
		},
		{
			title:   "Data plane through the ClusterIP (×ratio to direct, same run)",
			select_: []string{MetricRPS},
			heads:   []string{"conn/s", "p50 ms", "p99 ms", "stream MB/s", "direct conn/s", "direct p50 ms", "direct p99 ms", "direct MB/s", "failed (direct)"},
			cells: []cellFmt{{MetricRPS, num("%.0f"), spread, true}, {MetricLatP50, num("%.3f"), spread, true},
				{MetricLatP99, num("%.3f"), spread, true}, {MetricThroughput, num("%.0f"), spread, true},
				{DirectPrefix + MetricRPS, num("%.0f"), false, false}, {DirectPrefix + MetricLatP50, num("%.3f"), false, false},
				{DirectPrefix + MetricLatP99, num("%.3f"), false, false}, {DirectPrefix + MetricThroughput, num("%.0f"), false, false},
				{MetricFailed, num("%.0f"), false, false}},
			failedDirect: true,
		},
		{
			title:   "Through a real kube-apiserver (svcproxy --source=kube vs upstream kube-proxy)",
			select_: []string{MetricAPIFirstSync},
			heads:   []string{"start → first sync", "1-endpoint change p50", "p99", "RSS MB"},
			cells: []cellFmt{{MetricAPIFirstSync, FormatSeconds, spread, false}, {MetricAPIChangeP50, FormatSeconds, spread, false},
				{MetricAPIChangeP99, FormatSeconds, spread, false}, {MetricAPIRSS, num("%.0f"), false, false}},
		},
	}
}

// header returns the section's column heads.
func (s section) header() []string {
	heads := append([]string{"impl/mode", "where", "N"}, s.heads...)
	if s.rules {
		heads = append(heads, "rules")
	}
	return heads
}

// line returns the section's cells of one row.
func (r *Report) line(s section, rw row) []string {
	cells := []string{rw.impl + "/" + rw.mode, rw.where, strconv.Itoa(rw.n)}
	for _, c := range s.cells {
		cells = append(cells, r.cell(rw, c))
	}
	if s.rules {
		cells = append(cells, r.rules(rw))
	}
	if s.failedDirect {
		cells[len(cells)-1] += " (" + r.cell(rw, cellFmt{DirectPrefix + MetricFailed, num("%.0f"), false, false}) + ")"
	}
	return cells
}

// Table prints the sections as aligned text tables.
func (r *Report) Table(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	for _, s := range r.sections(false) {
		rows := r.rows(s.select_...)
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(tw, "\n%s\n", s.title)
		fmt.Fprintln(tw, strings.Join(s.header(), "\t")+"\t")
		for _, rw := range rows {
			fmt.Fprintln(tw, strings.Join(r.line(s, rw), "\t")+"\t")
		}
	}
	for _, a := range r.Absent {
		fmt.Fprintf(tw, "ABSENT %s/%s: %s\n", a.Impl, a.Mode, a.Reason)
	}
	return tw.Flush()
}

// Markdown renders the whole report.
func (r *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# svcproxy bench report\n\n")
	fmt.Fprintf(&b, "Preset **%s**, sizes %s services × %d endpoints, %d repetitions after a warm-up, %d one-endpoint changes per repetition. Started %s, took %s. Produced by `svcproxy bench`", r.Preset, joinInts(r.Sizes), r.endpoints(), r.Reps, r.Changes, r.Started.Format("2006-01-02 15:04 UTC"), r.Duration)
	if r.Preset == "quick" {
		b.WriteString(" --quick")
	}
	b.WriteString("; every cell is the median with (min–max) over the repetitions.\n\n")

	b.WriteString("## Machine\n\n| | |\n|---|---|\n")
	e := r.Env
	for _, kv := range [][2]string{{"CPU", fmt.Sprintf("%s × %d", e.CPU, e.CPUs)}, {"memory", fmt.Sprintf("%d MB", e.MemoryMB)},
		{"kernel (host)", e.Kernel}, {"kernel (IPVS VM)", e.VMKernel}, {"Go", e.Go}, {"iptables", e.IPTables},
		{"svcproxy", e.Svcproxy}, {"kube-proxy", e.KubeProxy}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, "| %s | %s |\n", kv[0], kv[1])
		}
	}
	b.WriteString("\nWhere each mode ran: ")
	var wh []string
	for _, rw := range r.rows(MetricFullSync, MetricAPIFirstSync) {
		s := fmt.Sprintf("%s/%s on the %s", rw.impl, rw.mode, rw.where)
		if !slices.Contains(wh, s) {
			wh = append(wh, s)
		}
	}
	b.WriteString(strings.Join(wh, ", ") + ".\n\n")

	gn := r.GoalSize()
	if gn == GoalServices {
		fmt.Fprintf(&b, "## Goals of issue 6 (at %d services × 3 endpoints)\n\n", gn)
	} else {
		fmt.Fprintf(&b, "## Goals of issue 6, indicative only: at %d services (the issue judges them at %d, which this run did not measure)\n\n", gn, GoalServices)
	}
	b.WriteString("| goal | status | detail |\n|---|---|---|\n")
	for _, g := range r.Goals(gn) {
		fmt.Fprintf(&b, "| %s | **%s** | %s |\n", g.Name, g.Status, g.Detail)
	}
	b.WriteString("\n")

	for _, s := range r.sections(true) {
		rows := r.rows(s.select_...)
		fmt.Fprintf(&b, "## %s\n\n", s.title)
		if len(rows) == 0 {
			b.WriteString("Not measured in this run.\n\n")
			continue
		}
		heads := s.header()
		b.WriteString("| " + strings.Join(heads, " | ") + " |\n|" + strings.Repeat("---|", len(heads)) + "\n")
		for _, rw := range rows {
			b.WriteString("| " + strings.Join(r.line(s, rw), " | ") + " |\n")
		}
		b.WriteString("\n")
	}

	b.WriteString("## Plots\n\n")
	fmt.Fprintf(&b, "![sync time vs N](%s)\n\n![latency vs N](%s)\n\n", SyncPlot, LatencyPlot)

	b.WriteString("## Absent\n\n")
	if len(r.Absent) == 0 {
		b.WriteString("Nothing asked for is missing.\n\n")
	}
	for _, a := range r.Absent {
		fmt.Fprintf(&b, "- **%s/%s**: %s\n", a.Impl, a.Mode, a.Reason)
	}
	b.WriteString("\n## How these figures were taken\n\n")
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	fmt.Fprintf(&b, "\nMachine-readable: [%s](%s), [%s](%s).\n", JSONFile, JSONFile, CSVFile, CSVFile)
	return b.String()
}

// endpoints returns E of the records (3 by default).
func (r *Report) endpoints() int {
	for _, rec := range r.Records {
		return rec.Endpoints
	}
	return 3
}

// plotSeries builds one series per implementation/mode/where for metric;
// a mode keeps its colour across host and VM, VM lines are fainter.
func (r *Report) plotSeries(metric, suffix, dash string) []series {
	var ss []series
	var modes [][2]string
	for _, im := range r.Impls() {
		if m := [2]string{im[0], im[1]}; !slices.Contains(modes, m) {
			modes = append(modes, m)
		}
	}
	for _, im := range r.Impls() {
		ns, med, lo, hi := r.Series(im[0], im[1], im[2], metric)
		if len(ns) == 0 {
			continue
		}
		xs := make([]float64, len(ns))
		for j, n := range ns {
			xs[j] = float64(n)
		}
		where := ""
		if im[2] == WhereVM {
			where = " (VM)"
		}
		color := palette[slices.Index(modes, [2]string{im[0], im[1]})%len(palette)]
		ss = append(ss, series{name: im[0] + "/" + im[1] + where + suffix, color: color, dash: dash, faint: im[2] == WhereVM,
			xs: xs, ys: med, lo: lo, hi: hi})
	}
	return ss
}

// SyncSVG plots the in-process full sync (solid) and one-endpoint change
// p50 (dashed) against N, and the apiserver comparison's first sync and
// change p50 (dotted).
func (r *Report) SyncSVG() string {
	ss := append(r.plotSeries(MetricFullSync, " full", solid), r.plotSeries(MetricChangeP50, " change", dashed)...)
	ss = append(ss, r.plotSeries(MetricAPIFirstSync, " API first sync", dotted)...)
	ss = append(ss, r.plotSeries(MetricAPIChangeP50, " API change", dotted)...)
	return plotSVG("Sync time vs services (median, min–max bars)", "services (N)", "seconds", ss)
}

// LatencySVG plots request latency p50 (solid) and p99 (dashed) through
// the ClusterIP against N, with direct p50 for reference.
func (r *Report) LatencySVG() string {
	ss := append(r.plotSeries(MetricLatP50, " p50", solid), r.plotSeries(MetricLatP99, " p99", dashed)...)
	// One direct line per place: every mode's topology measures the same
	// direct path.
	seen := map[bool]bool{}
	for _, s := range r.plotSeries(DirectPrefix+MetricLatP50, " direct p50", dotted) {
		if seen[s.faint] {
			continue
		}
		seen[s.faint] = true
		s.name = "direct p50" + map[bool]string{true: " (VM)", false: ""}[s.faint]
		s.color = "#777"
		ss = append(ss, s)
	}
	return plotSVG("New-connection request latency vs services loaded", "services (N)", "milliseconds", ss)
}

// Render reads a results.json written by an earlier run and writes the
// table and every output from it again (after a change of the report's
// layout, or into another directory), without measuring anything.
func Render(jsonPath, dir string, out io.Writer) error {
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		return fmt.Errorf("reading earlier results: %w", err)
	}
	var r Report
	if err := json.Unmarshal(data, &r); err != nil {
		return fmt.Errorf("decoding %s: %w", jsonPath, err)
	}
	r.FillRatios()
	return Write(&r, dir, out)
}
