// Package ipvs is svcproxy's IPVS mode: a kernel virtual server per service
// address with masquerade-forwarded real servers, the service addresses on
// the dummy interface kube-ipvs0, per-service data in ipsets and a constant
// handful of iptables rules. A sync is a diff against the kernel: a full sync
// reads every virtual server and repairs drift; an incremental one reads and
// writes only the virtual servers of changed services. See README.md.
package ipvs

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// DummyInterface is the dummy link that holds every cluster, external and
// LoadBalancer IP, so the kernel treats them as local and IPVS sees them.
const DummyInterface = proxier.ServiceAddressInterface

// DefaultGracePeriod bounds how long a removed real server with open
// connections keeps weight 0 before it is deleted anyway.
const DefaultGracePeriod = 15 * time.Minute

// nodePortRange is the default NodePort range: a virtual server on a node
// address with a port in it is considered svcproxy's own.
var nodePortRange = [2]uint16{30000, 32767}

// Options are the IPVS proxier's dependencies besides its Config. A nil
// field means the real kernel in the calling process's network namespace.
type Options struct {
	Handle   Handle
	Links    Links
	IPSets   IPSets
	Sysctl   Sysctl
	Restorer proxier.Restorer
	// Now is the clock for graceful termination; nil means time.Now.
	Now func() time.Time
	// GracePeriod bounds graceful termination; zero means
	// DefaultGracePeriod.
	GracePeriod time.Duration
}

// Proxier is the IPVS mode.
type Proxier struct {
	cfg   proxier.Config
	opts  Options
	rules ruleSet

	mu sync.Mutex
	// handle is opened on first use, so that building a Proxier (for
	// cleanup or explain) works on a kernel without IPVS.
	handle Handle
	// synced is false until a full sync succeeds, and again after any
	// error: the next sync is then a full one.
	synced bool
	bc     buildContext
	// services is the state each service port was last synced to.
	services map[proxier.ServicePortName]*serviceState
	// addrRefs and entryRefs count how many service ports need each
	// kube-ipvs0 address and ipset member.
	addrRefs  map[netip.Addr]int
	entryRefs map[string]map[SetEntry]int
	// terminating holds real servers at weight 0 waiting for their
	// connections to end, with the time they were drained.
	terminating map[Key]map[netip.AddrPort]time.Time
	counts      map[string]int
	// servers and reals count the virtual and real servers of services.
	servers, reals int
	// ops counts the kernel writes of the current sync.
	ops int
}

var _ proxier.Proxier = (*Proxier)(nil)

// New returns an IPVS proxier for cfg on the real kernel.
func New(cfg proxier.Config) (*Proxier, error) {
	return NewWithOptions(cfg, Options{})
}

