// Package manifest renders the v1 Services and discovery/v1 EndpointSlices
// that the e2e suite, the lab and the benchmark feed svcproxy's file source.
package manifest

import (
	"fmt"
	"strings"
)

// Service describes a Service.
type Service struct {
	Name, Namespace, ClusterIP string
	// Type is ClusterIP (default), NodePort or LoadBalancer.
	Type  string
	Ports []Port
	// ExternalIPs, LoadBalancerIPs (status ingress) and SourceRanges
	// (loadBalancerSourceRanges).
	ExternalIPs, LoadBalancerIPs, SourceRanges []string
	// Affinity turns on ClientIP session affinity (600 s).
	Affinity bool
	// ExternalLocal sets externalTrafficPolicy: Local.
	ExternalLocal bool
	// Annotations are added to the metadata.
	Annotations map[string]string
}

// Port is one service port; Target may be a number or a port name.
type Port struct {
	Name     string
	Port     int
	Target   string
	NodePort int
	Protocol string
}

// YAML renders the Service as one document, "---" included.
func (s Service) YAML() string {
	var b strings.Builder
	typ := s.Type
	if typ == "" {
		typ = "ClusterIP"
	}
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Service\nmetadata:\n  name: %q\n  namespace: %q\n", s.Name, namespace(s.Namespace))
	if len(s.Annotations) > 0 {
		b.WriteString("  annotations:\n")
		for k, v := range s.Annotations {
			fmt.Fprintf(&b, "    %q: %q\n", k, v)
		}
	}
	fmt.Fprintf(&b, "spec:\n  type: %s\n  clusterIP: %s\n", typ, s.ClusterIP)
	if s.Affinity {
		b.WriteString("  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 600\n")
	}
	if s.ExternalLocal {
		b.WriteString("  externalTrafficPolicy: Local\n")
	}
	list("externalIPs", s.ExternalIPs, &b)
	list("loadBalancerSourceRanges", s.SourceRanges, &b)
	b.WriteString("  ports:\n")
	for _, p := range s.Ports {
		fmt.Fprintf(&b, "  - name: %q\n    port: %d\n    protocol: %s\n    targetPort: %s\n", p.Name, p.Port, protocol(p.Protocol), p.Target)
		if p.NodePort != 0 {
			fmt.Fprintf(&b, "    nodePort: %d\n", p.NodePort)
		}
	}
	if len(s.LoadBalancerIPs) > 0 {
		b.WriteString("status:\n  loadBalancer:\n    ingress:\n")
		for _, ip := range s.LoadBalancerIPs {
			fmt.Fprintf(&b, "    - ip: %s\n", ip)
		}
	}
	return b.String() + "---\n"
}

func namespace(ns string) string {
	if ns == "" {
		return "default"
	}
	return ns
}

func protocol(p string) string {
	if p == "" {
		return "TCP"
	}
	return p
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

// Slice describes an EndpointSlice of a service.
type Slice struct {
	Name, Namespace, Service string
	Ports                    []SlicePort
	Endpoints                []Endpoint
}

// SlicePort is a named port number of a slice.
type SlicePort struct {
	Name     string
	Port     int
	Protocol string
}

// Endpoint is one address in a slice.
type Endpoint struct {
	IP, Node              string
	NotReady, Terminating bool
}

// YAML renders the EndpointSlice as one document, "---" included.
func (s Slice) YAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: %q\n  namespace: %q\n  labels:\n    kubernetes.io/service-name: %q\naddressType: IPv4\nports:\n",
		s.Name, namespace(s.Namespace), s.Service)
	for _, p := range s.Ports {
		fmt.Fprintf(&b, "- name: %q\n  port: %d\n  protocol: %s\n", p.Name, p.Port, protocol(p.Protocol))
	}
	b.WriteString("endpoints:\n")
	for _, e := range s.Endpoints {
		fmt.Fprintf(&b, "- addresses: [%s]\n  nodeName: %q\n  conditions:\n    ready: %t\n    serving: true\n    terminating: %t\n",
			e.IP, e.Node, !e.NotReady && !e.Terminating, e.Terminating)
	}
	return b.String() + "---\n"
}
