package proxier

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// Sink receives the cluster's Services and EndpointSlices from a source.
// Update methods are add-or-update; all methods are safe for concurrent use.
type Sink interface {
	UpdateService(svc *v1.Service)
	DeleteService(key types.NamespacedName)
	UpdateEndpointSlice(slice *discovery.EndpointSlice)
	DeleteEndpointSlice(key types.NamespacedName)
}

// Snapshot is the state a proxier programs: every valid service port and the
// endpoints of each. A proxier may keep a snapshot; the tracker never
// modifies one it handed out.
type Snapshot struct {
	Services  map[ServicePortName]*ServicePort
	Endpoints map[ServicePortName][]Endpoint
}

// StaleEndpoint is an endpoint that left a UDP service port or stopped
// serving it; its conntrack entries must go or clients keep sending to a
// dead backend.
type StaleEndpoint struct {
	Service  ServicePortName
	Endpoint netip.AddrPort
}

// Changes says what differs from the previous successful sync.
type Changes struct {
	// Full asks the proxier to rewrite everything (first sync, periodic
	// resync, or retry after a failure).
	Full bool
	// Services holds every service port whose service or endpoints changed.
	Services map[ServicePortName]bool
	// StaleUDP lists endpoints removed from UDP service ports (or no
	// longer serving them).
	StaleUDP []StaleEndpoint
	// NewlyServedUDP lists UDP service ports that had no serving endpoints
	// and now have some: conntrack entries that black-holed their traffic
	// must go.
	NewlyServedUDP []ServicePortName
	// TriggerTimes are the EndpointSlice last-change-trigger-time
	// annotations of the changes, for the network programming latency.
	TriggerTimes []time.Time
}

// Merge folds a later set of changes into c (used to retry a failed sync
// without losing what it carried).
func (c *Changes) Merge(later Changes) {
	c.Full = c.Full || later.Full
	if c.Services == nil {
		c.Services = map[ServicePortName]bool{}
	}
	maps.Copy(c.Services, later.Services)
	c.StaleUDP = append(c.StaleUDP, later.StaleUDP...)
	c.NewlyServedUDP = append(c.NewlyServedUDP, later.NewlyServedUDP...)
	c.TriggerTimes = append(c.TriggerTimes, later.TriggerTimes...)
}

// Tracker is the change tracker shared by every mode. Sources feed it
// Services and EndpointSlices; the sync runner calls Commit to get a snapshot
// and the changes since the previous Commit. Per service it remembers the
// state at the last commit, so a burst of updates that ends where it started
// is dropped as a no-op. Invalid objects are logged and skipped, and the
// service's last valid state stays in force.
type Tracker struct {
	mu sync.Mutex
	// services holds the valid ports of every proxied service.
	services map[types.NamespacedName]map[ServicePortName]*ServicePort
	// slices holds the endpoints of every EndpointSlice, by service.
	slices map[types.NamespacedName]map[string]map[ServicePortName][]Endpoint
	// sliceOwner maps a slice's key to its service.
	sliceOwner map[types.NamespacedName]types.NamespacedName
	// pending holds, per changed service, its state at the last commit.
	pending map[types.NamespacedName]*serviceState
	// triggerTimes collects EndpointSlice trigger times since the last commit.
	triggerTimes []time.Time
	// committed is the state handed out by the last Commit.
	committed Snapshot
	// onChange is called (outside the lock) after every accepted update.
	onChange func()

	serviceChanges  atomic.Uint64
	endpointChanges atomic.Uint64
	invalidObjects  atomic.Uint64
}

// serviceState is one service's ports and aggregated endpoints.
type serviceState struct {
	ports     map[ServicePortName]*ServicePort
	endpoints map[ServicePortName][]Endpoint
}

var _ Sink = (*Tracker)(nil)

// NewTracker returns an empty tracker. onChange, if not nil, is called after
// every update that was accepted (typically the sync runner's Trigger).
func NewTracker(onChange func()) *Tracker {
	return &Tracker{
		services:   map[types.NamespacedName]map[ServicePortName]*ServicePort{},
		slices:     map[types.NamespacedName]map[string]map[ServicePortName][]Endpoint{},
		sliceOwner: map[types.NamespacedName]types.NamespacedName{},
		pending:    map[types.NamespacedName]*serviceState{},
		committed: Snapshot{
			Services:  map[ServicePortName]*ServicePort{},
			Endpoints: map[ServicePortName][]Endpoint{},
		},
		onChange: onChange,
	}
}

