package kube

// Test conventions: the topology package's addresses (nodes 172.30.0.1i,
// pods 10.244.i.10, the external client 172.30.0.100). etcd and
// kube-apiserver run inside node1's namespace on 172.30.0.11; the test
// reaches them through node1. Durations from an API write to working
// traffic are measured and logged, never asserted; waits have generous
// deadlines that only fail a hung test.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/apiserver"
	"github.com/svcproxy/svcproxy/e2e/isolate"
	"github.com/svcproxy/svcproxy/e2e/suite"
	"github.com/svcproxy/svcproxy/e2e/topology"
	"github.com/svcproxy/svcproxy/e2e/traffic"
)

func TestMain(m *testing.M) {
	isolate.MustIsolate()
	os.Exit(m.Run())
}

// pods maps each web pod to its node.
var pods = map[string]string{"web1": "node1", "web2": "node2", "web3": "node3"}

// env is the running cluster of a test.
type env struct {
	t        *testing.T
	ctx      context.Context
	cluster  *topology.Cluster
	api      *apiserver.Server
	admin    kubernetes.Interface
	binary   string
	kubecfg  string
	proxies  map[string]*topology.Proc
	external *topology.Host
}

// setup builds three nodes with one web pod each and an external client,
// runs the control plane in node1, registers the Nodes, and starts svcproxy
// (--source=kube, with deploy/rbac.yaml's rights) on every node.
func setup(t *testing.T, mode string) *env {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, binary: suite.BuildBinary(t), proxies: map[string]*topology.Proc{}}
	var err error
	e.cluster, err = topology.Build(ctx, topology.Spec{
		Nodes: []topology.NodeSpec{
			{Name: "node1", Pods: []string{"web1"}},
			{Name: "node2", Pods: []string{"web2"}},
			{Name: "node3", Pods: []string{"web3"}},
		},
		External: true,
	})
	if err != nil {
		t.Fatalf("build cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(e.cluster.LogTails(30))
		}
		if err := e.cluster.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	e.external = e.cluster.Host(topology.ExternalName)
	node1 := e.cluster.Node("node1")
	e.api, err = apiserver.Start(ctx, apiserver.Options{Dir: t.TempDir(), Address: node1.IP, NetNS: node1.NS, Dial: node1.Dial})
	if err != nil {
		t.Fatalf("control plane: %v", err)
	}
	t.Cleanup(e.api.Stop)
	if e.admin, err = e.api.Client(); err != nil {
		t.Fatal(err)
	}
	if err := apiserver.ApplyFile(ctx, e.admin, filepath.Join("..", "..", "deploy", "rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	for _, n := range e.cluster.Nodes {
		node := &v1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{v1.LabelTopologyZone: "zone-" + n.Name}},
			Status:     v1.NodeStatus{Addresses: []v1.NodeAddress{{Type: v1.NodeInternalIP, Address: n.IP.String()}}},
		}
		if _, err := e.admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.kubecfg, err = e.api.UserKubeconfig("system:serviceaccount:kube-system:svcproxy", "system:serviceaccounts", "system:serviceaccounts:kube-system")
	if err != nil {
		t.Fatal(err)
	}
	for pod := range pods {
		if _, err := e.cluster.Pod(pod).Start(e.binary, "whoami", "--name", pod, "--tcp", "80"); err != nil {
			t.Fatalf("whoami %s: %v", pod, err)
		}
	}
	for _, n := range e.cluster.Nodes {
		e.startProxy(n.Name, mode)
	}
	return e
}

// startProxy starts svcproxy on a node.
func (e *env) startProxy(node, mode string) {
	e.t.Helper()
	p, err := e.cluster.Node(node).Start(e.binary, "--mode="+mode, "--source=kube", "--kubeconfig="+e.kubecfg,
		"--hostname-override="+node, "--cluster-cidr="+topology.ClusterCIDR, "--min-sync-period=100ms", "-v=2")
	if err != nil {
		e.t.Fatalf("svcproxy on %s: %v", node, err)
	}
	e.proxies[node] = p
}

// nodePortService is a NodePort service on port 9000 → 80.
func nodePortService(name string, nodePort int32) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: v1.ServiceSpec{
			Type:  v1.ServiceTypeNodePort,
			Ports: []v1.ServicePort{{Name: "http", Port: 9000, NodePort: nodePort, Protocol: v1.ProtocolTCP}},
		},
	}
}

// slice is the EndpointSlice of service with the given web pods.
func (e *env) slice(service string, webPods ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: service + "-1",
			Labels:      map[string]string{discovery.LabelServiceName: service},
			Annotations: map[string]string{v1.EndpointsLastChangeTriggerTime: time.Now().UTC().Format(time.RFC3339Nano)}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](80), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, pod := range webPods {
		p := e.cluster.Pod(pod)
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{p.IP.String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To(pods[pod])})
	}
	return s
}

