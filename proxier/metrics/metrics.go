// Package metrics is svcproxy's observability: Prometheus metrics under
// kube-proxy's names, the /healthz and /livez server with kube-proxy's
// semantics, and the health-check node port server that load balancers
// probe for externalTrafficPolicy: Local services.
//
// The Engine drives all three through one hook (SyncHook, set as
// Engine.OnSync); sources feed the tracker through QueueingSink so that
// queued changes are counted and timed.
package metrics

import (
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// Namespace is the prefix of every metric, as in kube-proxy; svcproxy's own
// metrics use Namespace + "_svcproxy_".
const Namespace = "kubeproxy"

// ipFamily is the ip_family label kube-proxy puts on its sync metrics.
var ipFamilyLabel = prometheus.Labels{"ip_family": string(v1.IPv4Protocol)}

// syncBuckets are kube-proxy's sync duration buckets: 1ms doubling to ~16s.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// programmingBuckets are kube-proxy's network programming latency buckets:
// 0.25s, 0.5s, 1..59s, 60..115s by 5s, 2..5min by 30s.
func programmingBuckets() []float64 {
	b := []float64{0.25, 0.5}
	b = append(b, prometheus.LinearBuckets(1, 1, 59)...)
	b = append(b, prometheus.LinearBuckets(60, 5, 12)...)
	return append(b, prometheus.LinearBuckets(120, 30, 7)...)
}

// Metrics holds svcproxy's collectors in a registry of its own.
type Metrics struct {
	// Registry holds every collector below plus the Go and process
	// collectors.
	Registry *prometheus.Registry

	syncDuration        prometheus.Histogram
	fullSyncDuration    prometheus.Histogram
	partialSyncDuration prometheus.Histogram
	lastSync            prometheus.Gauge
	lastQueued          prometheus.Gauge
	networkProgramming  prometheus.Histogram
	endpointChanges     prometheus.Counter
	serviceChanges      prometheus.Counter
	iptablesRules       *prometheus.GaugeVec
	noLocalEndpoints    *prometheus.GaugeVec
	healthzTotal        *prometheus.CounterVec
	livezTotal          *prometheus.CounterVec

	ruleCount    *prometheus.GaugeVec
	syncFailures prometheus.Counter
	servicePorts prometheus.Gauge
	endpoints    prometheus.Gauge
}

// New returns the metrics, registered.
func New() *Metrics {
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: Namespace, Name: name, Help: help, Buckets: buckets, ConstLabels: ipFamilyLabel})
	}
	gauge := func(name, help string, labels prometheus.Labels) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help, ConstLabels: labels})
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help})
	}
	m := &Metrics{
		Registry:            prometheus.NewRegistry(),
		syncDuration:        hist("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", syncBuckets),
		fullSyncDuration:    hist("sync_full_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for full resyncs", syncBuckets),
		partialSyncDuration: hist("sync_partial_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds for partial resyncs", syncBuckets),
		lastSync:            gauge("sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced", ipFamilyLabel),
		lastQueued:          gauge("sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued", ipFamilyLabel),
		networkProgramming:  hist("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds", programmingBuckets()),
		endpointChanges:     counter("sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes"),
		serviceChanges:      counter("sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes"),
		iptablesRules: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "sync_proxy_rules_iptables_total",
			Help: "Total number of iptables rules owned by kube-proxy", ConstLabels: ipFamilyLabel}, []string{"table"}),
		noLocalEndpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "sync_proxy_rules_no_local_endpoints_total",
			Help: "Number of services with a Local traffic policy and no endpoints", ConstLabels: ipFamilyLabel}, []string{"traffic_policy"}),
		healthzTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "proxy_healthz_total",
			Help: "Cumulative proxy healthz HTTP status"}, []string{"code"}),
		livezTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "proxy_livez_total",
			Help: "Cumulative proxy livez HTTP status"}, []string{"code"}),
		ruleCount: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "svcproxy_rule_count",
			Help: "Size of the state the last successful sync wrote, by kind (iptables rules per table, IPVS virtual servers and real servers, proxy sockets, ...)"}, []string{"kind"}),
		syncFailures: counter("svcproxy_sync_failures_total", "Cumulative failed syncs (the previous rules stayed in force)"),
		servicePorts: gauge("svcproxy_service_ports", "Service ports in the last synced snapshot", nil),
		endpoints:    gauge("svcproxy_endpoints", "Endpoints in the last synced snapshot", nil),
	}
	m.Registry.MustRegister(
		m.syncDuration, m.fullSyncDuration, m.partialSyncDuration, m.lastSync, m.lastQueued,
		m.networkProgramming, m.endpointChanges, m.serviceChanges, m.iptablesRules, m.noLocalEndpoints,
		m.healthzTotal, m.livezTotal, m.ruleCount, m.syncFailures, m.servicePorts, m.endpoints,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// Queued records a change queued for the next sync (kube-proxy's
// last_queued timestamp) and counts it as a service or endpoint change.
func (m *Metrics) Queued(now time.Time, service bool) {
	m.lastQueued.Set(float64(now.UnixNano()) / 1e9)
	if service {
		m.serviceChanges.Inc()
	} else {
		m.endpointChanges.Inc()
	}
}

// ObserveSync records one sync: its duration (all, full or partial), and
// when it succeeded the last sync time, the network programming latency of
// the changes it applied, the rule counts (rules, as the proxier reports
// them after the sync) and the Local policy services without local
// endpoints on node.
func (m *Metrics) ObserveSync(r proxier.SyncReport, rules map[string]int, node proxier.Node) {
	secs := r.Duration.Seconds()
	m.syncDuration.Observe(secs)
	if r.Full {
		m.fullSyncDuration.Observe(secs)
	} else {
		m.partialSyncDuration.Observe(secs)
	}
	if r.Err != nil {
		m.syncFailures.Inc()
		return
	}
	end := r.Start.Add(r.Duration)
	m.lastSync.Set(float64(end.UnixNano()) / 1e9)
	for _, t := range r.TriggerTimes {
		if !t.IsZero() && !t.After(end) {
			m.networkProgramming.Observe(end.Sub(t).Seconds())
		}
	}
	m.ruleCount.Reset()
	m.iptablesRules.Reset()
	for kind, n := range rules {
		m.ruleCount.WithLabelValues(kind).Set(float64(n))
		if table, ok := strings.CutPrefix(kind, "iptables-"); ok && isTable(table) {
			m.iptablesRules.WithLabelValues(table).Set(float64(n))
		}
	}
	internal, external := NoLocalEndpoints(r.Snapshot, node)
	m.noLocalEndpoints.WithLabelValues("internal").Set(float64(internal))
	m.noLocalEndpoints.WithLabelValues("external").Set(float64(external))
	eps := 0
	for _, e := range r.Snapshot.Endpoints {
		eps += len(e)
	}
	m.servicePorts.Set(float64(len(r.Snapshot.Services)))
	m.endpoints.Set(float64(eps))
}

func isTable(t string) bool {
	switch t {
	case "nat", "filter", "mangle", "raw":
		return true
	}
	return false
}

// NoLocalEndpoints counts, as kube-proxy does, the service ports that have
// usable endpoints but, because of a Local traffic policy, none for
// internal traffic (internalTrafficPolicy: Local) or for external traffic
// (externalTrafficPolicy: Local) on node.
func NoLocalEndpoints(snap proxier.Snapshot, node proxier.Node) (internal, external int) {
	for spn, sp := range snap.Services {
		if !sp.InternalPolicyLocal && !sp.ExternalPolicyLocal {
			continue
		}
		eps := snap.Endpoints[spn]
		if !anyUsable(eps) {
			continue // no endpoints at all: not a Local policy matter
		}
		sel := proxier.SelectEndpoints(sp, eps, node)
		if sp.InternalPolicyLocal && len(sel.Cluster) == 0 {
			internal++
		}
		if sp.ExternalPolicyLocal && sp.ExternallyReachable() && len(sel.External) == 0 {
			external++
		}
	}
	return internal, external
}

// anyUsable reports whether an endpoint takes traffic (ready, or serving
// while terminating).
func anyUsable(eps []proxier.Endpoint) bool {
	for _, e := range eps {
		if e.Ready || (e.Serving && e.Terminating) {
			return true
		}
	}
	return false
}
