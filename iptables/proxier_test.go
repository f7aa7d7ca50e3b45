package iptables

import (
	"context"
	"errors"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptablestest"
)

// The packet-flow tests follow the conventions in helpers_test.go.

func TestPacketFlows(t *testing.T) {
	_, f, _ := syncWorld(t, testConfig())
	const (
		svc1Eps = "10.0.1.1:8080, 10.0.2.1:8080, 10.0.3.1:8080"
		svc2Eps = "10.0.1.2:8080, 10.0.2.2:8080"
	)
	runPacketFlowTests(t, f, []packetFlowTest{
		// ClusterIP
		{name: "pod to cluster IP", src: "10.0.1.100", dst: "172.30.0.41", port: 80, want: svc1Eps},
		{name: "pod on another node to cluster IP", src: "10.0.2.100", dst: "172.30.0.41", port: 80, want: svc1Eps},
		{name: "node to cluster IP", src: "192.168.0.2", dst: "172.30.0.41", port: 80, output: true, want: svc1Eps, masq: true},
		{name: "outside to cluster IP", src: "203.0.113.5", dst: "172.30.0.41", port: 80, want: svc1Eps, masq: true},
		{name: "cluster IP, other port", src: "10.0.1.100", dst: "172.30.0.41", port: 81, want: "ACCEPT"},
		{name: "cluster IP, other protocol", src: "10.0.1.100", dst: "172.30.0.41", proto: "udp", port: 80, want: "ACCEPT"},
		{name: "not a service", src: "10.0.1.100", dst: "8.8.8.8", port: 80, want: "ACCEPT"},
		{name: "UDP service", src: "10.0.1.100", dst: "172.30.0.10", proto: "udp", port: 53, want: "10.0.1.53:5353"},
		{name: "UDP service over TCP", src: "10.0.1.100", dst: "172.30.0.10", port: 53, want: "ACCEPT"},

		// NodePort and external IP
		{name: "outside to node port", src: "203.0.113.5", dst: "192.168.0.2", port: 3002, want: svc2Eps, masq: true},
		{name: "pod to node port", src: "10.0.1.100", dst: "192.168.0.2", port: 3002, want: svc2Eps, masq: true},
		{name: "node to its own node port", src: "192.168.0.2", dst: "192.168.0.2", port: 3002, output: true, want: svc2Eps, masq: true},
		{name: "node port on a non-local address", src: "203.0.113.5", dst: "192.168.0.3", port: 3002, want: "ACCEPT"},
		{name: "outside to external IP", src: "203.0.113.5", dst: "192.168.99.22", port: 80, want: svc2Eps, masq: true},
		{name: "pod to external IP", src: "10.0.1.100", dst: "192.168.99.22", port: 80, want: svc2Eps, masq: true},
		{name: "cluster IP of a node port service", src: "10.0.1.100", dst: "172.30.0.42", port: 80, want: svc2Eps},

		// LoadBalancer with loadBalancerSourceRanges
		{name: "allowed client to LB IP", src: "203.0.113.5", dst: "5.6.7.8", port: 80, want: "10.0.2.3:8080", masq: true},
		{name: "denied client to LB IP", src: "203.0.113.200", dst: "5.6.7.8", port: 80, want: "DROP"},
		{name: "denied client to the node port: ranges are for the LB IP only", src: "203.0.113.200", dst: "192.168.0.2", port: 3003, want: "10.0.2.3:8080", masq: true},
		{name: "pod to cluster IP of LB service", src: "10.0.1.100", dst: "172.30.0.43", port: 80, want: "10.0.2.3:8080"},

		// No endpoints
		{name: "pod to service without endpoints", src: "10.0.1.100", dst: "172.30.0.44", port: 80, want: "REJECT"},
		{name: "node to service without endpoints", src: "192.168.0.2", dst: "172.30.0.44", port: 80, output: true, want: "REJECT"},
		{name: "outside to node port without endpoints", src: "203.0.113.5", dst: "192.168.0.2", port: 3004, want: "REJECT"},
		{name: "outside to external IP without endpoints", src: "203.0.113.5", dst: "192.168.99.24", port: 80, want: "REJECT"},

		// Endpoint conditions
		{name: "not-ready endpoint excluded", src: "10.0.1.100", dst: "172.30.0.45", port: 80, want: "10.0.1.5:8080"},
		{name: "terminating fallback, serving only", src: "10.0.1.100", dst: "172.30.0.46", port: 80, want: "10.0.1.6:8080"},

		// externalTrafficPolicy: Local
		{name: "Local: outside to node port", src: "203.0.113.5", dst: "192.168.0.2", port: 3007, want: "10.0.1.7:8080"},
		{name: "Local: outside to LB IP", src: "203.0.113.5", dst: "5.6.7.9", port: 80, want: "10.0.1.7:8080"},
		{name: "Local: pod to node port uses every endpoint", src: "10.0.2.100", dst: "192.168.0.2", port: 3007, want: "10.0.1.7:8080, 10.0.2.7:8080"},
		{name: "Local: pod to LB IP uses every endpoint", src: "10.0.2.100", dst: "5.6.7.9", port: 80, want: "10.0.1.7:8080, 10.0.2.7:8080"},
		{name: "Local: node to its node port", src: "192.168.0.2", dst: "192.168.0.2", port: 3007, output: true, want: "10.0.1.7:8080, 10.0.2.7:8080", masq: true},
		{name: "Local: cluster IP is not restricted", src: "10.0.1.100", dst: "172.30.0.47", port: 80, want: "10.0.1.7:8080, 10.0.2.7:8080"},

		// Session affinity (a new client: no recent entry yet)
		{name: "affinity service, new client", src: "10.0.1.100", dst: "172.30.0.48", port: 80, want: "10.0.1.8:8080, 10.0.2.8:8080"},

		// Multi-port
		{name: "multi-port, first port", src: "10.0.1.100", dst: "172.30.0.49", port: 80, want: "10.0.1.9:8080, 10.0.2.9:8080"},
		{name: "multi-port, second port", src: "10.0.1.100", dst: "172.30.0.49", port: 443, want: "10.0.1.9:8443, 10.0.2.9:8443"},

		// Hairpin: a pod reaching itself through the service is masqueraded
		{name: "hairpin", src: "10.0.1.10", dst: "172.30.0.50", port: 80, want: "10.0.1.10:8080", masq: true},
	})
}

