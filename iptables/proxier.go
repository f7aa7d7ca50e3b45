// Package iptables is svcproxy's iptables mode: NAT chains in the style of
// kube-proxy, written with iptables-restore in one transaction per sync.
// After the first full sync only the chains of changed services are
// rewritten; a periodic full sync repairs drift. See README.md.
package iptables

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// Options are the iptables proxier's dependencies besides its Config.
type Options struct {
	// Restorer applies payloads; nil means the system's iptables-restore.
	Restorer proxier.Restorer
	// EnsureJumps installs the jumps from built-in chains; nil means
	// proxier.EnsureJumps (tests pass a fake).
	EnsureJumps func([]proxier.Jump) error
	// NodeAddresses lists the node's addresses for --nodeport-addresses;
	// nil means proxier.NodeAddresses.
	NodeAddresses func([]netip.Prefix) ([]netip.Addr, error)
}

// Proxier is the iptables mode.
type Proxier struct {
	cfg  proxier.Config
	opts Options
	rc   ruleContext

	mu sync.Mutex
	// written holds, per service port, the rules in the kernel after the
	// last successful sync; nil before the first one.
	written map[proxier.ServicePortName]*serviceRules
	// counts are the rule counts of the last successful sync.
	counts map[string]int
	// nodePortJumps is the number of jumps to SVCP-NODEPORTS.
	nodePortJumps int
}

var _ proxier.Proxier = (*Proxier)(nil)

// New returns an iptables proxier for cfg using the system's iptables.
func New(cfg proxier.Config) (*Proxier, error) {
	return NewWithOptions(cfg, Options{})
}

// NewWithOptions returns an iptables proxier with injected dependencies.
func NewWithOptions(cfg proxier.Config, opts Options) (*Proxier, error) {
	if opts.Restorer == nil {
		opts.Restorer = proxier.ExecRestorer{}
	}
	if opts.EnsureJumps == nil {
		opts.EnsureJumps = proxier.EnsureJumps
	}
	if opts.NodeAddresses == nil {
		opts.NodeAddresses = proxier.NodeAddresses
	}
	if cfg.MasqueradeBit < 0 || cfg.MasqueradeBit > 30 {
		return nil, fmt.Errorf("iptables: masquerade bit %d out of range 0-30", cfg.MasqueradeBit)
	}
	return &Proxier{
		cfg:  cfg,
		opts: opts,
		rc: ruleContext{
			cfg:      cfg,
			masqMark: fmt.Sprintf("%#x", 1<<cfg.MasqueradeBit),
			// the drop mark is the bit above the masquerade bit, as in kube-proxy
			dropMark: fmt.Sprintf("%#x", 1<<(cfg.MasqueradeBit+1)),
		},
	}, nil
}

// Sync writes the rules for snap. A full sync (the first, a periodic one, or
// one after a failure) rewrites every svcproxy chain and deletes stale ones;
// a partial sync rewrites only the chains of changed service ports and edits
// their dispatch rules in place, in one iptables-restore. On error every
// service's chains are still whole (each is written in one transaction;
// iptables-restore commits table by table), and the engine makes the next
// sync a full one, which repairs the rest.
func (p *Proxier) Sync(ctx context.Context, snap proxier.Snapshot, ch proxier.Changes) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.written == nil || ch.Full {
		return p.fullSync(ctx, snap)
	}
	return p.partialSync(ctx, snap, ch)
}

// build computes the rules of one service port, or nil if it has none.
// Only IPv4 is programmed (iptables, not ip6tables): the IPv6 addresses of
// a dual-stack or IPv6 service are left out, as one of them would fail the
// whole iptables-restore.
func (p *Proxier) build(snap proxier.Snapshot, spn proxier.ServicePortName) *serviceRules {
	sp, ok := snap.Services[spn]
	if !ok {
		return nil
	}
	sp, eps := ipv4Only(sp, snap.Endpoints[spn])
	if len(sp.ClusterIPs) == 0 {
		return &serviceRules{dispatch: map[topChain][]string{}} // IPv6 only: nothing to write
	}
	sel := proxier.SelectEndpoints(sp, eps, p.cfg.Node)
	return p.rc.buildServiceRules(sp, sel)
}

// ipv4Only returns a copy of sp and eps without IPv6 addresses, as
// kube-proxy filters a service by its proxier's IP family.
func ipv4Only(sp *proxier.ServicePort, eps []proxier.Endpoint) (*proxier.ServicePort, []proxier.Endpoint) {
	is4 := func(a netip.Addr) bool { return a.Is4() }
	v4 := *sp
	v4.ClusterIPs = filterSlice(sp.ClusterIPs, is4)
	v4.ExternalIPs = filterSlice(sp.ExternalIPs, is4)
	v4.LoadBalancerIPs = filterSlice(sp.LoadBalancerIPs, is4)
	v4.LoadBalancerSourceRanges = filterSlice(sp.LoadBalancerSourceRanges, func(p netip.Prefix) bool { return p.Addr().Is4() })
	return &v4, filterSlice(eps, func(e proxier.Endpoint) bool { return e.IP.Is4() })
}

