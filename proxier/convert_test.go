package proxier_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/proxier"
)

func TestServicePortsValidation(t *testing.T) {
	tests := []struct {
		name string
		svc  *v1.Service
		// wantErr is a substring of the error; "" means valid.
		wantErr string
		// wantPorts is the number of ports of a valid service (0: ignored).
		wantPorts int
	}{
		{name: "valid", svc: service("a", "172.30.0.1"), wantPorts: 1},
		{name: "headless ignored", svc: service("a", "None"), wantPorts: 0},
		{name: "no cluster IP ignored", svc: service("a", ""), wantPorts: 0},
		{name: "ExternalName ignored", svc: service("a", "172.30.0.1", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeExternalName
			s.Spec.ExternalName = "example.com"
		}), wantPorts: 0},
		{name: "bad cluster IP", svc: service("a", "172.30.0.999"), wantErr: "spec.clusterIPs[0]"},
		{name: "bad clusterIP without clusterIPs", svc: service("a", "banana", func(s *v1.Service) { s.Spec.ClusterIPs = nil }), wantErr: "spec.clusterIP"},
		{name: "unspecified cluster IP", svc: service("a", "0.0.0.0"), wantErr: "not a usable IP"},
		{name: "bad external IP", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.ExternalIPs = []string{"1.2.3"} }), wantErr: "spec.externalIPs[0]"},
		{name: "bad LoadBalancer ingress IP", svc: service("a", "172.30.0.1", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "x"}}
		}), wantErr: "status.loadBalancer.ingress[0].ip"},
		{name: "hostname-only ingress is fine", svc: service("a", "172.30.0.1", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{Hostname: "lb.example.com"}}
		}), wantPorts: 1},
		{name: "space-padded source range is valid (the API allows it)", svc: service("a", "172.30.0.1", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.LoadBalancerSourceRanges = []string{" 10.0.0.0/8 "}
		}), wantPorts: 1},
		{name: "bad source range", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/33"} }), wantErr: "loadBalancerSourceRanges[0]"},
		{name: "port 0", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].Port = 0 }), wantErr: "spec.ports[0].port 0 out of range"},
		{name: "port too big", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].Port = 65536 }), wantErr: "out of range"},
		{name: "node port too big", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].NodePort = 70000 }), wantErr: "nodePort 70000"},
		{name: "negative node port", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].NodePort = -1 }), wantErr: "nodePort -1"},
		{name: "missing protocol", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].Protocol = "" }), wantErr: "protocol is missing"},
		{name: "unknown protocol", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].Protocol = "ICMP" }), wantErr: "not TCP, UDP or SCTP"},
		{name: "duplicate port names", svc: service("a", "172.30.0.1", func(s *v1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "http", Port: 81, Protocol: v1.ProtocolTCP})
		}), wantErr: "duplicate port name"},
		{name: "same name, other protocol is fine", svc: service("a", "172.30.0.1", func(s *v1.Service) {
			s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{Name: "http", Port: 80, Protocol: v1.ProtocolUDP})
		}), wantPorts: 2},
		{name: "multi-port without names", svc: service("a", "172.30.0.1", func(s *v1.Service) {
			s.Spec.Ports = []v1.ServicePort{{Port: 80, Protocol: v1.ProtocolTCP}, {Name: "b", Port: 81, Protocol: v1.ProtocolTCP}}
		}), wantErr: "needs a name on every port"},
		{name: "long port name is valid (a DNS label, not an IANA service name)", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].Name = "metrics-exporter-http" }), wantPorts: 1},
		{name: "numeric port name is valid", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].Name = "8080" }), wantPorts: 1},
		{name: "bad port name", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].Name = "Not_Valid" }), wantErr: "spec.ports[0].name"},
		{name: "no ports", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports = nil }), wantErr: "spec.ports is empty"},
		{name: "affinity timeout zero", svc: service("a", "172.30.0.1", affinity(0)), wantErr: "timeoutSeconds 0"},
		{name: "affinity timeout too long", svc: service("a", "172.30.0.1", affinity(86401)), wantErr: "timeoutSeconds 86401"},
		{name: "affinity timeout ok", svc: service("a", "172.30.0.1", affinity(60)), wantPorts: 1},
		{name: "bad name", svc: service("A_B", "172.30.0.1"), wantErr: "invalid service name"},
		{name: "bad namespace", svc: service("a", "172.30.0.1", func(s *v1.Service) { s.Namespace = "" }), wantErr: "invalid namespace"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ports, err := proxier.ServicePorts(tc.svc)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				if ports != nil {
					t.Fatalf("an invalid service returned ports: %v", ports)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if len(ports) != tc.wantPorts {
				t.Fatalf("got %d ports, want %d", len(ports), tc.wantPorts)
			}
		})
	}
}

func affinity(secs int32) func(*v1.Service) {
	return func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(secs)}}
	}
}