// nodePortURL is node's NodePort address.
func (e *env) nodePortURL(node string, port int) string {
	return fmt.Sprintf("http://%s/", netip.AddrPortFrom(e.cluster.Node(node).IP, uint16(port)))
}

// waitEveryNode waits until check passes through every node's NodePort and
// returns, per node, the time since start when it first did.
func (e *env) waitEveryNode(what string, start time.Time, check func(node string) error) map[string]time.Duration {
	e.t.Helper()
	took := map[string]time.Duration{}
	deadline := time.Now().Add(60 * time.Second)
	for len(took) < len(e.cluster.Nodes) {
		for _, n := range e.cluster.Nodes {
			if _, done := took[n.Name]; done {
				continue
			}
			if err := check(n.Name); err == nil {
				took[n.Name] = time.Since(start)
			} else if time.Now().After(deadline) {
				e.t.Fatalf("%s: node %s not there after 60s: %v", what, n.Name, err)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Logf("%s: API write → working traffic: node1 %v, node2 %v, node3 %v", what,
		took["node1"].Round(time.Millisecond), took["node2"].Round(time.Millisecond), took["node3"].Round(time.Millisecond))
	return took
}

// answersFrom sends n requests from the external client through node's
// NodePort and fails the check unless every one came from one of want.
func (e *env) answersFrom(node string, port, n int, want ...string) error {
	r := traffic.HTTP(e.ctx, e.external.Dial, e.nodePortURL(node, port), n, 2*time.Second)
	if r.Errors > 0 {
		return fmt.Errorf("%d of %d requests failed: %v", r.Errors, n, r.FirstError)
	}
	for pod := range r.Counts {
		ok := false
		for _, w := range want {
			ok = ok || w == pod
		}
		if !ok {
			return fmt.Errorf("answer from %s, want only %v (counts %v)", pod, want, r.Counts)
		}
	}
	return nil
}

// TestMultiNodeIPTables is issue 5's multi-node test in iptables mode: three
// nodes run svcproxy against a real kube-apiserver; changes made through the
// API reach every node's rules; an apiserver restart loses no rule; a
// SIGKILLed svcproxy that starts again keeps established connections and
// flushes nothing.
func TestMultiNodeIPTables(t *testing.T) {
	e := setup(t, "iptables")
	ctx := e.ctx
	all := []string{"web1", "web2", "web3"}

	// A new service: from the API write to traffic through every NodePort.
	start := time.Now()
	if _, err := e.admin.CoreV1().Services("default").Create(ctx, nodePortService("web", 30080), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.DiscoveryV1().EndpointSlices("default").Create(ctx, e.slice("web", all...), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitEveryNode("new service", start, func(node string) error { return e.answersFrom(node, 30080, 1, all...) })
	for _, n := range e.cluster.Nodes {
		r := traffic.HTTP(ctx, e.external.Dial, e.nodePortURL(n.Name, 30080), 300, 2*time.Second)
		if err := r.Fair(all, 300); err != nil {
			t.Errorf("spread through %s: %v (counts %v)", n.Name, err, r.Counts)
		}
	}

	// An endpoint change reaches every node.
	start = time.Now()
	if _, err := e.admin.DiscoveryV1().EndpointSlices("default").Update(ctx, e.slice("web", "web1"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitEveryNode("endpoints web1,web2,web3 → web1", start, func(node string) error { return e.answersFrom(node, 30080, 20, "web1") })

	// The apiserver goes away: every rule stays, traffic keeps flowing.
	if err := e.api.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	for _, n := range e.cluster.Nodes {
		if err := e.answersFrom(n.Name, 30080, 20, "web1"); err != nil {
			t.Errorf("with the apiserver down, through %s: %v", n.Name, err)
		}
	}
	if err := e.api.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if _, err := e.admin.DiscoveryV1().EndpointSlices("default").Update(ctx, e.slice("web", "web2", "web3"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitEveryNode("after the apiserver restart, endpoints → web2,web3", start, func(node string) error {
		return e.answersFrom(node, 30080, 20, "web2", "web3")
	})

	// svcproxy on node2 dies (SIGKILL) and starts again: an established
	// connection through node2 keeps working and no rule is flushed.
	node2 := e.cluster.Node("node2")
	conn, err := e.external.Dial(ctx, "tcp", netip.AddrPortFrom(node2.IP, 30080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	first, err := keepAliveGet(conn, br)
	if err != nil {
		t.Fatalf("first request on the kept connection: %v", err)
	}
	rulesBefore := natRules(ctx, t, node2)
	if err := syscall.Kill(e.proxies["node2"].Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = e.proxies["node2"].Wait()
	if got := natRules(ctx, t, node2); got != rulesBefore {
		t.Errorf("rules changed when svcproxy was killed:\n%s", ruleDiff(rulesBefore, got))
	}
	if again, err := keepAliveGet(conn, br); err != nil || again != first {
		t.Errorf("kept connection with svcproxy dead: %q, %v (first answer from %s)", again, err, first)
	}
	e.startProxy("node2", "iptables")
	waitSynced(ctx, t, node2, e.proxies["node2"])
	if again, err := keepAliveGet(conn, br); err != nil || again != first {
		t.Errorf("kept connection after svcproxy restarted: %q, %v (first answer from %s)", again, err, first)
	}
	if got := natRules(ctx, t, node2); got != rulesBefore {
		t.Errorf("rules differ after svcproxy restarted and synced:\n%s", ruleDiff(rulesBefore, got))
	}
	if err := e.answersFrom("node2", 30080, 20, "web2", "web3"); err != nil {
		t.Errorf("new connections through node2 after the restart: %v", err)
	}

	// Health: /healthz on every node, and the health-check node port of a
	// LoadBalancer service with externalTrafficPolicy: Local, whose only
	// endpoint is on node1.
	for _, n := range e.cluster.Nodes {
		body, err := traffic.Fetch(ctx, e.external.Dial, fmt.Sprintf("http://%s/healthz", netip.AddrPortFrom(n.IP, 10256)), 2*time.Second)
		if err != nil || !strings.Contains(body, `"nodeEligible":true`) || !strings.Contains(body, `"healthy":true`) {
			t.Errorf("/healthz on %s: %q %v", n.Name, body, err)
		}
	}
	lb := nodePortService("local", 0)
	lb.Spec.Type = v1.ServiceTypeLoadBalancer
	lb.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	lb, err = e.admin.CoreV1().Services("default").Create(ctx, lb, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.DiscoveryV1().EndpointSlices("default").Create(ctx, e.slice("local", "web1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	hc := int(lb.Spec.HealthCheckNodePort)
	if hc == 0 {
		t.Fatal("the apiserver allocated no healthCheckNodePort")
	}
	want := map[string]struct {
		code int
		body string
	}{"node1": {200, `"localEndpoints": 1`}, "node2": {503, `"localEndpoints": 0`}, "node3": {503, `"localEndpoints": 0`}}
	e.waitEveryNode(fmt.Sprintf("health-check node port %d", hc), time.Now(), func(node string) error {
		code, body, err := e.get(fmt.Sprintf("http://%s/", netip.AddrPortFrom(e.cluster.Node(node).IP, uint16(hc))))
		if err != nil {
			return err
		}
		if w := want[node]; code != w.code || !strings.Contains(body, w.body) || !strings.Contains(body, `"name": "local"`) {
			return fmt.Errorf("answer %d %q, want %d %s", code, body, w.code, w.body)
		}
		return nil
	})
}

// get fetches url from the external client and returns the status and body
// whatever the status.
func (e *env) get(url string) (int, string, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: e.external.Dial, DisableKeepAlives: true}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// keepAliveGet sends one HTTP/1.1 request on conn and returns the answering
// pod's name.
func keepAliveGet(conn net.Conn, br *bufio.Reader) (string, error) {
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body := make([]byte, 4096)
	n, _ := resp.Body.Read(body)
	for _, line := range strings.Split(string(body[:n]), "\n") {
		if name, ok := strings.CutPrefix(line, "Hostname: "); ok {
			return strings.TrimSpace(name), nil
		}
	}
	return "", fmt.Errorf("no Hostname in %q", body[:n])
}

// natRules returns svcproxy's nat rules on a node, without counters,
// sorted: a full sync may order a dispatch chain differently from the
// partial syncs that built it, which changes nothing a packet meets.
func natRules(ctx context.Context, t *testing.T, node *topology.Node) string {
	t.Helper()
	out, err := node.Run(ctx, "iptables-save", "-t", "nat")
	if err != nil {
		t.Fatal(err)
	}
	var rules []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "SVCP") && !strings.HasPrefix(line, "#") {
			rules = append(rules, line)
		}
	}
	slices.Sort(rules)
	return strings.Join(rules, "\n")
}

// ruleDiff lists the lines only in a and only in b.
func ruleDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ina, inb := in(a), in(b)
	var out []string
	for l := range ina {
		if !inb[l] {
			out = append(out, "- "+l)
		}
	}
	for l := range inb {
		if !ina[l] {
			out = append(out, "+ "+l)
		}
	}
	slices.Sort(out)
	return strings.Join(out, "\n")
}

// waitSynced waits until a node's svcproxy reports a successful sync on
// its metrics address (127.0.0.1:10249 in the node).
func waitSynced(ctx context.Context, t *testing.T, node *topology.Node, p *topology.Proc) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if p.Exited() {
			t.Fatalf("svcproxy on %s exited", node.Name)
		}
		body, err := traffic.Fetch(ctx, node.Dial, "http://127.0.0.1:10249/metrics", 2*time.Second)
		if err == nil && strings.Contains(body, "kubeproxy_sync_proxy_rules_last_timestamp_seconds{") &&
			!strings.Contains(body, "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 0\n") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("svcproxy on %s did not sync within 60s", node.Name)
}
