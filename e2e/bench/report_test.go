package bench

import (
	"bytes"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	tests := []struct {
		name    string
		samples []float64
		want    Stat
	}{
		{"none", nil, Stat{}},
		{"one", []float64{2}, Stat{Median: 2, Min: 2, Max: 2, N: 1}},
		{"odd, unsorted", []float64{3, 1, 2}, Stat{Median: 2, Min: 1, Max: 3, N: 3}},
		{"even: mean of the middle two", []float64{4, 1, 3, 2}, Stat{Median: 2.5, Min: 1, Max: 4, N: 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Summarize(tt.samples); got != tt.want {
				t.Errorf("Summarize(%v) = %+v, want %+v", tt.samples, got, tt.want)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	hundred := make([]float64, 100)
	for i := range hundred {
		hundred[i] = float64(100 - i) // 100..1, unsorted
	}
	tests := []struct {
		name    string
		samples []float64
		p       float64
		want    float64
	}{
		{"none", nil, 50, 0},
		{"p50 of 100", hundred, 50, 50},
		{"p99 of 100", hundred, 99, 99},
		{"p100 of 100", hundred, 100, 100},
		{"p99 of 20 is the maximum", []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}, 99, 20},
		{"p50 of 20 by nearest rank", []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}, 50, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.samples, tt.p); got != tt.want {
				t.Errorf("Percentile(p%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

// rec builds a record with a one-sample median.
func rec(impl, mode, where string, n int, metric string, v float64) Record {
	return Record{Impl: impl, Mode: mode, Where: where, Services: n, Endpoints: 3, Metric: metric, Stat: Stat{Median: v, Min: v, Max: v, N: 1}}
}

func TestFillRatios(t *testing.T) {
	r := &Report{Records: []Record{
		rec(ImplSvcproxy, "iptables", WhereHost, 100, MetricRPS, 900),
		rec(ImplSvcproxy, "iptables", WhereHost, 100, DirectPrefix+MetricRPS, 1000),
		rec(ImplSvcproxy, "iptables", WhereVM, 100, MetricRPS, 90),
		rec(ImplSvcproxy, "iptables", WhereVM, 100, DirectPrefix+MetricRPS, 180),
		rec(ImplSvcproxy, "iptables", WhereHost, 1000, MetricRPS, 800), // no direct twin
		rec(ImplSvcproxy, "iptables", WhereHost, 100, MetricFullSync, 1),
		rec(ImplSvcproxy, "userspace", WhereHost, 100, MetricThroughput, 300),
		rec(ImplSvcproxy, "userspace", WhereHost, 100, DirectPrefix+MetricThroughput, 0), // zero: no ratio
	}}
	r.FillRatios()
	tests := []struct {
		index int
		want  float64 // 0 means no ratio
	}{
		{0, 0.9},
		{1, 0},
		{2, 0.5}, // the VM's own direct, not the host's
		{4, 0},
		{5, 0},
		{6, 0},
	}
	for _, tt := range tests {
		got := r.Records[tt.index].RatioToDirect
		switch {
		case tt.want == 0 && got != nil:
			t.Errorf("record %d (%s): ratio %v, want none", tt.index, r.Records[tt.index].Metric, *got)
		case tt.want != 0 && (got == nil || *got != tt.want):
			t.Errorf("record %d (%s): ratio %v, want %v", tt.index, r.Records[tt.index].Metric, got, tt.want)
		}
	}
}

func TestGoals(t *testing.T) {
	n := GoalServices
	r := &Report{Records: []Record{
		rec(ImplSvcproxy, "iptables", WhereHost, n, MetricAPIFirstSync, 1),
		rec(ImplKubeProxy, "iptables", WhereHost, n, MetricAPIFirstSync, 6),
		rec(ImplSvcproxy, "iptables", WhereHost, n, MetricAPIChangeP50, 0.1),
		rec(ImplKubeProxy, "iptables", WhereHost, n, MetricAPIChangeP50, 0.5),
		rec(ImplSvcproxy, "ipvs", WhereVM, n, MetricRPS, 95),
		rec(ImplSvcproxy, "ipvs", WhereVM, n, DirectPrefix+MetricRPS, 100),
		rec(ImplSvcproxy, "userspace", WhereHost, n, MetricThroughput, 50),
		rec(ImplSvcproxy, "userspace", WhereHost, n, DirectPrefix+MetricThroughput, 100),
	}}
	r.FillRatios()
	want := map[string]struct{ status, detail string }{
		"iptables full sync ≥ 5× faster than kube-proxy iptables":            {"met", "6.00×"},
		"iptables one-endpoint change ≥ 10× faster than kube-proxy iptables": {"missed", "short by 2.00×"},
		"iptables full sync faster than kube-proxy nftables":                 {"not measured", "kube-proxy nftables (missing)"},
		"iptables one-endpoint change faster than kube-proxy nftables":       {"not measured", ""},
		"IPVS within 10% of direct on new connections/s":                     {"met", "95.0% of direct"},
		"iptables within 10% of direct on new connections/s":                 {"not measured", ""},
		"userspace ≥ 60% of direct throughput":                               {"missed", "short by 10.0 points"},
	}
	goals := r.Goals(n)
	if len(goals) != len(want) {
		t.Fatalf("got %d goals, want %d", len(goals), len(want))
	}
	for _, g := range goals {
		w, ok := want[g.Name]
		if !ok {
			t.Errorf("unexpected goal %q", g.Name)
			continue
		}
		if g.Status != w.status || !strings.Contains(g.Detail, w.detail) {
			t.Errorf("goal %q: %s (%s), want %s containing %q", g.Name, g.Status, g.Detail, w.status, w.detail)
		}
	}
}

func TestOutputs(t *testing.T) {
	r := &Report{Preset: "quick", Sizes: []int{100, 1000}, Reps: 3, Changes: 20,
		Records: []Record{
			rec(ImplSvcproxy, "iptables", WhereHost, 100, MetricFullSync, 0.05),
			rec(ImplSvcproxy, "iptables", WhereHost, 1000, MetricFullSync, 0.5),
			rec(ImplSvcproxy, "iptables", WhereHost, 100, MetricRulesPrefix+"iptables-nat", 1106),
			rec(ImplSvcproxy, "ipvs", WhereVM, 100, MetricFullSync, 0.7),
			rec(ImplSvcproxy, "iptables", WhereHost, 100, MetricLatP50, 0.2),
			rec(ImplSvcproxy, "iptables", WhereHost, 100, MetricRPS, 4000),
			rec(ImplSvcproxy, "iptables", WhereHost, 100, DirectPrefix+MetricRPS, 4000),
		},
		Absent: []Absent{{Impl: ImplKubeProxy, Mode: "nftables", Reason: "no binary"}},
	}
	r.FillRatios()
	tests := []struct {
		name string
		got  func() string
		want []string
	}{
		{"csv", func() string { var b bytes.Buffer; _ = r.CSV(&b); return b.String() }, []string{
			"impl,mode,where,services,endpoints,metric,median,min,max,n,ratio_to_direct\n",
			"svcproxy,iptables,host,100,3,rps,4000,4000,4000,1,1\n",
		}},
		{"table", func() string { var b bytes.Buffer; _ = r.Table(&b); return b.String() }, []string{
			"svcproxy/ipvs", "iptables-nat=1106", "4000 ×1.00", "ABSENT kube-proxy/nftables: no binary",
		}},
		{"markdown", r.Markdown, []string{
			"Preset **quick**", "svcproxy/ipvs on the vm", "| svcproxy/iptables | host | 1000 | 500 ms |",
			"**kube-proxy/nftables**: no binary", "![sync time vs N](sync.svg)", "**not measured**",
		}},
		{"sync plot", r.SyncSVG, []string{"<svg", "svcproxy/ipvs (VM) full", "<polyline"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.got()
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("output lacks %q:\n%s", w, got)
				}
			}
		})
	}
}
