// Package ipvstest holds stateful fakes of the ipvs package's kernel
// interfaces (Handle, Links, IPSets, Sysctl) for unit tests: each keeps the
// state a real kernel would, counts calls, and can dump its state.
package ipvstest

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/svcproxy/svcproxy/ipvs"
)

// Handle is a fake IPVS: virtual servers and their real servers in memory.
type Handle struct {
	mu      sync.Mutex
	servers map[ipvs.Key]*fakeVS
	// Calls counts calls by method name.
	calls    map[string]int
	timeouts [3]time.Duration
	failNext error
}

type fakeVS struct {
	vs    ipvs.VirtualServer
	dests map[netip.AddrPort]*ipvs.RealServer
}

var _ ipvs.Handle = (*Handle)(nil)

// NewHandle returns an empty fake IPVS.
func NewHandle() *Handle {
	return &Handle{servers: map[ipvs.Key]*fakeVS{}, calls: map[string]int{}}
}

// FailNext makes the next write call fail with err.
func (h *Handle) FailNext(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failNext = err
}

func (h *Handle) call(name string, write bool) error {
	h.calls[name]++
	if write && h.failNext != nil {
		err := h.failNext
		h.failNext = nil
		return err
	}
	return nil
}

// Calls returns the number of calls per method since the last ResetCalls.
func (h *Handle) Calls() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return maps.Clone(h.calls)
}

// Writes returns the number of state-changing calls since the last
// ResetCalls.
func (h *Handle) Writes() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for m, c := range h.calls {
		if strings.HasPrefix(m, "Add") || strings.HasPrefix(m, "Update") || strings.HasPrefix(m, "Delete") {
			n += c
		}
	}
	return n
}

// ResetCalls zeroes the call counters.
func (h *Handle) ResetCalls() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = map[string]int{}
}

// SetConnections sets a real server's active and inactive connection
// counts, as traffic would.
func (h *Handle) SetConnections(k ipvs.Key, addr netip.AddrPort, active, inactive int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.servers[k]
	if !ok {
		return fmt.Errorf("no virtual server %s", k)
	}
	d, ok := s.dests[addr]
	if !ok {
		return fmt.Errorf("no real server %s in %s", addr, k)
	}
	d.ActiveConns, d.InactiveConns = active, inactive
	return nil
}

// Timeouts returns the last timeouts set.
func (h *Handle) Timeouts() (tcp, tcpFin, udp time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.timeouts[0], h.timeouts[1], h.timeouts[2]
}

// Dump renders the state as ipvsadm -Ln does, sorted:
//
//	TCP 10.96.0.1:80 rr persistent 10800
//	  -> 10.244.1.2:8080 1
func (h *Handle) Dump() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var lines []string
	keys := slices.Collect(maps.Keys(h.servers))
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, k := range keys {
		s := h.servers[k]
		line := fmt.Sprintf("%s %s", k, s.vs.Scheduler)
		if s.vs.Timeout > 0 {
			line += fmt.Sprintf(" persistent %d", s.vs.Timeout)
		}
		lines = append(lines, line)
		for _, a := range slices.SortedFunc(maps.Keys(s.dests), netip.AddrPort.Compare) {
			lines = append(lines, fmt.Sprintf("  -> %s %d", a, s.dests[a].Weight))
		}
	}
	return strings.Join(lines, "\n")
}

// VirtualServers lists every virtual server.
func (h *Handle) VirtualServers() ([]ipvs.VirtualServer, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	_ = h.call("VirtualServers", false)
	out := make([]ipvs.VirtualServer, 0, len(h.servers))
	for _, s := range h.servers {
		out = append(out, s.vs)
	}
	return out, nil
}

// VirtualServer returns one virtual server.
func (h *Handle) VirtualServer(k ipvs.Key) (ipvs.VirtualServer, bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	_ = h.call("VirtualServer", false)
	s, ok := h.servers[k]
	if !ok {
		return ipvs.VirtualServer{}, false, nil
	}
	return s.vs, true, nil
}

// AddVirtualServer creates a virtual server; it fails if it exists.
func (h *Handle) AddVirtualServer(vs ipvs.VirtualServer) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call("AddVirtualServer", true); err != nil {
		return err
	}
	if _, ok := h.servers[vs.Key]; ok {
		return fmt.Errorf("add virtual server %s: file exists", vs.Key)
	}
	if vs.Scheduler == "" {
		return fmt.Errorf("add virtual server %s: no scheduler", vs.Key)
	}
	vs.Stats = ipvs.Stats{}
	h.servers[vs.Key] = &fakeVS{vs: vs, dests: map[netip.AddrPort]*ipvs.RealServer{}}
	return nil
}

