package ipvs_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxier"
)

func TestExplain(t *testing.T) {
	e := newEnv(t, nil)
	e.full(snapshot(
		svc("a", "10.96.0.1", func(sp *proxier.ServicePort) { sp.StickyTimeout = 60 * time.Second; sp.Scheduler = "sh" }), eps("10.244.1.11", "10.244.2.10"),
		svc("empty", "10.96.0.2"), nil,
		svc("lb", "10.96.0.3", func(sp *proxier.ServicePort) {
			sp.LoadBalancerIPs = addrs("203.0.113.20")
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
		}), eps("10.244.1.11"),
	))
	_ = e.h.SetConnections(ipvs.Key{Address: netip.MustParseAddr("10.96.0.1"), Protocol: v1.ProtocolTCP, Port: 80},
		netip.MustParseAddrPort("10.244.2.10:8080"), 4, 7)
	tests := []struct {
		dst  string
		want []string
	}{
		{"10.96.0.1:80", []string{"10.96.0.1 is on kube-ipvs0", "10.96.0.1,tcp:80 is in SVCP-CLUSTER-IP: this rule applies",
			"scheduler sh: source hashing", "persistent 60 s", "10.244.2.10:8080            1      4        7"}},
		{"10.96.0.2:80", []string{"10.96.0.2,tcp:80 is in SVCP-NO-ENDPOINTS", "connection refused", "no real servers"}},
		{"203.0.113.20:80", []string{"is in SVCP-LOAD-BALANCER-FW", "sources allowed for 203.0.113.20:80: 198.51.100.0/24"}},
		{"172.30.0.11:30000", []string{"one of this node's own addresses", "No IPVS virtual server TCP 172.30.0.11:30000"}},
		{"192.0.2.9:80", []string{"not on kube-ipvs0 nor a node address", "No IPVS virtual server"}},
	}
	for _, tc := range tests {
		t.Run(tc.dst, func(t *testing.T) {
			var sb strings.Builder
			if err := e.p.Explain(context.Background(), &sb, v1.ProtocolTCP, netip.MustParseAddrPort(tc.dst)); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(sb.String(), w) {
					t.Errorf("explain %s lacks %q:\n%s", tc.dst, w, sb.String())
				}
			}
		})
	}
}
