// Package conformance_test checks the iptablestest fake against the real
// iptables: the iptables mode runs the same sequence of syncs against the
// fake and against iptables-restore (nft and legacy backends) inside a
// throwaway network namespace, and iptables-save must print exactly what the
// fake's Save prints. It needs root and the iptables binaries; the test
// binary re-executes itself in a new network namespace first, so the host's
// rules are never touched.
package conformance_test

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	goiptables "github.com/coreos/go-iptables/iptables"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/svcproxy/svcproxy/e2e/isolate"
	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptablestest"
)

func TestMain(m *testing.M) {
	isolate.MustIsolate()
	os.Exit(m.Run())
}

// backend is one iptables implementation: its restore and save programs and
// the iptables binary for EnsureJumps.
type backend struct {
	name           string
	restorer       proxier.Restorer
	ensureJumps    func([]proxier.Jump) error
	iptablesBinary string
}

// binRestorer is proxier.ExecRestorer with other program names.
type binRestorer struct{ restore, save string }

func (b binRestorer) Restore(ctx context.Context, payload []byte) error {
	cmd := exec.CommandContext(ctx, b.restore, "-w", "5", "--noflush")
	cmd.Stdin = bytes.NewReader(payload)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", b.restore, err, out)
	}
	return nil
}

func (b binRestorer) Save(ctx context.Context, table string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, b.save, "-c", "-t", table).Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", b.save, err)
	}
	return out, nil
}

// ensureJumpsWith is proxier.EnsureJumps for another iptables binary.
func ensureJumpsWith(path string) func([]proxier.Jump) error {
	return func(jumps []proxier.Jump) error {
		ipt, err := goiptables.New(goiptables.Path(path))
		if err != nil {
			return err
		}
		for _, j := range jumps {
			if ok, err := ipt.ChainExists(j.Table, j.Target); err != nil {
				return err
			} else if !ok {
				if err := ipt.NewChain(j.Table, j.Target); err != nil {
					return err
				}
			}
			spec := append([]string{"-m", "comment", "--comment", j.Comment}, j.Extra...)
			if err := ipt.InsertUnique(j.Table, j.Chain, 1, append(spec, "-j", j.Target)...); err != nil {
				return err
			}
		}
		return nil
	}
}

func backends() []backend {
	return []backend{
		// the system default: what svcproxy itself runs
		{name: "default", restorer: proxier.ExecRestorer{}, ensureJumps: proxier.EnsureJumps, iptablesBinary: "iptables"},
		{name: "legacy", restorer: binRestorer{"iptables-legacy-restore", "iptables-legacy-save"},
			ensureJumps: ensureJumpsWith("/usr/sbin/iptables-legacy"), iptablesBinary: "iptables-legacy"},
	}
}

// saved returns the Save output of both tables without comment lines.
func saved(t *testing.T, r proxier.Restorer) string {
	t.Helper()
	var out []string
	for _, table := range []string{"filter", "nat"} {
		b, err := r.Save(context.Background(), table)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				out = append(out, l)
			}
		}
	}
	return strings.Join(out, "\n")
}

func svc(name, ip string, mods ...func(*v1.Service)) *v1.Service {
	s := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []v1.ServicePort{{Name: "p", Port: 80, Protocol: v1.ProtocolTCP}}},
	}
	for _, m := range mods {
		m(s)
	}
	return s
}

func slice(svcName string, proto v1.Protocol, ips ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svcName, Labels: map[string]string{discovery.LabelServiceName: svcName}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("p"), Port: ptr.To[int32](8080), Protocol: ptr.To(proto)}},
	}
	for i, ip := range ips {
		node := fmt.Sprintf("node%d", i%3+1)
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{ip}, NodeName: &node})
	}
	return s
}

