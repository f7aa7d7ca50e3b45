package userspace

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
)

// Conventions of the Proxier tests: cluster IPs are 10.96.0.x, external
// and load balancer IPs 203.0.113.x, this node is "node1" at 172.30.0.11,
// another node "node2". Backends are real sockets on 127.0.0.1 (so that
// traffic through the proxy sockets can be checked) or, when no traffic is
// sent, made-up 10.244.x.y addresses. The fake restorer stands in for
// iptables; proxy sockets listen on 127.0.0.1.

const testNode = "node1"

func spn(name, port string, proto v1.Protocol) proxier.ServicePortName {
	return proxier.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "default", Name: name}, Port: port, Protocol: proto}
}

// clusterIPPort returns a ClusterIP service port.
func clusterIPPort(name string, proto v1.Protocol, ip string, port int) *proxier.ServicePort {
	return &proxier.ServicePort{Name: spn(name, "", proto), ClusterIPs: []netip.Addr{netip.MustParseAddr(ip)}, Port: port}
}

// readyEndpoints returns ready endpoints on node for the addresses.
func readyEndpoints(node string, addrs ...netip.AddrPort) []proxier.Endpoint {
	var out []proxier.Endpoint
	for _, a := range addrs {
		out = append(out, proxier.Endpoint{IP: a.Addr(), Port: int(a.Port()), Ready: true, Serving: true, NodeName: node})
	}
	return out
}

// snapshot builds a snapshot from service ports and their endpoints.
func snapshot(entries map[*proxier.ServicePort][]proxier.Endpoint) proxier.Snapshot {
	s := proxier.Snapshot{Services: map[proxier.ServicePortName]*proxier.ServicePort{}, Endpoints: map[proxier.ServicePortName][]proxier.Endpoint{}}
	for sp, eps := range entries {
		s.Services[sp.Name] = sp
		if len(eps) > 0 {
			s.Endpoints[sp.Name] = eps
		}
	}
	return s
}

// changed returns incremental Changes naming the service ports.
func changed(names ...proxier.ServicePortName) proxier.Changes {
	ch := proxier.Changes{Services: map[proxier.ServicePortName]bool{}}
	for _, n := range names {
		ch.Services[n] = true
	}
	return ch
}

func newTestProxier(t *testing.T, mutate func(*proxier.Config)) (*Proxier, *fakeRestorer) {
	t.Helper()
	cfg := proxier.DefaultConfig()
	cfg.Mode = proxier.ModeUserspace
	cfg.Node = proxier.Node{Name: testNode}
	if mutate != nil {
		mutate(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeRestorer()
	p.restorer = f
	p.listenIP = loopback
	p.stateDir = t.TempDir()
	p.nodeAddrs = func([]netip.Prefix) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("172.30.0.11")}, nil
	}
	t.Cleanup(func() { p.Close() })
	return p, f
}

// proxyPorts returns the proxy ports of a service port: cluster, external
// (0 when shared).
func proxyPorts(t *testing.T, p *Proxier, name proxier.ServicePortName) (int, int) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.sets[name]
	if !ok {
		t.Fatalf("no proxy socket for %s", name)
	}
	if s.external == nil {
		return s.cluster.socket.Port(), 0
	}
	return s.cluster.socket.Port(), s.external.socket.Port()
}

// portRE replaces proxy port numbers, which are ephemeral, in rule lines.
var portRE = regexp.MustCompile(`(--to-ports|--dport) (\d{5})`)

func normalize(rules []string, ports map[int]string) []string {
	var out []string
	for _, r := range rules {
		out = append(out, portRE.ReplaceAllStringFunc(r, func(m string) string {
			flag, num, _ := strings.Cut(m, " ")
			for port, name := range ports {
				if fmt.Sprint(port) == num {
					return flag + " " + name
				}
			}
			return m
		}))
	}
	return out
}