// Counters returns how many service and endpoint updates were received and
// how many objects were skipped as invalid.
func (t *Tracker) Counters() (serviceChanges, endpointChanges, invalid uint64) {
	return t.serviceChanges.Load(), t.endpointChanges.Load(), t.invalidObjects.Load()
}

// UpdateService adds or updates a Service. An invalid Service is logged and
// skipped; its last valid state stays in force.
func (t *Tracker) UpdateService(svc *v1.Service) {
	key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	ports, err := ServicePorts(svc)
	if err != nil {
		t.invalidObjects.Add(1)
		klog.ErrorS(err, "Skipping invalid Service; its previous state stays in force", "service", klog.KObj(svc))
		return
	}
	t.serviceChanges.Add(1)
	t.mu.Lock()
	t.remember(key)
	if len(ports) == 0 {
		delete(t.services, key)
	} else {
		t.services[key] = ports
	}
	t.mu.Unlock()
	t.notify()
}

// DeleteService removes a Service.
func (t *Tracker) DeleteService(key types.NamespacedName) {
	t.serviceChanges.Add(1)
	t.mu.Lock()
	t.remember(key)
	delete(t.services, key)
	t.mu.Unlock()
	t.notify()
}

// UpdateEndpointSlice adds or updates an EndpointSlice. An invalid slice is
// logged and skipped; its last valid state stays in force.
func (t *Tracker) UpdateEndpointSlice(slice *discovery.EndpointSlice) {
	key := types.NamespacedName{Namespace: slice.Namespace, Name: slice.Name}
	eps, err := SliceEndpoints(slice)
	if err != nil {
		t.invalidObjects.Add(1)
		klog.ErrorS(err, "Skipping invalid EndpointSlice; its previous state stays in force", "endpointSlice", klog.KObj(slice))
		return
	}
	owner := types.NamespacedName{Namespace: slice.Namespace, Name: slice.Labels[discovery.LabelServiceName]}
	t.endpointChanges.Add(1)
	t.mu.Lock()
	if old, ok := t.sliceOwner[key]; ok && old != owner {
		t.removeSlice(key) // the slice moved to another service
	}
	t.remember(owner)
	if t.slices[owner] == nil {
		t.slices[owner] = map[string]map[ServicePortName][]Endpoint{}
	}
	t.slices[owner][slice.Name] = eps
	t.sliceOwner[key] = owner
	if ts, ok := slice.Annotations[v1.EndpointsLastChangeTriggerTime]; ok {
		if tt, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			t.triggerTimes = append(t.triggerTimes, tt)
		}
	}
	t.mu.Unlock()
	t.notify()
}

// DeleteEndpointSlice removes an EndpointSlice.
func (t *Tracker) DeleteEndpointSlice(key types.NamespacedName) {
	t.endpointChanges.Add(1)
	t.mu.Lock()
	t.removeSlice(key)
	t.mu.Unlock()
	t.notify()
}

func (t *Tracker) removeSlice(key types.NamespacedName) {
	owner, ok := t.sliceOwner[key]
	if !ok {
		return
	}
	t.remember(owner)
	delete(t.slices[owner], key.Name)
	if len(t.slices[owner]) == 0 {
		delete(t.slices, owner)
	}
	delete(t.sliceOwner, key)
}

func (t *Tracker) notify() {
	if t.onChange != nil {
		t.onChange()
	}
}

// remember records the committed state of a service before its first
// pending change. Callers hold t.mu.
func (t *Tracker) remember(key types.NamespacedName) {
	if _, ok := t.pending[key]; ok {
		return
	}
	t.pending[key] = t.current(key)
}

// current computes a service's ports and aggregated endpoints (every slice
// of the service merged, sorted, duplicates dropped). Callers hold t.mu.
func (t *Tracker) current(key types.NamespacedName) *serviceState {
	st := &serviceState{ports: t.services[key], endpoints: map[ServicePortName][]Endpoint{}}
	for _, sliceEps := range t.slices[key] {
		for spn, eps := range sliceEps {
			st.endpoints[spn] = append(st.endpoints[spn], eps...)
		}
	}
	for spn, eps := range st.endpoints {
		// Slices come in map order: an endpoint listed by two slices must
		// merge the same way every time (the ready, then serving copy
		// wins), or a no-op update would look like a change.
		slices.SortFunc(eps, func(a, b Endpoint) int {
			if c := a.IP.Compare(b.IP); c != 0 {
				return c
			}
			if a.Port != b.Port {
				return a.Port - b.Port
			}
			if a.Ready != b.Ready {
				return boolFirst(a.Ready)
			}
			if a.Serving != b.Serving {
				return boolFirst(a.Serving)
			}
			if a.Terminating != b.Terminating {
				return boolFirst(!a.Terminating)
			}
			if c := strings.Compare(a.NodeName, b.NodeName); c != 0 {
				return c
			}
			if c := strings.Compare(a.Zone, b.Zone); c != 0 {
				return c
			}
			return slices.Compare(a.ZoneHints, b.ZoneHints)
		})
		st.endpoints[spn] = slices.CompactFunc(eps, func(a, b Endpoint) bool { return a.AddrPort() == b.AddrPort() })
	}
	return st
}