// NewWithOptions returns an IPVS proxier with injected dependencies. It
// touches no kernel state and starts no goroutines.
func NewWithOptions(cfg proxier.Config, opts Options) (*Proxier, error) {
	if cfg.MasqueradeBit < 0 || cfg.MasqueradeBit > 30 {
		return nil, fmt.Errorf("ipvs: masquerade bit %d out of range 0-30", cfg.MasqueradeBit)
	}
	if cfg.IPVS.Scheduler == "" {
		cfg.IPVS.Scheduler = "rr"
	}
	if _, ok := Schedulers[cfg.IPVS.Scheduler]; !ok {
		return nil, fmt.Errorf("ipvs: unknown scheduler %q", cfg.IPVS.Scheduler)
	}
	if opts.Links == nil {
		opts.Links = NewKernelLinks()
	}
	if opts.IPSets == nil {
		opts.IPSets = NewKernelIPSets()
	}
	if opts.Sysctl == nil {
		opts.Sysctl = NewProcSysctl()
	}
	if opts.Restorer == nil {
		opts.Restorer = proxier.ExecRestorer{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.GracePeriod == 0 {
		opts.GracePeriod = DefaultGracePeriod
	}
	p := &Proxier{cfg: cfg, opts: opts, rules: buildRules(cfg), handle: opts.Handle, bc: buildContext{cfg: cfg}}
	p.reset()
	return p, nil
}

func (p *Proxier) reset() {
	p.synced = false
	p.services = map[proxier.ServicePortName]*serviceState{}
	p.addrRefs = map[netip.Addr]int{}
	p.entryRefs = map[string]map[SetEntry]int{}
	p.terminating = map[Key]map[netip.AddrPort]time.Time{}
	p.servers, p.reals = 0, 0
}

// open opens the IPVS handle if needed.
func (p *Proxier) open() error {
	if p.handle != nil {
		return nil
	}
	h, err := NewKernelHandle()
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	p.handle = h
	return nil
}

// Close releases the IPVS handle. The kernel state stays.
func (p *Proxier) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.handle == nil {
		return nil
	}
	err := p.handle.Close()
	p.handle = nil
	return err
}

// Sync makes the kernel match snap. The first sync, a periodic one
// (changes.Full) and the one after an error are full syncs; the others
// touch only the virtual servers, addresses and ipset members of the
// changed service ports. Each sync then sweeps the terminating real
// servers. IPVS has no transactions: on error the kernel may be half way,
// and the next sync is a full one that repairs it.
func (p *Proxier) Sync(ctx context.Context, snap proxier.Snapshot, ch proxier.Changes) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.open(); err != nil {
		return err
	}
	p.ops = 0
	start := p.opts.Now()
	full := !p.synced || ch.Full
	var err error
	if full {
		err = p.fullSync(ctx, snap)
	} else {
		err = p.partialSync(snap, ch)
	}
	if err != nil {
		p.synced = false
		return err
	}
	p.synced = true
	p.sweep()
	p.updateCounts()
	klog.V(2).InfoS("IPVS sync", "full", full, "services", len(snap.Services), "changed", len(ch.Services),
		"kernelWrites", p.ops, "terminating", p.counts["ipvs-terminating-real-servers"], "took", p.opts.Now().Sub(start))
	return nil
}

// setup puts the node-wide state in place: sysctls, timeouts, kube-ipvs0,
// the ipsets and the constant iptables rules.
func (p *Proxier) setup(ctx context.Context) error {
	sysctls := [][2]string{
		// IPVS must keep netfilter conntrack for the MASQUERADE rules.
		{"net/ipv4/vs/conntrack", "1"},
		// connections to a deleted real server end at once
		{"net/ipv4/vs/expire_nodest_conn", "1"},
		// persistence templates to a weight-0 server expire, so sticky
		// clients move on from a terminating endpoint
		{"net/ipv4/vs/expire_quiescent_template", "1"},
	}
	if p.cfg.IPVS.StrictARP {
		sysctls = append(sysctls,
			[2]string{"net/ipv4/conf/all/arp_ignore", "1"},
			[2]string{"net/ipv4/conf/all/arp_announce", "2"})
	}
	for _, s := range sysctls {
		if v, err := p.opts.Sysctl.Get(s[0]); err == nil && v == s[1] {
			continue
		}
		if err := p.opts.Sysctl.Set(s[0], s[1]); err != nil {
			return fmt.Errorf("ipvs: %w", err)
		}
	}
	c := p.cfg.IPVS
	if c.TCPTimeout > 0 || c.TCPFinTimeout > 0 || c.UDPTimeout > 0 {
		if err := p.handle.SetTimeouts(c.TCPTimeout, c.TCPFinTimeout, c.UDPTimeout); err != nil {
			return fmt.Errorf("ipvs: %w", err)
		}
	}
	if err := p.opts.Links.EnsureDummy(DummyInterface); err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	for _, s := range sets {
		if err := p.opts.IPSets.Create(s.name, s.kind); err != nil {
			return fmt.Errorf("ipvs: %w", err)
		}
	}
	// The jumps from built-in chains go in the same iptables-restore as
	// the rules (one save per table, one restore), when missing.
	saved := map[string]string{}
	for _, table := range []string{"nat", "filter"} {
		out, err := p.opts.Restorer.Save(ctx, table)
		if err != nil {
			return fmt.Errorf("ipvs: %w", err)
		}
		saved[table] = string(out)
	}
	if err := p.opts.Restorer.Restore(ctx, p.rules.payload(missingJumps(saved))); err != nil {
		return fmt.Errorf("ipvs: iptables rules: %w", err)
	}
	return nil
}

