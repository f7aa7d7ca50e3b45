package kube

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/apiserver"
	"github.com/svcproxy/svcproxy/e2e/suite"
	"github.com/svcproxy/svcproxy/e2e/topology"
	"github.com/svcproxy/svcproxy/e2e/traffic"
)

// benchServices is the workload size: SVCPROXY_BENCH_SERVICES services
// (default 10,000) with 3 endpoints each.
func benchServices() int {
	if n, err := strconv.Atoi(os.Getenv("SVCPROXY_BENCH_SERVICES")); err == nil && n > 0 {
		return n
	}
	return 10000
}

// BenchmarkKubeSourceVsKubeProxy is issue 5's benchmark: N ClusterIP
// services × 3 endpoints written to a real kube-apiserver, then svcproxy
// (iptables mode, --source=kube) and upstream kube-proxy (iptables mode,
// built from the same k8s.io/kubernetes module) started one after the other
// in fresh node namespaces. It reports, for each, the time from process
// start to the first full sync (metric
// kubeproxy_sync_proxy_rules_last_timestamp_seconds set), the resident set
// size right after it and the peak RSS. Run it with
//
//	go test ./e2e/kube -run '^$' -bench KubeSourceVsKubeProxy -benchtime 1x -timeout 60m
//
// It is a measurement, never a pass/fail on speed.
func BenchmarkKubeSourceVsKubeProxy(b *testing.B) {
	n := benchServices()
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Minute)
	defer cancel()
	binary := suite.BuildBinary(b)
	kubeProxy, err := apiserver.Binary(ctx, "kube-proxy")
	if err != nil {
		b.Fatal(err)
	}
	cluster, err := topology.Build(ctx, topology.Spec{Nodes: []topology.NodeSpec{{Name: "node1"}, {Name: "node2"}, {Name: "node3"}}})
	if err != nil {
		b.Fatal(err)
	}
	defer cluster.Close()
	node1 := cluster.Node("node1")
	api, err := apiserver.Start(ctx, apiserver.Options{Dir: b.TempDir(), Address: node1.IP, NetNS: node1.NS, Dial: node1.Dial,
		ServiceCIDR: "10.96.0.0/12"})
	if err != nil {
		b.Fatal(err)
	}
	defer api.Stop()
	admin, err := api.Client()
	if err != nil {
		b.Fatal(err)
	}
	for _, nd := range cluster.Nodes {
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: nd.Name},
			Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: nd.IP.String()}}}}
		if _, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	if err := populate(ctx, admin, n); err != nil {
		b.Fatal(err)
	}
	b.Logf("wrote %d services and %d EndpointSlices in %v", n, n, time.Since(start).Round(time.Second))

	b.ResetTimer()
	for range b.N {
		sp := measure(ctx, b, cluster.Node("node2"), binary, "--mode=iptables", "--source=kube", "--kubeconfig="+api.Kubeconfig,
			"--hostname-override=node2", "--cluster-cidr="+topology.ClusterCIDR)
		var kp measured
		if os.Getenv("SVCPROXY_BENCH_SKIP_KUBEPROXY") != "" { // for quick iterations on svcproxy alone
			b.Log("kube-proxy skipped (SVCPROXY_BENCH_SKIP_KUBEPROXY)")
		} else {
			kp = measure(ctx, b, cluster.Node("node3"), kubeProxy, "--proxy-mode=iptables", "--kubeconfig="+api.Kubeconfig,
				"--hostname-override=node3", "--cluster-cidr="+topology.ClusterCIDR,
				// leave conntrack sysctls alone (some are global, not per namespace)
				"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0")
		}
		b.Logf("%d services × 3 endpoints, iptables mode (%s):", n, iptablesVersion(ctx, cluster.Node("node2")))
		for _, r := range []struct {
			name string
			m    measured
		}{{"svcproxy", sp}, {"kube-proxy", kp}} {
			b.Logf("  %-10s first full sync %v after start; RSS %d MB then, %d MB 2s later, peak %d MB; %d nat rules",
				r.name+":", r.m.sync.Round(time.Millisecond), r.m.rss>>20, r.m.settled>>20, r.m.peak>>20, r.m.natRules)
		}
		b.ReportMetric(sp.sync.Seconds(), "svcproxy-sync-s")
		b.ReportMetric(float64(sp.settled)/(1<<20), "svcproxy-RSS-MB")
		b.ReportMetric(float64(sp.peak)/(1<<20), "svcproxy-peak-RSS-MB")
		b.ReportMetric(kp.sync.Seconds(), "kubeproxy-sync-s")
		b.ReportMetric(float64(kp.settled)/(1<<20), "kubeproxy-RSS-MB")
		b.ReportMetric(float64(kp.peak)/(1<<20), "kubeproxy-peak-RSS-MB")
	}
}

