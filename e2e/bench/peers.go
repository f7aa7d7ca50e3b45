package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/apiserver"
	"github.com/svcproxy/svcproxy/e2e/topology"
	"github.com/svcproxy/svcproxy/e2e/traffic"
	"github.com/svcproxy/svcproxy/proxier"
)

// kubeBinary returns the cached build of a kube binary ("kube-proxy",
// "kube-apiserver"): the SVCPROXY_KUBE_* override, else the newest version
// under the e2e/kubetools cache. It never builds (that takes minutes):
// run e2e/kubetools/build.sh for that.
func kubeBinary(name string) (string, error) {
	if p := os.Getenv("SVCPROXY_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); p != "" {
		return p, nil
	}
	cache := os.Getenv("SVCPROXY_KUBE_CACHE")
	if cache == "" {
		cache = "/var/cache/svcproxy-kube"
	}
	matches, _ := filepath.Glob(filepath.Join(cache, "bin", "*", name))
	if len(matches) == 0 {
		return "", fmt.Errorf("%s is not cached under %s/bin (build it with e2e/kubetools/build.sh, minutes on a cold cache)", name, cache)
	}
	return matches[len(matches)-1], nil
}

// contender is one proxy of the apiserver comparison.
type contender struct {
	impl, mode string
	binary     string
	args       func(node, kubeconfig string) []string
}

// peerContenders returns svcproxy in iptables mode (the reference) and the
// requested upstream peers that are available, plus the absent ones.
func peerContenders(o *Options) (cs []contender, absent []Absent, kubeProxyVersion string) {
	cs = append(cs, contender{impl: ImplSvcproxy, mode: proxier.ModeIPTables, binary: o.Binary,
		args: func(node, kubeconfig string) []string {
			return []string{"--mode=iptables", "--source=kube", "--kubeconfig=" + kubeconfig, "--hostname-override=" + node,
				"--cluster-cidr=" + topology.ClusterCIDR}
		}})
	kp, kpErr := kubeBinary("kube-proxy")
	if kpErr == nil {
		if out, err := exec.Command(kp, "--version").Output(); err == nil {
			kubeProxyVersion = strings.TrimSpace(string(out))
		}
	}
	for _, peer := range o.Peers {
		mode, ok := strings.CutPrefix(peer, "kube-proxy-")
		if !ok || (mode != "iptables" && mode != "nftables") {
			absent = append(absent, Absent{Impl: peer, Reason: fmt.Sprintf("unknown peer %q: want %s or %s", peer, PeerKubeProxyIPTables, PeerKubeProxyNFTables)})
			continue
		}
		if kpErr != nil {
			absent = append(absent, Absent{Impl: ImplKubeProxy, Mode: mode, Reason: kpErr.Error()})
			continue
		}
		cs = append(cs, contender{impl: ImplKubeProxy, mode: mode, binary: kp,
			args: func(node, kubeconfig string) []string {
				return []string{"--proxy-mode=" + mode, "--kubeconfig=" + kubeconfig, "--hostname-override=" + node,
					"--cluster-cidr=" + topology.ClusterCIDR,
					// leave the conntrack sysctls alone (some are not per namespace)
					"--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0"}
			}})
	}
	return cs, absent, kubeProxyVersion
}

// peers measures svcproxy (--source=kube, iptables mode) and upstream
// kube-proxy side by side through one real kube-apiserver holding n
// services × o.Endpoints endpoints: each contender starts o.Reps times on
// a fresh node namespace (time to its first sync, RSS), and in the last
// repetition o.Changes one-endpoint changes are written to the apiserver
// and each resulting sync's duration is read from the proxy's
// kubeproxy_sync_proxy_rules_duration_seconds histogram.
func peers(ctx context.Context, o *Options, cs []contender, n int) ([]Record, error) {
	apiBin, err := kubeBinary("kube-apiserver")
	if err != nil {
		return nil, err
	}
	spec := topology.Spec{Nodes: []topology.NodeSpec{{Name: "api"}}}
	for ci := range cs {
		for rep := range o.Reps {
			spec.Nodes = append(spec.Nodes, topology.NodeSpec{Name: fmt.Sprintf("c%d-r%d", ci, rep)})
		}
	}
	cluster, err := topology.Build(ctx, spec)
	if err != nil {
		return nil, fmt.Errorf("building the apiserver topology: %w", err)
	}
	defer func() {
		if err := cluster.Close(); err != nil {
			klog.ErrorS(err, "Removing the apiserver topology", "prefix", cluster.Prefix)
		}
	}()
	dir, err := os.MkdirTemp("", "svcproxy-bench-api-")
	if err != nil {
		return nil, fmt.Errorf("creating the apiserver directory: %w", err)
	}
	defer os.RemoveAll(dir)
	apiNode := cluster.Node("api")
	api, err := apiserver.Start(ctx, apiserver.Options{Dir: dir, Address: apiNode.IP, NetNS: apiNode.NS, Dial: apiNode.Dial,
		ServiceCIDR: "10.96.0.0/12", APIServerBinary: apiBin})
	if err != nil {
		return nil, fmt.Errorf("starting the apiserver: %w", err)
	}
	defer api.Stop()
	client, err := api.Client()
	if err != nil {
		return nil, fmt.Errorf("apiserver client: %w", err)
	}
	for _, nd := range cluster.Nodes {
		node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: nd.Name},
			Status: v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: nd.IP.String()}}}}
		if _, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("creating node %s: %w", nd.Name, err)
		}
	}
	if err := writeServices(ctx, client, n, o.Endpoints); err != nil {
		return nil, err
	}
	var out []Record
	gen := 0
	for ci, c := range cs {
		var first, rss, changes []float64
		for rep := range o.Reps {
			node := cluster.Node(fmt.Sprintf("c%d-r%d", ci, rep))
			m, err := measureProxy(ctx, o, node, c.binary, c.args(node.Name, api.Kubeconfig), rep == o.Reps-1, client, n, &gen)
			if err != nil {
				return out, fmt.Errorf("%s/%s: %w", c.impl, c.mode, err)
			}
			first = append(first, m.first.Seconds())
			rss = append(rss, m.rss)
			changes = append(changes, m.changes...)
		}
		rec := func(metric string, s Stat) Record {
			return Record{Impl: c.impl, Mode: c.mode, Where: WhereHost, Services: n, Endpoints: o.Endpoints, Metric: metric, Stat: s}
		}
		out = append(out, rec(MetricAPIFirstSync, Summarize(first)), rec(MetricAPIRSS, Summarize(rss)),
			rec(MetricAPIChangeP50, pstat(changes, 50)), rec(MetricAPIChangeP99, pstat(changes, 99)))
	}
	return out, nil
}