// nodeAddresses returns the addresses NodePorts answer on.
func (p *Proxier) nodeAddresses() ([]netip.Addr, error) {
	all, err := p.opts.Links.NodeAddresses()
	if err != nil {
		return nil, fmt.Errorf("ipvs: %w", err)
	}
	if len(p.cfg.NodePortAddresses) == 0 {
		return all, nil
	}
	var out []netip.Addr
	for _, a := range all {
		for _, c := range p.cfg.NodePortAddresses {
			if c.Contains(a) {
				out = append(out, a)
				break
			}
		}
	}
	return out, nil
}

// owned returns the test of whether a kernel virtual server is
// svcproxy's to delete: its address is on kube-ipvs0 (onDummy), or
// svcproxy synced it, or it is on a node address with a port in the
// NodePort range; and never when it is in --ipvs-exclude-cidrs.
func (p *Proxier) owned(onDummy, nodeAddrs []netip.Addr) func(Key) bool {
	dummy := map[netip.Addr]bool{}
	for _, a := range onDummy {
		dummy[a] = true
	}
	node := map[netip.Addr]bool{}
	for _, a := range nodeAddrs {
		node[a] = true
	}
	known := map[Key]bool{}
	for _, st := range p.services {
		for k := range st.servers {
			known[k] = true
		}
	}
	return func(k Key) bool {
		if p.excluded(k.Address) {
			return false
		}
		nodePort := node[k.Address] && k.Port >= nodePortRange[0] && k.Port <= nodePortRange[1]
		return dummy[k.Address] || known[k] || nodePort
	}
}

// excluded reports whether ip is in --ipvs-exclude-cidrs.
func (p *Proxier) excluded(ip netip.Addr) bool {
	for _, c := range p.cfg.IPVS.ExcludeCIDRs {
		if c.Contains(ip) {
			return true
		}
	}
	return false
}

// buildService computes one service port's state from snap, nil if gone.
func (p *Proxier) buildService(snap proxier.Snapshot, spn proxier.ServicePortName) *serviceState {
	sp, ok := snap.Services[spn]
	if !ok {
		return nil
	}
	return p.bc.build(sp, proxier.SelectEndpoints(sp, snap.Endpoints[spn], p.cfg.Node))
}

func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K { return slices.Sorted(maps.Keys(m)) }

func compareKeys(a, b Key) int {
	if c := a.Address.Compare(b.Address); c != 0 {
		return c
	}
	if c := strings.Compare(string(a.Protocol), string(b.Protocol)); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}

