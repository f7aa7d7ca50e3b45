package iptables

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
)

// TestRandomPartialSyncs applies a seeded random sequence of service and
// endpoint changes, syncing after each burst, and checks every time that
// the partial sync left exactly the state a full sync of the same snapshot
// writes, and that RuleCounts matches the tables.
func TestRandomPartialSyncs(t *testing.T) {
	t.Run("no failures", func(t *testing.T) { randomPartialSyncs(t, false) })
	// Failures as the real iptables-restore has them (per-table commits),
	// recovered as the engine does: the changes are carried over and the
	// next sync is full.
	t.Run("failures", func(t *testing.T) { randomPartialSyncs(t, true) })
}

func randomPartialSyncs(t *testing.T, failures bool) {
	cfg := testConfig()
	p, f := newTestProxier(t, cfg)
	f.CommitPerTable = failures
	tr := proxier.NewTracker(nil)
	rng := rand.New(rand.NewPCG(1, 2))
	const services = 8
	nodes := []string{"node1", "node2", "node3"}

	randomService := func(i int) *v1.Service {
		name := fmt.Sprintf("r%d", i)
		ip := fmt.Sprintf("172.30.1.%d", i+1)
		var mods []func(*v1.Service)
		switch rng.IntN(4) {
		case 1:
			mods = append(mods, nodePort(int32(31000+i)))
		case 2:
			mods = append(mods, loadBalancer(fmt.Sprintf("5.6.8.%d", i+1)), nodePort(int32(31000+i)))
			if rng.IntN(2) == 0 {
				mods = append(mods, func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = []string{"203.0.113.0/25"} })
			}
		case 3:
			mods = append(mods, externalIPs(fmt.Sprintf("192.168.98.%d", i+1)))
		}
		if rng.IntN(3) == 0 {
			mods = append(mods, localPolicy)
		}
		if rng.IntN(4) == 0 {
			mods = append(mods, clientIPAffinity)
		}
		if rng.IntN(4) == 0 {
			mods = append(mods, func(s *v1.Service) {
				s.Spec.Ports[0] = v1.ServicePort{Name: "p80", Port: 80, Protocol: v1.ProtocolUDP}
			})
		}
		return svc(name, ip, mods...)
	}
	randomEndpoints := func(i int) []endpoint {
		var out []endpoint
		for j := range rng.IntN(4) {
			n := rng.IntN(len(nodes))
			e := fmt.Sprintf("10.0.%d.%d@%s", n+1, 10*i+j+1, nodes[n])
			switch rng.IntN(6) {
			case 0:
				e += ",notready"
			case 1:
				e += ",terminating"
			}
			out = append(out, endpoint(e))
		}
		return out
	}
	protoOf := map[int]v1.Protocol{}
	update := func() {
		i := rng.IntN(services)
		name := fmt.Sprintf("r%d", i)
		switch rng.IntN(5) {
		case 0:
			tr.DeleteService(types.NamespacedName{Namespace: "ns", Name: name})
		case 1, 2:
			s := randomService(i)
			protoOf[i] = s.Spec.Ports[0].Protocol
			tr.UpdateService(s)
		default:
			proto := protoOf[i]
			if proto == "" {
				proto = v1.ProtocolTCP
			}
			tr.UpdateEndpointSlice(eps(name, "p80", 8080, proto, randomEndpoints(i)...))
		}
	}

	carry := proxier.Changes{Full: true}
	failed := 0
	for step := range 150 {
		for range 1 + rng.IntN(3) {
			update()
		}
		snap, ch := tr.Commit()
		carry.Merge(ch)
		if failures && rng.IntN(5) == 0 {
			if rng.IntN(2) == 0 {
				f.FailNextRestore(fmt.Errorf("injected at step %d", step))
			} else {
				f.FailNextCommit("nat", fmt.Errorf("injected at step %d", step))
			}
			if err := p.Sync(context.Background(), snap, carry); err == nil {
				// nothing to write, or no nat table in it: disarm
				f.FailNextRestore(nil)
				f.FailNextCommit("", nil)
			} else {
				failed++
			}
			carry.Full = true
			continue
		}
		if err := p.Sync(context.Background(), snap, carry); err != nil {
			t.Fatalf("step %d: sync: %v\npayload:\n%s", step, err, f.LastPayload())
		}
		ch = carry
		carry = proxier.Changes{}
		if got, want := normalizedSave(t, f), fullSyncOf(t, cfg, snap); got != want {
			t.Fatalf("step %d (changed %v): partial sync differs from a full sync:\n%s\npayload:\n%s", step, ch.Services, lineDiff(got, want), f.LastPayload())
		}
		counts := p.RuleCounts()
		total := 0
		for _, table := range []string{"filter", "nat"} {
			for _, c := range f.Chains(table) {
				if len(c) > len(proxier.ChainPrefix) && c[:len(proxier.ChainPrefix)] == proxier.ChainPrefix {
					rules, _ := f.Rules(table, c)
					total += len(rules)
				}
			}
		}
		if counts["iptables-filter"]+counts["iptables-nat"] != total {
			t.Fatalf("step %d: RuleCounts %v, tables hold %d rules", step, counts, total)
		}
	}
	if failures && failed < 10 {
		t.Fatalf("only %d syncs failed: the failure paths were not exercised", failed)
	}
}