// pstat is a percentile of samples as a Stat with the samples' spread.
func pstat(samples []float64, p float64) Stat {
	s := Summarize(samples)
	s.Median = Percentile(samples, p)
	return s
}

// proxyRun is one proxy start's figures.
type proxyRun struct {
	first   time.Duration
	rss     float64
	changes []float64
}

// measureProxy starts a proxy on node, waits for its first sync and, if
// withChanges, times o.Changes one-endpoint changes; it stops the proxy.
func measureProxy(ctx context.Context, o *Options, node *topology.Node, binary string, args []string, withChanges bool,
	client kubernetes.Interface, n int, gen *int) (proxyRun, error) {
	var m proxyRun
	start := time.Now()
	proc, err := node.Start(binary, args...)
	if err != nil {
		return m, err
	}
	defer proc.Stop()
	if err := waitSynced(ctx, node, proc, o.SyncTimeout); err != nil {
		return m, err
	}
	m.first = time.Since(start)
	if m.rss, _, err = procUsage(proc.Pid); err != nil {
		return m, err
	}
	if !withChanges {
		return m, nil
	}
	// Let follow-up syncs of the start settle (kube-proxy's default
	// minimum sync period is 1 s).
	time.Sleep(1500 * time.Millisecond)
	for i := range o.Changes {
		count0, sum0, err := syncHistogram(ctx, node)
		if err != nil {
			return m, err
		}
		*gen++
		if err := moveEndpoint(ctx, client, (i*7919)%n, *gen); err != nil {
			return m, err
		}
		deadline := time.Now().Add(o.SyncTimeout)
		for {
			count, sum, err := syncHistogram(ctx, node)
			if err != nil {
				return m, err
			}
			if count > count0 {
				m.changes = append(m.changes, (sum-sum0)/(count-count0))
				break
			}
			if time.Now().After(deadline) || proc.Exited() {
				return m, fmt.Errorf("no sync after endpoint change %d (log %s)", i, proc.LogPath)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return m, nil
}

// syncHistogram reads the count and sum of the proxy's sync duration
// histogram.
func syncHistogram(ctx context.Context, node *topology.Node) (count, sum float64, err error) {
	body, err := traffic.Fetch(ctx, node.Dial, "http://127.0.0.1:10249/metrics", 5*time.Second)
	if err != nil {
		return 0, 0, fmt.Errorf("reading the proxy's metrics: %w", err)
	}
	count = metricValue(body, "kubeproxy_sync_proxy_rules_duration_seconds_count")
	sum = metricValue(body, "kubeproxy_sync_proxy_rules_duration_seconds_sum")
	if count < 0 || sum < 0 {
		return 0, 0, errors.New("the proxy exports no kubeproxy_sync_proxy_rules_duration_seconds histogram")
	}
	return count, sum, nil
}

// endpointIP is the address of endpoint j of service i in generation g.
func endpointIP(i, j, g int) string {
	k := i*8 + j + g*1_000_003
	return fmt.Sprintf("10.%d.%d.%d", 128+(k>>16)%64, (k>>8)&255, k&255)
}

// writeServices creates n ClusterIP services svc<i> (one TCP port) with one
// EndpointSlice of e ready endpoints each, with parallel writers.
func writeServices(ctx context.Context, client kubernetes.Interface, n, e int) error {
	const workers = 16
	work := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := writeService(ctx, client, i, e); err != nil {
					once.Do(func() { firstErr = err; cancel() })
				}
			}
		}()
	}
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		work <- i
	}
	close(work)
	wg.Wait()
	return firstErr
}

func writeService(ctx context.Context, client kubernetes.Interface, i, e int) error {
	name := fmt.Sprintf("svc%d", i)
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec:       v1.ServiceSpec{Ports: []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
	if _, err := client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating service %s: %w", name, err)
	}
	slice := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name + "-1", Labels: map[string]string{discovery.LabelServiceName: name}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for j := range e {
		slice.Endpoints = append(slice.Endpoints, discovery.Endpoint{
			Addresses:  []string{endpointIP(i, j, 0)},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To("api"),
		})
	}
	if _, err := client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating the EndpointSlice of %s: %w", name, err)
	}
	return nil
}

// moveEndpoint gives the first endpoint of service i a new address.
func moveEndpoint(ctx context.Context, client kubernetes.Interface, i, gen int) error {
	slices := client.DiscoveryV1().EndpointSlices("default")
	name := fmt.Sprintf("svc%d-1", i)
	sl, err := slices.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading EndpointSlice %s: %w", name, err)
	}
	sl.Endpoints[0].Addresses = []string{endpointIP(i, 0, gen)}
	if _, err := slices.Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("updating EndpointSlice %s: %w", name, err)
	}
	return nil
}