func (p *Proxier) fullSync(ctx context.Context, snap proxier.Snapshot) error {
	if err := p.setup(ctx); err != nil {
		return err
	}
	nodeAddrs, err := p.nodeAddresses()
	if err != nil {
		return err
	}
	p.bc.nodeAddrs = nodeAddrs
	services := make(map[proxier.ServicePortName]*serviceState, len(snap.Services))
	desired := map[Key]*desiredVS{}
	addrs := map[netip.Addr]bool{}
	entries := map[string]map[SetEntry]int{}
	for spn := range snap.Services {
		st := p.buildService(snap, spn)
		services[spn] = st
		maps.Copy(desired, st.servers)
		for _, a := range st.addrs {
			addrs[a] = true
		}
		for set, es := range st.entries {
			if entries[set] == nil {
				entries[set] = map[SetEntry]int{}
			}
			for _, e := range es {
				entries[set][e]++
			}
		}
	}

	// kube-ipvs0 first: which addresses it holds now tells which virtual
	// servers are ours.
	onDummy, err := p.opts.Links.Addresses(DummyInterface)
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	ours := p.owned(onDummy, nodeAddrs)
	present := make(map[netip.Addr]bool, len(onDummy))
	for _, a := range onDummy {
		present[a] = true
	}
	for _, a := range slices.SortedFunc(maps.Keys(addrs), netip.Addr.Compare) {
		if !present[a] {
			if err := p.opts.Links.AddAddress(DummyInterface, a); err != nil {
				return fmt.Errorf("ipvs: %w", err)
			}
			p.ops++
		}
	}

	kernel, err := p.handle.VirtualServers()
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	inKernel := make(map[Key]VirtualServer, len(kernel))
	for _, vs := range kernel {
		inKernel[vs.Key] = vs
	}
	// every real server in one read, rather than one dump per virtual server
	dests, err := p.handle.AllRealServers()
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	for _, k := range slices.SortedFunc(maps.Keys(desired), compareKeys) {
		var cur *VirtualServer
		if vs, ok := inKernel[k]; ok {
			cur = &vs
		}
		if err := p.applyVS(desired[k], cur, dests[k]); err != nil {
			return err
		}
	}
	for _, vs := range kernel {
		k := vs.Key
		if desired[k] != nil || !ours(k) {
			continue // wanted, someone else's, or excluded
		}
		if err := p.deleteVS(k); err != nil {
			return err
		}
	}
	for _, a := range onDummy {
		if !addrs[a] {
			if err := p.opts.Links.DeleteAddress(DummyInterface, a); err != nil {
				return fmt.Errorf("ipvs: %w", err)
			}
			p.ops++
		}
	}
	for _, s := range sets {
		if err := p.syncSet(s.name, entries[s.name]); err != nil {
			return err
		}
	}
	p.services = services
	p.servers, p.reals = 0, 0
	for _, st := range services {
		vs, rs := st.size()
		p.servers += vs
		p.reals += rs
	}
	p.addrRefs = map[netip.Addr]int{}
	for _, st := range services {
		for _, a := range st.addrs {
			p.addrRefs[a]++
		}
	}
	p.entryRefs = entries
	for k := range p.terminating {
		if _, ok := inKernel[k]; !ok && desired[k] == nil {
			delete(p.terminating, k)
		}
	}
	return nil
}

// syncSet makes a set's members match want.
func (p *Proxier) syncSet(name string, want map[SetEntry]int) error {
	have, err := p.opts.IPSets.Entries(name)
	if err != nil {
		return fmt.Errorf("ipvs: %w", err)
	}
	present := make(map[SetEntry]bool, len(have))
	for _, e := range have {
		present[e] = true
		if want[e] == 0 {
			if err := p.opts.IPSets.Del(name, e); err != nil {
				return fmt.Errorf("ipvs: %w", err)
			}
			p.ops++
		}
	}
	for e := range want {
		if !present[e] {
			if err := p.opts.IPSets.Add(name, e); err != nil {
				return fmt.Errorf("ipvs: %w", err)
			}
			p.ops++
		}
	}
	return nil
}

// deleteVS deletes a virtual server (and so its real servers at once).
func (p *Proxier) deleteVS(k Key) error {
	delete(p.terminating, k)
	if err := p.handle.DeleteVirtualServer(k); err != nil && !IsNotFound(err) {
		return fmt.Errorf("ipvs: %w", err)
	}
	p.ops++
	return nil
}