// steps are the changes the test syncs one after the other.
var steps = []func(tr *proxier.Tracker){
	func(tr *proxier.Tracker) {
		tr.UpdateService(svc("a", "172.30.0.1"))
		tr.UpdateEndpointSlice(slice("a", v1.ProtocolTCP, "10.0.1.1", "10.0.2.1", "10.0.3.1"))
		tr.UpdateService(svc("b", "172.30.0.2", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30002
			s.Spec.ExternalIPs = []string{"192.168.99.2"}
		}))
		tr.UpdateEndpointSlice(slice("b", v1.ProtocolTCP, "10.0.1.2", "10.0.2.2"))
		tr.UpdateService(svc("c", "172.30.0.3", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeLoadBalancer
			s.Spec.Ports[0].NodePort = 30003
			s.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "5.6.7.3"}}
			s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/25"}
			s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
			s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
		}))
		tr.UpdateEndpointSlice(slice("c", v1.ProtocolTCP, "10.0.1.3", "10.0.2.3"))
		tr.UpdateService(svc("d", "172.30.0.4", func(s *v1.Service) {
			s.Spec.Type = v1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30004
		}))
		tr.UpdateService(svc("u", "172.30.0.10", func(s *v1.Service) { s.Spec.Ports[0].Protocol = v1.ProtocolUDP }))
		tr.UpdateEndpointSlice(slice("u", v1.ProtocolUDP, "10.0.1.10"))
	},
	func(tr *proxier.Tracker) { tr.UpdateEndpointSlice(slice("a", v1.ProtocolTCP, "10.0.1.1", "10.0.2.1")) },
	func(tr *proxier.Tracker) { tr.UpdateEndpointSlice(slice("d", v1.ProtocolTCP, "10.0.3.4")) },
	func(tr *proxier.Tracker) { tr.UpdateEndpointSlice(slice("b", v1.ProtocolTCP)) },
	func(tr *proxier.Tracker) {
		tr.DeleteService(types.NamespacedName{Namespace: "ns", Name: "c"})
		tr.UpdateService(svc("e", "172.30.0.5"))
		tr.UpdateEndpointSlice(slice("e", v1.ProtocolTCP, "10.0.3.5"))
	},
}

func TestFakeMatchesIptables(t *testing.T) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			if _, err := exec.LookPath(b.iptablesBinary); err != nil {
				t.Fatalf("%s is needed (apt-get install iptables): %v", b.iptablesBinary, err)
			}
			ctx := context.Background()
			fake := iptablestest.New()
			fake.SaveCounters = true
			if err := fake.Load(iptablestest.ForeignRules); err != nil {
				t.Fatal(err)
			}
			if err := b.restorer.Restore(ctx, []byte(iptablestest.ForeignRules)); err != nil {
				t.Fatal(err)
			}
			cfg := proxier.DefaultConfig()
			cfg.Node = proxier.Node{Name: "node1"}
			cfg.ClusterCIDR = netip.MustParsePrefix("10.0.0.0/8")
			nodeAddrs := func([]netip.Prefix) ([]netip.Addr, error) { return nil, nil }
			real, err := iptables.NewWithOptions(cfg, iptables.Options{Restorer: b.restorer, EnsureJumps: b.ensureJumps, NodeAddresses: nodeAddrs})
			if err != nil {
				t.Fatal(err)
			}
			fp, err := iptables.NewWithOptions(cfg, iptables.Options{Restorer: fake, EnsureJumps: fake.EnsureJumps, NodeAddresses: nodeAddrs})
			if err != nil {
				t.Fatal(err)
			}
			tr := proxier.NewTracker(nil)
			for i, step := range steps {
				step(tr)
				snap, ch := tr.Commit()
				if err := real.Sync(ctx, snap, ch); err != nil {
					t.Fatalf("step %d: real sync: %v", i, err)
				}
				if err := fp.Sync(ctx, snap, ch); err != nil {
					t.Fatalf("step %d: fake sync: %v", i, err)
				}
				if got, want := saved(t, b.restorer), saved(t, fake); got != want {
					t.Fatalf("step %d: iptables-save differs from the fake:\n%s", i, diff(got, want))
				}
			}
			for _, p := range []proxier.Proxier{real, fp} {
				if err := p.Cleanup(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if got, want := saved(t, b.restorer), saved(t, fake); got != want {
				t.Fatalf("after cleanup iptables-save differs from the fake:\n%s", diff(got, want))
			}
			if got := saved(t, b.restorer); strings.Contains(got, proxier.ChainPrefix) || !strings.Contains(got, "KUBE-SERVICES") {
				t.Fatalf("cleanup left svcproxy rules or removed foreign ones:\n%s", got)
			}
			// Leave the namespace clean for the next backend.
			for _, args := range [][]string{{"-t", "nat", "-F", "PREROUTING"}, {"-t", "nat", "-F", "POSTROUTING"}, {"-t", "nat", "-F", "KUBE-SERVICES"},
				{"-t", "nat", "-X", "KUBE-SERVICES"}, {"-t", "filter", "-F"}, {"-t", "filter", "-X", "DOCKER"}} {
				if out, err := exec.Command(b.iptablesBinary, args...).CombinedOutput(); err != nil {
					t.Fatalf("%s %v: %v: %s", b.iptablesBinary, args, err, out)
				}
			}
		})
	}
}