// UpdateVirtualServer changes scheduler and persistence.
func (h *Handle) UpdateVirtualServer(vs ipvs.VirtualServer) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call("UpdateVirtualServer", true); err != nil {
		return err
	}
	s, ok := h.servers[vs.Key]
	if !ok {
		return ipvs.NotFound("virtual server " + vs.Key.String())
	}
	s.vs.Scheduler, s.vs.Timeout = vs.Scheduler, vs.Timeout
	return nil
}

// DeleteVirtualServer deletes a virtual server and its real servers.
func (h *Handle) DeleteVirtualServer(k ipvs.Key) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call("DeleteVirtualServer", true); err != nil {
		return err
	}
	if _, ok := h.servers[k]; !ok {
		return ipvs.NotFound("virtual server " + k.String())
	}
	delete(h.servers, k)
	return nil
}

// RealServers lists a virtual server's real servers.
func (h *Handle) RealServers(k ipvs.Key) ([]ipvs.RealServer, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	_ = h.call("RealServers", false)
	s, ok := h.servers[k]
	if !ok {
		return nil, ipvs.NotFound("virtual server " + k.String())
	}
	out := make([]ipvs.RealServer, 0, len(s.dests))
	for _, a := range slices.SortedFunc(maps.Keys(s.dests), netip.AddrPort.Compare) {
		out = append(out, *s.dests[a])
	}
	return out, nil
}

// AllRealServers lists every virtual server's real servers.
func (h *Handle) AllRealServers() (map[ipvs.Key][]ipvs.RealServer, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	_ = h.call("AllRealServers", false)
	out := map[ipvs.Key][]ipvs.RealServer{}
	for k, s := range h.servers {
		for _, a := range slices.SortedFunc(maps.Keys(s.dests), netip.AddrPort.Compare) {
			out[k] = append(out[k], *s.dests[a])
		}
	}
	return out, nil
}

// AddRealServer adds a real server; it fails if it exists.
func (h *Handle) AddRealServer(k ipvs.Key, rs ipvs.RealServer) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call("AddRealServer", true); err != nil {
		return err
	}
	s, ok := h.servers[k]
	if !ok {
		return ipvs.NotFound("virtual server " + k.String())
	}
	if _, ok := s.dests[rs.Address]; ok {
		return fmt.Errorf("add real server %s to %s: file exists", rs.Address, k)
	}
	s.dests[rs.Address] = &ipvs.RealServer{Address: rs.Address, Weight: rs.Weight}
	return nil
}

// UpdateRealServer changes a real server's weight.
func (h *Handle) UpdateRealServer(k ipvs.Key, rs ipvs.RealServer) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call("UpdateRealServer", true); err != nil {
		return err
	}
	s, ok := h.servers[k]
	if !ok {
		return ipvs.NotFound("virtual server " + k.String())
	}
	d, ok := s.dests[rs.Address]
	if !ok {
		return ipvs.NotFound("real server " + rs.Address.String())
	}
	d.Weight = rs.Weight
	return nil
}

// DeleteRealServer removes a real server.
func (h *Handle) DeleteRealServer(k ipvs.Key, addr netip.AddrPort) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call("DeleteRealServer", true); err != nil {
		return err
	}
	s, ok := h.servers[k]
	if !ok {
		return ipvs.NotFound("virtual server " + k.String())
	}
	if _, ok := s.dests[addr]; !ok {
		return ipvs.NotFound("real server " + addr.String())
	}
	delete(s.dests, addr)
	return nil
}

// SetTimeouts records the timeouts; zero leaves one as it is.
func (h *Handle) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.call("SetTimeouts", true); err != nil {
		return err
	}
	for i, v := range []time.Duration{tcp, tcpFin, udp} {
		if v != 0 {
			h.timeouts[i] = v
		}
	}
	return nil
}

// Close does nothing.
func (h *Handle) Close() error { return nil }

// Links is a fake set of links: named dummy interfaces with addresses, plus
// the node's own addresses.
type Links struct {
	mu    sync.Mutex
	links map[string]map[netip.Addr]bool
	// Node are the node's own addresses (on other interfaces).
	Node []netip.Addr
	// Calls counts AddAddress and DeleteAddress calls.
	Calls map[string]int
}

var _ ipvs.Links = (*Links)(nil)