// measured is one proxy's numbers.
type measured struct {
	sync      time.Duration
	rss, peak int64
	settled   int64 // RSS 2s after the sync
	natRules  int
}

// measure starts a proxy on node, waits for its first successful sync
// (polling its metrics on 127.0.0.1:10249 in the node), reads its memory,
// and stops it.
func measure(ctx context.Context, b *testing.B, node *topology.Node, binary string, args ...string) measured {
	b.Helper()
	start := time.Now()
	p, err := node.Start(binary, args...)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Stop()
	var m measured
	deadline := time.Now().Add(50 * time.Minute)
	for {
		if p.Exited() {
			b.Fatalf("%s exited: %v (log %s)", binary, p.Wait(), p.LogPath)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s did not sync (log %s)", binary, p.LogPath)
		}
		body, err := traffic.Fetch(ctx, node.Dial, "http://127.0.0.1:10249/metrics", 5*time.Second)
		if err == nil && lastSyncSet(body) {
			m.sync = time.Since(start)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	m.rss, m.peak = memory(b, p.Pid)
	// and again once the post-sync work settled (svcproxy returns the
	// garbage of a full sync to the kernel right after it)
	time.Sleep(2 * time.Second)
	m.settled, _ = memory(b, p.Pid)
	if out, err := node.Run(ctx, "iptables-save", "-t", "nat"); err == nil {
		m.natRules = strings.Count(string(out), "\n-A ")
	}
	return m
}

// lastSyncSet reports whether the metrics show a successful sync.
func lastSyncSet(metrics string) bool {
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, "kubeproxy_sync_proxy_rules_last_timestamp_seconds") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			return err == nil && v > 0
		}
	}
	return false
}

// memory returns a process's current and peak resident set size in bytes.
func memory(b *testing.B, pid int) (rss, peak int64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	return rss, peak
}

func iptablesVersion(ctx context.Context, node *topology.Node) string {
	out, err := node.Run(ctx, "iptables", "--version")
	if err != nil {
		return "iptables ?"
	}
	return strings.TrimSpace(string(out))
}

// populate writes n ClusterIP services (one TCP port) and one EndpointSlice
// of 3 ready endpoints each, with parallel writers.
func populate(ctx context.Context, client kubernetes.Interface, n int) error {
	const workers = 16
	work := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := writeService(ctx, client, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range n {
		select {
		case work <- i:
		case err = <-errs:
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

func writeService(ctx context.Context, client kubernetes.Interface, i int) error {
	name := fmt.Sprintf("svc%d", i)
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
	if _, err := client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service %s: %w", name, err)
	}
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name + "-1", Labels: map[string]string{discovery.LabelServiceName: name}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for j := range 3 {
		k := i*3 + j
		slice.Endpoints = append(slice.Endpoints, discovery.Endpoint{
			Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", 128+(k>>16)%64, (k>>8)&255, k&255)},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(fmt.Sprintf("node%d", j+1)),
		})
	}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create endpointslice of %s: %w", name, err)
	}
	return nil
}
