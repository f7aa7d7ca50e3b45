package ipvs_test

// Test conventions:
//
//	node address   172.30.0.11 (the fake node's only address)
//	pods           10.244.<node>.x, cluster CIDR 10.244.0.0/16
//	cluster IPs    10.96.x.y
//	external/LB    203.0.113.x
//	foreign VSs    192.0.2.x (someone else's virtual servers)
//
// Every test runs against the stateful fakes in ipvstest and
// proxier/iptablestest; none touches the kernel.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/e2e/isolate"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/ipvs/ipvstest"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptablestest"
)

// TestMain moves the tests into a throwaway network namespace: the kernel
// tests program IPVS, links and iptables there.
func TestMain(m *testing.M) {
	isolate.MustIsolate()
	os.Exit(m.Run())
}

var nodeIP = netip.MustParseAddr("172.30.0.11")

// env is a proxier on fakes.
type env struct {
	t      *testing.T
	p      *ipvs.Proxier
	h      *ipvstest.Handle
	links  *ipvstest.Links
	sets   *ipvstest.IPSets
	ipt    *iptablestest.Fake
	sysctl *ipvstest.Sysctl
	now    time.Time
}

func newEnv(t *testing.T, mutate func(*proxier.Config)) *env {
	t.Helper()
	cfg := proxier.DefaultConfig()
	cfg.Mode = proxier.ModeIPVS
	cfg.Node = proxier.Node{Name: "node1"}
	cfg.ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	if mutate != nil {
		mutate(&cfg)
	}
	e := &env{t: t, h: ipvstest.NewHandle(), links: ipvstest.NewLinks(nodeIP), sets: ipvstest.NewIPSets(),
		ipt: iptablestest.New(), sysctl: ipvstest.NewSysctl(), now: time.Unix(1000, 0)}
	p, err := ipvs.NewWithOptions(cfg, ipvs.Options{
		Handle: e.h, Links: e.links, IPSets: e.sets, Sysctl: e.sysctl, Restorer: e.ipt,
		Now:         func() time.Time { return e.now },
		GracePeriod: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.p = p
	return e
}

func (e *env) sync(snap proxier.Snapshot, ch proxier.Changes) {
	e.t.Helper()
	if err := e.p.Sync(context.Background(), snap, ch); err != nil {
		e.t.Fatalf("sync: %v", err)
	}
}

func (e *env) full(snap proxier.Snapshot) { e.t.Helper(); e.sync(snap, proxier.Changes{Full: true}) }

func (e *env) dump() []string {
	d := e.h.Dump()
	if d == "" {
		return nil
	}
	return strings.Split(d, "\n")
}

func spn(name string, proto v1.Protocol) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: name}, Port: "p", Protocol: proto}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// svc returns a TCP service port on clusterIP:80.
func svc(name, clusterIP string, mutate ...func(*proxier.ServicePort)) *proxier.ServicePort {
	sp := &proxier.ServicePort{Name: spn(name, v1.ProtocolTCP), ClusterIPs: addrs(clusterIP), Port: 80}
	for _, m := range mutate {
		m(sp)
	}
	return sp
}

// eps returns ready endpoints on port 8080; an IP ending in .1x is on node1.
func eps(ips ...string) []proxier.Endpoint {
	var out []proxier.Endpoint
	for _, ip := range ips {
		node := "node2"
		if strings.HasPrefix(ip, "10.244.1.") {
			node = "node1"
		}
		out = append(out, proxier.Endpoint{IP: netip.MustParseAddr(ip), Port: 8080, Ready: true, Serving: true, NodeName: node})
	}
	return out
}

func snapshot(entries ...any) proxier.Snapshot {
	s := proxier.Snapshot{Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{}}
	for i := 0; i < len(entries); i += 2 {
		sp := entries[i].(*proxier.ServicePort)
		s.Services[sp.Name] = sp
		if e, _ := entries[i+1].([]proxier.Endpoint); len(e) > 0 {
			s.Endpoints[sp.Name] = e
		}
	}
	return s
}

