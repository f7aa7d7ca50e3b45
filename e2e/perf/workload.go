// Package perf holds the control-plane workloads and benchmarks that measure
// the modes against the real kernel: N services × E endpoints, full syncs
// and one-endpoint changes. The bench command and `go test -bench` share it.
package perf

import (
	"fmt"
	"maps"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
)

// Workload is a synthetic cluster: Services ClusterIP services with one TCP
// port each, every one with Endpoints ready endpoints spread over pod IPs.
type Workload struct {
	Services, Endpoints int
}

// name returns the i-th service port's name.
func name(i int) proxier.ServicePortName {
	return proxier.ServicePortName{
		NamespacedName: types.NamespacedName{Namespace: fmt.Sprintf("ns%d", i/1000), Name: fmt.Sprintf("svc%d", i)},
		Port:           "http",
		Protocol:       v1.ProtocolTCP,
	}
}

// clusterIP returns the i-th service's cluster IP, in 10.96.0.0/12.
func clusterIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(96 + i>>16), byte(i >> 8), byte(i)})
}

// endpoint returns endpoint j of service i (generation g changes it).
func endpoint(i, j, g int) proxier.Endpoint {
	n := i*8 + j + g*1_000_003
	return proxier.Endpoint{
		IP:    netip.AddrFrom4([4]byte{10, byte(128 + (n>>16)%64), byte(n >> 8), byte(n)}),
		Port:  8080,
		Ready: true, Serving: true,
		NodeName: fmt.Sprintf("node%d", j%3),
	}
}

// Snapshot returns the workload's snapshot.
func (w Workload) Snapshot() proxier.Snapshot {
	snap := proxier.Snapshot{
		Services:  make(map[proxier.ServicePortName]*proxier.ServicePort, w.Services),
		Endpoints: make(map[proxier.ServicePortName][]proxier.Endpoint, w.Services),
	}
	for i := range w.Services {
		spn := name(i)
		snap.Services[spn] = &proxier.ServicePort{Name: spn, ClusterIPs: []netip.Addr{clusterIP(i)}, Port: 80}
		eps := make([]proxier.Endpoint, w.Endpoints)
		for j := range eps {
			eps[j] = endpoint(i, j, 0)
		}
		snap.Endpoints[spn] = eps
	}
	return snap
}

// FullChanges returns the changes of a full sync.
func FullChanges() proxier.Changes { return proxier.Changes{Full: true} }

// ChangeEndpoint returns a snapshot where the first endpoint of service i
// moved to a new address (generation gen), and the changes that say so.
func ChangeEndpoint(snap proxier.Snapshot, i, gen int) (proxier.Snapshot, proxier.Changes) {
	spn := name(i)
	next := proxier.Snapshot{Services: snap.Services, Endpoints: maps.Clone(snap.Endpoints)}
	eps := append([]proxier.Endpoint(nil), snap.Endpoints[spn]...)
	eps[0] = endpoint(i, 0, gen)
	next.Endpoints[spn] = eps
	return next, proxier.Changes{Services: map[proxier.ServicePortName]bool{spn: true}}
}
