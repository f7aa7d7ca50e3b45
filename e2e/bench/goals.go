package bench

import (
	"fmt"
	"slices"

	"github.com/svcproxy/svcproxy/proxier"
)

// GoalServices is the size at which the goals are judged.
const GoalServices = 10000

// Metrics of the peer comparison: both svcproxy (--source=kube) and
// upstream kube-proxy fed by the same real kube-apiserver, read from their
// Prometheus metrics.
const (
	// MetricAPIFirstSync is the time from starting the proxy to the end of
	// its first sync with every service in the apiserver (s).
	MetricAPIFirstSync = "api_first_sync_s"
	// MetricAPIChangeP50 and MetricAPIChangeP99 are the durations of the
	// syncs that followed a one-endpoint change written to the apiserver,
	// as the proxy's kubeproxy_sync_proxy_rules_duration_seconds saw them (s).
	MetricAPIChangeP50 = "api_change_sync_p50_s"
	MetricAPIChangeP99 = "api_change_sync_p99_s"
	// MetricAPIRSS is the resident set after the first sync (MB).
	MetricAPIRSS = "api_rss_mb"
)

// GoalSize returns the size at which to judge the goals: GoalServices if
// the run measured it, else the largest size it measured.
func (r *Report) GoalSize() int {
	if slices.Contains(r.Sizes, GoalServices) || len(r.Sizes) == 0 {
		return GoalServices
	}
	return slices.Max(r.Sizes)
}

// Goals judges the goals at n services: met, missed (and by how
// much) or not measured (and what is missing).
func (r *Report) Goals(n int) []Goal {
	speedup := func(name, peerMode, metric string, want float64) Goal {
		g := Goal{Name: name}
		ours, ok1 := r.Find(ImplSvcproxy, proxier.ModeIPTables, n, metric)
		theirs, ok2 := r.Find(ImplKubeProxy, peerMode, n, metric)
		switch {
		case !ok1 || !ok2:
			g.Status = "not measured"
			g.Detail = fmt.Sprintf("needs %s of svcproxy iptables (%s) and kube-proxy %s (%s) at %d services",
				metric, found(ok1), peerMode, found(ok2), n)
		default:
			x := Ratio(theirs.Median, ours.Median)
			g.Detail = fmt.Sprintf("kube-proxy %s %.3g s vs svcproxy %.3g s: %.2f× (goal %.0f×)", peerMode, theirs.Median, ours.Median, x, want)
			g.Status = "met"
			if !(x >= want) {
				g.Status = "missed"
				g.Detail += fmt.Sprintf(", short by %.2f×", want/x)
			}
		}
		return g
	}
	ofDirect := func(name, mode, metric string, want float64) Goal {
		g := Goal{Name: name}
		rec, ok := r.Find(ImplSvcproxy, mode, n, metric)
		if !ok || rec.RatioToDirect == nil {
			g.Status = "not measured"
			g.Detail = fmt.Sprintf("needs %s of svcproxy %s and its direct twin at %d services", metric, mode, n)
			return g
		}
		q := *rec.RatioToDirect
		g.Detail = fmt.Sprintf("%.1f%% of direct (goal ≥ %.0f%%)", 100*q, 100*want)
		g.Status = "met"
		if q < want {
			g.Status = "missed"
			g.Detail += fmt.Sprintf(", short by %.1f points", 100*(want-q))
		}
		return g
	}
	return []Goal{
		speedup("iptables full sync ≥ 5× faster than kube-proxy iptables", proxier.ModeIPTables, MetricAPIFirstSync, 5),
		speedup("iptables one-endpoint change ≥ 10× faster than kube-proxy iptables", proxier.ModeIPTables, MetricAPIChangeP50, 10),
		speedup("iptables full sync faster than kube-proxy nftables", "nftables", MetricAPIFirstSync, 1),
		speedup("iptables one-endpoint change faster than kube-proxy nftables", "nftables", MetricAPIChangeP50, 1),
		ofDirect("IPVS within 10% of direct on new connections/s", proxier.ModeIPVS, MetricRPS, 0.9),
		ofDirect("iptables within 10% of direct on new connections/s", proxier.ModeIPTables, MetricRPS, 0.9),
		ofDirect("userspace ≥ 60% of direct throughput", proxier.ModeUserspace, MetricThroughput, 0.6),
	}
}

func found(ok bool) string {
	if ok {
		return "present"
	}
	return "missing"
}
