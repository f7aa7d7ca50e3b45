package proxier_test

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
)

func TestSelectEndpoints(t *testing.T) {
	node := proxier.Node{Name: "node1", Zone: "a"}
	e := func(ip, nodeName string, mods ...func(*proxier.Endpoint)) proxier.Endpoint {
		x := proxier.Endpoint{IP: netip.MustParseAddr(ip), Port: 80, Ready: true, Serving: true, NodeName: nodeName}
		for _, m := range mods {
			m(&x)
		}
		return x
	}
	notReady := func(x *proxier.Endpoint) { x.Ready = false }
	terminating := func(x *proxier.Endpoint) { x.Ready, x.Terminating = false, true }
	notServing := func(x *proxier.Endpoint) { x.Serving = false }
	zone := func(z string, hints ...string) func(*proxier.Endpoint) {
		return func(x *proxier.Endpoint) { x.Zone, x.ZoneHints = z, hints }
	}
	cluster := proxier.ServicePort{NodePort: 30000}
	extLocal := proxier.ServicePort{NodePort: 30000, ExternalPolicyLocal: true}
	intLocal := proxier.ServicePort{NodePort: 30000, InternalPolicyLocal: true}
	preferClose := proxier.ServicePort{PreferClose: true}

	tests := []struct {
		name                 string
		sp                   proxier.ServicePort
		eps                  []proxier.Endpoint
		node                 *proxier.Node // nil: node1 in zone a
		wantCluster, wantExt []string
		wantLocal            int
	}{
		{
			name:        "ready only",
			sp:          cluster,
			eps:         []proxier.Endpoint{e("10.0.1.1", "node1"), e("10.0.2.1", "node2", notReady), e("10.0.3.1", "node3", terminating)},
			wantCluster: []string{"10.0.1.1:80"}, wantExt: []string{"10.0.1.1:80"}, wantLocal: 1,
		},
		{
			name:        "terminating fallback when none ready",
			sp:          cluster,
			eps:         []proxier.Endpoint{e("10.0.1.1", "node1", terminating), e("10.0.2.1", "node2", terminating, notServing), e("10.0.3.1", "node3", notReady)},
			wantCluster: []string{"10.0.1.1:80"}, wantExt: []string{"10.0.1.1:80"}, wantLocal: 1,
		},
		{
			name:        "no usable endpoints",
			sp:          cluster,
			eps:         []proxier.Endpoint{e("10.0.2.1", "node2", notReady)},
			wantCluster: []string{}, wantExt: []string{},
		},
		{
			name:        "external policy Local",
			sp:          extLocal,
			eps:         []proxier.Endpoint{e("10.0.1.1", "node1"), e("10.0.2.1", "node2")},
			wantCluster: []string{"10.0.1.1:80", "10.0.2.1:80"}, wantExt: []string{"10.0.1.1:80"}, wantLocal: 1,
		},
		{
			name:        "external policy Local, local endpoint terminating",
			sp:          extLocal,
			eps:         []proxier.Endpoint{e("10.0.1.1", "node1", terminating), e("10.0.2.1", "node2")},
			wantCluster: []string{"10.0.2.1:80"}, wantExt: []string{"10.0.1.1:80"}, wantLocal: 1,
		},
		{
			name:        "external policy Local, no local endpoint",
			sp:          extLocal,
			eps:         []proxier.Endpoint{e("10.0.2.1", "node2")},
			wantCluster: []string{"10.0.2.1:80"}, wantExt: []string{},
		},
		{
			name:        "internal policy Local",
			sp:          intLocal,
			eps:         []proxier.Endpoint{e("10.0.1.1", "node1"), e("10.0.2.1", "node2")},
			wantCluster: []string{"10.0.1.1:80"}, wantExt: []string{"10.0.1.1:80", "10.0.2.1:80"}, wantLocal: 1,
		},
		{
			name:        "Local policy with an unnamed node selects nothing local",
			sp:          intLocal,
			node:        &proxier.Node{},
			eps:         []proxier.Endpoint{e("10.0.1.1", "")},
			wantCluster: []string{}, wantExt: []string{"10.0.1.1:80"},
		},
		{
			name:        "zone hints narrow cluster and external traffic",
			sp:          cluster,
			eps:         []proxier.Endpoint{e("10.0.1.1", "node1", zone("a", "a")), e("10.0.2.1", "node2", zone("b", "b")), e("10.0.2.2", "node2", zone("b", "a"))},
			wantCluster: []string{"10.0.1.1:80", "10.0.2.2:80"}, wantExt: []string{"10.0.1.1:80", "10.0.2.2:80"}, wantLocal: 1,
		},
		{
			name:        "a missing hint disables hints",
			sp:          cluster,
			eps:         []proxier.Endpoint{e("10.0.1.1", "node1", zone("a", "a")), e("10.0.2.1", "node2", zone("b"))},
			wantCluster: []string{"10.0.1.1:80", "10.0.2.1:80"}, wantExt: []string{"10.0.1.1:80", "10.0.2.1:80"}, wantLocal: 1,
		},
		{
			name:        "no hint for our zone disables hints",
			sp:          cluster,
			eps:         []proxier.Endpoint{e("10.0.2.1", "node2", zone("b", "b")), e("10.0.3.1", "node3", zone("c", "c"))},
			wantCluster: []string{"10.0.2.1:80", "10.0.3.1:80"}, wantExt: []string{"10.0.2.1:80", "10.0.3.1:80"},
		},
		{
			name:        "PreferClose uses endpoint zones",
			sp:          preferClose,
			eps:         []proxier.Endpoint{e("10.0.1.1", "node1", zone("a")), e("10.0.2.1", "node2", zone("b")), e("10.0.2.5", "node5", zone("a"))},
			wantCluster: []string{"10.0.1.1:80", "10.0.2.5:80"}, wantExt: []string{"10.0.1.1:80", "10.0.2.5:80"}, wantLocal: 1,
		},
		{
			name:        "PreferClose without a local-zone endpoint uses all",
			sp:          preferClose,
			eps:         []proxier.Endpoint{e("10.0.2.1", "node2", zone("b")), e("10.0.3.1", "node3", zone("c"))},
			wantCluster: []string{"10.0.2.1:80", "10.0.3.1:80"}, wantExt: []string{"10.0.2.1:80", "10.0.3.1:80"},
		},
		{
			name:        "node without a zone ignores topology",
			sp:          preferClose,
			node:        &proxier.Node{Name: "node1"},
			eps:         []proxier.Endpoint{e("10.0.1.1", "node1", zone("a", "a")), e("10.0.2.1", "node2", zone("b", "b"))},
			wantCluster: []string{"10.0.1.1:80", "10.0.2.1:80"}, wantExt: []string{"10.0.1.1:80", "10.0.2.1:80"}, wantLocal: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := node
			if tc.node != nil {
				n = *tc.node
			}
			sp := tc.sp
			sel := proxier.SelectEndpoints(&sp, tc.eps, n)
			if got := addrs(sel.Cluster); !slices.Equal(got, tc.wantCluster) {
				t.Errorf("cluster %v, want %v", got, tc.wantCluster)
			}
			if got := addrs(sel.External); !slices.Equal(got, tc.wantExt) {
				t.Errorf("external %v, want %v", got, tc.wantExt)
			}
			if sel.LocalCount != tc.wantLocal {
				t.Errorf("local count %d, want %d", sel.LocalCount, tc.wantLocal)
			}
			// All is the union, cluster first, without duplicates.
			want := slices.Clone(tc.wantCluster)
			for _, x := range tc.wantExt {
				if !slices.Contains(want, x) {
					want = append(want, x)
				}
			}
			if got := addrs(sel.All); !slices.Equal(got, want) {
				t.Errorf("all %v, want %v", got, want)
			}
		})
	}
}
