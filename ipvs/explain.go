package ipvs

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// Explain reads the kernel (IPVS, kube-ipvs0, ipsets, iptables) and prints
// what happens to a new connection to dst: whether the address is local,
// the iptables rules and ipset members that apply, the virtual server with
// its scheduler and persistence, and its real servers with weights,
// connection counts and stats. It needs no running proxy.
func (p *Proxier) Explain(ctx context.Context, w io.Writer, proto v1.Protocol, dst netip.AddrPort) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.open(); err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	k := Key{Address: dst.Addr(), Protocol: proto, Port: dst.Port()}
	entry := SetEntry{IP: dst.Addr(), Protocol: proto, Port: dst.Port()}
	fmt.Fprintf(w, "A new %s connection to %s, through IPVS (read from the kernel now)\n\n", proto, dst)

	// 1. Is the address local?
	onDummy, err := p.opts.Links.Addresses(DummyInterface)
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	nodeAddrs, err := p.opts.Links.NodeAddresses()
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	switch {
	case slices.Contains(onDummy, dst.Addr()):
		fmt.Fprintf(w, "1. %s is on %s, a dummy interface left down that holds every cluster, external and\n"+
			"   LoadBalancer IP (%d addresses now). So the kernel treats the packet as addressed to this\n"+
			"   node: it goes up to INPUT, where IPVS waits.\n", dst.Addr(), DummyInterface, len(onDummy))
	case slices.Contains(nodeAddrs, dst.Addr()):
		fmt.Fprintf(w, "1. %s is one of this node's own addresses: a node port answers here, so the packet\n"+
			"   goes up to INPUT, where IPVS waits.\n", dst.Addr())
	default:
		fmt.Fprintf(w, "1. %s is not on %s nor a node address: the packet is routed on as it is;\n"+
			"   IPVS only sees packets addressed to this node.\n", dst.Addr(), DummyInterface)
	}

	// 2. iptables and ipsets.
	fmt.Fprintf(w, "\n2. iptables: a constant handful of rules; the per-service data is in ipsets.\n")
	members := map[string]bool{}
	for _, s := range sets {
		es, err := p.opts.IPSets.Entries(s.name)
		if err != nil {
			continue
		}
		for _, e := range es {
			if e.IP == entry.IP && e.Protocol == entry.Protocol && e.Port == entry.Port {
				if s.name == setSourceCIDR {
					members[s.name+" "+e.Net.String()] = true
				}
				members[s.name] = true
			}
		}
	}
	for _, table := range []string{"nat", "filter"} {
		saved, err := p.opts.Restorer.Save(ctx, table)
		if err != nil {
			return fmt.Errorf("explain: %w", err)
		}
		for _, line := range strings.Split(string(saved), "\n") {
			counters := ""
			if strings.HasPrefix(line, "[") {
				if i := strings.Index(line, "] "); i > 0 {
					counters, line = line[:i+1], line[i+2:]
				}
			}
			fields := strings.Fields(line)
			if len(fields) < 2 || fields[0] != "-A" || (fields[1] != servicesChain && fields[1] != filterChain && fields[1] != postroutingChain) {
				continue
			}
			fmt.Fprintf(w, "   %s %s %s\n", table, counters, strings.Join(fields[1:], " "))
			for i, f := range fields {
				if f != "--match-set" || i+2 >= len(fields) {
					continue
				}
				set, dirs := fields[i+1], fields[i+2]
				switch {
				case dirs == "dst,dst" && members[set]:
					fmt.Fprintf(w, "      %s is in %s: this rule applies\n", entry, set)
				case dirs == "dst,dst":
					fmt.Fprintf(w, "      %s is not in %s\n", entry, set)
				case set == setSourceCIDR:
					var ranges []string
					for m := range members {
						if r, ok := strings.CutPrefix(m, setSourceCIDR+" "); ok {
							ranges = append(ranges, r)
						}
					}
					slices.Sort(ranges)
					if len(ranges) > 0 {
						fmt.Fprintf(w, "      sources allowed for %s: %s\n", dst, strings.Join(ranges, ", "))
					}
				case set == setLoopBack:
					fmt.Fprintf(w, "      (applies after IPVS picked a real server, when the client is that very pod)\n")
				}
			}
		}
	}
	switch {
	case members[setNoEndpoints]:
		fmt.Fprintf(w, "   => the service has no endpoints: filter INPUT rejects a new connection at once\n"+
			"      (\"connection refused\"), before IPVS.\n")
	case members[setLoadBalancerFW]:
		fmt.Fprintf(w, "   => only the sources above pass filter INPUT; others are dropped.\n")
	}

	// 3. The virtual server.
	vs, found, err := p.handle.VirtualServer(k)
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	if !found {
		fmt.Fprintf(w, "\n3. No IPVS virtual server %s: IPVS lets the packet through untouched.\n", k)
		return nil
	}
	fmt.Fprintf(w, "\n3. IPVS virtual server %s (ipvsadm -Ln -t/-u/--sctp-service %s)\n", k, dst)
	fmt.Fprintf(w, "   scheduler %s: %s\n", vs.Scheduler, Schedulers[vs.Scheduler])
	if vs.Timeout > 0 {
		fmt.Fprintf(w, "   persistent %d s: a client IP keeps its real server for %d s after its last connection\n"+
			"   (ClientIP session affinity; ipvsadm -Lnc shows the templates)\n", vs.Timeout, vs.Timeout)
	} else {
		fmt.Fprintf(w, "   not persistent: every new connection is scheduled on its own\n")
	}
	fmt.Fprintf(w, "   stats: %d connections, %d packets in, %d out, %d bytes in, %d out\n",
		vs.Stats.Connections, vs.Stats.PacketsIn, vs.Stats.PacketsOut, vs.Stats.BytesIn, vs.Stats.BytesOut)
	rss, err := p.handle.RealServers(k)
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	if len(rss) == 0 {
		fmt.Fprintf(w, "   no real servers: IPVS has nowhere to send the connection\n")
	}
	fmt.Fprintf(w, "   real servers (masquerade: IPVS rewrites the destination to the pod):\n")
	fmt.Fprintf(w, "     %-22s %6s %6s %8s %8s %10s\n", "address", "weight", "active", "inactive", "conns", "packets in")
	for _, rs := range rss {
		note := ""
		if rs.Weight == 0 {
			note = "  weight 0: terminating, keeps only its open connections"
		}
		fmt.Fprintf(w, "     %-22s %6d %6d %8d %8d %10d%s\n", rs.Address, rs.Weight, rs.ActiveConns, rs.InactiveConns,
			rs.Stats.Connections, rs.Stats.PacketsIn, note)
	}
	fmt.Fprintf(w, "   (IPVS updates the stats about every 2 s; ipvsadm -Ln --stats shows them too)\n")

	fmt.Fprintf(w, "\n4. IPVS keeps the choice in its connection table (ipvsadm -Lnc), so later packets of the\n"+
		"   connection go to the same pod. The packet leaves through POSTROUTING, where %s\n"+
		"   masquerades it if a rule above marked it (net.ipv4.vs.conntrack=1 lets netfilter see\n"+
		"   IPVS connections). The reply comes back through this node and IPVS reverses the\n"+
		"   translation: the client sees %s answer.\n", proxier.PostroutingChain, dst)
	return nil
}