func TestPacketFlowProbabilities(t *testing.T) {
	_, f, _ := syncWorld(t, testConfig())
	tracer := &iptablestest.Tracer{Fake: f, NodeIPs: []netip.Addr{nodeIP}}
	tests := []struct {
		dst  string
		port int
		want map[string]float64
	}{
		{"172.30.0.41", 80, map[string]float64{"10.0.1.1:8080": 1.0 / 3, "10.0.2.1:8080": 1.0 / 3, "10.0.3.1:8080": 1.0 / 3}},
		{"172.30.0.42", 80, map[string]float64{"10.0.1.2:8080": 0.5, "10.0.2.2:8080": 0.5}},
		{"172.30.0.48", 80, map[string]float64{"10.0.1.8:8080": 0.5, "10.0.2.8:8080": 0.5}},
	}
	for _, tc := range tests {
		res, err := tracer.Trace(iptablestest.Packet{Source: netip.MustParseAddr("10.0.1.100"), Dest: netip.MustParseAddr(tc.dst), DestPort: tc.port})
		if err != nil {
			t.Fatal(err)
		}
		got := res.Destinations()
		if len(got) != len(tc.want) {
			t.Errorf("%s: destinations %v, want %v", tc.dst, sortedKeys(got), tc.want)
			continue
		}
		for dst, p := range got {
			if math.Abs(p-tc.want[dst.String()]) > 1e-6 {
				t.Errorf("%s: %s reached with probability %.6f, want %.6f\n%s", tc.dst, dst, p, tc.want[dst.String()], res.Explain())
			}
		}
	}
}

