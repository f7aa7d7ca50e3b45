package ipvs_test

// Tests and benchmarks against the real kernel. They need IPVS: where the
// host has none, the tests re-run themselves inside the IPVS VM
// (e2e/vm), and the benchmarks must be started there:
//
//	go test -exec "$PWD/e2e/vm/run-in-vm.sh" -run '^$' -bench . -benchtime 5x ./ipvs/
//
// TestMain has already moved the process into a throwaway network
// namespace, so everything here is created and dropped with it.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/e2e/vm"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxier"
)

// kernelOrVM reports whether the caller should run here: true where the
// kernel has IPVS; otherwise it re-runs the test named pattern in the VM,
// reports the outcome, and returns false.
func kernelOrVM(t *testing.T, pattern string) bool {
	t.Helper()
	if ipvs.Available() {
		return true
	}
	if vm.InVM() || vm.HostHasIPVS() {
		t.Fatalf("IPVS is not loaded here (no /proc/net/ip_vs): modprobe ip_vs first")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := vm.EnsureImage(ctx, &out); err != nil {
		t.Fatalf("the IPVS VM image: %v\n%s", err, out.String())
	}
	out.Reset()
	err := vm.Run(ctx, vm.Options{Stdout: &out, Stderr: &out}, os.Args[0], "-test.run", pattern, "-test.v", "-test.count=1")
	t.Logf("in the IPVS VM:\n%s", out.String())
	if err != nil {
		t.Fatalf("%s failed in the IPVS VM: %v", pattern, err)
	}
	return false
}

// nodeLink gives the throwaway namespace a "node address" on a dummy link.
func nodeLink(t testing.TB, addr string) {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "node0"}}); err != nil {
		t.Fatalf("add node0: %v", err)
	}
	link, err := netlink.LinkByName("node0")
	if err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParsePrefix(addr)
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: ip.Addr().AsSlice(), Mask: net.CIDRMask(ip.Bits(), 32)}}); err != nil {
		t.Fatalf("address node0: %v", err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

var spaces = regexp.MustCompile(`[ \t]+`)

// ipvsadmLines returns ipvsadm -Ln without its header, spaces squeezed,
// virtual servers sorted (ipvsadm prints them in hash order).
func ipvsadmLines(t testing.TB) []string {
	var blocks [][]string
	for _, l := range strings.Split(run(t, "ipvsadm", "-Ln"), "\n") {
		l = strings.TrimSpace(spaces.ReplaceAllString(l, " "))
		switch {
		case l == "" || strings.HasPrefix(l, "IP Virtual Server") || strings.HasPrefix(l, "Prot ") || strings.HasPrefix(l, "-> RemoteAddress"):
		case strings.HasPrefix(l, "->") && len(blocks) > 0:
			blocks[len(blocks)-1] = append(blocks[len(blocks)-1], l)
		default:
			blocks = append(blocks, []string{l})
		}
	}
	slices.SortFunc(blocks, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
	var out []string
	for _, b := range blocks {
		out = append(out, b...)
	}
	return out
}

func newKernelProxier(t testing.TB, mutate func(*proxier.Config)) *ipvs.Proxier {
	t.Helper()
	cfg := proxier.DefaultConfig()
	cfg.Mode = proxier.ModeIPVS
	cfg.Node = proxier.Node{Name: "node1"}
	cfg.ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	if mutate != nil {
		mutate(&cfg)
	}
	p, err := ipvs.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKernel(t *testing.T) {
	if !kernelOrVM(t, "^TestKernel$") {
		return
	}
	ctx := context.Background()
	nodeLink(t, "172.30.0.11/24")
	p := newKernelProxier(t, func(c *proxier.Config) { c.IPVS.StrictARP = true; c.IPVS.TCPTimeout = 901 * time.Second })
	defer p.Close()
	udp := &proxier.ServicePort{Name: spn("dns", v1.ProtocolUDP), ClusterIPs: addrs("10.96.0.10"), Port: 53}
	snap := snapshot(
		svc("web", "10.96.0.1", func(sp *proxier.ServicePort) { sp.NodePort = 30080 }), eps("10.244.1.11", "10.244.2.10"),
		svc("sticky", "10.96.0.2", func(sp *proxier.ServicePort) {
			sp.StickyTimeout = 600 * time.Second
			sp.Scheduler = "wrr;10.244.1.11=4"
		}), eps("10.244.1.11", "10.244.2.10"),
		svc("lb", "10.96.0.3", func(sp *proxier.ServicePort) {
			sp.LoadBalancerIPs = addrs("203.0.113.20")
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
		}), nil,
		udp, eps("10.244.3.10"),
	)
	if err := p.Sync(ctx, snap, proxier.Changes{Full: true}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"TCP 10.96.0.1:80 rr", "-> 10.244.1.11:8080 Masq 1 0 0", "-> 10.244.2.10:8080 Masq 1 0 0",
		"TCP 10.96.0.2:80 wrr persistent 600", "-> 10.244.1.11:8080 Masq 4 0 0", "-> 10.244.2.10:8080 Masq 1 0 0",
		"TCP 10.96.0.3:80 rr",
		"TCP 172.30.0.11:30080 rr", "-> 10.244.1.11:8080 Masq 1 0 0", "-> 10.244.2.10:8080 Masq 1 0 0",
		"TCP 203.0.113.20:80 rr",
		"UDP 10.96.0.10:53 rr", "-> 10.244.3.10:8080 Masq 1 0 0",
	}
	if got := ipvsadmLines(t); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("ipvsadm -Ln:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := run(t, "ipvsadm", "-Ln", "--timeout"); !strings.Contains(got, ": 901 ") {
		t.Errorf("timeouts: %s", got)
	}
	addrsOut := run(t, "ip", "-o", "-4", "addr", "show", "dev", ipvs.DummyInterface)
	for _, a := range []string{"10.96.0.1/32", "10.96.0.2/32", "10.96.0.3/32", "10.96.0.10/32", "203.0.113.20/32"} {
		if !strings.Contains(addrsOut, " "+a+" ") {
			t.Errorf("%s not on kube-ipvs0:\n%s", a, addrsOut)
		}
	}
	// ipset members, as the ipset tool lists them (round trip of our encoding)
	for set, members := range map[string][]string{
		"SVCP-CLUSTER-IP":                {"10.96.0.1,tcp:80", "10.96.0.2,tcp:80", "10.96.0.3,tcp:80", "10.96.0.10,udp:53"},
		"SVCP-NODE-PORT":                 {"172.30.0.11,tcp:30080"},
		"SVCP-LOAD-BALANCER-SOURCE-CIDR": {"203.0.113.20,tcp:80,198.51.100.0/24"},
		"SVCP-LOOP-BACK":                 {"10.244.1.11,tcp:8080,10.244.1.11", "10.244.3.10,udp:8080,10.244.3.10"},
		"SVCP-NO-ENDPOINTS":              {"10.96.0.3,tcp:80", "203.0.113.20,tcp:80"},
	} {
		out := run(t, "ipset", "list", set)
		for _, m := range members {
			if !strings.Contains(out, "\n"+m+"\n") {
				t.Errorf("ipset %s lacks %s:\n%s", set, m, out)
			}
		}
	}
	// and as svcproxy reads them back (what a full sync diffs against)
	for set, want := range map[string]string{
		"SVCP-LOAD-BALANCER-SOURCE-CIDR": "[203.0.113.20,tcp:80,198.51.100.0/24]",
		"SVCP-NODE-PORT":                 "[172.30.0.11,tcp:30080]",
		"SVCP-CLUSTER-IP":                "[10.96.0.10,udp:53]",
	} {
		es, err := ipvs.NewKernelIPSets().Entries(set)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range es {
			if set != "SVCP-CLUSTER-IP" || e.Protocol == v1.ProtocolUDP {
				got = append(got, e.String())
			}
		}
		if fmt.Sprint(got) != want {
			t.Errorf("ipset %s read back as %v, want %s", set, got, want)
		}
	}
	for _, s := range []string{"net/ipv4/vs/conntrack", "net/ipv4/conf/all/arp_ignore", "net/ipv4/conf/all/arp_announce"} {
		v, _ := ipvs.NewProcSysctl().Get(s)
		if v == "0" {
			t.Errorf("sysctl %s = 0", s)
		}
	}
	nat := run(t, "iptables-save", "-t", "nat")
	if !strings.Contains(nat, "-A SVCP-IPVS-SERVICES ! -s 10.244.0.0/16 ") || !strings.Contains(nat, "--match-set SVCP-CLUSTER-IP dst,dst -j SVCP-MARK-MASQ") {
		t.Errorf("nat rules:\n%s", nat)
	}

	// drift: kube-ipvs0 and a real server deleted behind svcproxy's back
	if link, err := netlink.LinkByName(ipvs.DummyInterface); err == nil {
		_ = netlink.LinkDel(link)
	}
	run(t, "ipvsadm", "-d", "-t", "10.96.0.1:80", "-r", "10.244.2.10:8080")
	if err := p.Sync(ctx, snap, proxier.Changes{Full: true}); err != nil {
		t.Fatalf("full sync after drift: %v", err)
	}
	if got := ipvsadmLines(t); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("ipvsadm -Ln after repair:\n%s", strings.Join(got, "\n"))
	}
	if out := run(t, "ip", "-o", "-4", "addr", "show", "dev", ipvs.DummyInterface); !strings.Contains(out, " 10.96.0.1/32 ") {
		t.Errorf("kube-ipvs0 not repaired:\n%s", out)
	}

	// incremental: one endpoint replaced, one service gone
	next := proxier.Snapshot{Services: cloneMap(snap.Services), Endpoints: cloneMap(snap.Endpoints)}
	next.Endpoints[spn("web", v1.ProtocolTCP)] = eps("10.244.1.11", "10.244.3.33")
	delete(next.Services, udp.Name)
	delete(next.Endpoints, udp.Name)
	if err := p.Sync(ctx, next, proxier.Changes{Services: map[proxier.ServicePortName]bool{spn("web", v1.ProtocolTCP): true, udp.Name: true}}); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(ipvsadmLines(t), "\n")
	if !strings.Contains(got, "TCP 10.96.0.1:80 rr\n-> 10.244.1.11:8080 Masq 1 0 0\n-> 10.244.3.33:8080 Masq 1 0 0") || strings.Contains(got, "UDP") {
		t.Errorf("after the incremental sync:\n%s", got)
	}
	if strings.Contains(run(t, "ip", "-o", "-4", "addr", "show", "dev", ipvs.DummyInterface), "10.96.0.10/32") {
		t.Error("10.96.0.10 still on kube-ipvs0")
	}

	var sb strings.Builder
	if err := newKernelProxier(t, nil).Explain(ctx, &sb, v1.ProtocolTCP, netip.MustParseAddrPort("10.96.0.2:80")); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"on kube-ipvs0", "scheduler wrr", "persistent 600 s", "10.244.1.11:8080", "is in SVCP-CLUSTER-IP"} {
		if !strings.Contains(sb.String(), w) {
			t.Errorf("explain lacks %q:\n%s", w, sb.String())
		}
	}

	// cleanup from a fresh proxier, as `svcproxy cleanup` does
	if err := newKernelProxier(t, nil).Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ipvsadmLines(t); len(got) != 0 {
		t.Errorf("virtual servers after cleanup: %v", got)
	}
	if _, err := netlink.LinkByName(ipvs.DummyInterface); err == nil {
		t.Error("kube-ipvs0 left")
	}
	if out := run(t, "ipset", "list", "-n"); strings.Contains(out, "SVCP-") {
		t.Errorf("ipsets left: %s", out)
	}
	for _, table := range []string{"nat", "filter"} {
		if out := run(t, "iptables-save", "-t", table); strings.Contains(out, "SVCP-") {
			t.Errorf("%s rules left:\n%s", table, out)
		}
	}
}