// NewLinks returns fake links with the given node addresses.
func NewLinks(node ...netip.Addr) *Links {
	return &Links{links: map[string]map[netip.Addr]bool{}, Node: node, Calls: map[string]int{}}
}

// EnsureDummy creates the link if missing.
func (l *Links) EnsureDummy(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.links[name] == nil {
		l.links[name] = map[netip.Addr]bool{}
	}
	return nil
}

// DeleteDummy deletes the link.
func (l *Links) DeleteDummy(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.links, name)
	return nil
}

// Exists reports whether the link exists.
func (l *Links) Exists(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.links[name] != nil
}

// Addresses lists the link's addresses, sorted.
func (l *Links) Addresses(name string) ([]netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.SortedFunc(maps.Keys(l.links[name]), netip.Addr.Compare), nil
}

// AddAddress adds an address; the link must exist.
func (l *Links) AddAddress(name string, ip netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Calls["AddAddress"]++
	if l.links[name] == nil {
		return fmt.Errorf("no link %s", name)
	}
	l.links[name][ip] = true
	return nil
}

// DeleteAddress removes an address.
func (l *Links) DeleteAddress(name string, ip netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.Calls["DeleteAddress"]++
	if l.links[name] == nil {
		return fmt.Errorf("no link %s", name)
	}
	delete(l.links[name], ip)
	return nil
}

// NodeAddresses returns Node.
func (l *Links) NodeAddresses() ([]netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.Node), nil
}

// IPSets is a fake ipset store.
type IPSets struct {
	mu    sync.Mutex
	sets  map[string]*fakeSet
	calls map[string]int
}

type fakeSet struct {
	kind    string
	entries map[ipvs.SetEntry]bool
}

var _ ipvs.IPSets = (*IPSets)(nil)

// NewIPSets returns an empty fake ipset store.
func NewIPSets() *IPSets {
	return &IPSets{sets: map[string]*fakeSet{}, calls: map[string]int{}}
}

// Calls returns the number of calls per method.
func (s *IPSets) Calls() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.calls)
}

// ResetCalls zeroes the call counters.
func (s *IPSets) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = map[string]int{}
}

// Create creates a set; an existing one must have the same type.
func (s *IPSets) Create(name, kind string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["Create"]++
	if len(name) > 31 {
		return fmt.Errorf("ipset name %q longer than 31", name)
	}
	if old, ok := s.sets[name]; ok {
		if old.kind != kind {
			return fmt.Errorf("ipset %s exists with type %s", name, old.kind)
		}
		return nil
	}
	s.sets[name] = &fakeSet{kind: kind, entries: map[ipvs.SetEntry]bool{}}
	return nil
}

// Destroy destroys a set.
func (s *IPSets) Destroy(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["Destroy"]++
	delete(s.sets, name)
	return nil
}

// Names lists the sets, sorted.
func (s *IPSets) Names() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.sets)), nil
}

// Entries lists a set's members.
func (s *IPSets) Entries(name string) ([]ipvs.SetEntry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["Entries"]++
	set, ok := s.sets[name]
	if !ok {
		return nil, fmt.Errorf("no ipset %s", name)
	}
	return slices.Collect(maps.Keys(set.entries)), nil
}

// Members returns a set's members as sorted strings.
func (s *IPSets) Members(name string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	if set, ok := s.sets[name]; ok {
		for e := range set.entries {
			out = append(out, e.String())
		}
	}
	sort.Strings(out)
	return out
}

// Add adds a member.
func (s *IPSets) Add(name string, e ipvs.SetEntry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["Add"]++
	set, ok := s.sets[name]
	if !ok {
		return fmt.Errorf("no ipset %s", name)
	}
	set.entries[e] = true
	return nil
}

// Del removes a member.
func (s *IPSets) Del(name string, e ipvs.SetEntry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["Del"]++
	set, ok := s.sets[name]
	if !ok {
		return fmt.Errorf("no ipset %s", name)
	}
	delete(set.entries, e)
	return nil
}

// Sysctl is a fake sysctl store.
type Sysctl struct {
	mu     sync.Mutex
	values map[string]string
}

var _ ipvs.Sysctl = (*Sysctl)(nil)

// NewSysctl returns an empty fake sysctl store.
func NewSysctl() *Sysctl { return &Sysctl{values: map[string]string{}} }

// Get returns a value ("0" when unset).
func (s *Sysctl) Get(name string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.values[name]; ok {
		return v, nil
	}
	return "0", nil
}

// Set sets a value.
func (s *Sysctl) Set(name, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.values[name] = value
	return nil
}
