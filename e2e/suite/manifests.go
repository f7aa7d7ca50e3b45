package suite

import (
	"fmt"
	"strings"

	"github.com/svcproxy/svcproxy/e2e/topology"
)

// svc describes a Service for a scenario.
type svc struct {
	name, clusterIP string
	// typ is ClusterIP (default), NodePort or LoadBalancer.
	typ                         string
	ports                       []svcPort
	externalIPs, lbIPs, sources []string
	affinity                    bool
	externalLocal               bool
}

// svcPort is one service port; target may be a number or a port name.
type svcPort struct {
	name     string
	port     int
	target   string
	nodePort int
	protocol string
}

// yaml renders the Service.
func (s svc) yaml() string {
	var b strings.Builder
	typ := s.typ
	if typ == "" {
		typ = "ClusterIP"
	}
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: default\nspec:\n  type: %s\n  clusterIP: %s\n", s.name, typ, s.clusterIP)
	if s.affinity {
		b.WriteString("  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 600\n")
	}
	if s.externalLocal {
		b.WriteString("  externalTrafficPolicy: Local\n")
	}
	list("externalIPs", s.externalIPs, &b)
	list("loadBalancerSourceRanges", s.sources, &b)
	b.WriteString("  ports:\n")
	for _, p := range s.ports {
		proto := p.protocol
		if proto == "" {
			proto = "TCP"
		}
		fmt.Fprintf(&b, "  - name: %q\n    port: %d\n    protocol: %s\n    targetPort: %s\n", p.name, p.port, proto, p.target)
		if p.nodePort != 0 {
			fmt.Fprintf(&b, "    nodePort: %d\n", p.nodePort)
		}
	}
	if len(s.lbIPs) > 0 {
		b.WriteString("status:\n  loadBalancer:\n    ingress:\n")
		for _, ip := range s.lbIPs {
			fmt.Fprintf(&b, "    - ip: %s\n", ip)
		}
	}
	return b.String() + "---\n"
}

func list(key string, items []string, b *strings.Builder) {
	if len(items) == 0 {
		return
	}
	fmt.Fprintf(b, "  %s:\n", key)
	for _, it := range items {
		fmt.Fprintf(b, "  - %s\n", it)
	}
}

// slice describes an EndpointSlice of a scenario's service.
type slice struct {
	name, service string
	ports         []slicePort
	endpoints     []endpoint
}

// slicePort is a named port number of a slice.
type slicePort struct {
	name     string
	port     int
	protocol string
}

// endpoint is a pod in a slice.
type endpoint struct {
	pod                   string
	notReady, terminating bool
}

// podAddress maps the suite's pods to their address and node.
var podAddress = map[string][2]string{
	"client": {topology.PodIP(1, 0).String(), "node1"},
	"web1":   {topology.PodIP(1, 1).String(), "node1"},
	"web2":   {topology.PodIP(2, 0).String(), "node2"},
	"web3":   {topology.PodIP(3, 0).String(), "node3"},
}

// yaml renders the EndpointSlice.
func (s slice) yaml() string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %s\n  namespace: default\n  labels:\n    kubernetes.io/service-name: %s\naddressType: IPv4\nports:\n", s.name, s.service)
	for _, p := range s.ports {
		proto := p.protocol
		if proto == "" {
			proto = "TCP"
		}
		fmt.Fprintf(&b, "- name: %q\n  port: %d\n  protocol: %s\n", p.name, p.port, proto)
	}
	b.WriteString("endpoints:\n")
	for _, e := range s.endpoints {
		addr := podAddress[e.pod]
		fmt.Fprintf(&b, "- addresses: [%s]\n  nodeName: %s\n  conditions:\n    ready: %t\n    serving: true\n    terminating: %t\n",
			addr[0], addr[1], !e.notReady && !e.terminating, e.terminating)
	}
	return b.String() + "---\n"
}

// pods returns endpoints for the named pods, all ready.
func pods(names ...string) []endpoint {
	var out []endpoint
	for _, n := range names {
		out = append(out, endpoint{pod: n})
	}
	return out
}

// simple is a one-port service name:port -> target on the given pods, with
// its slice.
func simple(name, clusterIP string, port int, target int, eps []endpoint) string {
	return svc{name: name, clusterIP: clusterIP, ports: []svcPort{{name: "http", port: port, target: fmt.Sprint(target)}}}.yaml() +
		slice{name: name + "-1", service: name, ports: []slicePort{{name: "http", port: target}}, endpoints: eps}.yaml()
}
