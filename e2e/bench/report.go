package bench

import (
	"math"
	"slices"
	"strings"
	"time"
)

// Implementation names in Record.Impl.
const (
	ImplSvcproxy  = "svcproxy"
	ImplKubeProxy = "kube-proxy"
)

// Metric names in Record.Metric. Data-plane metrics have a "direct_"
// twin measured in the same topology straight to the pods.
const (
	// MetricFullSync is the first full sync into an empty node, in-process (s).
	MetricFullSync = "full_sync_s"
	// MetricChangeP50 and MetricChangeP99 are the sync after one endpoint of
	// one service changed, over Options.Changes changes (s).
	MetricChangeP50 = "change_sync_p50_s"
	MetricChangeP99 = "change_sync_p99_s"
	// MetricHeap is the Go heap the in-process proxier holds after its
	// first full sync, the workload itself excluded (MB).
	MetricHeap = "heap_mb"
	// MetricRulesPrefix prefixes the rule counts (RuleCounts kinds).
	MetricRulesPrefix = "rules:"
	// MetricProcFirstSync is the time from starting the proxy process (file
	// source, or a real apiserver for kube-proxy) to its first sync (s).
	MetricProcFirstSync = "process_first_sync_s"
	// MetricRSS and MetricCPU are the proxy process's resident set and CPU
	// seconds (user+system) right after its first sync.
	MetricRSS = "rss_mb"
	MetricCPU = "cpu_s"
	// MetricChangeToTraffic is the time from writing a new Service to the
	// source until a request to it is answered (s).
	MetricChangeToTraffic = "change_to_traffic_s"
	// MetricRPS is sequential requests per second, a new TCP connection each.
	MetricRPS = "rps"
	// MetricLatP50 and MetricLatP99 are the request latencies (ms),
	// connection set-up included.
	MetricLatP50 = "latency_p50_ms"
	MetricLatP99 = "latency_p99_ms"
	// MetricFailed is the number of requests per repetition that got no
	// answer within 5 s (they are left out of rps and the latencies).
	MetricFailed = "failed_requests"
	// MetricThroughput is one TCP stream's goodput (MB/s).
	MetricThroughput = "throughput_mbps"
	// DirectPrefix marks the same data-plane figure measured straight to the pods.
	DirectPrefix = "direct_"
)

// DataMetrics are the data-plane metrics that have a direct twin.
var DataMetrics = []string{MetricRPS, MetricLatP50, MetricLatP99, MetricThroughput}

// Record is one figure of one implementation and mode at one size.
type Record struct {
	Impl      string `json:"impl"`
	Mode      string `json:"mode"`
	Where     string `json:"where"`
	Services  int    `json:"services"`
	Endpoints int    `json:"endpoints"`
	Metric    string `json:"metric"`
	Stat
	// RatioToDirect is Median over the median of the direct twin measured
	// in the same run (data-plane metrics only).
	RatioToDirect *float64 `json:"ratio_to_direct,omitempty"`
}

// Absent is a peer or mode that was asked for but not measured, and why.
type Absent struct {
	Impl   string `json:"impl"`
	Mode   string `json:"mode"`
	Reason string `json:"reason"`
}

// Env describes where the benchmark ran.
type Env struct {
	Host      string `json:"host"`
	Kernel    string `json:"kernel"`
	CPU       string `json:"cpu"`
	CPUs      int    `json:"cpus"`
	MemoryMB  int    `json:"memory_mb"`
	Go        string `json:"go"`
	IPTables  string `json:"iptables"`
	Svcproxy  string `json:"svcproxy"`
	KubeProxy string `json:"kube_proxy,omitempty"`
	// VMKernel is the kernel of the IPVS VM when a mode ran there.
	VMKernel string `json:"vm_kernel,omitempty"`
}

// Report is the whole outcome of a run.
type Report struct {
	Started  time.Time `json:"started"`
	Duration string    `json:"duration"`
	Preset   string    `json:"preset"`
	Sizes    []int     `json:"sizes"`
	Reps     int       `json:"reps"`
	Changes  int       `json:"changes"`
	Env      Env       `json:"env"`
	Records  []Record  `json:"records"`
	Absent   []Absent  `json:"absent"`
	Notes    []string  `json:"notes"`
}

// key identifies an implementation, mode, place and size.
type key struct {
	impl, mode, where string
	n                 int
}

func (r Record) key() key { return key{r.Impl, r.Mode, r.Where, r.Services} }

// Find returns the record of metric for impl/mode at n services, preferring
// a run on the host over one in the VM.
func (r *Report) Find(impl, mode string, n int, metric string) (Record, bool) {
	for _, where := range []string{WhereHost, WhereVM} {
		if rec, ok := r.FindAt(impl, mode, where, n, metric); ok {
			return rec, true
		}
	}
	return Record{}, false
}

// FindAt returns the record of metric for impl/mode run at where with n
// services.
func (r *Report) FindAt(impl, mode, where string, n int, metric string) (Record, bool) {
	for _, rec := range r.Records {
		if rec.Impl == impl && rec.Mode == mode && rec.Where == where && rec.Services == n && rec.Metric == metric {
			return rec, true
		}
	}
	return Record{}, false
}

// FillRatios sets RatioToDirect on every data-plane record whose direct twin
// (same implementation, mode and size) is present.
func (r *Report) FillRatios() {
	direct := map[key]map[string]float64{}
	for _, rec := range r.Records {
		if m, ok := strings.CutPrefix(rec.Metric, DirectPrefix); ok {
			if direct[rec.key()] == nil {
				direct[rec.key()] = map[string]float64{}
			}
			direct[rec.key()][m] = rec.Median
		}
	}
	for i := range r.Records {
		rec := &r.Records[i]
		if !slices.Contains(DataMetrics, rec.Metric) {
			continue
		}
		d, ok := direct[rec.key()][rec.Metric]
		if !ok {
			continue
		}
		if q := Ratio(rec.Median, d); !math.IsNaN(q) {
			rec.RatioToDirect = &q
		}
	}
}

// Series returns, for impl/mode run at where and metric, the medians by
// size in ascending size order (for plots).
func (r *Report) Series(impl, mode, where, metric string) (ns []int, med, lo, hi []float64) {
	recs := []Record{}
	for _, rec := range r.Records {
		if rec.Impl == impl && rec.Mode == mode && rec.Where == where && rec.Metric == metric {
			recs = append(recs, rec)
		}
	}
	slices.SortFunc(recs, func(a, b Record) int { return a.Services - b.Services })
	for _, rec := range recs {
		ns = append(ns, rec.Services)
		med = append(med, rec.Median)
		lo = append(lo, rec.Min)
		hi = append(hi, rec.Max)
	}
	return ns, med, lo, hi
}

// Impls returns the distinct implementation/mode/where triples, in
// record order.
func (r *Report) Impls() [][3]string {
	var out [][3]string
	for _, rec := range r.Records {
		p := [3]string{rec.Impl, rec.Mode, rec.Where}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// Goal is one goal of the issue and whether this run met it.
type Goal struct {
	Name string `json:"name"`
	// Status is "met", "missed" or "not measured".
	Status string `json:"status"`
	Detail string `json:"detail"`
}
