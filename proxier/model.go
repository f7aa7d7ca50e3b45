package proxier

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ServicePortName identifies one port of one Service: namespace/name, the
// port's name (empty for a single unnamed port) and its protocol.
type ServicePortName struct {
	types.NamespacedName
	Port     string
	Protocol v1.Protocol
}

// String renders the name as kube-proxy does: "ns/name:port" (the ":port" part
// only when the port is named).
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.NamespacedName.String()
	}
	return n.NamespacedName.String() + ":" + n.Port
}

// ServicePort is everything a proxier needs to know about one port of a
// Service. It is immutable once built; a change produces a new value.
type ServicePort struct {
	Name ServicePortName
	// ClusterIPs holds the service's cluster IPs (one per IP family).
	ClusterIPs []netip.Addr
	// Port is the service port number.
	Port int
	// NodePort is the node port, or 0 when the service has none.
	NodePort int
	// ExternalIPs are the spec.externalIPs that also reach this port.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are the status.loadBalancer.ingress IPs.
	LoadBalancerIPs []netip.Addr
	// LoadBalancerSourceRanges restricts who may reach the LoadBalancer IPs;
	// empty means everyone.
	LoadBalancerSourceRanges []netip.Prefix
	// StickyTimeout is the ClientIP session affinity timeout; zero means no
	// affinity.
	StickyTimeout time.Duration
	// ExternalPolicyLocal is externalTrafficPolicy: Local.
	ExternalPolicyLocal bool
	// InternalPolicyLocal is internalTrafficPolicy: Local.
	InternalPolicyLocal bool
	// HealthCheckNodePort serves the local endpoint count for Local
	// external policy; 0 when unset.
	HealthCheckNodePort int
	// PreferClose is trafficDistribution: PreferClose (or topology hints).
	PreferClose bool
	// Scheduler is a per-service IPVS scheduler override (annotation
	// SchedulerAnnotation); empty means the proxier's default.
	Scheduler string
}

// SchedulerAnnotation names the Service annotation that overrides the IPVS
// scheduler for that service only, e.g. "svcproxy.io/ipvs-scheduler: sh".
const SchedulerAnnotation = "svcproxy.io/ipvs-scheduler"

// SessionAffinity reports whether ClientIP session affinity is on.
func (s *ServicePort) SessionAffinity() bool { return s.StickyTimeout > 0 }

// ExternallyReachable reports whether the port has any address that traffic
// from outside the cluster may use (NodePort, external or LoadBalancer IPs).
func (s *ServicePort) ExternallyReachable() bool {
	return s.NodePort != 0 || len(s.ExternalIPs) > 0 || len(s.LoadBalancerIPs) > 0
}

// Endpoint is one backend of a ServicePort.
type Endpoint struct {
	IP   netip.Addr
	Port int
	// Ready, Serving and Terminating are the EndpointSlice conditions.
	Ready       bool
	Serving     bool
	Terminating bool
	// NodeName and Zone locate the endpoint; ZoneHints are the topology
	// hints the EndpointSlice controller gave it.
	NodeName  string
	Zone      string
	ZoneHints []string
}

// AddrPort returns the endpoint's address and port.
func (e Endpoint) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(e.IP, uint16(e.Port))
}

// String renders the endpoint as "ip:port".
func (e Endpoint) String() string { return e.AddrPort().String() }

// equalEndpoints reports whether two endpoint lists are identical.
func equalEndpoints(a, b []Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].equal(b[i]) {
			return false
		}
	}
	return true
}

func (e Endpoint) equal(o Endpoint) bool {
	if e.IP != o.IP || e.Port != o.Port || e.Ready != o.Ready || e.Serving != o.Serving ||
		e.Terminating != o.Terminating || e.NodeName != o.NodeName || e.Zone != o.Zone ||
		len(e.ZoneHints) != len(o.ZoneHints) {
		return false
	}
	for i := range e.ZoneHints {
		if e.ZoneHints[i] != o.ZoneHints[i] {
			return false
		}
	}
	return true
}

// Node describes the node the proxy runs on.
type Node struct {
	Name string
	Zone string
}

// ProtocolLower returns the protocol in lower case, as iptables, ipvsadm and
// conntrack spell it.
func ProtocolLower(p v1.Protocol) string {
	switch p {
	case v1.ProtocolUDP:
		return "udp"
	case v1.ProtocolSCTP:
		return "sctp"
	default:
		return "tcp"
	}
}

// Describe renders the service port's addresses for logs and the lab, e.g.
// "10.96.0.10:9000/TCP nodePort=30080".
func (s *ServicePort) Describe() string {
	out := ""
	for i, ip := range s.ClusterIPs {
		if i > 0 {
			out += ","
		}
		out += netip.AddrPortFrom(ip, uint16(s.Port)).String()
	}
	out += "/" + string(s.Name.Protocol)
	if s.NodePort != 0 {
		out += " nodePort=" + strconv.Itoa(s.NodePort)
	}
	for _, ip := range s.ExternalIPs {
		out += fmt.Sprintf(" externalIP=%s", ip)
	}
	for _, ip := range s.LoadBalancerIPs {
		out += fmt.Sprintf(" loadBalancerIP=%s", ip)
	}
	return out
}