// applyVS makes one virtual server match d; cur is its kernel state (nil
// when missing) and have its real servers. Real servers no longer wanted
// are drained, not deleted.
func (p *Proxier) applyVS(d *desiredVS, cur *VirtualServer, have []RealServer) error {
	k := d.vs.Key
	if cur == nil {
		if err := p.handle.AddVirtualServer(d.vs); err != nil {
			return fmt.Errorf("ipvs: %w", err)
		}
		p.ops++
		have = nil
	} else if !cur.sameOptions(d.vs) {
		if err := p.handle.UpdateVirtualServer(d.vs); err != nil {
			return fmt.Errorf("ipvs: %w", err)
		}
		p.ops++
	}
	present := make(map[netip.AddrPort]RealServer, len(have))
	for _, rs := range have {
		present[rs.Address] = rs
	}
	for _, addr := range slices.SortedFunc(maps.Keys(d.dests), netip.AddrPort.Compare) {
		w := d.dests[addr]
		rs, ok := present[addr]
		switch {
		case !ok:
			if err := p.handle.AddRealServer(k, RealServer{Address: addr, Weight: w}); err != nil {
				return fmt.Errorf("ipvs: %w", err)
			}
			p.ops++
		case rs.Weight != w:
			if err := p.handle.UpdateRealServer(k, RealServer{Address: addr, Weight: w}); err != nil {
				return fmt.Errorf("ipvs: %w", err)
			}
			p.ops++
		}
		if m := p.terminating[k]; m != nil {
			delete(m, addr)
		}
	}
	for _, rs := range have {
		if _, want := d.dests[rs.Address]; !want {
			if err := p.drain(k, rs); err != nil {
				return err
			}
		}
	}
	return nil
}

// drain starts or continues the graceful termination of a real server: it
// is deleted at once when it has no connections (or serves UDP, whose
// "connections" would pin clients to a dead endpoint for the UDP timeout),
// else set to weight 0 so that only its open connections use it.
func (p *Proxier) drain(k Key, rs RealServer) error {
	if k.Protocol == v1.ProtocolUDP || rs.ActiveConns+rs.InactiveConns == 0 {
		if err := p.handle.DeleteRealServer(k, rs.Address); err != nil && !IsNotFound(err) {
			return fmt.Errorf("ipvs: %w", err)
		}
		p.ops++
		if m := p.terminating[k]; m != nil {
			delete(m, rs.Address)
		}
		return nil
	}
	if rs.Weight != 0 {
		if err := p.handle.UpdateRealServer(k, RealServer{Address: rs.Address, Weight: 0}); err != nil {
			return fmt.Errorf("ipvs: %w", err)
		}
		p.ops++
	}
	if p.terminating[k] == nil {
		p.terminating[k] = map[netip.AddrPort]time.Time{}
	}
	if _, ok := p.terminating[k][rs.Address]; !ok {
		p.terminating[k][rs.Address] = p.opts.Now()
		klog.V(2).InfoS("Draining real server", "virtualServer", k.String(), "realServer", rs.Address,
			"activeConns", rs.ActiveConns, "inactiveConns", rs.InactiveConns)
	}
	return nil
}

// sweep deletes the terminating real servers whose connections have ended
// or whose grace period is over. Errors are logged: the next sync retries.
func (p *Proxier) sweep() {
	now := p.opts.Now()
	for _, k := range slices.SortedFunc(maps.Keys(p.terminating), compareKeys) {
		m := p.terminating[k]
		if len(m) == 0 {
			delete(p.terminating, k)
			continue
		}
		rss, err := p.handle.RealServers(k)
		if err != nil {
			if IsNotFound(err) {
				delete(p.terminating, k)
			} else {
				klog.ErrorS(err, "Cannot read terminating real servers", "virtualServer", k.String())
			}
			continue
		}
		byAddr := map[netip.AddrPort]RealServer{}
		for _, rs := range rss {
			byAddr[rs.Address] = rs
		}
		for addr, since := range m {
			rs, ok := byAddr[addr]
			if !ok || rs.Weight > 0 {
				delete(m, addr)
				continue
			}
			expired := now.Sub(since) >= p.opts.GracePeriod
			if rs.ActiveConns+rs.InactiveConns > 0 && !expired {
				continue
			}
			if err := p.handle.DeleteRealServer(k, addr); err != nil && !IsNotFound(err) {
				klog.ErrorS(err, "Cannot delete terminating real server", "virtualServer", k.String(), "realServer", addr)
				continue
			}
			p.ops++
			delete(m, addr)
			klog.V(2).InfoS("Deleted terminating real server", "virtualServer", k.String(), "realServer", addr,
				"activeConns", rs.ActiveConns, "inactiveConns", rs.InactiveConns, "gracePeriodOver", expired)
		}
		if len(m) == 0 {
			delete(p.terminating, k)
		}
	}
}

