package suite

// IPVS-only checks, read with the real ipvsadm inside the node namespaces
// (not svcproxy's own listing). They reuse Run's cluster and setup with a
// table of their own; svcproxy runs with --ipvs-strict-arp here.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/manifest"
	"github.com/svcproxy/svcproxy/e2e/topology"
	"github.com/svcproxy/svcproxy/e2e/traffic"
	"github.com/svcproxy/svcproxy/e2e/vm"
	"github.com/svcproxy/svcproxy/proxier"
)

func TestIPVSChecks(t *testing.T) {
	if !vm.HostHasIPVS() && !vm.InVM() {
		runInVM(t, "^TestIPVSChecks$")
		return
	}
	saved := scenarios
	scenarios = ipvsScenarios
	defer func() { scenarios = saved }()
	Run(t, Options{Mode: "ipvs", Binary: os.Getenv(binaryEnv), ExtraArgs: []string{"--ipvs-strict-arp"}})
}

// ipvsService is one virtual server as ipvsadm -Ln prints it.
type ipvsService struct {
	scheduler string
	flags     string
	// weights by real server "ip:port"; forward by real server
	weights map[string]int
	forward map[string]string
}

// ipvsadm runs ipvsadm -Ln in a node and parses it, by "PROTO ip:port".
func (e *env) ipvsadm(node string) map[string]*ipvsService {
	e.t.Helper()
	out, err := e.cluster.Node(node).Run(e.ctx, "ipvsadm", "-Ln")
	if err != nil {
		e.t.Fatalf("ipvsadm -Ln in %s: %v\n%s", node, err, out)
	}
	svcs := map[string]*ipvsService{}
	var cur *ipvsService
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && (f[0] == "TCP" || f[0] == "UDP" || f[0] == "SCTP"):
			cur = &ipvsService{scheduler: f[2], flags: strings.Join(f[3:], " "), weights: map[string]int{}, forward: map[string]string{}}
			svcs[f[0]+" "+f[1]] = cur
		case len(f) >= 4 && f[0] == "->" && cur != nil && f[1] != "RemoteAddress:Port":
			w, _ := strconv.Atoi(f[3])
			cur.weights[f[1]] = w
			cur.forward[f[1]] = f[2]
		}
	}
	return svcs
}

// waitIPVS waits until node1's ipvsadm shows vs with the given real
// servers and weights, and returns it.
func (e *env) waitIPVS(vs string, weights map[string]int) *ipvsService {
	e.t.Helper()
	var got *ipvsService
	e.eventually("ipvsadm shows "+vs, func() error {
		got = e.ipvsadm("node1")[vs]
		if got == nil {
			return fmt.Errorf("no virtual server %s", vs)
		}
		if fmt.Sprint(got.weights) != fmt.Sprint(weights) {
			return fmt.Errorf("%s real servers %v, want %v", vs, got.weights, weights)
		}
		return nil
	})
	return got
}

func podAddr(pod string, port int) string { return podAddress[pod][0] + ":" + strconv.Itoa(port) }