// TestHairpinOnlyForItself checks that only the branch that sends a pod
// back to itself is masqueraded.
func TestHairpinOnlyForItself(t *testing.T) {
	_, f, _ := syncWorld(t, testConfig())
	tracer := &iptablestest.Tracer{Fake: f, NodeIPs: []netip.Addr{nodeIP}}
	res, err := tracer.Trace(iptablestest.Packet{Source: netip.MustParseAddr("10.0.1.1"), Dest: netip.MustParseAddr("172.30.0.41"), DestPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range res.Outcomes {
		if self := o.Dest.Addr().String() == "10.0.1.1"; o.Masquerade != self {
			t.Errorf("to %s: masquerade=%v, want %v\n%s", o.Dest, o.Masquerade, self, res.Explain())
		}
	}
}

func TestPacketFlowsMasqueradeAll(t *testing.T) {
	cfg := testConfig()
	cfg.MasqueradeAll = true
	_, f, _ := syncWorld(t, cfg)
	runPacketFlowTests(t, f, []packetFlowTest{
		{name: "pod to cluster IP", src: "10.0.1.100", dst: "172.30.0.45", port: 80, want: "10.0.1.5:8080", masq: true},
	})
	cfg.MasqueradeAll = false
	cfg.ClusterCIDR = netip.Prefix{}
	_, f, _ = syncWorld(t, cfg)
	runPacketFlowTests(t, f, []packetFlowTest{
		{name: "no cluster CIDR: pod to cluster IP", src: "10.0.1.100", dst: "172.30.0.45", port: 80, want: "10.0.1.5:8080"},
		{name: "no cluster CIDR: outside to node port", src: "203.0.113.5", dst: "192.168.0.2", port: 3002, want: "10.0.1.2:8080, 10.0.2.2:8080", masq: true},
	})
}

func TestPacketFlowsNodePortAddresses(t *testing.T) {
	cfg := testConfig()
	cfg.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/24")}
	_, f, _ := syncWorld(t, cfg)
	f2 := f
	tracer := &iptablestest.Tracer{Fake: f2, NodeIPs: []netip.Addr{nodeIP, netip.MustParseAddr("192.168.1.2")}}
	for _, tc := range []struct {
		dst  string
		want string
	}{
		{"192.168.0.2", "10.0.1.2:8080, 10.0.2.2:8080"},
		{"192.168.1.2", "ACCEPT"}, // local, but not in --nodeport-addresses
	} {
		res, err := tracer.Trace(iptablestest.Packet{Source: netip.MustParseAddr("203.0.113.5"), Dest: netip.MustParseAddr(tc.dst), DestPort: 3002})
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Summary(); got != tc.want {
			t.Errorf("node port on %s: %q, want %q\n%s", tc.dst, got, tc.want, res.Explain())
		}
	}
}

// TestRuleShape keeps a few golden checks of the rules' shape; behaviour is
// proved by the flows above.
func TestRuleShape(t *testing.T) {
	p, f, _ := syncWorld(t, testConfig())
	svc8 := portName("svc8")
	svcChain := chainName(svcChainPrefix, svc8.String(), "tcp")
	rules, ok := f.Rules("nat", svcChain)
	if !ok {
		t.Fatalf("no chain %s", svcChain)
	}
	var seps []string
	for _, c := range chainsOf(p, svc8) {
		if strings.HasPrefix(c, sepChainPrefix) {
			seps = append(seps, c)
		}
	}
	if len(seps) != 2 {
		t.Fatalf("svc8 has endpoint chains %v, want 2", seps)
	}
	for _, sep := range seps {
		want := "-m recent --rcheck --seconds 10800 --reap --name " + sep + " --mask 255.255.255.255 --rsource -j " + sep
		if !slices.Contains(rules, want) {
			t.Errorf("%s lacks the affinity check %q:\n%s", svcChain, want, strings.Join(rules, "\n"))
		}
		sepRules, _ := f.Rules("nat", sep)
		if len(sepRules) != 2 || !strings.Contains(sepRules[1], "-m recent --set --name "+sep+" ") || !strings.Contains(sepRules[1], "-j DNAT --to-destination") {
			t.Errorf("%s does not record affinity before DNAT:\n%s", sep, strings.Join(sepRules, "\n"))
		}
	}
	// The affinity checks come before the random choice.
	if !strings.Contains(rules[len(seps)], "--rcheck") || strings.Contains(rules[len(seps)+1], "--rcheck") {
		t.Errorf("affinity checks are not right after the masquerade rule:\n%s", strings.Join(rules, "\n"))
	}
	// Chain names fit iptables' limit.
	for _, table := range []string{"nat", "filter"} {
		for _, c := range f.Chains(table) {
			if len(c) > 28 {
				t.Errorf("chain name %s is too long", c)
			}
		}
	}
	// The node port jump is the last rule of nat SVCP-SERVICES.
	svcRules, _ := f.Rules("nat", servicesChain)
	if last := svcRules[len(svcRules)-1]; !strings.HasSuffix(last, "-j "+nodePortsChain) {
		t.Errorf("last rule of %s is %q, want the jump to %s", servicesChain, last, nodePortsChain)
	}
	// Jumps from built-in chains.
	for _, j := range [][2]string{{"nat", "PREROUTING"}, {"nat", "OUTPUT"}, {"nat", "POSTROUTING"}, {"filter", "FORWARD"}, {"filter", "INPUT"}, {"filter", "OUTPUT"}} {
		if r, _ := f.Rules(j[0], j[1]); len(r) == 0 {
			t.Errorf("no jump in %s/%s", j[0], j[1])
		}
	}
}

// TestRuleCounts checks RuleCounts against what is really in the tables.
func TestRuleCounts(t *testing.T) {
	for _, cfg := range []proxier.Config{testConfig(), func() proxier.Config {
		c := testConfig()
		c.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}
		return c
	}(), func() proxier.Config {
		c := testConfig()
		c.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("10.99.0.0/16")} // no node address in it
		return c
	}()} {
		p, f, tr := syncWorld(t, cfg)
		check := func(when string) {
			t.Helper()
			want := map[string]int{}
			for _, table := range []string{"filter", "nat"} {
				for _, c := range f.Chains(table) {
					if !strings.HasPrefix(c, proxier.ChainPrefix) {
						continue
					}
					rules, _ := f.Rules(table, c)
					want["iptables-"+table] += len(rules)
					want["iptables-chains"]++
				}
			}
			if got := p.RuleCounts(); !mapsEqual(got, want) {
				t.Errorf("%s: RuleCounts %v, tables hold %v", when, got, want)
			}
		}
		check("after a full sync")
		tr.DeleteService(types.NamespacedName{Namespace: "ns", Name: "svc3"})
		tr.UpdateEndpointSlice(tcpEps("svc4", 8080, "10.0.1.4@node1"))
		snap, ch := tr.Commit()
		if err := p.Sync(context.Background(), snap, ch); err != nil {
			t.Fatal(err)
		}
		check("after a partial sync")
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// fullSyncOf returns the normalized state a fresh proxier writes for snap.
func fullSyncOf(t *testing.T, cfg proxier.Config, snap proxier.Snapshot) string {
	t.Helper()
	p, f := newTestProxier(t, cfg)
	if err := p.Sync(context.Background(), snap, proxier.Changes{Full: true}); err != nil {
		t.Fatalf("reference full sync: %v", err)
	}
	return normalizedSave(t, f)
}

func TestPartialSync(t *testing.T) {
	key := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: name} }
	steps := []struct {
		name   string
		update func(tr *proxier.Tracker)
		// touched are the services whose chains the payload may name.
		touched []string
	}{
		{"one endpoint removed", func(tr *proxier.Tracker) {
			tr.UpdateEndpointSlice(tcpEps("svc1", 8080, "10.0.1.1@node1", "10.0.2.1@node2"))
		}, []string{"svc1"}},
		{"one endpoint added", func(tr *proxier.Tracker) {
			tr.UpdateEndpointSlice(tcpEps("svc1", 8080, "10.0.1.1@node1", "10.0.2.1@node2", "10.0.3.9@node3"))
		}, []string{"svc1"}},
		{"service without endpoints gets one", func(tr *proxier.Tracker) {
			tr.UpdateEndpointSlice(tcpEps("svc4", 8080, "10.0.1.4@node1"))
		}, []string{"svc4"}},
		{"service loses all endpoints", func(tr *proxier.Tracker) {
			tr.DeleteEndpointSlice(key("svc2-1"))
		}, []string{"svc2"}},
		{"new service", func(tr *proxier.Tracker) {
			tr.UpdateService(svc("new", "172.30.0.99", nodePort(3099)))
			tr.UpdateEndpointSlice(tcpEps("new", 8080, "10.0.3.99@node3"))
		}, []string{"new"}},
		{"service deleted", func(tr *proxier.Tracker) {
			tr.DeleteService(key("svc3"))
		}, []string{"svc3"}},
		{"LB source ranges and affinity added", func(tr *proxier.Tracker) {
			tr.UpdateService(svc("svc7", "172.30.0.47", loadBalancer("5.6.7.9", "203.0.113.0/25"), nodePort(3007), localPolicy, clientIPAffinity))
		}, []string{"svc7"}},
		{"policy back to Cluster", func(tr *proxier.Tracker) {
			tr.UpdateService(svc("svc7", "172.30.0.47", loadBalancer("5.6.7.9"), nodePort(3007)))
		}, []string{"svc7"}},
		{"two services at once", func(tr *proxier.Tracker) {
			tr.UpdateEndpointSlice(tcpEps("svc5", 8080, "10.0.1.5@node1", "10.0.2.5@node2"))
			tr.UpdateService(svc("svc10", "172.30.0.50", externalIPs("192.168.99.50")))
		}, []string{"svc5", "svc10"}},
	}
	cfg := testConfig()
	p, f, tr := syncWorld(t, cfg)
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			// Names of every chain and comment of services that must not
			// be touched.
			var others []string
			for spn := range p.written {
				if slices.Contains(step.touched, spn.Name) {
					continue
				}
				others = append(others, chainsOf(p, spn)...)
				others = append(others, `"`+spn.String()+" ")
			}
			calls := f.RestoreCalls()
			step.update(tr)
			snap, ch := tr.Commit()
			if ch.Full {
				t.Fatal("tracker asked for a full sync")
			}
			if err := p.Sync(context.Background(), snap, ch); err != nil {
				t.Fatalf("partial sync: %v", err)
			}
			if f.RestoreCalls() != calls+1 {
				t.Fatalf("%d restore calls, want 1", f.RestoreCalls()-calls)
			}
			payload := f.LastPayload()
			for _, o := range others {
				if strings.Contains(payload, o) {
					t.Errorf("the partial payload mentions %s of an unchanged service:\n%s", o, payload)
				}
			}
			if strings.Contains(payload, ":"+servicesChain+" ") || strings.Contains(payload, ":"+nodePortsChain+" ") {
				t.Errorf("the partial payload flushes a dispatch chain:\n%s", payload)
			}
			got, want := normalizedSave(t, f), fullSyncOf(t, cfg, snap)
			if got != want {
				t.Errorf("state after the partial sync differs from a full sync of the same snapshot:\n%s", lineDiff(got, want))
			}
			svcRules, _ := f.Rules("nat", servicesChain)
			if last := svcRules[len(svcRules)-1]; !strings.HasSuffix(last, "-j "+nodePortsChain) {
				t.Errorf("the node port jump is no longer last: %q", last)
			}
		})
	}
	// An empty change writes nothing.
	calls := f.RestoreCalls()
	snap, ch := tr.Commit()
	if err := p.Sync(context.Background(), snap, ch); err != nil {
		t.Fatal(err)
	}
	if f.RestoreCalls() != calls {
		t.Errorf("a sync without changes ran iptables-restore")
	}
	// And the flows still hold after all those partial syncs.
	runPacketFlowTests(t, f, []packetFlowTest{
		{name: "svc1 after edits", src: "10.0.1.100", dst: "172.30.0.41", port: 80, want: "10.0.1.1:8080, 10.0.2.1:8080, 10.0.3.9:8080"},
		{name: "svc2 without endpoints", src: "203.0.113.5", dst: "192.168.0.2", port: 3002, want: "REJECT"},
		{name: "svc3 gone", src: "203.0.113.5", dst: "5.6.7.8", port: 80, want: "ACCEPT"},
		{name: "svc4 served", src: "203.0.113.5", dst: "192.168.0.2", port: 3004, want: "10.0.1.4:8080", masq: true},
		{name: "new service", src: "203.0.113.5", dst: "192.168.0.2", port: 3099, want: "10.0.3.99:8080", masq: true},
		{name: "svc7 cluster policy", src: "203.0.113.200", dst: "5.6.7.9", port: 80, want: "10.0.1.7:8080, 10.0.2.7:8080", masq: true},
		{name: "svc10 external IP", src: "203.0.113.5", dst: "192.168.99.50", port: 80, want: "10.0.1.10:8080", masq: true},
	})
}

