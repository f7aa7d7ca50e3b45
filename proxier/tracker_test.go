package proxier_test

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
)

// changed returns the changed service ports as sorted strings.
func changed(ch proxier.Changes) []string {
	out := []string{}
	for spn := range ch.Services {
		out = append(out, spn.String())
	}
	sort.Strings(out)
	return out
}

func key(name string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: name} }

func TestTrackerChanges(t *testing.T) {
	// Each case starts from a tracker holding service "a" (172.30.0.1) with
	// slice "a-1" (10.0.1.1, 10.0.2.1) and service "b" with slice "b-1",
	// committed; then applies updates and commits once.
	tests := []struct {
		name    string
		updates func(tr *proxier.Tracker)
		// want are the changed service ports; wantEps the endpoints of a:http after.
		want    []string
		wantEps []string
	}{
		{
			name:    "nothing",
			updates: func(*proxier.Tracker) {},
			want:    []string{},
			wantEps: []string{"10.0.1.1:8080", "10.0.2.1:8080"},
		},
		{
			name: "endpoint added",
			updates: func(tr *proxier.Tracker) {
				tr.UpdateEndpointSlice(slice("a-1", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.1.1"}, ep{ip: "10.0.2.1"}, ep{ip: "10.0.3.1"}))
			},
			want:    []string{"ns/a:http"},
			wantEps: []string{"10.0.1.1:8080", "10.0.2.1:8080", "10.0.3.1:8080"},
		},
		{
			name: "update and back is a no-op",
			updates: func(tr *proxier.Tracker) {
				tr.UpdateEndpointSlice(slice("a-1", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.1.1"}))
				tr.UpdateService(service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].Port = 81 }))
				tr.UpdateEndpointSlice(slice("a-1", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.1.1"}, ep{ip: "10.0.2.1"}))
				tr.UpdateService(service("a", "172.30.0.1"))
			},
			want:    []string{},
			wantEps: []string{"10.0.1.1:8080", "10.0.2.1:8080"},
		},
		{
			name: "delete and re-add is a no-op",
			updates: func(tr *proxier.Tracker) {
				tr.DeleteService(key("a"))
				tr.UpdateService(service("a", "172.30.0.1"))
			},
			want:    []string{},
			wantEps: []string{"10.0.1.1:8080", "10.0.2.1:8080"},
		},
		{
			name: "service changed only",
			updates: func(tr *proxier.Tracker) {
				tr.UpdateService(service("b", "172.30.0.2", func(s *v1.Service) { s.Spec.Ports[0].Port = 81 }))
			},
			want:    []string{"ns/b:http"},
			wantEps: []string{"10.0.1.1:8080", "10.0.2.1:8080"},
		},
		{
			name: "invalid update keeps the previous state",
			updates: func(tr *proxier.Tracker) {
				tr.UpdateService(service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].Port = 0 }))
				tr.UpdateEndpointSlice(slice("a-1", "a", "http", 0, v1.ProtocolTCP, ep{ip: "10.0.9.9"}))
			},
			want:    []string{},
			wantEps: []string{"10.0.1.1:8080", "10.0.2.1:8080"},
		},
		{
			name: "second slice merged and deduplicated",
			updates: func(tr *proxier.Tracker) {
				tr.UpdateEndpointSlice(slice("a-2", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.2.1"}, ep{ip: "10.0.0.5"}))
			},
			want:    []string{"ns/a:http"},
			wantEps: []string{"10.0.0.5:8080", "10.0.1.1:8080", "10.0.2.1:8080"},
		},
		{
			name: "slice moves to another service",
			updates: func(tr *proxier.Tracker) {
				tr.UpdateEndpointSlice(slice("a-1", "b", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.1.1"}))
			},
			want:    []string{"ns/a:http", "ns/b:http"},
			wantEps: nil,
		},
		{
			name: "slice deleted",
			updates: func(tr *proxier.Tracker) {
				tr.DeleteEndpointSlice(key("a-1"))
			},
			want:    []string{"ns/a:http"},
			wantEps: nil,
		},
		{
			name: "service deleted",
			updates: func(tr *proxier.Tracker) {
				tr.DeleteService(key("b"))
			},
			want:    []string{"ns/b:http"},
			wantEps: []string{"10.0.1.1:8080", "10.0.2.1:8080"},
		},
		{
			name: "service becomes headless",
			updates: func(tr *proxier.Tracker) {
				tr.UpdateService(service("b", "None"))
			},
			want:    []string{"ns/b:http"},
			wantEps: []string{"10.0.1.1:8080", "10.0.2.1:8080"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := proxier.NewTracker(nil)
			tr.UpdateService(service("a", "172.30.0.1"))
			tr.UpdateEndpointSlice(slice("a-1", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.2.1"}, ep{ip: "10.0.1.1"}))
			tr.UpdateService(service("b", "172.30.0.2"))
			tr.UpdateEndpointSlice(slice("b-1", "b", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.3.3"}))
			_, first := tr.Commit()
			if got := changed(first); !slices.Equal(got, []string{"ns/a:http", "ns/b:http"}) {
				t.Fatalf("first commit changed %v", got)
			}
			tc.updates(tr)
			snap, ch := tr.Commit()
			if got := changed(ch); !slices.Equal(got, tc.want) {
				t.Errorf("changed %v, want %v", got, tc.want)
			}
			var got []string
			if eps, ok := snap.Endpoints[httpPort("a")]; ok {
				got = addrs(eps)
			}
			if !slices.Equal(got, tc.wantEps) {
				t.Errorf("endpoints of a:http %v, want %v", got, tc.wantEps)
			}
			if _, again := tr.Commit(); len(again.Services) != 0 {
				t.Errorf("a second commit reported changes: %v", changed(again))
			}
		})
	}
}

func TestTrackerNotifiesAndCounts(t *testing.T) {
	n := 0
	tr := proxier.NewTracker(func() { n++ })
	tr.UpdateService(service("a", "172.30.0.1"))
	tr.UpdateService(service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports = nil })) // invalid
	tr.UpdateEndpointSlice(slice("a-1", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.1.1"}))
	tr.DeleteEndpointSlice(key("a-1"))
	tr.DeleteService(key("a"))
	if n != 4 {
		t.Errorf("onChange called %d times, want 4 (not for the invalid update)", n)
	}
	svcs, eps, invalid := tr.Counters()
	if svcs != 2 || eps != 2 || invalid != 1 {
		t.Errorf("counters %d/%d/%d, want 2/2/1", svcs, eps, invalid)
	}
}

func TestTrackerUDP(t *testing.T) {
	udp := func(s *v1.Service) { s.Spec.Ports[0].Protocol = v1.ProtocolUDP; s.Spec.Ports[0].Name = "dns" }
	dns := spn("d", "dns", v1.ProtocolUDP)
	tr := proxier.NewTracker(nil)
	tr.UpdateService(service("d", "172.30.0.10", udp))
	tr.UpdateService(service("t", "172.30.0.11"))
	tr.UpdateEndpointSlice(slice("t-1", "t", "http", 80, v1.ProtocolTCP, ep{ip: "10.0.1.1"}))
	_, ch := tr.Commit()
	if len(ch.NewlyServedUDP) != 0 || len(ch.StaleUDP) != 0 {
		t.Fatalf("no UDP endpoints yet, got %+v", ch)
	}

	tr.UpdateEndpointSlice(slice("d-1", "d", "dns", 53, v1.ProtocolUDP, ep{ip: "10.0.1.1"}, ep{ip: "10.0.2.1"}))
	_, ch = tr.Commit()
	if !slices.Equal(ch.NewlyServedUDP, []proxier.ServicePortName{dns}) || len(ch.StaleUDP) != 0 {
		t.Fatalf("first endpoints: newly served %v, stale %v; want [%v] and none", ch.NewlyServedUDP, ch.StaleUDP, dns)
	}

	tr.UpdateEndpointSlice(slice("d-1", "d", "dns", 53, v1.ProtocolUDP, ep{ip: "10.0.2.1"}, ep{ip: "10.0.3.1"}))
	// a TCP endpoint leaving is not UDP conntrack work
	tr.UpdateEndpointSlice(slice("t-1", "t", "http", 80, v1.ProtocolTCP))
	_, ch = tr.Commit()
	want := []proxier.StaleEndpoint{{Service: dns, Endpoint: netipAddrPort("10.0.1.1:53")}}
	if !reflect.DeepEqual(ch.StaleUDP, want) || len(ch.NewlyServedUDP) != 0 {
		t.Fatalf("endpoint replaced: stale %v newly %v, want %v and none", ch.StaleUDP, ch.NewlyServedUDP, want)
	}

	tr.DeleteEndpointSlice(key("d-1"))
	_, ch = tr.Commit()
	if len(ch.StaleUDP) != 2 {
		t.Fatalf("all endpoints gone: stale %v, want 2 entries", ch.StaleUDP)
	}
}

func TestTrackerTriggerTimes(t *testing.T) {
	tr := proxier.NewTracker(nil)
	s := slice("a-1", "a", "http", 80, v1.ProtocolTCP, ep{ip: "10.0.1.1"})
	when := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: when.Format(time.RFC3339Nano)}
	tr.UpdateEndpointSlice(s)
	_, ch := tr.Commit()
	if len(ch.TriggerTimes) != 1 || !ch.TriggerTimes[0].Equal(when) {
		t.Fatalf("trigger times %v, want [%v]", ch.TriggerTimes, when)
	}
	if _, ch = tr.Commit(); len(ch.TriggerTimes) != 0 {
		t.Fatalf("trigger times not cleared: %v", ch.TriggerTimes)
	}
}

// TestTrackerSnapshotsImmutable checks that a snapshot handed out is never
// modified by later updates and commits.
func TestTrackerSnapshotsImmutable(t *testing.T) {
	tr := proxier.NewTracker(nil)
	tr.UpdateService(service("a", "172.30.0.1"))
	tr.UpdateService(service("b", "172.30.0.2"))
	tr.UpdateEndpointSlice(slice("a-1", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.1.1"}, ep{ip: "10.0.2.1"}))
	snap, _ := tr.Commit()
	svcsBefore := maps.Clone(snap.Services)
	portBefore := *snap.Services[httpPort("a")]
	epsBefore := slices.Clone(snap.Endpoints[httpPort("a")])
	epsKeys := keyStrings(snap.Endpoints)

	tr.UpdateService(service("a", "172.30.0.1", func(s *v1.Service) { s.Spec.Ports[0].Port = 99 }))
	tr.DeleteService(key("b"))
	tr.UpdateService(service("c", "172.30.0.3"))
	tr.UpdateEndpointSlice(slice("a-1", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.0.1"}, ep{ip: "10.0.2.1", notReady: true}))
	tr.UpdateEndpointSlice(slice("a-2", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.0.0"}))
	next, _ := tr.Commit()

	if !maps.Equal(snap.Services, svcsBefore) {
		t.Errorf("old snapshot's services changed: %v", snap.Services)
	}
	if !reflect.DeepEqual(*snap.Services[httpPort("a")], portBefore) {
		t.Errorf("old snapshot's service port changed: %+v", snap.Services[httpPort("a")])
	}
	if !reflect.DeepEqual(snap.Endpoints[httpPort("a")], epsBefore) {
		t.Errorf("old snapshot's endpoints changed: %v", snap.Endpoints[httpPort("a")])
	}
	if got := keyStrings(snap.Endpoints); !slices.Equal(got, epsKeys) {
		t.Errorf("old snapshot's endpoint keys changed: %v", got)
	}
	if next.Services[httpPort("a")].Port != 99 || len(next.Endpoints[httpPort("a")]) != 3 {
		t.Errorf("new snapshot wrong: port %d, endpoints %v", next.Services[httpPort("a")].Port, addrs(next.Endpoints[httpPort("a")]))
	}
}

func keyStrings[V any](m map[proxier.ServicePortName]V) []string {
	out := []string{}
	for k := range m {
		out = append(out, k.String()+"/"+string(k.Protocol))
	}
	sort.Strings(out)
	return out
}

func netipAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestTrackerDuplicateEndpointsAreDeterministic: an endpoint listed by two
// slices (as during a slice rebalance) is merged the same way every time,
// preferring the ready copy, so a re-sent unchanged slice is never reported
// as a change and the endpoint does not flip between ready and not ready.
func TestTrackerDuplicateEndpointsAreDeterministic(t *testing.T) {
	tr := proxier.NewTracker(nil)
	tr.UpdateService(service("a", "172.30.0.1"))
	ready := slice("a-1", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.1.1", node: "node1"})
	notReady := slice("a-2", "a", "http", 8080, v1.ProtocolTCP, ep{ip: "10.0.1.1", node: "node1", notReady: true})
	tr.UpdateEndpointSlice(ready)
	tr.UpdateEndpointSlice(notReady)
	for i := range 100 {
		snap, ch := tr.Commit()
		eps := snap.Endpoints[httpPort("a")]
		if len(eps) != 1 || !eps[0].Ready {
			t.Fatalf("round %d: endpoints %+v, want the ready copy only", i, eps)
		}
		if i > 0 && len(ch.Services) != 0 {
			t.Fatalf("round %d: re-sending unchanged slices reported changes %v", i, changed(ch))
		}
		tr.UpdateEndpointSlice(notReady)
		tr.UpdateEndpointSlice(ready)
	}
}

// TestTrackerUDPServingTransitions: for conntrack cleanup an endpoint that
// stops serving is as gone as a deleted one (kube-proxy clears every UDP
// entry not pointing to a serving endpoint), and a port whose endpoints
// start serving is newly served even if they were listed before.
func TestTrackerUDPServingTransitions(t *testing.T) {
	udp := func(s *v1.Service) { s.Spec.Ports[0].Protocol = v1.ProtocolUDP; s.Spec.Ports[0].Name = "dns" }
	dns := spn("d", "dns", v1.ProtocolUDP)
	tr := proxier.NewTracker(nil)
	tr.UpdateService(service("d", "172.30.0.10", udp))
	tr.UpdateEndpointSlice(slice("d-1", "d", "dns", 53, v1.ProtocolUDP, ep{ip: "10.0.1.1"}, ep{ip: "10.0.2.1"}))
	tr.Commit()

	// 10.0.1.1 terminates and stops serving: stale.
	tr.UpdateEndpointSlice(slice("d-1", "d", "dns", 53, v1.ProtocolUDP, ep{ip: "10.0.1.1", notReady: true, terminating: true, notServing: true}, ep{ip: "10.0.2.1"}))
	_, ch := tr.Commit()
	want := []proxier.StaleEndpoint{{Service: dns, Endpoint: netipAddrPort("10.0.1.1:53")}}
	if !reflect.DeepEqual(ch.StaleUDP, want) {
		t.Fatalf("stopped serving: stale %v, want %v", ch.StaleUDP, want)
	}
	// Terminating but still serving is still used (fallback): not stale.
	tr.UpdateEndpointSlice(slice("d-1", "d", "dns", 53, v1.ProtocolUDP, ep{ip: "10.0.2.1", notReady: true, terminating: true}))
	_, ch = tr.Commit()
	if len(ch.StaleUDP) != 0 {
		t.Fatalf("terminating but serving: stale %v, want none", ch.StaleUDP)
	}
	// Nothing serving, then serving again: newly served.
	tr.UpdateEndpointSlice(slice("d-1", "d", "dns", 53, v1.ProtocolUDP, ep{ip: "10.0.2.1", notReady: true, terminating: true, notServing: true}))
	tr.Commit()
	tr.UpdateEndpointSlice(slice("d-1", "d", "dns", 53, v1.ProtocolUDP, ep{ip: "10.0.2.1", notReady: true, terminating: true, notServing: true}, ep{ip: "10.0.3.1"}))
	_, ch = tr.Commit()
	if !slices.Equal(ch.NewlyServedUDP, []proxier.ServicePortName{dns}) {
		t.Fatalf("serving again: newly served %v, want [%v]", ch.NewlyServedUDP, dns)
	}
}