func TestServiceTypes(t *testing.T) {
	two := eps("10.244.1.11", "10.244.2.10")
	tests := []struct {
		name    string
		sp      *proxier.ServicePort
		eps     []proxier.Endpoint
		servers []string
		sets    map[string][]string
		addrs   []string
	}{{
		name: "cluster IP",
		sp:   svc("a", "10.96.0.1"), eps: two,
		servers: []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1", "  -> 10.244.2.10:8080 1"},
		sets: map[string][]string{
			"SVCP-CLUSTER-IP": {"10.96.0.1,tcp:80"},
			"SVCP-LOOP-BACK":  {"10.244.1.11,tcp:8080,10.244.1.11", "10.244.2.10,tcp:8080,10.244.2.10"},
		},
		addrs: []string{"10.96.0.1"},
	}, {
		name: "node port",
		sp:   svc("a", "10.96.0.1", func(sp *proxier.ServicePort) { sp.NodePort = 30080 }), eps: two[:1],
		servers: []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1", "TCP 172.30.0.11:30080 rr", "  -> 10.244.1.11:8080 1"},
		sets: map[string][]string{
			"SVCP-CLUSTER-IP": {"10.96.0.1,tcp:80"},
			"SVCP-NODE-PORT":  {"172.30.0.11,tcp:30080"},
		},
		addrs: []string{"10.96.0.1"},
	}, {
		name: "node port, external policy Local: only local endpoints, no masquerade",
		sp: svc("a", "10.96.0.1", func(sp *proxier.ServicePort) {
			sp.NodePort = 30080
			sp.ExternalPolicyLocal = true
		}), eps: two,
		servers: []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1", "  -> 10.244.2.10:8080 1", "TCP 172.30.0.11:30080 rr", "  -> 10.244.1.11:8080 1"},
		sets:    map[string][]string{"SVCP-NODE-PORT": nil},
	}, {
		name: "external IP",
		sp:   svc("a", "10.96.0.1", func(sp *proxier.ServicePort) { sp.ExternalIPs = addrs("203.0.113.10") }), eps: two[:1],
		servers: []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1", "TCP 203.0.113.10:80 rr", "  -> 10.244.1.11:8080 1"},
		sets:    map[string][]string{"SVCP-EXTERNAL-IP": {"203.0.113.10,tcp:80"}},
		addrs:   []string{"10.96.0.1", "203.0.113.10"},
	}, {
		name: "LoadBalancer with source ranges",
		sp: svc("a", "10.96.0.1", func(sp *proxier.ServicePort) {
			sp.LoadBalancerIPs = addrs("203.0.113.20")
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
		}), eps: two[:1],
		servers: []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1", "TCP 203.0.113.20:80 rr", "  -> 10.244.1.11:8080 1"},
		sets: map[string][]string{
			"SVCP-LOAD-BALANCER":             {"203.0.113.20,tcp:80"},
			"SVCP-LOAD-BALANCER-FW":          {"203.0.113.20,tcp:80"},
			"SVCP-LOAD-BALANCER-SOURCE-CIDR": {"203.0.113.20,tcp:80,198.51.100.0/24"},
		},
		addrs: []string{"10.96.0.1", "203.0.113.20"},
	}, {
		name:    "UDP",
		sp:      &proxier.ServicePort{Name: spn("dns", v1.ProtocolUDP), ClusterIPs: addrs("10.96.0.10"), Port: 53},
		eps:     two[:1],
		servers: []string{"UDP 10.96.0.10:53 rr", "  -> 10.244.1.11:8080 1"},
		sets:    map[string][]string{"SVCP-CLUSTER-IP": {"10.96.0.10,udp:53"}},
	}, {
		name:    "SCTP",
		sp:      &proxier.ServicePort{Name: spn("s", v1.ProtocolSCTP), ClusterIPs: addrs("10.96.0.11"), Port: 9},
		eps:     two[:1],
		servers: []string{"SCTP 10.96.0.11:9 rr", "  -> 10.244.1.11:8080 1"},
		sets:    map[string][]string{"SVCP-CLUSTER-IP": {"10.96.0.11,sctp:9"}},
	}, {
		name: "no endpoints: the virtual server exists and is rejected",
		sp:   svc("a", "10.96.0.1", func(sp *proxier.ServicePort) { sp.NodePort = 30080 }), eps: nil,
		servers: []string{"TCP 10.96.0.1:80 rr", "TCP 172.30.0.11:30080 rr"},
		sets:    map[string][]string{"SVCP-NO-ENDPOINTS": {"10.96.0.1,tcp:80", "172.30.0.11,tcp:30080"}},
	}, {
		name: "not ready endpoints are left out",
		sp:   svc("a", "10.96.0.1"),
		eps: append(eps("10.244.1.11"), proxier.Endpoint{IP: netip.MustParseAddr("10.244.2.10"), Port: 8080,
			Serving: true, Terminating: true, NodeName: "node2"}),
		servers: []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1"},
	}, {
		name: "session affinity is persistence",
		sp:   svc("a", "10.96.0.1", func(sp *proxier.ServicePort) { sp.StickyTimeout = 10800 * time.Second }), eps: two[:1],
		servers: []string{"TCP 10.96.0.1:80 rr persistent 10800", "  -> 10.244.1.11:8080 1"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.full(snapshot(tc.sp, tc.eps))
			if got := e.dump(); !slices.Equal(got, tc.servers) {
				t.Errorf("virtual servers:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.servers, "\n"))
			}
			for set, want := range tc.sets {
				if got := e.sets.Members(set); !slices.Equal(got, want) {
					t.Errorf("ipset %s = %v, want %v", set, got, want)
				}
			}
			if tc.addrs != nil {
				got, _ := e.links.Addresses(ipvs.DummyInterface)
				if fmt.Sprint(got) != fmt.Sprint(addrs(tc.addrs...)) {
					t.Errorf("kube-ipvs0 = %v, want %v", got, tc.addrs)
				}
			}
		})
	}
}

func TestSchedulers(t *testing.T) {
	type tc struct {
		name, flag, annotation string
		want                   []string
	}
	var tests []tc
	for _, s := range []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh"} {
		tests = append(tests,
			tc{name: "flag " + s, flag: s, want: []string{"TCP 10.96.0.1:80 " + s, "  -> 10.244.1.11:8080 1", "  -> 10.244.2.10:8080 1"}},
			tc{name: "annotation " + s, flag: "rr", annotation: s, want: []string{"TCP 10.96.0.1:80 " + s, "  -> 10.244.1.11:8080 1", "  -> 10.244.2.10:8080 1"}})
	}
	tests = append(tests,
		tc{name: "weights", flag: "rr", annotation: "wrr;10.244.1.11=3", want: []string{"TCP 10.96.0.1:80 wrr", "  -> 10.244.1.11:8080 3", "  -> 10.244.2.10:8080 1"}},
		tc{name: "unknown scheduler falls back to the default", flag: "lc", annotation: "bogus", want: []string{"TCP 10.96.0.1:80 lc", "  -> 10.244.1.11:8080 1", "  -> 10.244.2.10:8080 1"}},
	)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *proxier.Config) { c.IPVS.Scheduler = tc.flag })
			e.full(snapshot(svc("a", "10.96.0.1", func(sp *proxier.ServicePort) { sp.Scheduler = tc.annotation }), eps("10.244.1.11", "10.244.2.10")))
			if got := e.dump(); !slices.Equal(got, tc.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestNewRejectsUnknownScheduler(t *testing.T) {
	cfg := proxier.DefaultConfig()
	cfg.IPVS.Scheduler = "fastest"
	if _, err := ipvs.NewWithOptions(cfg, ipvs.Options{}); err == nil {
		t.Fatal("want an error for an unknown scheduler")
	}
}

// manyServices returns n services 10.96.x.y:80, each with three endpoints.
func manyServices(n int) proxier.Snapshot {
	var args []any
	for i := 0; i < n; i++ {
		ip := fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)
		args = append(args, svc(fmt.Sprintf("s%d", i), ip), eps(
			fmt.Sprintf("10.244.%d.%d", 1+i%3, 10+i%200), fmt.Sprintf("10.244.%d.%d", 1+(i+1)%3, 10+i%200), fmt.Sprintf("10.244.%d.%d", 1+(i+2)%3, 10+i%200)))
	}
	return snapshot(args...)
}