// lineDiff lists the lines only in a and only in b.
func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for _, l := range al {
		if !slices.Contains(bl, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range bl {
		if !slices.Contains(al, l) {
			out = append(out, "+ "+l)
		}
	}
	if out == nil {
		return "(same lines, different order)\n--- got:\n" + a + "\n--- want:\n" + b
	}
	return strings.Join(out, "\n")
}

func TestFailedRestoreKeepsStateAndFullSyncRepairs(t *testing.T) {
	cfg := testConfig()
	p, f, tr := syncWorld(t, cfg)
	before := normalizedSave(t, f)

	tr.UpdateEndpointSlice(tcpEps("svc1", 8080, "10.0.9.9@node3"))
	tr.DeleteService(types.NamespacedName{Namespace: "ns", Name: "svc2"})
	snap, ch := tr.Commit()
	f.FailNextRestore(errors.New("xtables lock held"))
	if err := p.Sync(context.Background(), snap, ch); err == nil {
		t.Fatal("partial sync succeeded despite the restore failure")
	}
	if got := normalizedSave(t, f); got != before {
		t.Fatalf("a failed sync changed the state:\n%s", lineDiff(got, before))
	}

	// Drift on top (someone deleted a rule by hand): the full sync repairs both.
	svc1Chain := chainName(svcChainPrefix, portName("svc1").String(), "tcp")
	rules, _ := f.Rules("nat", svc1Chain)
	if err := f.Load("*nat\n-D " + svc1Chain + " " + rules[len(rules)-1] + "\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	ch.Full = true // what the engine asks after a failure
	if err := p.Sync(context.Background(), snap, ch); err != nil {
		t.Fatalf("full sync: %v", err)
	}
	if got, want := normalizedSave(t, f), fullSyncOf(t, cfg, snap); got != want {
		t.Fatalf("full sync after failure did not repair the state:\n%s", lineDiff(got, want))
	}
	runPacketFlowTests(t, f, []packetFlowTest{
		{name: "svc1 moved", src: "10.0.1.100", dst: "172.30.0.41", port: 80, want: "10.0.9.9:8080"},
		{name: "svc2 gone", src: "203.0.113.5", dst: "192.168.0.2", port: 3002, want: "ACCEPT"},
	})

	// A failed full sync leaves the state too.
	before = normalizedSave(t, f)
	f.FailNextRestore(errors.New("boom"))
	if err := p.Sync(context.Background(), snap, proxier.Changes{Full: true}); err == nil {
		t.Fatal("full sync succeeded despite the restore failure")
	}
	f.FailNextEnsureJumps(errors.New("boom"))
	if err := p.Sync(context.Background(), snap, proxier.Changes{Full: true}); err == nil {
		t.Fatal("full sync succeeded despite the EnsureJumps failure")
	}
	if got := normalizedSave(t, f); got != before {
		t.Fatalf("a failed full sync changed the state:\n%s", lineDiff(got, before))
	}
}

// TestRestartDeletesStaleChains: chains left by a previous run (for a
// service that is gone) are removed by the first sync.
func TestRestartDeletesStaleChains(t *testing.T) {
	cfg := testConfig()
	old, f := newTestProxier(t, cfg)
	tr := proxier.NewTracker(nil)
	world(tr)
	tr.UpdateService(svc("gone", "172.30.0.77", nodePort(3077)))
	tr.UpdateEndpointSlice(tcpEps("gone", 8080, "10.0.3.77@node3"))
	snap, ch := tr.Commit()
	if err := old.Sync(context.Background(), snap, ch); err != nil {
		t.Fatal(err)
	}
	tr.DeleteService(types.NamespacedName{Namespace: "ns", Name: "gone"})
	snap, _ = tr.Commit()

	// A new process with the same fake kernel state.
	p, err := NewWithOptions(cfg, Options{Restorer: f, EnsureJumps: f.EnsureJumps, NodeAddresses: old.opts.NodeAddresses})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(context.Background(), snap, proxier.Changes{}); err != nil {
		t.Fatal(err)
	}
	if got, want := normalizedSave(t, f), fullSyncOf(t, cfg, snap); got != want {
		t.Fatalf("stale chains survived a restart:\n%s", lineDiff(got, want))
	}
}

func TestCleanupLeavesForeignRules(t *testing.T) {
	p, f := newTestProxier(t, testConfig())
	if err := f.Load(iptablestest.ForeignRules); err != nil {
		t.Fatal(err)
	}
	want := normalizedSave(t, f)
	tr := proxier.NewTracker(nil)
	world(tr)
	snap, ch := tr.Commit()
	if err := p.Sync(context.Background(), snap, ch); err != nil {
		t.Fatal(err)
	}
	if err := p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := normalizedSave(t, f); got != want {
		t.Fatalf("after Cleanup:\n%s", lineDiff(got, want))
	}
	// After a cleanup the next sync is full again and works.
	snap, ch = tr.Commit()
	if err := p.Sync(context.Background(), snap, ch); err != nil {
		t.Fatal(err)
	}
	runPacketFlowTests(t, f, []packetFlowTest{
		{name: "after cleanup and resync", src: "10.0.1.100", dst: "172.30.0.45", port: 80, want: "10.0.1.5:8080"},
	})
}

func TestNewRejectsBadMasqueradeBit(t *testing.T) {
	for _, bit := range []int{-1, 31} {
		cfg := testConfig()
		cfg.MasqueradeBit = bit
		if _, err := NewWithOptions(cfg, Options{Restorer: iptablestest.New()}); err == nil {
			t.Errorf("masquerade bit %d accepted", bit)
		}
	}
}

// Ensure unused imports stay meaningful if a test above is edited.
var _ = []any{v1.ProtocolTCP, discovery.AddressTypeIPv4}

// TestIPv6AddressesAreSkipped: the iptables mode programs IPv4 iptables, so
// IPv6 cluster IPs, external IPs, source ranges and endpoints (a dual-stack
// or IPv6-only service) must be left out instead of failing the whole
// iptables-restore for every service.
func TestIPv6AddressesAreSkipped(t *testing.T) {
	_, f, _ := syncWorld(t, testConfig(), func(tr *proxier.Tracker) {
		tr.UpdateService(svc("dual", "172.30.0.61", nodePort(3061), externalIPs("192.168.99.61", "2001:db8::61"),
			loadBalancer("5.6.7.61", "203.0.113.0/25", "2001:db8::/64"), nodePort(3061), func(s *v1.Service) {
				s.Spec.ClusterIPs = []string{"172.30.0.61", "fd00::61"}
				s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, v1.LoadBalancerIngress{IP: "2001:db8::62"})
			}))
		tr.UpdateEndpointSlice(tcpEps("dual", 8080, "10.0.1.61@node1"))
		v6 := tcpEps("dual", 8080, "fd00:10::61@node1")
		v6.Name, v6.AddressType = "dual-v6", discovery.AddressTypeIPv6
		tr.UpdateEndpointSlice(v6)
		tr.UpdateService(svc("v6only", "fd00::62"))
		v6only := tcpEps("v6only", 8080, "fd00:10::62@node1")
		v6only.AddressType = discovery.AddressTypeIPv6
		tr.UpdateEndpointSlice(v6only)
	})
	runPacketFlowTests(t, f, []packetFlowTest{
		{name: "dual-stack cluster IP", src: "10.0.1.100", dst: "172.30.0.61", port: 80, want: "10.0.1.61:8080"},
		{name: "dual-stack node port", src: "203.0.113.5", dst: "192.168.0.2", port: 3061, want: "10.0.1.61:8080", masq: true},
		{name: "dual-stack LB, allowed", src: "203.0.113.5", dst: "5.6.7.61", port: 80, want: "10.0.1.61:8080", masq: true},
		{name: "dual-stack LB, denied", src: "203.0.113.200", dst: "5.6.7.61", port: 80, want: "DROP"},
		{name: "others unaffected", src: "10.0.1.100", dst: "172.30.0.41", port: 80, want: "10.0.1.1:8080, 10.0.2.1:8080, 10.0.3.1:8080"},
	})
}

// TestLocalPolicyWithoutLocalEndpoints: with externalTrafficPolicy Local and
// no endpoint on this node, traffic from outside to the external addresses
// is dropped, but pods and the node itself still reach the other nodes'
// endpoints through them (as with kube-proxy).
func TestLocalPolicyWithoutLocalEndpoints(t *testing.T) {
	_, f, _ := syncWorld(t, testConfig(), func(tr *proxier.Tracker) {
		tr.UpdateService(svc("svc11", "172.30.0.51", loadBalancer("5.6.7.11"), nodePort(3011), externalIPs("192.168.99.11"), localPolicy))
		tr.UpdateEndpointSlice(tcpEps("svc11", 8080, "10.0.2.11@node2"))
	})
	runPacketFlowTests(t, f, []packetFlowTest{
		{name: "outside to node port", src: "203.0.113.5", dst: "192.168.0.2", port: 3011, want: "DROP"},
		{name: "outside to LB IP", src: "203.0.113.5", dst: "5.6.7.11", port: 80, want: "DROP"},
		{name: "outside to external IP", src: "203.0.113.5", dst: "192.168.99.11", port: 80, want: "DROP"},
		{name: "pod to node port", src: "10.0.1.100", dst: "192.168.0.2", port: 3011, want: "10.0.2.11:8080"},
		{name: "pod to LB IP", src: "10.0.1.100", dst: "5.6.7.11", port: 80, want: "10.0.2.11:8080"},
		{name: "pod to external IP", src: "10.0.1.100", dst: "192.168.99.11", port: 80, want: "10.0.2.11:8080"},
		{name: "node to its node port", src: "192.168.0.2", dst: "192.168.0.2", port: 3011, output: true, want: "10.0.2.11:8080", masq: true},
		{name: "pod to cluster IP", src: "10.0.1.100", dst: "172.30.0.51", port: 80, want: "10.0.2.11:8080"},
	})
}

// TestPartialFailureWithPerTableCommit: the real iptables-restore commits
// filter before nat, so a partial sync whose nat part fails leaves filter
// changed. The next sync after a failure is full (the engine's rule) and
// repairs it.
func TestPartialFailureWithPerTableCommit(t *testing.T) {
	cfg := testConfig()
	p, f, tr := syncWorld(t, cfg)
	f.CommitPerTable = true
	tr.UpdateEndpointSlice(tcpEps("svc4", 8080, "10.0.1.4@node1")) // filter: -D REJECT; nat: -I jump
	snap, ch := tr.Commit()
	f.FailNextCommit("nat", errors.New("nat failed"))
	if err := p.Sync(context.Background(), snap, ch); err == nil {
		t.Fatal("partial sync succeeded despite the nat failure")
	}
	// The window: the REJECT is gone but there is no DNAT yet.
	runPacketFlowTests(t, f, []packetFlowTest{
		{name: "half-applied", src: "10.0.1.100", dst: "172.30.0.44", port: 80, want: "ACCEPT"},
	})
	ch.Full = true
	if err := p.Sync(context.Background(), snap, ch); err != nil {
		t.Fatal(err)
	}
	if got, want := normalizedSave(t, f), fullSyncOf(t, cfg, snap); got != want {
		t.Fatalf("the full sync did not repair a half-applied partial sync:\n%s", lineDiff(got, want))
	}
	runPacketFlowTests(t, f, []packetFlowTest{
		{name: "repaired", src: "10.0.1.100", dst: "172.30.0.44", port: 80, want: "10.0.1.4:8080"},
	})
}
