package suite

import (
	"fmt"
	"net"
	"time"

	"github.com/svcproxy/svcproxy/e2e/manifest"
	"github.com/svcproxy/svcproxy/e2e/topology"
	"github.com/svcproxy/svcproxy/e2e/traffic"
)

// scenario is one row of the suite: manifests, and the traffic that must
// follow from them.
type scenario struct {
	name      string
	manifests string
	check     func(e *env)
}

var web = pods("web1", "web2", "web3")

// scenarios is the mode-independent table.
var scenarios = []scenario{
	{
		name:      "clusterip-spread",
		manifests: simple("spread", "10.96.1.1", 9000, 80, web),
		check: func(e *env) {
			url := "http://10.96.1.1:9000/"
			e.reachable("client", url)
			e.fair(e.http("client", url, 1000), WebPods, 1000)
			// from the node itself (OUTPUT path, masqueraded)
			e.reachable("node1", url)
			e.fair(e.http("node1", url, 300), WebPods, 300)
		},
	},
	{
		name: "multi-port",
		manifests: manifest.Service{Name: "multi", ClusterIP: "10.96.1.2", Ports: []manifest.Port{
			{Name: "a", Port: 9001, Target: "8080"}, {Name: "b", Port: 9002, Target: "81"},
		}}.YAML() + manifest.Slice{Name: "multi-1", Service: "multi",
			Ports: []manifest.SlicePort{{Name: "a", Port: 8080}, {Name: "b", Port: 81}}, Endpoints: pods("web1", "web2")}.YAML(),
		check: func(e *env) {
			for _, url := range []string{"http://10.96.1.2:9001/", "http://10.96.1.2:9002/"} {
				e.reachable("client", url)
				e.only(e.http("client", url, 60), "web1", "web2")
			}
		},
	},
	{
		// web1 and web2 serve "web" on 8080, web3 on 8081: each slice
		// resolves the named targetPort for its own pods.
		name: "named-targetport",
		manifests: manifest.Service{Name: "named", ClusterIP: "10.96.1.3", Ports: []manifest.Port{{Name: "web", Port: 80, Target: "web"}}}.YAML() +
			manifest.Slice{Name: "named-a", Service: "named", Ports: []manifest.SlicePort{{Name: "web", Port: 8080}}, Endpoints: pods("web1", "web2")}.YAML() +
			manifest.Slice{Name: "named-b", Service: "named", Ports: []manifest.SlicePort{{Name: "web", Port: 8081}}, Endpoints: pods("web3")}.YAML(),
		check: func(e *env) {
			url := "http://10.96.1.3:80/"
			e.reachable("client", url)
			e.fair(e.http("client", url, 300), WebPods, 300)
		},
	},
	{
		name: "session-affinity",
		manifests: manifest.Service{Name: "sticky", ClusterIP: "10.96.1.4", Affinity: true, Ports: []manifest.Port{{Name: "http", Port: 80, Target: "80"}}}.YAML() +
			manifest.Slice{Name: "sticky-1", Service: "sticky", Ports: []manifest.SlicePort{{Name: "http", Port: 80}}, Endpoints: web}.YAML(),
		check: func(e *env) {
			url := "http://10.96.1.4/"
			e.reachable("client", url)
			r := e.http("client", url, 100)
			if r.Errors > 0 || len(r.Counts) != 1 {
				e.t.Fatalf("ClientIP Affinity: want every answer from one pod, got %v (errors %d: %v)", r.Counts, r.Errors, r.FirstError)
			}
		},
	},
	{
		name: "nodeport",
		manifests: manifest.Service{Name: "np", ClusterIP: "10.96.1.5", Type: "NodePort", Ports: []manifest.Port{{Name: "http", Port: 80, Target: "80", NodePort: 30080}}}.YAML() +
			manifest.Slice{Name: "np-1", Service: "np", Ports: []manifest.SlicePort{{Name: "http", Port: 80}}, Endpoints: web}.YAML(),
		check: func(e *env) {
			for _, node := range []int{1, 2, 3} {
				url := fmt.Sprintf("http://%s:30080/", topology.NodeIP(node))
				e.reachable("external", url)
				e.fair(e.http("external", url, 150), WebPods, 150)
			}
		},
	},
	{
		name: "external-ip",
		manifests: manifest.Service{Name: "extip", ClusterIP: "10.96.1.6", ExternalIPs: []string{"203.0.113.10"}, Ports: []manifest.Port{{Name: "http", Port: 80, Target: "80"}}}.YAML() +
			manifest.Slice{Name: "extip-1", Service: "extip", Ports: []manifest.SlicePort{{Name: "http", Port: 80}}, Endpoints: web}.YAML(),
		check: func(e *env) {
			url := "http://203.0.113.10/"
			e.reachable("external", url)
			e.fair(e.http("external", url, 150), WebPods, 150)
		},
	},
	{
		name: "loadbalancer",
		manifests: manifest.Service{Name: "lb", ClusterIP: "10.96.1.7", Type: "LoadBalancer", LoadBalancerIPs: []string{"203.0.113.20"},
			SourceRanges: []string{topology.ExternalIP + "/32"}, Ports: []manifest.Port{{Name: "http", Port: 80, Target: "80", NodePort: 30081}}}.YAML() +
			manifest.Slice{Name: "lb-1", Service: "lb", Ports: []manifest.SlicePort{{Name: "http", Port: 80}}, Endpoints: web}.YAML() +
			manifest.Service{Name: "lb-denied", ClusterIP: "10.96.1.8", Type: "LoadBalancer", LoadBalancerIPs: []string{"203.0.113.21"},
				SourceRanges: []string{"192.0.2.0/24"}, Ports: []manifest.Port{{Name: "http", Port: 80, Target: "80", NodePort: 30082}}}.YAML() +
			manifest.Slice{Name: "lb-denied-1", Service: "lb-denied", Ports: []manifest.SlicePort{{Name: "http", Port: 80}}, Endpoints: web}.YAML(),
		check: func(e *env) {
			url := "http://203.0.113.20/"
			e.reachable("external", url)
			e.fair(e.http("external", url, 150), WebPods, 150)
			// the second service only admits 192.0.2.0/24
			e.reachable("client", "http://10.96.1.8/")
			if r := e.http("external", "http://203.0.113.21/", 3); r.Answered() > 0 {
				e.t.Fatalf("loadBalancerSourceRanges: a client outside the ranges got %v", r.Counts)
			}
		},
	},
	{
		name:      "no-endpoints-refused",
		manifests: simple("empty", "10.96.1.9", 80, 80, nil),
		check: func(e *env) {
			// once the rules are there, a connection is refused at once
			e.eventually("connection refused", func() error {
				r := e.http("client", "http://10.96.1.9/", 1)
				if !isRefused(r.FirstError) {
					return fmt.Errorf("want connection refused, got %v (counts %v)", r.FirstError, r.Counts)
				}
				if r.Latencies != nil && len(r.Latencies) > 0 {
					return fmt.Errorf("unexpected answer")
				}
				return nil
			})
		},
	},
	{
		name:      "endpoint-removed",
		manifests: simple("shrink", "10.96.1.10", 80, 80, web),
		check: func(e *env) {
			url := "http://10.96.1.10/"
			e.reachable("client", url)
			e.update("endpoint-removed", simple("shrink", "10.96.1.10", 80, 80, pods("web1", "web2")))
			start := time.Now()
			e.eventually("web3 stops getting traffic", func() error {
				r := e.http("client", url, 30)
				if r.Counts["web3"] > 0 || r.Errors > 0 {
					return fmt.Errorf("counts %v, errors %d", r.Counts, r.Errors)
				}
				return nil
			})
			e.t.Logf("endpoint removal took effect within %v", time.Since(start).Round(time.Millisecond))
			e.only(e.http("client", url, 100), "web1", "web2")
		},
	},
	{
		name: "not-ready-endpoint",
		manifests: simple("notready", "10.96.1.11", 80, 80,
			append(pods("web1", "web2"), manifest.Endpoint{IP: podAddress["web3"][0], Node: podAddress["web3"][1], NotReady: true})),
		check: func(e *env) {
			url := "http://10.96.1.11/"
			e.reachable("client", url)
			e.only(e.http("client", url, 200), "web1", "web2")
		},
	},
	{
		name:      "udp",
		manifests: udpService("dns", "10.96.1.12", web),
		check: func(e *env) {
			e.eventually("UDP service answers", func() error {
				if r := e.udp("client", "10.96.1.12:53", 3); r.Errors > 0 {
					return r.FirstError
				}
				return nil
			})
			e.fair(e.udp("client", "10.96.1.12:53", 300), WebPods, 300)
		},
	},
	{
		// A client that keeps its UDP source port is pinned to one pod by
		// conntrack; when that pod leaves, its entries must go, so the
		// next datagram reaches another pod.
		name:      "udp-endpoint-removed",
		manifests: udpService("udpgone", "10.96.1.17", web),
		check: func(e *env) {
			var conn *net.UDPConn
			if err := e.host("client").Do(func() (err error) {
				conn, err = net.ListenUDP("udp", &net.UDPAddr{Port: 40053})
				return err
			}); err != nil {
				e.t.Fatal(err)
			}
			defer conn.Close()
			vip := &net.UDPAddr{IP: net.IPv4(10, 96, 1, 17), Port: 53}
			ask := func() (string, error) {
				if _, err := conn.WriteTo([]byte("who"), vip); err != nil {
					return "", err
				}
				_ = conn.SetReadDeadline(time.Now().Add(time.Second))
				buf := make([]byte, 2048)
				n, _, err := conn.ReadFrom(buf)
				if err != nil {
					return "", err
				}
				return traffic.Hostname(buf[:n])
			}
			var pinned string
			e.eventually("UDP service answers", func() (err error) { pinned, err = ask(); return err })
			for range 5 {
				if got, err := ask(); err != nil || got != pinned {
					e.t.Fatalf("a fixed source port should stay on %s, got %q (%v)", pinned, got, err)
				}
			}
			var rest []manifest.Endpoint
			for _, p := range WebPods {
				if p != pinned {
					rest = append(rest, pods(p)...)
				}
			}
			e.update("udp-endpoint-removed", udpService("udpgone", "10.96.1.17", rest))
			e.eventually("the same client port moves off "+pinned, func() error {
				got, err := ask()
				if err != nil {
					return err
				}
				if got == pinned {
					return fmt.Errorf("still answered by %s", pinned)
				}
				return nil
			})
		},
	},
	{
		// web1 reaches itself through its own service.
		name:      "hairpin",
		manifests: simple("hairpin", "10.96.1.13", 80, 80, pods("web1")),
		check: func(e *env) {
			url := "http://10.96.1.13/"
			e.reachable("web1", url)
			e.only(e.http("web1", url, 20), "web1")
		},
	},
	{
		// A file with broken documents next to a valid one: the valid
		// service works.
		name: "invalid-document",
		manifests: "apiVersion: v1\nkind: Service\nmetadata: {Name: broken-port, namespace: default}\nspec:\n  ClusterIP: 10.96.1.14\n  Ports: [{Port: 99999, Protocol: TCP}]\n---\n" +
			"apiVersion: v1\nkind: Service\nmetadata: {Name: unknown-field}\nspec: {ClusterIP: 10.96.1.15, bogus: 1}\n---\n" +
			"this is: [not yaml\n---\n" +
			simple("valid", "10.96.1.16", 80, 80, web),
		check: func(e *env) {
			e.reachable("client", "http://10.96.1.16/")
			if r := e.http("client", "http://10.96.1.14:99/", 1); r.Answered() > 0 {
				e.t.Fatalf("the invalid service answered")
			}
		},
	},
}

