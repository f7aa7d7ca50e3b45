package metrics

// Test conventions: node "node-a" is this node; 10.96.x.x are cluster IPs,
// 10.0.1.x pods on node-a, 10.0.2.x pods on node-b. Servers run on
// httptest or on 127.0.0.1 with kernel-chosen ports; nothing asserts on speed.

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
)

var nodeA = proxier.Node{Name: "node-a", Zone: "z1"}

func spn(name, port string) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: name}, Port: port, Protocol: v1.ProtocolTCP}
}

func ep(ip, node string, ready bool) proxier.Endpoint {
	return proxier.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: ready, Serving: ready, NodeName: node}
}

func terminating(ip, node string) proxier.Endpoint {
	return proxier.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Serving: true, Terminating: true, NodeName: node}
}

// snapshot builds a snapshot from service ports and their endpoints.
func snapshot(entries ...any) proxier.Snapshot {
	s := proxier.Snapshot{Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{}}
	var last proxier.ServicePortName
	for _, e := range entries {
		switch x := e.(type) {
		case *proxier.ServicePort:
			s.Services[x.Name] = x
			last = x.Name
		case proxier.Endpoint:
			s.Endpoints[last] = append(s.Endpoints[last], x)
		}
	}
	return s
}

func TestObserveSync(t *testing.T) {
	m := New()
	start := time.Unix(1000, 0)
	local := &proxier.ServicePort{Name: spn("local", ""), Port: 80, NodePort: 30080, ExternalPolicyLocal: true, HealthCheckNodePort: 32000}
	internal := &proxier.ServicePort{Name: spn("internal", ""), Port: 80, InternalPolicyLocal: true}
	empty := &proxier.ServicePort{Name: spn("empty", ""), Port: 80, InternalPolicyLocal: true}
	snap := snapshot(local, ep("10.0.2.1", "node-b", true), internal, ep("10.0.2.2", "node-b", true), empty)

	m.ObserveSync(proxier.SyncReport{Start: start, Duration: 2 * time.Second, Full: true, Snapshot: snap,
		TriggerTimes: []time.Time{start.Add(-3 * time.Second)}},
		map[string]int{"iptables-nat": 40, "iptables-filter": 3, "iptables-chains": 9}, nodeA)
	m.ObserveSync(proxier.SyncReport{Start: start.Add(time.Minute), Duration: time.Second, Err: errors.New("restore failed")}, nil, nodeA)
	m.ObserveSync(proxier.SyncReport{Start: start.Add(2 * time.Minute), Duration: 500 * time.Millisecond, Snapshot: snap},
		map[string]int{"iptables-nat": 41, "iptables-filter": 3}, nodeA)

	tests := []struct {
		name string
		got  float64
		want float64
	}{
		{"last sync = end of the last successful sync", testutil.ToFloat64(m.lastSync), 1120.5},
		{"iptables nat rules", testutil.ToFloat64(m.iptablesRules.WithLabelValues("nat")), 41},
		{"iptables filter rules", testutil.ToFloat64(m.iptablesRules.WithLabelValues("filter")), 3},
		{"rule count by kind", testutil.ToFloat64(m.ruleCount.WithLabelValues("iptables-nat")), 41},
		{"sync failures", testutil.ToFloat64(m.syncFailures), 1},
		{"no local endpoints, internal", testutil.ToFloat64(m.noLocalEndpoints.WithLabelValues("internal")), 1},
		{"no local endpoints, external", testutil.ToFloat64(m.noLocalEndpoints.WithLabelValues("external")), 1},
		{"service ports", testutil.ToFloat64(m.servicePorts), 3},
		{"endpoints", testutil.ToFloat64(m.endpoints), 2},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if n := testutil.CollectAndCount(m.ruleCount); n != 2 {
		t.Errorf("rule kinds that went away must go: %d series", n)
	}
	// Histograms: 3 syncs (1 full, 2 partial), one programming latency of 5s.
	body := scrape(t, m)
	for _, want := range []string{
		`kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 3`,
		`kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1`,
		`kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family="IPv4"} 2`,
		`kubeproxy_network_programming_duration_seconds_sum{ip_family="IPv4"} 5`,
		`kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"} 41`,
		`kubeproxy_svcproxy_rule_count{kind="iptables-filter"} 3`,
		`kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="external"} 1`,
		"process_resident_memory_bytes",
		"go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// scrape fetches /metrics through the metrics server's handler.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(MetricsHandler(m, "iptables"))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestMetricsServerPaths(t *testing.T) {
	srv := httptest.NewServer(MetricsHandler(New(), "ipvs"))
	defer srv.Close()
	for path, want := range map[string]string{"/proxyMode": "ipvs", "/healthz": "ok"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != want {
			t.Errorf("%s: %d %q, want %q", path, resp.StatusCode, b, want)
		}
	}
}

// recordingSink counts what it receives.
type recordingSink struct{ calls []string }

func (r *recordingSink) UpdateService(*v1.Service)          { r.calls = append(r.calls, "svc") }
func (r *recordingSink) DeleteService(types.NamespacedName) { r.calls = append(r.calls, "svc-") }
func (r *recordingSink) UpdateEndpointSlice(*discovery.EndpointSlice) {
	r.calls = append(r.calls, "eps")
}
func (r *recordingSink) DeleteEndpointSlice(types.NamespacedName) { r.calls = append(r.calls, "eps-") }

func TestQueueingSink(t *testing.T) {
	m := New()
	hs := NewHealthServer(HealthOptions{Timeout: time.Minute})
	inner := &recordingSink{}
	q := &QueueingSink{Sink: inner, Metrics: m, Health: hs}
	q.UpdateService(&v1.Service{})
	q.DeleteService(types.NamespacedName{})
	q.UpdateEndpointSlice(&discovery.EndpointSlice{})
	q.UpdateEndpointSlice(&discovery.EndpointSlice{})
	q.DeleteEndpointSlice(types.NamespacedName{})
	if strings.Join(inner.calls, ",") != "svc,svc-,eps,eps,eps-" {
		t.Errorf("forwarded: %v", inner.calls)
	}
	if got := testutil.ToFloat64(m.serviceChanges); got != 2 {
		t.Errorf("service changes %v", got)
	}
	if got := testutil.ToFloat64(m.endpointChanges); got != 3 {
		t.Errorf("endpoint changes %v", got)
	}
	if testutil.ToFloat64(m.lastQueued) == 0 {
		t.Error("last queued timestamp not set")
	}
	hs.mu.Lock()
	pending := !hs.oldestQueued.IsZero()
	hs.mu.Unlock()
	if !pending {
		t.Error("health server did not see the queued update")
	}
}

func TestNoLocalEndpoints(t *testing.T) {
	tests := []struct {
		name                  string
		snap                  proxier.Snapshot
		wantInternal, wantExt int
	}{
		{"cluster policies", snapshot(&proxier.ServicePort{Name: spn("a", ""), NodePort: 30000}, ep("10.0.2.1", "node-b", true)), 0, 0},
		{"local endpoint present", snapshot(&proxier.ServicePort{Name: spn("a", ""), NodePort: 30000, ExternalPolicyLocal: true, InternalPolicyLocal: true},
			ep("10.0.1.1", "node-a", true)), 0, 0},
		{"only remote", snapshot(&proxier.ServicePort{Name: spn("a", ""), NodePort: 30000, ExternalPolicyLocal: true, InternalPolicyLocal: true},
			ep("10.0.2.1", "node-b", true)), 1, 1},
		{"no endpoints at all is not counted", snapshot(&proxier.ServicePort{Name: spn("a", ""), NodePort: 30000, ExternalPolicyLocal: true}), 0, 0},
		{"local terminating serving endpoint counts as local", snapshot(&proxier.ServicePort{Name: spn("a", ""), InternalPolicyLocal: true},
			terminating("10.0.1.1", "node-a"), ep("10.0.2.1", "node-b", true)), 0, 0},
	}
	for _, tc := range tests {
		in, ext := NoLocalEndpoints(tc.snap, nodeA)
		if in != tc.wantInternal || ext != tc.wantExt {
			t.Errorf("%s: got internal %d external %d, want %d %d", tc.name, in, ext, tc.wantInternal, tc.wantExt)
		}
	}
}