func TestServicePortsFields(t *testing.T) {
	local := v1.ServiceInternalTrafficPolicyLocal
	svc := service("lb", "172.30.0.9", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeLoadBalancer
		s.Spec.Ports[0].NodePort = 30080
		s.Spec.ExternalIPs = []string{"192.168.99.1"}
		s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "192.168.99.2"}}
		s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.7/24"}
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		s.Spec.HealthCheckNodePort = 31000
		s.Spec.InternalTrafficPolicy = &local
		s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		s.Annotations = map[string]string{proxier.SchedulerAnnotation: "sh"}
	})
	ports, err := proxier.ServicePorts(svc)
	if err != nil {
		t.Fatal(err)
	}
	sp := ports[httpPort("lb")]
	if sp == nil {
		t.Fatalf("no port %v in %v", httpPort("lb"), ports)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"cluster IPs", sp.ClusterIPs, []netip.Addr{mustAddr(t, "172.30.0.9")}},
		{"node port", sp.NodePort, 30080},
		{"external IPs", sp.ExternalIPs, []netip.Addr{mustAddr(t, "192.168.99.1")}},
		{"LB IPs", sp.LoadBalancerIPs, []netip.Addr{mustAddr(t, "192.168.99.2")}},
		{"source ranges are masked", sp.LoadBalancerSourceRanges[0].String(), "203.0.113.0/24"},
		{"default affinity timeout", sp.StickyTimeout, 3 * time.Hour},
		{"external policy local", sp.ExternalPolicyLocal, true},
		{"internal policy local", sp.InternalPolicyLocal, true},
		{"health check node port", sp.HealthCheckNodePort, 31000},
		{"scheduler", sp.Scheduler, "sh"},
	}
	for _, c := range checks {
		if !equalAny(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	// A ClusterIP service has no node port even if one is set, and Local
	// external policy means nothing without external addresses.
	ports, err = proxier.ServicePorts(service("c", "172.30.0.3", func(s *v1.Service) {
		s.Spec.Ports[0].NodePort = 30000
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	}))
	if err != nil {
		t.Fatal(err)
	}
	if sp := ports[httpPort("c")]; sp.NodePort != 0 || sp.ExternalPolicyLocal {
		t.Errorf("ClusterIP service: nodePort=%d externalLocal=%v, want 0 and false", sp.NodePort, sp.ExternalPolicyLocal)
	}
}

func equalAny(a, b any) bool {
	switch x := a.(type) {
	case []netip.Addr:
		y := b.([]netip.Addr)
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if x[i] != y[i] {
				return false
			}
		}
		return true
	}
	return a == b
}

func TestSliceEndpointsValidation(t *testing.T) {
	good := func() *discovery.EndpointSlice {
		return slice("s1", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.1.1", node: "node1"})
	}
	tests := []struct {
		name    string
		mod     func(*discovery.EndpointSlice)
		wantErr string
		want    int // endpoints of port "http" when valid
	}{
		{name: "valid", mod: func(*discovery.EndpointSlice) {}, want: 1},
		{name: "missing service label", mod: func(s *discovery.EndpointSlice) { s.Labels = nil }, wantErr: "label kubernetes.io/service-name is missing"},
		{name: "port missing", mod: func(s *discovery.EndpointSlice) { s.Ports[0].Port = nil }, wantErr: "ports[0].port is missing"},
		{name: "port out of range", mod: func(s *discovery.EndpointSlice) { s.Ports[0].Port = ptr.To[int32](0) }, wantErr: "out of range"},
		{name: "port too big", mod: func(s *discovery.EndpointSlice) { s.Ports[0].Port = ptr.To[int32](65536) }, wantErr: "out of range"},
		{name: "duplicate port names", mod: func(s *discovery.EndpointSlice) { s.Ports = append(s.Ports, s.Ports[0]) }, wantErr: "duplicate port name"},
		{name: "bad address", mod: func(s *discovery.EndpointSlice) { s.Endpoints[0].Addresses = []string{"10.0.1"} }, wantErr: "endpoints[0].addresses[0]"},
		{name: "no address", mod: func(s *discovery.EndpointSlice) { s.Endpoints[0].Addresses = nil }, wantErr: "addresses is empty"},
		{name: "FQDN slice ignored", mod: func(s *discovery.EndpointSlice) { s.AddressType = discovery.AddressTypeFQDN }, want: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := good()
			tc.mod(s)
			got, err := proxier.SliceEndpoints(s)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n := len(got[httpPort("a")]); n != tc.want {
				t.Fatalf("%d endpoints, want %d", n, tc.want)
			}
		})
	}
}

func TestSliceEndpointsConditions(t *testing.T) {
	s := slice("s1", "a", "http", 8080, v1.ProtocolTCP,
		ep{ip: "10.0.1.1", node: "node1", zone: "a", hints: []string{"a"}},
		ep{ip: "10.0.1.2", notReady: true},
		ep{ip: "10.0.1.3", notReady: true, terminating: true},
	)
	// Ready unset on a terminating endpoint means not ready.
	s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{"10.0.1.4"},
		Conditions: discovery.EndpointConditions{Terminating: ptr.To(true)}})
	// Conditions unset mean ready and serving.
	s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{"10.0.1.5"}})
	got, err := proxier.SliceEndpoints(s)
	if err != nil {
		t.Fatal(err)
	}
	eps := got[httpPort("a")]
	want := []struct{ ready, serving, terminating bool }{
		{true, true, false}, {false, true, false}, {false, true, true}, {false, true, true}, {true, true, false},
	}
	if len(eps) != len(want) {
		t.Fatalf("%d endpoints, want %d", len(eps), len(want))
	}
	for i, w := range want {
		e := eps[i]
		if e.Ready != w.ready || e.Serving != w.serving || e.Terminating != w.terminating || e.Port != 8080 {
			t.Errorf("endpoint %s: ready=%v serving=%v terminating=%v port=%d, want %+v port 8080", e, e.Ready, e.Serving, e.Terminating, e.Port, w)
		}
	}
	if eps[0].NodeName != "node1" || eps[0].Zone != "a" || len(eps[0].ZoneHints) != 1 || eps[0].ZoneHints[0] != "a" {
		t.Errorf("topology fields lost: %+v", eps[0])
	}
	// An omitted protocol means TCP.
	s.Ports[0].Protocol = nil
	got, err = proxier.SliceEndpoints(s)
	if err != nil || len(got[httpPort("a")]) != 5 {
		t.Errorf("protocol default: %v %v", got, err)
	}
}