// distinctPorts returns a dial function for a host whose TCP connections
// use source ports base, base+1, ... (below the ephemeral range). IPVS keys
// connections by client address and port: a new connection from a port
// whose previous connection to the same service is still in IPVS's table
// (not yet in TIME_WAIT) goes to that connection's real server without a
// scheduling decision. Exact spreads need every connection scheduled.
func (e *env) distinctPorts(from string, base int) traffic.DialFunc {
	h := e.host(from)
	next := base
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		port := next
		next++
		var conn net.Conn
		err := h.Do(func() (err error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{Port: port}}
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// exactHTTP sends n requests from distinct source ports and checks the
// spread is exactly want.
func (e *env) exactHTTP(from, url string, n, base int, want map[string]int) {
	e.t.Helper()
	e.exact(traffic.HTTP(e.ctx, e.distinctPorts(from, base), url, n, 2*time.Second), want)
}

// exact checks that a result has exactly the given counts and no errors.
func (e *env) exact(r traffic.Result, want map[string]int) {
	e.t.Helper()
	if r.Errors > 0 || fmt.Sprint(r.Counts) != fmt.Sprint(want) {
		e.t.Fatalf("spread %v (errors %d, first %v), want exactly %v", r.Counts, r.Errors, r.FirstError, want)
	}
}

var ipvsScenarios = []scenario{
	{
		name: "ipvsadm-view",
		manifests: manifest.Service{Name: "view", ClusterIP: "10.96.2.1", Type: "NodePort",
			Ports: []manifest.Port{{Name: "http", Port: 80, Target: "80", NodePort: 30090}}}.YAML() +
			manifest.Slice{Name: "view-1", Service: "view", Ports: []manifest.SlicePort{{Name: "http", Port: 80}}, Endpoints: web}.YAML() +
			manifest.Service{Name: "view-sticky", ClusterIP: "10.96.2.7", Affinity: true, Ports: []manifest.Port{{Name: "http", Port: 80, Target: "80"}}}.YAML() +
			manifest.Slice{Name: "view-sticky-1", Service: "view-sticky", Ports: []manifest.SlicePort{{Name: "http", Port: 80}}, Endpoints: web}.YAML(),
		check: func(e *env) {
			all := map[string]int{podAddr("web1", 80): 1, podAddr("web2", 80): 1, podAddr("web3", 80): 1}
			e.waitIPVS("TCP 10.96.2.1:80", all)
			e.waitIPVS("TCP 10.96.2.7:80", all)
			for _, node := range []int{1, 2, 3} {
				name := fmt.Sprintf("node%d", node)
				svcs := e.ipvsadm(name)
				for _, vs := range []string{"TCP 10.96.2.1:80", fmt.Sprintf("TCP %s:30090", topology.NodeIP(node)), "TCP 10.96.2.7:80"} {
					s := svcs[vs]
					if s == nil {
						e.t.Fatalf("%s: no virtual server %s in ipvsadm -Ln", name, vs)
					}
					if s.scheduler != "rr" || fmt.Sprint(s.weights) != fmt.Sprint(all) {
						e.t.Errorf("%s: %s is %s %v, want rr %v", name, vs, s.scheduler, s.weights, all)
					}
					for rs, fwd := range s.forward {
						if fwd != "Masq" {
							e.t.Errorf("%s: %s -> %s forwarding %s, want Masq", name, vs, rs, fwd)
						}
					}
				}
				if f := svcs["TCP 10.96.2.7:80"].flags; f != "persistent 600" {
					e.t.Errorf("%s: ClientIP affinity shows as %q, want \"persistent 600\"", name, f)
				}
				out, err := e.cluster.Node(name).Run(e.ctx, "ip", "-o", "-4", "addr", "show", "dev", "kube-ipvs0")
				if err != nil || !strings.Contains(string(out), " 10.96.2.1/32 ") {
					e.t.Errorf("%s: 10.96.2.1/32 not on kube-ipvs0: %v\n%s", name, err, out)
				}
			}
			out, err := e.cluster.Node("node1").Run(e.ctx, e.opts.Binary, "explain", "--mode=ipvs", "10.96.2.1:80")
			if err != nil || !strings.Contains(string(out), "scheduler rr") || !strings.Contains(string(out), podAddr("web3", 80)) {
				e.t.Errorf("svcproxy explain: %v\n%s", err, out)
			}
		},
	},
	{
		name:      "rr-exact-spread",
		manifests: simple("rr", "10.96.2.2", 80, 80, web),
		check: func(e *env) {
			url := "http://10.96.2.2/"
			e.reachable("client", url)
			e.exactHTTP("client", url, 300, 20000, map[string]int{"web1": 100, "web2": 100, "web3": 100})
		},
	},
	{
		name: "sh-keeps-a-client-on-one-pod",
		manifests: manifest.Service{Name: "sh", ClusterIP: "10.96.2.3", Annotations: map[string]string{proxier.SchedulerAnnotation: "sh"},
			Ports: []manifest.Port{{Name: "http", Port: 80, Target: "80"}}}.YAML() +
			manifest.Slice{Name: "sh-1", Service: "sh", Ports: []manifest.SlicePort{{Name: "http", Port: 80}}, Endpoints: web}.YAML(),
		check: func(e *env) {
			url := "http://10.96.2.3/"
			if s := e.waitIPVS("TCP 10.96.2.3:80", map[string]int{podAddr("web1", 80): 1, podAddr("web2", 80): 1, podAddr("web3", 80): 1}); s.scheduler != "sh" {
				e.t.Fatalf("scheduler %s, want sh", s.scheduler)
			}
			for _, from := range []string{"client", "web2", "node1"} {
				e.reachable(from, url)
				r := e.http(from, url, 60)
				if r.Errors > 0 || len(r.Counts) != 1 {
					e.t.Errorf("sh from %s: want one pod, got %v (errors %d: %v)", from, r.Counts, r.Errors, r.FirstError)
				}
			}
		},
	},
	{
		name: "wrr-weights",
		manifests: manifest.Service{Name: "wrr", ClusterIP: "10.96.2.4",
			Annotations: map[string]string{proxier.SchedulerAnnotation: fmt.Sprintf("wrr;%s=3,%s=2", podAddress["web1"][0], podAddress["web2"][0])},
			Ports:       []manifest.Port{{Name: "http", Port: 80, Target: "80"}}}.YAML() +
			manifest.Slice{Name: "wrr-1", Service: "wrr", Ports: []manifest.SlicePort{{Name: "http", Port: 80}}, Endpoints: web}.YAML(),
		check: func(e *env) {
			url := "http://10.96.2.4/"
			if s := e.waitIPVS("TCP 10.96.2.4:80", map[string]int{podAddr("web1", 80): 3, podAddr("web2", 80): 2, podAddr("web3", 80): 1}); s.scheduler != "wrr" {
				e.t.Fatalf("scheduler %s, want wrr", s.scheduler)
			}
			e.reachable("client", url)
			e.exactHTTP("client", url, 300, 21000, map[string]int{"web1": 150, "web2": 100, "web3": 50})
		},
	},
	{
		name:      "open-connection-survives-endpoint-removal",
		manifests: simple("drain", "10.96.2.5", 80, 80, pods("web1", "web2")),
		check: func(e *env) {
			url := "http://10.96.2.5/"
			e.reachable("client", url)
			// one keep-alive connection, held open
			tr := &http.Transport{DialContext: e.host("client").Dial, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, IdleConnTimeout: time.Minute}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			first := fetchHostname(e, client, url)
			other := "web1"
			if first == "web1" {
				other = "web2"
			}
			e.update("open-connection-survives-endpoint-removal", simple("drain", "10.96.2.5", 80, 80, pods(other)))
			e.waitIPVS("TCP 10.96.2.5:80", map[string]int{podAddr(first, 80): 0, podAddr(other, 80): 1})
			e.only(e.http("client", url, 30), other)
			for i := 0; i < 3; i++ {
				if got := fetchHostname(e, client, url); got != first {
					e.t.Fatalf("request %d on the open connection answered by %s, want %s", i+2, got, first)
				}
			}
		},
	},
	{
		name:      "strict-arp-and-conntrack-sysctls",
		manifests: "",
		check: func(e *env) {
			want := map[string]string{"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2", "net.ipv4.vs.conntrack": "1"}
			for _, node := range e.cluster.Nodes {
				for _, k := range slices.Sorted(maps.Keys(want)) {
					e.eventually(node.Name+" "+k, func() error {
						got, err := node.Sysctl(k)
						if err != nil {
							return err
						}
						if strings.TrimSpace(got) != want[k] {
							return fmt.Errorf("%s=%s, want %s", k, got, want[k])
						}
						return nil
					})
				}
			}
		},
	},
}

// fetchHostname sends one request with client and returns the pod that
// answered; the connection stays open for the next request.
func fetchHostname(e *env, client *http.Client, url string) string {
	e.t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		e.t.Fatalf("GET %s: %v", url, err)
	}
	body, err := io.ReadAll(resp.Body) // read it all, so the connection is reused
	resp.Body.Close()
	if err != nil {
		e.t.Fatalf("GET %s: %v", url, err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Hostname:"); ok {
			return strings.TrimSpace(v)
		}
	}
	e.t.Fatalf("GET %s: no Hostname in the answer", url)
	return ""
}