// partialSync applies the changed service ports only: for each, it reads
// its virtual servers from the kernel and writes the difference.
func (p *Proxier) partialSync(snap proxier.Snapshot, ch proxier.Changes) error {
	changed := slices.SortedFunc(maps.Keys(ch.Services), func(a, b proxier.ServicePortName) int {
		return strings.Compare(a.String(), b.String())
	})
	for _, spn := range changed {
		old := p.services[spn]
		nw := p.buildService(snap, spn)
		if nw != nil {
			for _, k := range slices.SortedFunc(maps.Keys(nw.servers), compareKeys) {
				vs, found, err := p.handle.VirtualServer(k)
				if err != nil {
					return fmt.Errorf("ipvs: %w", err)
				}
				var cur *VirtualServer
				var have []RealServer
				if found {
					cur = &vs
					if have, err = p.handle.RealServers(k); err != nil {
						return fmt.Errorf("ipvs: %w", err)
					}
				}
				if err := p.applyVS(nw.servers[k], cur, have); err != nil {
					return err
				}
			}
		}
		if old != nil {
			for _, k := range slices.SortedFunc(maps.Keys(old.servers), compareKeys) {
				if (nw == nil || nw.servers[k] == nil) && !p.excluded(k.Address) {
					if err := p.deleteVS(k); err != nil {
						return err
					}
				}
			}
		}
		if err := p.updateRefs(old, nw); err != nil {
			return err
		}
		oldVS, oldRS := old.size()
		newVS, newRS := nw.size()
		p.servers += newVS - oldVS
		p.reals += newRS - oldRS
		if nw == nil {
			delete(p.services, spn)
		} else {
			p.services[spn] = nw
		}
	}
	return nil
}

// updateRefs moves the address and ipset member counts from old to nw and
// adds or removes those whose count became or left zero.
func (p *Proxier) updateRefs(old, nw *serviceState) error {
	addrDelta := map[netip.Addr]int{}
	entryDelta := map[string]map[SetEntry]int{}
	apply := func(st *serviceState, d int) {
		if st == nil {
			return
		}
		for _, a := range st.addrs {
			addrDelta[a] += d
		}
		for set, es := range st.entries {
			if entryDelta[set] == nil {
				entryDelta[set] = map[SetEntry]int{}
			}
			for _, e := range es {
				entryDelta[set][e] += d
			}
		}
	}
	apply(old, -1)
	apply(nw, +1)
	for _, a := range slices.SortedFunc(maps.Keys(addrDelta), netip.Addr.Compare) {
		d := addrDelta[a]
		if d == 0 {
			continue
		}
		before := p.addrRefs[a]
		after := before + d
		switch {
		case before == 0 && after > 0:
			if err := p.opts.Links.AddAddress(DummyInterface, a); err != nil {
				return fmt.Errorf("ipvs: %w", err)
			}
			p.ops++
		case before > 0 && after <= 0:
			if err := p.opts.Links.DeleteAddress(DummyInterface, a); err != nil {
				return fmt.Errorf("ipvs: %w", err)
			}
			p.ops++
		}
		if after <= 0 {
			delete(p.addrRefs, a)
		} else {
			p.addrRefs[a] = after
		}
	}
	for _, set := range sortedKeys(entryDelta) {
		if p.entryRefs[set] == nil {
			p.entryRefs[set] = map[SetEntry]int{}
		}
		refs := p.entryRefs[set]
		for e, d := range entryDelta[set] {
			if d == 0 {
				continue
			}
			before := refs[e]
			after := before + d
			switch {
			case before == 0 && after > 0:
				if err := p.opts.IPSets.Add(set, e); err != nil {
					return fmt.Errorf("ipvs: %w", err)
				}
				p.ops++
			case before > 0 && after <= 0:
				if err := p.opts.IPSets.Del(set, e); err != nil {
					return fmt.Errorf("ipvs: %w", err)
				}
				p.ops++
			}
			if after <= 0 {
				delete(refs, e)
			} else {
				refs[e] = after
			}
		}
	}
	return nil
}