func TestIncrementalSyncTouchesOnlyChangedServices(t *testing.T) {
	e := newEnv(t, nil)
	snap := manyServices(100)
	e.full(snap)
	tests := []struct {
		name   string
		change func(s proxier.Snapshot) (proxier.Snapshot, proxier.ServicePortName)
		calls  map[string]int
	}{{
		name: "one endpoint replaced",
		change: func(s proxier.Snapshot) (proxier.Snapshot, proxier.ServicePortName) {
			name := spn("s7", v1.ProtocolTCP)
			s.Endpoints[name] = append(append([]proxier.Endpoint{}, s.Endpoints[name][:2]...), eps("10.244.3.99")...)
			return s, name
		},
		// read one virtual server and its real servers; add one, delete one
		calls: map[string]int{"VirtualServer": 1, "RealServers": 1, "AddRealServer": 1, "DeleteRealServer": 1},
	}, {
		name: "service deleted",
		change: func(s proxier.Snapshot) (proxier.Snapshot, proxier.ServicePortName) {
			name := spn("s8", v1.ProtocolTCP)
			delete(s.Services, name)
			delete(s.Endpoints, name)
			return s, name
		},
		calls: map[string]int{"DeleteVirtualServer": 1},
	}, {
		name: "service added",
		change: func(s proxier.Snapshot) (proxier.Snapshot, proxier.ServicePortName) {
			sp := svc("new", "10.96.200.1")
			s.Services[sp.Name] = sp
			s.Endpoints[sp.Name] = eps("10.244.1.50")
			return s, sp.Name
		},
		calls: map[string]int{"VirtualServer": 1, "AddVirtualServer": 1, "AddRealServer": 1},
	}, {
		name: "scheduler annotation changed",
		change: func(s proxier.Snapshot) (proxier.Snapshot, proxier.ServicePortName) {
			name := spn("s9", v1.ProtocolTCP)
			sp := *s.Services[name]
			sp.Scheduler = "sh"
			s.Services[name] = &sp
			return s, name
		},
		calls: map[string]int{"VirtualServer": 1, "UpdateVirtualServer": 1, "RealServers": 1},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			next := proxier.Snapshot{Services: cloneMap(snap.Services), Endpoints: cloneMap(snap.Endpoints)}
			next, name := tc.change(next)
			e.h.ResetCalls()
			e.sets.ResetCalls()
			e.links.Calls = map[string]int{}
			e.sync(next, proxier.Changes{Services: map[proxier.ServicePortName]bool{name: true}})
			if got := e.h.Calls(); fmt.Sprint(got) != fmt.Sprint(tc.calls) {
				t.Errorf("IPVS calls %v, want %v", got, tc.calls)
			}
			if got := e.sets.Calls(); got["Entries"] > 0 || got["Add"]+got["Del"] > 4 {
				t.Errorf("ipset calls %v: want no listing and only the changed members", got)
			}
			snap = next
			// a full sync now finds nothing to fix: the incremental one was
			// complete, and kept the counts right
			counts := e.p.RuleCounts()
			e.h.ResetCalls()
			e.full(snap)
			if w := e.h.Writes(); w != 0 {
				t.Errorf("full sync after the incremental one wrote %d times (calls %v)", w, e.h.Calls())
			}
			if full := e.p.RuleCounts(); fmt.Sprint(full) != fmt.Sprint(counts) {
				t.Errorf("counts after the incremental sync %v, after a full one %v", counts, full)
			}
		})
	}
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestGracefulTermination(t *testing.T) {
	k := ipvs.Key{Address: netip.MustParseAddr("10.96.0.1"), Protocol: v1.ProtocolTCP, Port: 80}
	gone := netip.MustParseAddrPort("10.244.2.10:8080")
	two := eps("10.244.1.11", "10.244.2.10")
	changed := proxier.Changes{Services: map[proxier.ServicePortName]bool{spn("a", v1.ProtocolTCP): true}}
	tests := []struct {
		name string
		// steps after the endpoint was removed with open connections
		steps func(e *env)
		want  []string
	}{{
		name: "drained to weight 0 while connections are open",
		steps: func(e *env) {
			e.now = e.now.Add(30 * time.Second)
			e.sync(snapshot(svc("a", "10.96.0.1"), two[:1]), changed)
		},
		want: []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1", "  -> 10.244.2.10:8080 0"},
	}, {
		name: "deleted once its connections ended",
		steps: func(e *env) {
			_ = e.h.SetConnections(k, gone, 0, 0)
			e.sync(snapshot(svc("a", "10.96.0.1"), two[:1]), proxier.Changes{})
		},
		want: []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1"},
	}, {
		name: "deleted after the grace period even with connections",
		steps: func(e *env) {
			e.now = e.now.Add(time.Minute)
			e.sync(snapshot(svc("a", "10.96.0.1"), two[:1]), proxier.Changes{})
		},
		want: []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1"},
	}, {
		name:  "back to full weight when the endpoint returns",
		steps: func(e *env) { e.sync(snapshot(svc("a", "10.96.0.1"), two), changed) },
		want:  []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1", "  -> 10.244.2.10:8080 1"},
	}, {
		name: "a terminating endpoint is drained too",
		steps: func(e *env) {
			term := append(eps("10.244.1.11"), proxier.Endpoint{IP: gone.Addr(), Port: 8080, Serving: true, Terminating: true})
			e.sync(snapshot(svc("a", "10.96.0.1"), term), changed)
		},
		want: []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1", "  -> 10.244.2.10:8080 0"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.full(snapshot(svc("a", "10.96.0.1"), two))
			if err := e.h.SetConnections(k, gone, 1, 2); err != nil {
				t.Fatal(err)
			}
			e.sync(snapshot(svc("a", "10.96.0.1"), two[:1]), changed)
			if got := e.dump(); !slices.Contains(got, "  -> 10.244.2.10:8080 0") {
				t.Fatalf("removed endpoint with connections not drained to weight 0:\n%s", strings.Join(got, "\n"))
			}
			if got := e.p.RuleCounts()["ipvs-terminating-real-servers"]; got != 1 {
				t.Errorf("terminating count %d, want 1", got)
			}
			tc.steps(e)
			if got := e.dump(); !slices.Equal(got, tc.want) {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
	t.Run("without connections or for UDP the real server goes at once", func(t *testing.T) {
		e := newEnv(t, nil)
		udp := &proxier.ServicePort{Name: spn("u", v1.ProtocolUDP), ClusterIPs: addrs("10.96.0.2"), Port: 53}
		e.full(snapshot(svc("a", "10.96.0.1"), two, udp, two))
		uk := ipvs.Key{Address: netip.MustParseAddr("10.96.0.2"), Protocol: v1.ProtocolUDP, Port: 53}
		_ = e.h.SetConnections(uk, gone, 0, 5)
		e.sync(snapshot(svc("a", "10.96.0.1"), two[:1], udp, two[:1]), proxier.Changes{Services: map[proxier.ServicePortName]bool{
			spn("a", v1.ProtocolTCP): true, spn("u", v1.ProtocolUDP): true}})
		want := []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1", "UDP 10.96.0.2:53 rr", "  -> 10.244.1.11:8080 1"}
		if got := e.dump(); !slices.Equal(got, want) {
			t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
}

func TestExcludeCIDRsAndForeignServersUntouched(t *testing.T) {
	e := newEnv(t, func(c *proxier.Config) { c.IPVS.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.99.0/24")} })
	// someone else's virtual servers: one in the excluded range whose
	// address is even on kube-ipvs0, one on an address that is not ours
	excl := ipvs.VirtualServer{Key: ipvs.Key{Address: netip.MustParseAddr("10.96.99.1"), Protocol: v1.ProtocolTCP, Port: 80}, Scheduler: "wlc"}
	foreign := ipvs.VirtualServer{Key: ipvs.Key{Address: netip.MustParseAddr("192.0.2.1"), Protocol: v1.ProtocolTCP, Port: 443}, Scheduler: "lc"}
	// a stale one of ours, from before a restart
	stale := ipvs.VirtualServer{Key: ipvs.Key{Address: netip.MustParseAddr("10.96.5.5"), Protocol: v1.ProtocolTCP, Port: 80}, Scheduler: "rr"}
	for _, vs := range []ipvs.VirtualServer{excl, foreign, stale} {
		if err := e.h.AddVirtualServer(vs); err != nil {
			t.Fatal(err)
		}
	}
	_ = e.h.AddRealServer(excl.Key, ipvs.RealServer{Address: netip.MustParseAddrPort("10.0.0.1:80"), Weight: 5})
	_ = e.links.EnsureDummy(ipvs.DummyInterface)
	_ = e.links.AddAddress(ipvs.DummyInterface, excl.Address)
	_ = e.links.AddAddress(ipvs.DummyInterface, stale.Address)

	e.full(snapshot(svc("a", "10.96.0.1"), eps("10.244.1.11")))
	want := []string{"TCP 10.96.0.1:80 rr", "  -> 10.244.1.11:8080 1", "TCP 10.96.99.1:80 wlc", "  -> 10.0.0.1:80 5", "TCP 192.0.2.1:443 lc"}
	if got := e.dump(); !slices.Equal(got, want) {
		t.Errorf("after full sync:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err := e.p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	want = []string{"TCP 10.96.99.1:80 wlc", "  -> 10.0.0.1:80 5", "TCP 192.0.2.1:443 lc"}
	if got := e.dump(); !slices.Equal(got, want) {
		t.Errorf("after cleanup:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// ruleLines counts the rules in the fake's nat and filter tables (jumps
// from built-in chains included).
func ruleLines(t *testing.T, ipt *iptablestest.Fake) int {
	t.Helper()
	n := 0
	for _, table := range []string{"nat", "filter"} {
		out, err := ipt.Save(context.Background(), table)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "-A ") {
				n++
			}
		}
	}
	return n
}

func TestRuleCountConstant(t *testing.T) {
	var first int
	for _, n := range []int{1, 100, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			e := newEnv(t, nil)
			e.full(manyServices(n))
			lines := ruleLines(t, e.ipt)
			counts := e.p.RuleCounts()
			if counts["ipvs-virtual-servers"] != n || counts["ipvs-real-servers"] != 3*n {
				t.Errorf("counts %v, want %d virtual and %d real servers", counts, n, 3*n)
			}
			if counts["iptables-nat"]+counts["iptables-filter"]+5 != lines {
				t.Errorf("RuleCounts %v disagree with the %d rules (5 of them jumps) in the fake", counts, lines)
			}
			if first == 0 {
				first = lines
			} else if lines != first {
				t.Errorf("%d services: %d iptables rules, want %d as with 1 service", n, lines, first)
			}
		})
	}
}

func TestFullSyncRepairsDrift(t *testing.T) {
	e := newEnv(t, nil)
	snap := snapshot(svc("a", "10.96.0.1", func(sp *proxier.ServicePort) { sp.Scheduler = "sh" }), eps("10.244.1.11", "10.244.2.10"))
	e.full(snap)
	want := e.dump()
	k := ipvs.Key{Address: netip.MustParseAddr("10.96.0.1"), Protocol: v1.ProtocolTCP, Port: 80}
	// behind the proxier's back: a real server gone, a weight and the
	// scheduler changed, a member and an address lost, a stray address
	_ = e.h.DeleteRealServer(k, netip.MustParseAddrPort("10.244.2.10:8080"))
	_ = e.h.UpdateRealServer(k, ipvs.RealServer{Address: netip.MustParseAddrPort("10.244.1.11:8080"), Weight: 9})
	_ = e.h.UpdateVirtualServer(ipvs.VirtualServer{Key: k, Scheduler: "rr"})
	_ = e.sets.Del("SVCP-CLUSTER-IP", ipvs.SetEntry{IP: k.Address, Protocol: v1.ProtocolTCP, Port: 80})
	_ = e.links.DeleteAddress(ipvs.DummyInterface, k.Address)
	_ = e.links.AddAddress(ipvs.DummyInterface, netip.MustParseAddr("10.96.7.7"))
	rules := ruleLines(t, e.ipt)
	e.full(snap)
	if got := ruleLines(t, e.ipt); got != rules {
		t.Errorf("a second full sync left %d iptables rules, the first %d", got, rules)
	}
	if got := e.dump(); !slices.Equal(got, want) {
		t.Errorf("after repair:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := e.sets.Members("SVCP-CLUSTER-IP"); !slices.Equal(got, []string{"10.96.0.1,tcp:80"}) {
		t.Errorf("SVCP-CLUSTER-IP = %v", got)
	}
	if got, _ := e.links.Addresses(ipvs.DummyInterface); fmt.Sprint(got) != "[10.96.0.1]" {
		t.Errorf("kube-ipvs0 = %v", got)
	}
}

func TestFailedSyncMakesTheNextOneFull(t *testing.T) {
	e := newEnv(t, nil)
	snap := manyServices(3)
	e.full(snap)
	name := spn("s1", v1.ProtocolTCP)
	next := proxier.Snapshot{Services: cloneMap(snap.Services), Endpoints: cloneMap(snap.Endpoints)}
	next.Endpoints[name] = eps("10.244.3.77")
	e.h.FailNext(fmt.Errorf("injected"))
	if err := e.p.Sync(context.Background(), next, proxier.Changes{Services: map[proxier.ServicePortName]bool{name: true}}); err == nil {
		t.Fatal("want the injected error")
	}
	e.h.ResetCalls()
	e.sync(next, proxier.Changes{})
	if e.h.Calls()["VirtualServers"] != 1 {
		t.Errorf("the sync after a failure was not a full one: %v", e.h.Calls())
	}
	if got := e.dump(); !slices.Contains(got, "  -> 10.244.3.77:8080 1") {
		t.Errorf("change not applied:\n%s", strings.Join(got, "\n"))
	}
}

func TestNodeSetup(t *testing.T) {
	tests := []struct {
		name    string
		cfg     func(*proxier.Config)
		sysctls map[string]string
		tcp     time.Duration
	}{{
		name:    "defaults",
		sysctls: map[string]string{"net/ipv4/vs/conntrack": "1", "net/ipv4/conf/all/arp_ignore": "0", "net/ipv4/conf/all/arp_announce": "0"},
	}, {
		name: "strict ARP and timeouts",
		cfg: func(c *proxier.Config) {
			c.IPVS.StrictARP = true
			c.IPVS.TCPTimeout = 900 * time.Second
		},
		sysctls: map[string]string{"net/ipv4/vs/conntrack": "1", "net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2"},
		tcp:     900 * time.Second,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.cfg)
			e.full(snapshot())
			for k, want := range tc.sysctls {
				if got, _ := e.sysctl.Get(k); got != want {
					t.Errorf("%s = %s, want %s", k, got, want)
				}
			}
			if tcp, _, _ := e.h.Timeouts(); tcp != tc.tcp {
				t.Errorf("tcp timeout %v, want %v", tcp, tc.tcp)
			}
			if !e.links.Exists(ipvs.DummyInterface) {
				t.Error("no kube-ipvs0")
			}
		})
	}
}

func TestCleanupRemovesEverything(t *testing.T) {
	e := newEnv(t, nil)
	e.full(snapshot(svc("a", "10.96.0.1", func(sp *proxier.ServicePort) { sp.NodePort = 30080 }), eps("10.244.1.11")))
	if err := e.p.Cleanup(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := e.dump(); len(got) != 0 {
		t.Errorf("virtual servers left: %v", got)
	}
	if e.links.Exists(ipvs.DummyInterface) {
		t.Error("kube-ipvs0 left")
	}
	if names, _ := e.sets.Names(); len(names) != 0 {
		t.Errorf("ipsets left: %v", names)
	}
	for _, table := range []string{"nat", "filter"} {
		for _, c := range e.ipt.Chains(table) {
			if strings.HasPrefix(c, proxier.ChainPrefix) {
				t.Errorf("chain %s/%s left", table, c)
			}
		}
	}
}