func TestSyncRules(t *testing.T) {
	web := clusterIPPort("web", v1.ProtocolTCP, "10.96.0.10", 9000)
	dns := clusterIPPort("dns", v1.ProtocolUDP, "10.96.0.53", 53)
	empty := clusterIPPort("empty", v1.ProtocolTCP, "10.96.0.20", 80)

	np := clusterIPPort("np", v1.ProtocolTCP, "10.96.0.30", 80)
	np.NodePort = 30080
	np.ExternalIPs = []netip.Addr{netip.MustParseAddr("203.0.113.5")}

	local := clusterIPPort("local", v1.ProtocolTCP, "10.96.0.40", 80)
	local.NodePort = 30040
	local.ExternalPolicyLocal = true

	lb := clusterIPPort("lb", v1.ProtocolTCP, "10.96.0.50", 443)
	lb.LoadBalancerIPs = []netip.Addr{netip.MustParseAddr("203.0.113.50")}
	lb.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("172.30.0.0/24"), netip.MustParsePrefix("192.0.2.0/24")}

	sctp := clusterIPPort("sctp", v1.ProtocolSCTP, "10.96.0.60", 80)
	v6 := clusterIPPort("v6only", v1.ProtocolTCP, "fd00::10", 80)

	ep := func(s string) []proxier.Endpoint {
		return readyEndpoints(testNode, netip.MustParseAddrPort(s))
	}
	tests := []struct {
		name      string
		nodePorts []netip.Prefix
		snap      map[*proxier.ServicePort][]proxier.Endpoint
		// wantNat and wantFilter are SVCP-PORTALS-CONTAINER (HOST is the
		// same, checked too) and SVCP-PORTALS-INPUT, with proxy ports as
		// <name> or <name/ext>.
		wantNat    []string
		wantFilter []string
		sockets    int
	}{
		{
			name: "cluster IPs, TCP and UDP",
			snap: map[*proxier.ServicePort][]proxier.Endpoint{
				web: ep("10.244.1.10:80"),
				dns: ep("10.244.1.11:53"),
			},
			wantNat: []string{
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/dns cluster IP" -d 10.96.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports <dns>`,
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/web cluster IP" -d 10.96.0.10/32 -p tcp -m tcp --dport 9000 -j REDIRECT --to-ports <web>`,
			},
			sockets: 2,
		},
		{
			name: "no endpoints: connections to the proxy port are rejected",
			snap: map[*proxier.ServicePort][]proxier.Endpoint{empty: nil},
			wantNat: []string{
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/empty cluster IP" -d 10.96.0.20/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports <empty>`,
			},
			wantFilter: []string{
				`-A SVCP-PORTALS-INPUT -m comment --comment "default/empty has no endpoints" -p tcp -m tcp --dport <empty> -j REJECT`,
			},
			sockets: 1,
		},
		{
			name: "node port on every local address and an external IP share the socket",
			snap: map[*proxier.ServicePort][]proxier.Endpoint{np: ep("10.244.2.10:80")},
			wantNat: []string{
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/np cluster IP" -d 10.96.0.30/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports <np>`,
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/np external IP" -d 203.0.113.5/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports <np>`,
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/np node port" -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080 -j REDIRECT --to-ports <np>`,
			},
			sockets: 1,
		},
		{
			name:      "node port on the --nodeport-addresses only",
			nodePorts: []netip.Prefix{netip.MustParsePrefix("172.30.0.0/24")},
			snap:      map[*proxier.ServicePort][]proxier.Endpoint{np: ep("10.244.2.10:80")},
			wantNat: []string{
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/np cluster IP" -d 10.96.0.30/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports <np>`,
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/np external IP" -d 203.0.113.5/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports <np>`,
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/np node port" -d 172.30.0.11/32 -p tcp -m tcp --dport 30080 -j REDIRECT --to-ports <np>`,
			},
			sockets: 1,
		},
		{
			name: "externalTrafficPolicy Local without local endpoints: a second socket that drops",
			snap: map[*proxier.ServicePort][]proxier.Endpoint{local: readyEndpoints("node2", netip.MustParseAddrPort("10.244.2.10:80"))},
			wantNat: []string{
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/local cluster IP" -d 10.96.0.40/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports <local>`,
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/local node port" -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30040 -j REDIRECT --to-ports <local/ext>`,
			},
			wantFilter: []string{
				`-A SVCP-PORTALS-INPUT -m comment --comment "default/local has no local endpoints" -p tcp -m tcp --dport <local/ext> -j DROP`,
			},
			sockets: 2,
		},
		{
			name: "load balancer source ranges",
			snap: map[*proxier.ServicePort][]proxier.Endpoint{lb: ep("10.244.1.10:443")},
			wantNat: []string{
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/lb cluster IP" -d 10.96.0.50/32 -p tcp -m tcp --dport 443 -j REDIRECT --to-ports <lb>`,
				`-A SVCP-PORTALS-CONTAINER -m comment --comment "default/lb load balancer IP" -d 203.0.113.50/32 -p tcp -m tcp --dport 443 -j REDIRECT --to-ports <lb>`,
			},
			wantFilter: []string{
				`-A SVCP-PORTALS-INPUT -m comment --comment "default/lb load balancer source ranges" -p tcp -m conntrack --ctorigdst 203.0.113.50/32 --ctorigdstport 443 -s 172.30.0.0/24 -j RETURN`,
				`-A SVCP-PORTALS-INPUT -m comment --comment "default/lb load balancer source ranges" -p tcp -m conntrack --ctorigdst 203.0.113.50/32 --ctorigdstport 443 -s 192.0.2.0/24 -j RETURN`,
				`-A SVCP-PORTALS-INPUT -m comment --comment "default/lb load balancer source ranges" -p tcp -m conntrack --ctorigdst 203.0.113.50/32 --ctorigdstport 443 -j DROP`,
			},
			sockets: 1,
		},
		{
			name: "SCTP and IPv6-only service ports are not proxied",
			snap: map[*proxier.ServicePort][]proxier.Endpoint{sctp: ep("10.244.1.10:80"), v6: ep("10.244.1.10:80")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, f := newTestProxier(t, func(c *proxier.Config) { c.NodePortAddresses = tt.nodePorts })
			if err := p.Sync(context.Background(), snapshot(tt.snap), proxier.Changes{Full: true}); err != nil {
				t.Fatal(err)
			}
			names := map[int]string{}
			for sp := range tt.snap {
				if supported(sp) != "" {
					continue
				}
				cl, ext := proxyPorts(t, p, sp.Name)
				names[cl] = "<" + sp.Name.Name + ">"
				if ext != 0 {
					names[ext] = "<" + sp.Name.Name + "/ext>"
				}
			}
			gotNat := normalize(f.rules("nat", ContainerChain), names)
			if !slices.Equal(gotNat, tt.wantNat) {
				t.Errorf("%s:\n%s\nwant:\n%s", ContainerChain, strings.Join(gotNat, "\n"), strings.Join(tt.wantNat, "\n"))
			}
			host := normalize(f.rules("nat", HostChain), names)
			for i := range host {
				host[i] = strings.Replace(host[i], HostChain, ContainerChain, 1)
			}
			if !slices.Equal(host, gotNat) {
				t.Errorf("%s differs from %s:\n%s", HostChain, ContainerChain, strings.Join(host, "\n"))
			}
			if gotFilter := normalize(f.rules("filter", InputChain), names); !slices.Equal(gotFilter, tt.wantFilter) {
				t.Errorf("%s:\n%s\nwant:\n%s", InputChain, strings.Join(gotFilter, "\n"), strings.Join(tt.wantFilter, "\n"))
			}
			counts := p.RuleCounts()
			want := map[string]int{"userspace-proxy-sockets": tt.sockets, "iptables-nat": 2 * len(tt.wantNat), "iptables-filter": len(tt.wantFilter)}
			if fmt.Sprint(counts) != fmt.Sprint(want) {
				t.Errorf("RuleCounts = %v, want %v", counts, want)
			}
			for _, j := range jumps {
				rules := f.rules(j.table, j.from)
				if len(rules) != 1 || !strings.HasSuffix(rules[0], "-j "+j.to) {
					t.Errorf("%s %s: %v, want one jump to %s", j.table, j.from, rules, j.to)
				}
			}
		})
	}
}

