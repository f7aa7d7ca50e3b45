package proxier_test

// Test conventions for the proxier package:
//   - services live in namespace "ns" and have cluster IPs in 172.30.0.0/16;
//   - endpoints (pods) are in 10.0.0.0/8: 10.0.1.x on node "node1" (zone
//     "a"), 10.0.2.x on "node2" (zone "b"), 10.0.3.x on "node3" (zone "c");
//   - external and LoadBalancer IPs are in 192.168.99.0/24.

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxier"
)

// service returns a valid ClusterIP service with one TCP port named "http"
// (80), after applying the modifiers.
func service(name, clusterIP string, mods ...func(*v1.Service)) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			Ports:      []v1.ServicePort{{Name: "http", Port: 80, Protocol: v1.ProtocolTCP}},
		},
	}
	for _, m := range mods {
		m(svc)
	}
	return svc
}

// ep describes one endpoint of a slice.
type ep struct {
	ip          string
	node        string
	notReady    bool
	terminating bool
	notServing  bool
	zone        string
	hints       []string
}

// slice returns an EndpointSlice of service svc with one port (name, port,
// protocol) and the given endpoints.
func slice(name, svc, portName string, port int32, proto v1.Protocol, eps ...ep) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "ns", Name: name,
			Labels: map[string]string{discovery.LabelServiceName: svc},
		},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To(portName), Port: ptr.To(port), Protocol: ptr.To(proto)}},
	}
	for _, e := range eps {
		de := discovery.Endpoint{
			Addresses: []string{e.ip},
			Conditions: discovery.EndpointConditions{
				Ready:       ptr.To(!e.notReady),
				Serving:     ptr.To(!e.notServing),
				Terminating: ptr.To(e.terminating),
			},
		}
		if e.node != "" {
			de.NodeName = ptr.To(e.node)
		}
		if e.zone != "" {
			de.Zone = ptr.To(e.zone)
		}
		if e.hints != nil {
			de.Hints = &discovery.EndpointHints{}
			for _, z := range e.hints {
				de.Hints.ForZones = append(de.Hints.ForZones, discovery.ForZone{Name: z})
			}
		}
		s.Endpoints = append(s.Endpoints, de)
	}
	return s
}

// spn returns the ServicePortName of port portName/proto of ns/svc.
func spn(svc, portName string, proto v1.Protocol) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: svc}, Port: portName, Protocol: proto}
}

// httpPort is the ServicePortName of a service made by service().
func httpPort(svc string) proxier.ServicePortName { return spn(svc, "http", v1.ProtocolTCP) }

// addrs renders endpoints as "ip:port" strings.
func addrs(eps []proxier.Endpoint) []string {
	out := []string{}
	for _, e := range eps {
		out = append(out, e.String())
	}
	return out
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