// Commit applies the pending updates and returns the new snapshot with the
// changes since the previous Commit. Updates that returned to the committed
// state are dropped.
func (t *Tracker) Commit() (Snapshot, Changes) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := Changes{Services: map[ServicePortName]bool{}, TriggerTimes: t.triggerTimes}
	t.triggerTimes = nil
	svcs := t.committed.Services
	eps := t.committed.Endpoints
	cloned := false
	for key, before := range t.pending {
		now := t.current(key)
		changed := diffService(before, now, &ch)
		if len(changed) == 0 {
			continue
		}
		if !cloned {
			svcs, eps = maps.Clone(svcs), maps.Clone(eps)
			cloned = true
		}
		for _, spn := range changed {
			ch.Services[spn] = true
			if sp, ok := now.ports[spn]; ok {
				svcs[spn] = sp
			} else {
				delete(svcs, spn)
			}
			if e, ok := now.endpoints[spn]; ok && len(e) > 0 {
				eps[spn] = e
			} else {
				delete(eps, spn)
			}
		}
	}
	clear(t.pending)
	t.committed = Snapshot{Services: svcs, Endpoints: eps}
	return t.committed, ch
}

// diffService returns the service ports that differ between two states of
// one service, and records stale UDP conntrack work in ch.
func diffService(before, now *serviceState, ch *Changes) []ServicePortName {
	var changed []ServicePortName
	seen := map[ServicePortName]bool{}
	check := func(spn ServicePortName) {
		if seen[spn] {
			return
		}
		seen[spn] = true
		oldEps, newEps := before.endpoints[spn], now.endpoints[spn]
		sameEps := equalEndpoints(oldEps, newEps)
		if samePort(before.ports[spn], now.ports[spn]) && sameEps {
			return
		}
		changed = append(changed, spn)
		if spn.Protocol != v1.ProtocolUDP || sameEps {
			return
		}
		// Only serving endpoints receive traffic: one that stops serving
		// is as gone as a deleted one (as in kube-proxy's cleanup).
		serving := func(e Endpoint) bool { return e.Ready || e.Serving }
		kept := map[netip.AddrPort]bool{}
		for _, e := range newEps {
			if serving(e) {
				kept[e.AddrPort()] = true
			}
		}
		servedBefore := false
		for _, e := range oldEps {
			if !serving(e) {
				continue
			}
			servedBefore = true
			if !kept[e.AddrPort()] {
				ch.StaleUDP = append(ch.StaleUDP, StaleEndpoint{Service: spn, Endpoint: e.AddrPort()})
			}
		}
		if !servedBefore && len(kept) > 0 {
			ch.NewlyServedUDP = append(ch.NewlyServedUDP, spn)
		}
	}
	for spn := range before.ports {
		check(spn)
	}
	for spn := range now.ports {
		check(spn)
	}
	for spn := range before.endpoints {
		check(spn)
	}
	for spn := range now.endpoints {
		check(spn)
	}
	slices.SortFunc(changed, func(a, b ServicePortName) int { return strings.Compare(a.String(), b.String()) })
	return changed
}

// boolFirst orders true before false, for a sort comparison of two
// different booleans where a is the first.
func boolFirst(a bool) int {
	if a {
		return -1
	}
	return 1
}

// samePort compares two ServicePorts by value.
func samePort(a, b *ServicePort) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Name == b.Name && slices.Equal(a.ClusterIPs, b.ClusterIPs) && a.Port == b.Port &&
		a.NodePort == b.NodePort && slices.Equal(a.ExternalIPs, b.ExternalIPs) &&
		slices.Equal(a.LoadBalancerIPs, b.LoadBalancerIPs) &&
		slices.Equal(a.LoadBalancerSourceRanges, b.LoadBalancerSourceRanges) &&
		a.StickyTimeout == b.StickyTimeout && a.ExternalPolicyLocal == b.ExternalPolicyLocal &&
		a.InternalPolicyLocal == b.InternalPolicyLocal && a.HealthCheckNodePort == b.HealthCheckNodePort &&
		a.PreferClose == b.PreferClose && a.Scheduler == b.Scheduler
}
