package iptables

// Test conventions for the iptables mode (the same as kube-proxy's tests):
//   - this node is "node1" in zone "a", with IP 192.168.0.2; other nodes are
//     192.168.0.3 ("node2") and 192.168.0.4 ("node3");
//   - pods are in the cluster CIDR 10.0.0.0/8: 10.0.1.0/24 on node1,
//     10.0.2.0/24 on node2, 10.0.3.0/24 on node3; a test client pod on this
//     node is 10.0.1.100, on another node 10.0.2.100;
//   - service cluster IPs are in 172.30.0.0/16;
//   - external IPs are in 192.168.99.0/24 and LoadBalancer IPs in 5.6.7.0/24
//     (not local to the node);
//   - external clients are in 203.0.113.0/24; loadBalancerSourceRanges
//     allow 203.0.113.0/25, so 203.0.113.5 is allowed and 203.0.113.200 not.

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptablestest"
)

var (
	nodeIP      = netip.MustParseAddr("192.168.0.2")
	clusterCIDR = netip.MustParsePrefix("10.0.0.0/8")
)

// testConfig is the configuration every test starts from.
func testConfig() proxier.Config {
	cfg := proxier.DefaultConfig()
	cfg.Node = proxier.Node{Name: "node1", Zone: "a"}
	cfg.ClusterCIDR = clusterCIDR
	return cfg
}

// newTestProxier returns a proxier writing to a new fake.
func newTestProxier(t *testing.T, cfg proxier.Config) (*Proxier, *iptablestest.Fake) {
	t.Helper()
	f := iptablestest.New()
	f.SaveCounters = true // as proxier.ExecRestorer saves
	p, err := NewWithOptions(cfg, Options{
		Restorer:    f,
		EnsureJumps: f.EnsureJumps,
		NodeAddresses: func(cidrs []netip.Prefix) ([]netip.Addr, error) {
			var out []netip.Addr
			for _, a := range []netip.Addr{nodeIP, netip.MustParseAddr("192.168.1.2")} {
				for _, c := range cidrs {
					if c.Contains(a) {
						out = append(out, a)
						break
					}
				}
			}
			return out, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p, f
}

// svc builds a Service in namespace "ns" with one TCP port "p80" (80).
func svc(name, clusterIP string, mods ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{
			Type: v1.ServiceTypeClusterIP, ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Ports: []v1.ServicePort{{Name: "p80", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

func nodePort(port int32) func(*v1.Service) {
	return func(s *v1.Service) {
		if s.Spec.Type == v1.ServiceTypeClusterIP {
			s.Spec.Type = v1.ServiceTypeNodePort
		}
		s.Spec.Ports[0].NodePort = port
	}
}

func loadBalancer(ip string, ranges ...string) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ip}}
		s.Spec.LoadBalancerSourceRanges = ranges
	}
}

func externalIPs(ips ...string) func(*v1.Service) {
	return func(s *v1.Service) { s.Spec.ExternalIPs = ips }
}

func localPolicy(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }

func clientIPAffinity(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP }

// endpoint is "ip@node", optionally followed by ",notready", ",terminating"
// or ",terminating-notserving".
type endpoint string

// eps builds the EndpointSlice "<svc>-1" with one port (name, number,
// protocol).
func eps(svcName, portName string, port int32, proto v1.Protocol, list ...endpoint) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svcName + "-1", Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(portName), Port: ptr.To(port), Protocol: ptr.To(proto)}},
	}
	for _, e := range list {
		spec, flags, _ := strings.Cut(string(e), ",")
		ip, node, _ := strings.Cut(spec, "@")
		cond := discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}
		switch flags {
		case "notready":
			cond.Ready = ptr.To(false)
		case "terminating":
			cond = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}
		case "terminating-notserving":
			cond = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(true)}
		}
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{ip}, NodeName: ptr.To(node), Conditions: cond})
	}
	return s
}

// tcpEps is eps for port "p80" over TCP.
func tcpEps(svcName string, port int32, list ...endpoint) *discovery.EndpointSlice {
	return eps(svcName, "p80", port, v1.ProtocolTCP, list...)
}

// world is the set of services most tests run against.
func world(tr *proxier.Tracker) {
	for _, o := range []struct {
		s *v1.Service
		e []*discovery.EndpointSlice
	}{
		{svc("svc1", "172.30.0.41"), []*discovery.EndpointSlice{tcpEps("svc1", 8080, "10.0.1.1@node1", "10.0.2.1@node2", "10.0.3.1@node3")}},
		{svc("svc2", "172.30.0.42", nodePort(3002), externalIPs("192.168.99.22")), []*discovery.EndpointSlice{tcpEps("svc2", 8080, "10.0.1.2@node1", "10.0.2.2@node2")}},
		{svc("svc3", "172.30.0.43", loadBalancer("5.6.7.8", "203.0.113.0/25"), nodePort(3003)), []*discovery.EndpointSlice{tcpEps("svc3", 8080, "10.0.2.3@node2")}},
		{svc("svc4", "172.30.0.44", nodePort(3004), externalIPs("192.168.99.24")), nil},
		{svc("svc5", "172.30.0.45"), []*discovery.EndpointSlice{tcpEps("svc5", 8080, "10.0.1.5@node1", "10.0.2.5@node2,notready")}},
		{svc("svc6", "172.30.0.46"), []*discovery.EndpointSlice{tcpEps("svc6", 8080, "10.0.1.6@node1,terminating", "10.0.2.6@node2,terminating-notserving", "10.0.3.6@node3,notready")}},
		{svc("svc7", "172.30.0.47", loadBalancer("5.6.7.9"), nodePort(3007), localPolicy), []*discovery.EndpointSlice{tcpEps("svc7", 8080, "10.0.1.7@node1", "10.0.2.7@node2")}},
		{svc("svc8", "172.30.0.48", clientIPAffinity), []*discovery.EndpointSlice{tcpEps("svc8", 8080, "10.0.1.8@node1", "10.0.2.8@node2")}},
		{svc("svc9", "172.30.0.49", func(s *v1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "p443", Port: 443, Protocol: v1.ProtocolTCP})
		}), []*discovery.EndpointSlice{multiPort("svc9", "10.0.1.9@node1", "10.0.2.9@node2")}},
		{svc("svc10", "172.30.0.50"), []*discovery.EndpointSlice{tcpEps("svc10", 8080, "10.0.1.10@node1")}},
		{svc("dns", "172.30.0.10", func(s *v1.Service) {
			s.Spec.Ports[0] = v1.ServicePort{Name: "dns", Port: 53, Protocol: v1.ProtocolUDP}
		}), []*discovery.EndpointSlice{eps("dns", "dns", 5353, v1.ProtocolUDP, "10.0.1.53@node1")}},
	} {
		tr.UpdateService(o.s)
		for _, e := range o.e {
			tr.UpdateEndpointSlice(e)
		}
	}
}

