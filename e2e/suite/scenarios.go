package suite

import (
	"fmt"
	"time"

	"github.com/svcproxy/svcproxy/e2e/topology"
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
		manifests: svc{name: "multi", clusterIP: "10.96.1.2", ports: []svcPort{
			{name: "a", port: 9001, target: "8080"}, {name: "b", port: 9002, target: "81"},
		}}.yaml() + slice{name: "multi-1", service: "multi",
			ports: []slicePort{{name: "a", port: 8080}, {name: "b", port: 81}}, endpoints: pods("web1", "web2")}.yaml(),
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
		manifests: svc{name: "named", clusterIP: "10.96.1.3", ports: []svcPort{{name: "web", port: 80, target: "web"}}}.yaml() +
			slice{name: "named-a", service: "named", ports: []slicePort{{name: "web", port: 8080}}, endpoints: pods("web1", "web2")}.yaml() +
			slice{name: "named-b", service: "named", ports: []slicePort{{name: "web", port: 8081}}, endpoints: pods("web3")}.yaml(),
		check: func(e *env) {
			url := "http://10.96.1.3:80/"
			e.reachable("client", url)
			e.fair(e.http("client", url, 300), WebPods, 300)
		},
	},
	{
		name: "session-affinity",
		manifests: svc{name: "sticky", clusterIP: "10.96.1.4", affinity: true, ports: []svcPort{{name: "http", port: 80, target: "80"}}}.yaml() +
			slice{name: "sticky-1", service: "sticky", ports: []slicePort{{name: "http", port: 80}}, endpoints: web}.yaml(),
		check: func(e *env) {
			url := "http://10.96.1.4/"
			e.reachable("client", url)
			r := e.http("client", url, 100)
			if r.Errors > 0 || len(r.Counts) != 1 {
				e.t.Fatalf("ClientIP affinity: want every answer from one pod, got %v (errors %d: %v)", r.Counts, r.Errors, r.FirstError)
			}
		},
	},
	{
		name: "nodeport",
		manifests: svc{name: "np", clusterIP: "10.96.1.5", typ: "NodePort", ports: []svcPort{{name: "http", port: 80, target: "80", nodePort: 30080}}}.yaml() +
			slice{name: "np-1", service: "np", ports: []slicePort{{name: "http", port: 80}}, endpoints: web}.yaml(),
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
		manifests: svc{name: "extip", clusterIP: "10.96.1.6", externalIPs: []string{"203.0.113.10"}, ports: []svcPort{{name: "http", port: 80, target: "80"}}}.yaml() +
			slice{name: "extip-1", service: "extip", ports: []slicePort{{name: "http", port: 80}}, endpoints: web}.yaml(),
		check: func(e *env) {
			url := "http://203.0.113.10/"
			e.reachable("external", url)
			e.fair(e.http("external", url, 150), WebPods, 150)
		},
	},
	{
		name: "loadbalancer",
		manifests: svc{name: "lb", clusterIP: "10.96.1.7", typ: "LoadBalancer", lbIPs: []string{"203.0.113.20"},
			sources: []string{topology.ExternalIP + "/32"}, ports: []svcPort{{name: "http", port: 80, target: "80", nodePort: 30081}}}.yaml() +
			slice{name: "lb-1", service: "lb", ports: []slicePort{{name: "http", port: 80}}, endpoints: web}.yaml() +
			svc{name: "lb-denied", clusterIP: "10.96.1.8", typ: "LoadBalancer", lbIPs: []string{"203.0.113.21"},
				sources: []string{"192.0.2.0/24"}, ports: []svcPort{{name: "http", port: 80, target: "80", nodePort: 30082}}}.yaml() +
			slice{name: "lb-denied-1", service: "lb-denied", ports: []slicePort{{name: "http", port: 80}}, endpoints: web}.yaml(),
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
			[]endpoint{{pod: "web1"}, {pod: "web2"}, {pod: "web3", notReady: true}}),
		check: func(e *env) {
			url := "http://10.96.1.11/"
			e.reachable("client", url)
			e.only(e.http("client", url, 200), "web1", "web2")
		},
	},
	{
		name: "udp",
		manifests: svc{name: "dns", clusterIP: "10.96.1.12", ports: []svcPort{{name: "dns", port: 53, target: "80", protocol: "UDP"}}}.yaml() +
			slice{name: "dns-1", service: "dns", ports: []slicePort{{name: "dns", port: 80, protocol: "UDP"}}, endpoints: web}.yaml(),
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
		manifests: "apiVersion: v1\nkind: Service\nmetadata: {name: broken-port, namespace: default}\nspec:\n  clusterIP: 10.96.1.14\n  ports: [{port: 99999, protocol: TCP}]\n---\n" +
			"apiVersion: v1\nkind: Service\nmetadata: {name: unknown-field}\nspec: {clusterIP: 10.96.1.15, bogus: 1}\n---\n" +
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