func filterSlice[T any](in []T, keep func(T) bool) []T {
	var out []T
	for _, x := range in {
		if keep(x) {
			out = append(out, x)
		}
	}
	return out
}

// transactionServices bounds how many services one iptables-restore of a
// full sync rewrites. iptables-nft's restore time grows faster than linearly
// with the size of a transaction (10,000 services in one payload take minutes),
// while batches of this size keep it linear.
const transactionServices = 500

// fullSync rewrites every svcproxy chain. It runs as a series of
// transactions: first the chains that do not depend on services, then the
// services' own chains, a batch at a time (each
// service's chains are flushed and refilled in one transaction, so a
// service is never seen half-written), then one transaction that rewrites
// the top-level chains (switching to the new service chains at once), then
// the deletion of stale chains. If a step fails, what was applied is a
// consistent set of per-service chains, and the next full sync starts from
// the kernel's state.
func (p *Proxier) fullSync(ctx context.Context, snap proxier.Snapshot) error {
	if err := p.opts.EnsureJumps(jumps()); err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	var nodePortAddrs []string
	if len(p.cfg.NodePortAddresses) > 0 {
		addrs, err := p.opts.NodeAddresses(p.cfg.NodePortAddresses)
		if err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
		for _, a := range addrs {
			nodePortAddrs = append(nodePortAddrs, a.String())
		}
	}
	// Chains of ours in the kernel now: from memory, or on the first sync
	// (a restart) from iptables-save, so stale chains are deleted.
	existing := map[string]bool{}
	if p.written == nil {
		saved, err := p.opts.Restorer.Save(ctx, "nat")
		if err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
		for _, line := range strings.Split(string(saved), "\n") {
			if strings.HasPrefix(line, ":"+proxier.ChainPrefix) {
				existing[strings.Fields(line[1:])[0]] = true
			}
		}
	} else {
		for _, sr := range p.written {
			for _, c := range sr.chains {
				existing[c.name] = true
			}
		}
	}
	for _, c := range append(fixedChains["nat"], serviceDispatchChains["nat"]...) {
		delete(existing, c)
	}

	names := slices.SortedFunc(maps.Keys(snap.Services), func(a, b proxier.ServicePortName) int {
		return strings.Compare(a.String(), b.String())
	})
	written := make(map[proxier.ServicePortName]*serviceRules, len(names))
	for _, spn := range names {
		written[spn] = p.build(snap, spn)
		for _, c := range written[spn].chains {
			delete(existing, c.name)
		}
	}
	// From here on the kernel may hold part of the new state.
	p.written = nil
	var fixed proxier.RuleBuffer
	p.rc.writeFixed(&fixed)
	if err := p.opts.Restorer.Restore(ctx, fixed.Bytes()); err != nil {
		return fmt.Errorf("iptables full sync: %w", err)
	}
	rules := fixed.Rules()

	// 1. The services' own chains, a batch at a time.
	for batch := range slices.Chunk(names, transactionServices) {
		var b proxier.RuleBuffer
		b.Table("nat")
		for _, spn := range batch {
			for _, c := range written[spn].chains {
				b.Chain(c.name)
			}
		}
		for _, spn := range batch {
			for _, c := range written[spn].chains {
				for _, r := range c.rules {
					b.Rule("-A", c.name, r)
				}
			}
		}
		b.Commit()
		if err := p.opts.Restorer.Restore(ctx, b.Bytes()); err != nil {
			return fmt.Errorf("iptables full sync: %w", err)
		}
		rules += b.Rules()
	}

	// 2. The dispatch chains of both tables, in one transaction.
	var b proxier.RuleBuffer
	for _, table := range []string{"filter", "nat"} {
		b.Table(table)
		for _, c := range serviceDispatchChains[table] {
			b.Chain(c)
		}
		p.writeDispatch(&b, table, names, written)
		if table == "nat" {
			p.rc.nodePortJumps(&b, nodePortAddrs)
		}
		b.Commit()
	}
	if err := p.opts.Restorer.Restore(ctx, b.Bytes()); err != nil {
		return fmt.Errorf("iptables full sync: %w", err)
	}
	rules += b.Rules()

	// 3. Stale chains, now unreferenced: flush, then delete.
	for batch := range slices.Chunk(slices.Sorted(maps.Keys(existing)), 4*transactionServices) {
		var b proxier.RuleBuffer
		b.Table("nat")
		for _, c := range batch {
			b.Chain(c)
		}
		for _, c := range batch {
			b.WriteString("-X " + c + "\n")
		}
		b.Commit()
		if err := p.opts.Restorer.Restore(ctx, b.Bytes()); err != nil {
			return fmt.Errorf("iptables full sync: delete stale chains: %w", err)
		}
	}
	p.written = written
	p.nodePortJumps = 1 // the addrtype LOCAL jump
	if len(p.cfg.NodePortAddresses) > 0 {
		p.nodePortJumps = len(nodePortAddrs)
	}
	p.updateCounts()
	klog.V(2).InfoS("iptables full sync", "services", len(names), "rules", rules, "staleChains", len(existing))
	return nil
}