// multiPort is svc9's slice: p80 -> 8080, p443 -> 8443.
func multiPort(svcName string, list ...endpoint) *discovery.EndpointSlice {
	s := tcpEps(svcName, 8080, list...)
	s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr.To("p443"), Port: ptr.To[int32](8443), Protocol: ptr.To(v1.ProtocolTCP)})
	return s
}

// syncWorld builds a tracker with world() (plus extra updates), syncs a
// new proxier once and returns everything.
func syncWorld(t *testing.T, cfg proxier.Config, extra ...func(*proxier.Tracker)) (*Proxier, *iptablestest.Fake, *proxier.Tracker) {
	t.Helper()
	p, f := newTestProxier(t, cfg)
	tr := proxier.NewTracker(nil)
	world(tr)
	for _, x := range extra {
		x(tr)
	}
	snap, ch := tr.Commit()
	if err := p.Sync(context.Background(), snap, ch); err != nil {
		t.Fatalf("first sync: %v", err)
	}
	return p, f, tr
}

// packetFlowTest is one packet to trace and what must happen to it.
type packetFlowTest struct {
	name   string
	src    string
	dst    string
	proto  string // "" is tcp
	port   int
	output bool // sent by the node itself (nat OUTPUT) instead of arriving
	// want is the tracer's Summary: the sorted DNAT destinations, or
	// ACCEPT / DROP / REJECT.
	want string
	masq bool
}

// runPacketFlowTests traces every test packet through f's rules.
func runPacketFlowTests(t *testing.T, f *iptablestest.Fake, tests []packetFlowTest) {
	t.Helper()
	tracer := &iptablestest.Tracer{Fake: f, NodeIPs: []netip.Addr{nodeIP}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pkt := iptablestest.Packet{
				Source: netip.MustParseAddr(tc.src), Dest: netip.MustParseAddr(tc.dst),
				Protocol: tc.proto, DestPort: tc.port,
			}
			if tc.output {
				pkt.Hook = iptablestest.Output
			}
			res, err := tracer.Trace(pkt)
			if err != nil {
				t.Fatalf("trace: %v", err)
			}
			var errs []string
			if got := res.Summary(); got != tc.want {
				errs = append(errs, fmt.Sprintf("destinations %q, want %q", got, tc.want))
			}
			all, any := res.Masquerade()
			if tc.masq && !all || !tc.masq && any {
				errs = append(errs, fmt.Sprintf("masquerade all=%v any=%v, want %v", all, any, tc.masq))
			}
			if errs != nil {
				t.Errorf("packet %s -> %s:%d:\n%s\n\noutcomes:\n%s", tc.src, tc.dst, tc.port, strings.Join(errs, "\n"), res.Explain())
			}
		})
	}
}

// dispatchChains are the chains whose rule order depends on the order of
// changes (partial syncs insert at the top).
var dispatchChains = map[string]bool{servicesChain: true, nodePortsChain: true, externalServicesChain: true}

// normalizedSave returns Save output of filter and nat with the rules of
// the dispatch chains sorted, so a partial sync can be compared with a full
// one.
func normalizedSave(t *testing.T, f *iptablestest.Fake) string {
	t.Helper()
	var out []string
	for _, table := range []string{"filter", "nat"} {
		saved, err := f.Save(context.Background(), table)
		if err != nil {
			t.Fatal(err)
		}
		var sorted []string
		for _, line := range strings.Split(string(saved), "\n") {
			rule := strings.TrimPrefix(line, "[0:0] ")
			fields := strings.Fields(rule)
			if len(fields) > 1 && fields[0] == "-A" && dispatchChains[fields[1]] {
				sorted = append(sorted, rule)
				continue
			}
			out = append(out, line)
		}
		sort.Strings(sorted)
		out = append(out, sorted...)
	}
	return strings.Join(out, "\n")
}

// chainsOf returns the names of every chain a service port owns in the
// proxier's memory of what it wrote.
func chainsOf(p *Proxier, spn proxier.ServicePortName) []string {
	var out []string
	if sr := p.written[spn]; sr != nil {
		for _, c := range sr.chains {
			out = append(out, c.name)
		}
	}
	return out
}

// portName is the ServicePortName of port p80/TCP of service name.
func portName(name string) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: name}, Port: "p80", Protocol: v1.ProtocolTCP}
}

// sortedKeys returns a map's keys, sorted.
func sortedKeys(m map[netip.AddrPort]float64) []string {
	var out []string
	for k := range m {
		out = append(out, k.String())
	}
	slices.Sort(out)
	return out
}