func TestSyncIsIncrementalAndTransactional(t *testing.T) {
	b1, b2 := startBackend(t, "b1", sayName), startBackend(t, "b2", sayName)
	web := clusterIPPort("web", v1.ProtocolTCP, "10.96.0.10", 9000)
	other := clusterIPPort("other", v1.ProtocolTCP, "10.96.0.11", 9000)
	ctx := context.Background()
	p, f := newTestProxier(t, nil)

	// 1. First sync: jumps and rules in one payload; the socket serves.
	if err := p.Sync(ctx, snapshot(map[*proxier.ServicePort][]proxier.Endpoint{web: readyEndpoints(testNode, b1)}), proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	if f.restores() != 1 {
		t.Fatalf("first sync: %d restores, want 1", f.restores())
	}
	port, _ := proxyPorts(t, p, web.Name)
	if name, err := askName(t, port); err != nil || name != "b1" {
		t.Fatalf("through the proxy: %q, %v; want b1", name, err)
	}

	// 2. An endpoint change rewrites nothing but reaches the balancer.
	if err := p.Sync(ctx, snapshot(map[*proxier.ServicePort][]proxier.Endpoint{web: readyEndpoints(testNode, b2)}), changed(web.Name)); err != nil {
		t.Fatal(err)
	}
	if f.restores() != 1 {
		t.Fatalf("endpoint change: %d restores, want still 1", f.restores())
	}
	if name, err := askName(t, port); err != nil || name != "b2" {
		t.Fatalf("after the endpoint change: %q, %v; want b2", name, err)
	}

	// 3. A full resync with the rules intact writes nothing either.
	two := snapshot(map[*proxier.ServicePort][]proxier.Endpoint{web: readyEndpoints(testNode, b2)})
	if err := p.Sync(ctx, two, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	if f.restores() != 1 {
		t.Fatalf("full resync without drift: %d restores, want 1", f.restores())
	}

	// 4. A full resync repairs a flushed chain.
	if err := f.Restore(ctx, []byte("*nat\n:"+ContainerChain+" - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(ctx, two, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	if got := len(f.rules("nat", ContainerChain)); got != 1 {
		t.Fatalf("after repair %s has %d rules, want 1", ContainerChain, got)
	}

	// 5. A failed restore closes the sockets it opened and keeps the old
	// state; the next sync succeeds.
	withOther := snapshot(map[*proxier.ServicePort][]proxier.Endpoint{web: readyEndpoints(testNode, b2), other: readyEndpoints(testNode, b1)})
	f.failRestore = errors.New("iptables-restore: line 3 failed")
	err := p.Sync(ctx, withOther, changed(other.Name))
	if err == nil || !strings.Contains(err.Error(), "line 3 failed") {
		t.Fatalf("sync with a failing restore: %v", err)
	}
	if _, ok := p.sets[other.Name]; ok {
		t.Fatalf("a failed sync kept the new service's socket")
	}
	if got := p.RuleCounts()["userspace-proxy-sockets"]; got != 1 {
		t.Fatalf("after a failed sync: %d sockets, want 1", got)
	}
	if err := p.Sync(ctx, withOther, changed(other.Name)); err != nil {
		t.Fatal(err)
	}
	otherPort, _ := proxyPorts(t, p, other.Name)
	if name, err := askName(t, otherPort); err != nil || name != "b1" {
		t.Fatalf("new service: %q, %v; want b1", name, err)
	}

	// 6. A removed service closes its socket and loses its rules.
	if err := p.Sync(ctx, snapshot(map[*proxier.ServicePort][]proxier.Endpoint{other: readyEndpoints(testNode, b1)}), changed(web.Name)); err != nil {
		t.Fatal(err)
	}
	if _, err := askName(t, port); err == nil {
		t.Fatalf("the removed service's proxy socket still answers")
	}
	for _, r := range f.rules("nat", ContainerChain) {
		if strings.Contains(r, "default/web") {
			t.Fatalf("the removed service's rule survived: %s", r)
		}
	}

	// 7. Close closes every socket; Sync then fails.
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := askName(t, otherPort); err == nil {
		t.Fatalf("a proxy socket survived Close")
	}
	if err := p.Sync(ctx, withOther, proxier.Changes{Full: true}); err == nil {
		t.Fatalf("Sync after Close succeeded")
	}
}

func TestSyncSwitchesExternalSocket(t *testing.T) {
	local := clusterIPPort("local", v1.ProtocolTCP, "10.96.0.40", 80)
	local.NodePort = 30040
	mine := readyEndpoints(testNode, netip.MustParseAddrPort("10.244.1.10:80"))
	theirs := readyEndpoints("node2", netip.MustParseAddrPort("10.244.2.10:80"))
	ctx := context.Background()
	p, _ := newTestProxier(t, nil)

	// Cluster policy: one socket for everything.
	if err := p.Sync(ctx, snapshot(map[*proxier.ServicePort][]proxier.Endpoint{local: append(mine, theirs...)}), proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	cl, ext := proxyPorts(t, p, local.Name)
	if ext != 0 {
		t.Fatalf("Cluster policy opened an external socket")
	}
	// Local policy: external traffic gets its own socket and balancer.
	loc := *local
	loc.ExternalPolicyLocal = true
	if err := p.Sync(ctx, snapshot(map[*proxier.ServicePort][]proxier.Endpoint{&loc: append(mine, theirs...)}), changed(local.Name)); err != nil {
		t.Fatal(err)
	}
	cl2, ext2 := proxyPorts(t, p, local.Name)
	if cl2 != cl || ext2 == 0 {
		t.Fatalf("Local policy: sockets %d/%d, want the cluster socket %d kept and an external one", cl2, ext2, cl)
	}
	if got := p.sets[local.Name].external.socket.Balancer().Endpoints(); len(got) != 1 || got[0] != mine[0].AddrPort() {
		t.Fatalf("external balancer has %v, want only the local endpoint", got)
	}
	// Back to Cluster: the external socket closes.
	if err := p.Sync(ctx, snapshot(map[*proxier.ServicePort][]proxier.Endpoint{local: append(mine, theirs...)}), changed(local.Name)); err != nil {
		t.Fatal(err)
	}
	if _, ext3 := proxyPorts(t, p, local.Name); ext3 != 0 {
		t.Fatalf("back to Cluster policy the external socket stayed")
	}
	if got := p.RuleCounts()["userspace-proxy-sockets"]; got != 1 {
		t.Fatalf("%d sockets, want 1", got)
	}
}

func TestSyncAffinityAndTerminatingEndpoints(t *testing.T) {
	b1, b2 := startBackend(t, "b1", sayName), startBackend(t, "b2", sayName)
	web := clusterIPPort("web", v1.ProtocolTCP, "10.96.0.10", 9000)
	web.StickyTimeout = time.Hour
	ctx := context.Background()
	p, _ := newTestProxier(t, nil)
	if err := p.Sync(ctx, snapshot(map[*proxier.ServicePort][]proxier.Endpoint{web: readyEndpoints(testNode, b1, b2)}), proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	port, _ := proxyPorts(t, p, web.Name)
	for i := 0; i < 5; i++ {
		if name, err := askName(t, port); err != nil || name != "b1" {
			t.Fatalf("request %d with ClientIP affinity: %q, %v; want b1 every time", i, name, err)
		}
	}
	// Only terminating (still serving) endpoints left: they are used.
	eps := readyEndpoints(testNode, b2)
	eps[0].Ready, eps[0].Terminating = false, true
	if err := p.Sync(ctx, snapshot(map[*proxier.ServicePort][]proxier.Endpoint{web: eps}), changed(web.Name)); err != nil {
		t.Fatal(err)
	}
	if name, err := askName(t, port); err != nil || name != "b2" {
		t.Fatalf("with only a terminating endpoint: %q, %v; want b2", name, err)
	}
}

func TestCleanupRemovesEveryModesChains(t *testing.T) {
	ctx := context.Background()
	p, f := newTestProxier(t, nil)
	web := clusterIPPort("web", v1.ProtocolTCP, "10.96.0.10", 9000)
	if err := p.Sync(ctx, snapshot(map[*proxier.ServicePort][]proxier.Endpoint{web: nil}), proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	// Chains as the iptables mode leaves them, with jumps between ours.
	iptablesMode := `*nat
:SVCP-SERVICES - [0:0]
:SVCP-SVC-ABC - [0:0]
:SVCP-MARK-MASQ - [0:0]
-I PREROUTING 1 -m comment --comment "svcproxy service portals" -j SVCP-SERVICES
-A SVCP-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 9000 -j SVCP-SVC-ABC
-A SVCP-SVC-ABC -j SVCP-MARK-MASQ
-A POSTROUTING -j MASQUERADE
COMMIT
*filter
:SVCP-FILTER-FORWARD - [0:0]
-A FORWARD -j SVCP-FILTER-FORWARD
COMMIT
`
	if err := f.Restore(ctx, []byte(iptablesMode)); err != nil {
		t.Fatal(err)
	}
	statePath, err := p.statePath()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"nat", "filter"} {
		for _, c := range f.chains(table) {
			if strings.HasPrefix(c, proxier.ChainPrefix) {
				t.Errorf("chain %s/%s survived cleanup", table, c)
			}
			for _, r := range f.rules(table, c) {
				if strings.Contains(r, proxier.ChainPrefix) {
					t.Errorf("rule survived cleanup: %s", r)
				}
			}
		}
	}
	if got := f.rules("nat", "POSTROUTING"); len(got) != 1 {
		t.Errorf("cleanup touched a rule that is not ours: POSTROUTING = %v", got)
	}
	if _, err := os.Stat(statePath); err == nil {
		t.Errorf("state file %s survived cleanup", statePath)
	}
	// Cleanup again finds nothing to do and does not fail.
	if err := p.Cleanup(ctx); err != nil {
		t.Fatalf("second cleanup: %v", err)
	}
}

func TestExplain(t *testing.T) {
	b1 := startBackend(t, "b1", sayName)
	web := clusterIPPort("web", v1.ProtocolTCP, "10.96.0.10", 9000)
	web.NodePort = 30090
	web.StickyTimeout = 3 * time.Hour
	empty := clusterIPPort("empty", v1.ProtocolUDP, "10.96.0.53", 53)
	ctx := context.Background()
	p, f := newTestProxier(t, nil)
	if err := p.Sync(ctx, snapshot(map[*proxier.ServicePort][]proxier.Endpoint{web: readyEndpoints(testNode, b1), empty: nil}), proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	f.counters = "[7:420]"
	webPort, _ := proxyPorts(t, p, web.Name)
	emptyPort, _ := proxyPorts(t, p, empty.Name)
	tests := []struct {
		name  string
		proto v1.Protocol
		dst   string
		want  []string
	}{
		{
			name: "cluster IP", proto: v1.ProtocolTCP, dst: "10.96.0.10:9000",
			want: []string{
				"[7 pkts, 420 bytes] -A SVCP-PORTALS-CONTAINER",
				fmt.Sprintf("-j REDIRECT --to-ports %d", webPort),
				fmt.Sprintf("127.0.0.1:%d", webPort),
				"none: the packet is delivered to the proxy socket",
				fmt.Sprintf("TCP 127.0.0.1:%d, socket inode", webPort),
				"default/web (cluster+external traffic)",
				"ClientIP affinity for 3h0m0s",
				"endpoints (1): " + b1.String(),
			},
		},
		{
			name: "node port on a local address", proto: v1.ProtocolTCP, dst: "127.0.0.1:30090",
			want: []string{"--dst-type LOCAL", fmt.Sprintf("--to-ports %d", webPort), "node port <any local address>:30090"},
		},
		{
			name: "UDP without endpoints", proto: v1.ProtocolUDP, dst: "10.96.0.53:53",
			want: []string{
				fmt.Sprintf("--to-ports %d", emptyPort),
				"-j REJECT",
				"no endpoints: datagrams get ICMP port unreachable",
				"endpoints: none",
			},
		},
		{
			name: "an address nobody serves", proto: v1.ProtocolTCP, dst: "10.96.0.99:80",
			want: []string{"No REDIRECT rule"},
		},
		{
			name: "the right address with the wrong protocol", proto: v1.ProtocolUDP, dst: "10.96.0.10:9000",
			want: []string{"No REDIRECT rule"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := p.Explain(ctx, &out, tt.proto, netip.MustParseAddrPort(tt.dst)); err != nil {
				t.Fatal(err)
			}
			t.Logf("explain %s %s:\n%s", tt.proto, tt.dst, out.String())
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("explain output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestExplainWithoutRules(t *testing.T) {
	p, _ := newTestProxier(t, nil)
	var out bytes.Buffer
	if err := p.Explain(context.Background(), &out, v1.ProtocolTCP, netip.MustParseAddrPort("10.96.0.10:80")); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "No userspace rules") {
		t.Fatalf("explain without rules:\n%s", out.String())
	}
}

func TestParseProcAddr(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{"0100007F:9C40", "127.0.0.1:40000", true},
		{"00000000:0050", "0.0.0.0:80", true},
		{"0B001EAC:1F90", "172.30.0.11:8080", true},
		{"0100007F", "", false},
		{"zz00007F:0050", "", false},
	}
	for _, tt := range tests {
		got, ok := parseProcAddr(tt.in)
		if ok != tt.ok || (ok && got.String() != tt.want) {
			t.Errorf("parseProcAddr(%q) = %s, %v; want %s, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestSplitArgs(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{`-A X -j Y`, []string{"-A", "X", "-j", "Y"}},
		{`-A X -m comment --comment "a b c" -j Y`, []string{"-A", "X", "-m", "comment", "--comment", "a b c", "-j", "Y"}},
		{`-A X --comment "say \"hi\""`, []string{"-A", "X", "--comment", `say "hi"`}},
		{`-A X --comment ""`, []string{"-A", "X", "--comment", ""}},
	}
	for _, tt := range tests {
		if got := splitArgs(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("splitArgs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCloseIsGraceful(t *testing.T) {
	b1 := startBackend(t, "b1", echoLines)
	web := clusterIPPort("web", v1.ProtocolTCP, "10.96.0.10", 9000)
	p, _ := newTestProxier(t, nil)
	p.closeGrace = time.Hour // the open connection decides when Close returns
	if err := p.Sync(context.Background(), snapshot(map[*proxier.ServicePort][]proxier.Endpoint{web: readyEndpoints(testNode, b1)}), proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	port, _ := proxyPorts(t, p, web.Name)
	c := dialPortal(t, port)
	r := bufio.NewReader(c)
	ask := func(line string) (string, error) {
		fmt.Fprintf(c, "%s\n", line)
		return r.ReadString('\n')
	}
	if got, err := ask("1"); err != nil || got != "b1 1\n" {
		t.Fatalf("before Close: %q, %v", got, err)
	}
	closed := make(chan error)
	go func() { closed <- p.Close() }()
	waitFor(t, "the proxy socket to stop accepting", func() bool {
		// Only dial: the echo backend would never end a conversation.
		probe, err := net.DialTCP("tcp4", nil, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
		if err != nil {
			return true
		}
		probe.Close()
		return false
	})
	if got, err := ask("2"); err != nil || got != "b1 2\n" {
		t.Fatalf("open connection during Close: %q, %v", got, err)
	}
	c.Close() // the last connection ends: Close returns
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
}

func TestStateFilesOfDeadProxiesAreSwept(t *testing.T) {
	p, _ := newTestProxier(t, nil)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	files := map[string]int{
		"userspace-1.json": dead.Process.Pid, // its proxy is gone
		"userspace-2.json": os.Getpid(),      // a live proxy
	}
	for name, pid := range files {
		data := fmt.Sprintf(`{"pid": %d, "portals": []}`, pid)
		if err := os.WriteFile(filepath.Join(p.stateDir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	web := clusterIPPort("web", v1.ProtocolTCP, "10.96.0.10", 9000)
	if err := p.Sync(context.Background(), snapshot(map[*proxier.ServicePort][]proxier.Endpoint{web: nil}), proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	own, err := p.statePath()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"userspace-1.json": false, "userspace-2.json": true, filepath.Base(own): true} {
		_, err := os.Stat(filepath.Join(p.stateDir, name))
		if got := err == nil; got != want {
			t.Errorf("%s exists: %v, want %v", name, got, want)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(own); err == nil {
		t.Errorf("Close left the state file %s", own)
	}
}