// podAddress maps the suite's pods to their address and node.
var podAddress = map[string][2]string{
	"client": {topology.PodIP(1, 0).String(), "node1"},
	"web1":   {topology.PodIP(1, 1).String(), "node1"},
	"web2":   {topology.PodIP(2, 0).String(), "node2"},
	"web3":   {topology.PodIP(3, 0).String(), "node3"},
}

// pods returns ready endpoints for the named pods.
func pods(names ...string) []manifest.Endpoint {
	var out []manifest.Endpoint
	for _, n := range names {
		out = append(out, manifest.Endpoint{IP: podAddress[n][0], Node: podAddress[n][1]})
	}
	return out
}

// simple is a one-port service name:port -> target on eps, with its slice.
func simple(name, clusterIP string, port, target int, eps []manifest.Endpoint) string {
	return manifest.Service{Name: name, ClusterIP: clusterIP, Ports: []manifest.Port{{Name: "http", Port: port, Target: fmt.Sprint(target)}}}.YAML() +
		manifest.Slice{Name: name + "-1", Service: name, Ports: []manifest.SlicePort{{Name: "http", Port: target}}, Endpoints: eps}.YAML()
}

// udpService is a UDP service port 53 -> 80 on eps, with its slice.
func udpService(name, clusterIP string, eps []manifest.Endpoint) string {
	return manifest.Service{Name: name, ClusterIP: clusterIP, Ports: []manifest.Port{{Name: "dns", Port: 53, Target: "80", Protocol: "UDP"}}}.YAML() +
		manifest.Slice{Name: name + "-1", Service: name, Ports: []manifest.SlicePort{{Name: "dns", Port: 80, Protocol: "UDP"}}, Endpoints: eps}.YAML()
}