// diff lists the lines only in got (-) and only in want (+).
func diff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	in := func(l string, list []string) bool {
		for _, x := range list {
			if x == l {
				return true
			}
		}
		return false
	}
	var out []string
	for _, l := range g {
		if !in(l, w) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range w {
		if !in(l, g) {
			out = append(out, "+ "+l)
		}
	}
	if out == nil {
		return "(same lines, different order)\n--- real:\n" + got + "\n--- fake:\n" + want
	}
	return strings.Join(out, "\n")
}

// restoreCases are payloads applied on top of restoreBase; the fake (with
// CommitPerTable, as the real tool commits per table) must accept or refuse
// each as iptables-restore does and end in the same state.
const restoreBase = `*nat
:FOO - [0:0]
:BAR - [0:0]
-A FOO -m comment --comment "two words" -d 10.0.0.1 -p tcp -m tcp --dport 80 -j BAR
-A BAR -j MARK --or-mark 0x4000
-A PREROUTING -j FOO
COMMIT
`

var restoreCases = []string{
	"*nat\n:FOO - [0:0]\n-A FOO -j RETURN\nCOMMIT\n",
	"*nat\n-I FOO 1 -j RETURN\n-D FOO -p tcp -d 10.0.0.1/32 -m comment --comment \"two words\" -m tcp --dport 80 -j BAR\nCOMMIT\n",
	"*nat\n-I PREROUTING 2 -s 10.1.0.0/16 -j ACCEPT\nCOMMIT\n",
	"*nat\n-D PREROUTING -j FOO\n:FOO - [0:0]\n-X FOO\nCOMMIT\n",
	"*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
	"*nat\n-D FOO -j RETURN\nCOMMIT\n",
	"*nat\n:BAR - [0:0]\n-X BAR\nCOMMIT\n",
	"*nat\n-D PREROUTING -j FOO\n-X FOO\nCOMMIT\n",
	"*nat\n-X NOPE\nCOMMIT\n",
	"*nat\n-A FOO -j NOPE\nCOMMIT\n",
	"*nat\n-A NOPE -j RETURN\nCOMMIT\n",
	"*filter\n-A INPUT -p tcp -j DNAT --to-destination 1.2.3.4\nCOMMIT\n",
	"*nat\n-A FOO -d fd00::1/128 -j RETURN\nCOMMIT\n",
	"*nat\n:X - [0:0]\n-A X -p tcp -j DNAT --to-destination 1.2.3.4:80\n-A POSTROUTING -j X\nCOMMIT\n",
	"*nat\n-A BAR -j MASQUERADE\nCOMMIT\n",
	"*nat\n:Z - [0:0]\n-A Z -j MASQUERADE\n-A Z -p tcp -j DNAT --to-destination 1.2.3.4:80\nCOMMIT\n",
	"*filter\n:T1 - [0:0]\n-A INPUT -j T1\nCOMMIT\n*nat\n-A FOO -j NOPE\nCOMMIT\n",
	"*filter\n-A INPUT -p tcp -m tcp --dport 22 -j REJECT\nCOMMIT\n*nat\n-A FOO -m statistic --mode random --probability 0.2 -j RETURN\n-A FOO -m recent --name X --rcheck --seconds 5 --reap -j RETURN\nCOMMIT\n",
	"*nat\n:SVCP-0123456789012345678901234 - [0:0]\nCOMMIT\n",
}

func TestRestoreSemanticsMatchIptables(t *testing.T) {
	ctx := context.Background()
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			reset := func() {
				t.Helper()
				for _, table := range []string{"nat", "filter"} {
					for _, op := range []string{"-F", "-X"} {
						if out, err := exec.Command(b.iptablesBinary, "-t", table, op).CombinedOutput(); err != nil {
							t.Fatalf("%s -t %s %s: %v: %s", b.iptablesBinary, table, op, err, out)
						}
					}
				}
			}
			for i, payload := range restoreCases {
				reset()
				fake := iptablestest.New()
				fake.SaveCounters = true
				fake.CommitPerTable = true
				if err := fake.Load(restoreBase); err != nil {
					t.Fatal(err)
				}
				if err := b.restorer.Restore(ctx, []byte(restoreBase)); err != nil {
					t.Fatal(err)
				}
				realErr := b.restorer.Restore(ctx, []byte(payload))
				fakeErr := fake.Restore(ctx, []byte(payload))
				if (realErr == nil) != (fakeErr == nil) {
					t.Errorf("case %d %q: iptables-restore error %v, fake error %v", i, payload, realErr, fakeErr)
					continue
				}
				if got, want := saved(t, b.restorer), saved(t, fake); got != want {
					t.Errorf("case %d %q: state differs:\n%s", i, payload, diff(got, want))
				}
			}
			reset()
		})
	}
}