// size returns the virtual and real servers a service port contributes.
func (st *serviceState) size() (servers, reals int) {
	if st == nil {
		return 0, 0
	}
	for _, d := range st.servers {
		reals += len(d.dests)
	}
	return len(st.servers), reals
}

// updateCounts recomputes the rule counts from the synced state, in time
// independent of the number of services (servers and reals are kept up to
// date by the syncs).
func (p *Proxier) updateCounts() {
	entries := 0
	for _, m := range p.entryRefs {
		entries += len(m)
	}
	terminating := 0
	for _, m := range p.terminating {
		terminating += len(m)
	}
	p.counts = map[string]int{
		"ipvs-virtual-servers":          p.servers,
		"ipvs-real-servers":             p.reals,
		"ipvs-terminating-real-servers": terminating,
		"ipvs-addresses":                len(p.addrRefs),
		"ipset-entries":                 entries,
		"iptables-nat":                  p.rules.nat,
		"iptables-filter":               p.rules.filter,
	}
}

// RuleCounts returns the sizes of the state written by the last successful
// sync: virtual servers, real servers (and how many are draining),
// kube-ipvs0 addresses, ipset members and the constant iptables rules.
func (p *Proxier) RuleCounts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.counts)
}

// Cleanup removes svcproxy's virtual servers (those on kube-ipvs0
// addresses, those it synced, and node-port-range ones on node addresses;
// never any in --ipvs-exclude-cidrs), kube-ipvs0, the iptables rules and
// the ipsets. On a kernel without IPVS there are no virtual servers to
// remove and the rest is still cleaned.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	if p.handle != nil || Available() {
		if err := p.open(); err != nil {
			errs = append(errs, err)
		} else if err := p.cleanupVirtualServers(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := p.opts.Links.DeleteDummy(DummyInterface); err != nil {
		errs = append(errs, fmt.Errorf("ipvs cleanup: %w", err))
	}
	if err := proxier.RemoveOurs(ctx, p.opts.Restorer, "nat", "filter"); err != nil {
		errs = append(errs, fmt.Errorf("ipvs cleanup: %w", err))
	}
	if names, err := p.opts.IPSets.Names(); err != nil {
		klog.V(2).InfoS("No ipsets to clean up", "err", err)
	} else {
		for _, n := range names {
			if isOurSet(n) {
				if err := p.opts.IPSets.Destroy(n); err != nil {
					errs = append(errs, fmt.Errorf("ipvs cleanup: %w", err))
				}
			}
		}
	}
	p.reset()
	p.counts = nil
	if len(errs) > 0 {
		return fmt.Errorf("ipvs cleanup: %v", errs)
	}
	return nil
}

func (p *Proxier) cleanupVirtualServers() error {
	onDummy, err := p.opts.Links.Addresses(DummyInterface)
	if err != nil {
		return fmt.Errorf("ipvs cleanup: %w", err)
	}
	nodeAddrs, err := p.opts.Links.NodeAddresses()
	if err != nil {
		return fmt.Errorf("ipvs cleanup: %w", err)
	}
	ours := p.owned(onDummy, nodeAddrs)
	kernel, err := p.handle.VirtualServers()
	if err != nil {
		return fmt.Errorf("ipvs cleanup: %w", err)
	}
	n := 0
	for _, vs := range kernel {
		k := vs.Key
		if !ours(k) {
			continue
		}
		if err := p.handle.DeleteVirtualServer(k); err != nil && !IsNotFound(err) {
			return fmt.Errorf("ipvs cleanup: %w", err)
		}
		n++
	}
	klog.V(2).InfoS("IPVS cleanup", "virtualServersDeleted", n)
	return nil
}