// writeDispatch writes every service's rules in the top-level chains of table.
func (p *Proxier) writeDispatch(b *proxier.RuleBuffer, table string, names []proxier.ServicePortName, written map[proxier.ServicePortName]*serviceRules) {
	for _, tc := range topChains {
		if tc.table != table {
			continue
		}
		for _, spn := range names {
			for _, r := range written[spn].dispatch[tc] {
				b.Rule("-A", tc.chain, r)
			}
		}
	}
}

// partialSync rewrites the chains of the changed service ports and edits
// their dispatch rules with -D/-I, leaving every other rule untouched.
func (p *Proxier) partialSync(ctx context.Context, snap proxier.Snapshot, ch proxier.Changes) error {
	changed := slices.SortedFunc(maps.Keys(ch.Services), func(a, b proxier.ServicePortName) int {
		return strings.Compare(a.String(), b.String())
	})
	next := make(map[proxier.ServicePortName]*serviceRules, len(changed))
	for _, spn := range changed {
		next[spn] = p.build(snap, spn)
	}
	var b proxier.RuleBuffer
	edits := 0
	for _, table := range []string{"filter", "nat"} {
		var body proxier.RuleBuffer
		var deleted []string
		if table == "nat" {
			// declare (flush) every chain being rewritten or deleted
			for _, spn := range changed {
				keep := map[string]bool{}
				if nr := next[spn]; nr != nil {
					for _, c := range nr.chains {
						body.Chain(c.name)
						keep[c.name] = true
					}
				}
				if old := p.written[spn]; old != nil {
					for _, c := range old.chains {
						if !keep[c.name] {
							body.Chain(c.name)
							deleted = append(deleted, c.name)
						}
					}
				}
			}
		}
		for _, tc := range topChains {
			if tc.table != table {
				continue
			}
			for _, spn := range changed {
				var oldRules, newRules []string
				if old := p.written[spn]; old != nil {
					oldRules = old.dispatch[tc]
				}
				if nr := next[spn]; nr != nil {
					newRules = nr.dispatch[tc]
				}
				for _, r := range oldRules {
					if !slices.Contains(newRules, r) {
						body.Rule("-D", tc.chain, r)
					}
				}
				for _, r := range newRules {
					if !slices.Contains(oldRules, r) {
						// -I keeps the NODEPORTS jump last in nat SVCP-SERVICES
						body.Rule("-I", tc.chain, "1", r)
					}
				}
			}
		}
		if table == "nat" {
			for _, spn := range changed {
				if nr := next[spn]; nr != nil {
					for _, c := range nr.chains {
						for _, r := range c.rules {
							body.Rule("-A", c.name, r)
						}
					}
				}
			}
			for _, c := range deleted {
				body.WriteString("-X " + c + "\n")
			}
		}
		if body.Len() == 0 {
			continue
		}
		edits += body.Rules()
		b.Table(table)
		b.Write(body.Bytes())
		b.Commit()
	}
	if b.Len() > 0 {
		if err := p.opts.Restorer.Restore(ctx, b.Bytes()); err != nil {
			return fmt.Errorf("iptables partial sync: %w", err)
		}
	}
	for _, spn := range changed {
		if next[spn] == nil {
			delete(p.written, spn)
		} else {
			p.written[spn] = next[spn]
		}
	}
	p.updateCounts()
	klog.V(2).InfoS("iptables partial sync", "services", len(changed), "ruleEdits", edits)
	return nil
}

// updateCounts recomputes the rule counts from p.written.
func (p *Proxier) updateCounts() {
	// the static rules: 3 in filter; 4 masquerade, 1 drop mark and the
	// node port jumps in nat; 9 static chains
	counts := map[string]int{"iptables-filter": 3, "iptables-nat": 5 + p.nodePortJumps, "iptables-chains": 9}
	for _, sr := range p.written {
		for tc, rules := range sr.dispatch {
			counts["iptables-"+tc.table] += len(rules)
		}
		for _, c := range sr.chains {
			counts["iptables-nat"] += len(c.rules)
		}
		counts["iptables-chains"] += len(sr.chains)
	}
	p.counts = counts
}

// RuleCounts returns the number of rules per table and of chains written by
// the last successful sync.
func (p *Proxier) RuleCounts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.counts)
}

// Cleanup removes every svcproxy chain and the jumps to them from the nat
// and filter tables, and nothing else.
func (p *Proxier) Cleanup(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.written = nil
	return proxier.RemoveOurs(ctx, p.opts.Restorer, "nat", "filter")
}
