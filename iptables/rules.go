package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"strconv"
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// Chain layout. Built-in chains jump to the top-level chains; the
// top-level chains hold one or a few "dispatch" rules per service port; each
// service port has chains of its own.
//
//	nat PREROUTING, OUTPUT  -> SVCP-SERVICES
//	   SVCP-SERVICES  -d clusterIP  -> SVCP-SVC-x     (cluster traffic)
//	                  -d externalIP -> SVCP-EXT-x     (external traffic)
//	                  -d lbIP       -> SVCP-FW-x or SVCP-EXT-x
//	                  local dst     -> SVCP-NODEPORTS -> SVCP-EXT-x
//	   SVCP-SVC-x   masquerade mark, affinity, statistic  -> SVCP-SEP-y
//	   SVCP-EXT-x   masquerade mark (or Local policy)      -> SVCP-SVC-x / SVCP-SEP-y
//	   SVCP-FW-x    loadBalancerSourceRanges               -> SVCP-EXT-x, else drop mark
//	   SVCP-SEP-y   hairpin masquerade mark, affinity set, DNAT
//	nat POSTROUTING -> SVCP-POSTROUTING (MASQUERADE marked packets)
//	filter FORWARD, OUTPUT -> SVCP-SERVICES (REJECT services without endpoints)
//	filter INPUT, FORWARD  -> SVCP-EXTERNAL-SERVICES (REJECT NodePorts without endpoints)
//	filter INPUT, FORWARD, OUTPUT -> SVCP-FIREWALL (DROP packets with the drop mark)
//	filter FORWARD -> SVCP-FORWARD (ACCEPT marked and established service traffic)
const (
	servicesChain         = "SVCP-SERVICES"
	nodePortsChain        = "SVCP-NODEPORTS"
	externalServicesChain = "SVCP-EXTERNAL-SERVICES"
	firewallChain         = "SVCP-FIREWALL"
	forwardChain          = "SVCP-FORWARD"
	markDropChain         = "SVCP-MARK-DROP"

	svcChainPrefix = "SVCP-SVC-"
	extChainPrefix = "SVCP-EXT-"
	fwChainPrefix  = "SVCP-FW-"
	sepChainPrefix = "SVCP-SEP-"
)

// topChain names one of the top-level chains that hold per-service
// dispatch rules.
type topChain struct{ table, chain string }

var (
	natServices      = topChain{"nat", servicesChain}
	natNodePorts     = topChain{"nat", nodePortsChain}
	filterServices   = topChain{"filter", servicesChain}
	filterExtService = topChain{"filter", externalServicesChain}
)

// topChains lists the dispatch chains in the order a payload writes them.
var topChains = []topChain{filterServices, filterExtService, natServices, natNodePorts}

// chainRules is one of a service port's own nat chains and its rules.
type chainRules struct {
	name  string
	rules []string
}

// serviceRules is everything one service port contributes to the ruleset.
type serviceRules struct {
	// dispatch holds the service's rules in each top-level chain, as the
	// text after "-A CHAIN ".
	dispatch map[topChain][]string
	// chains holds the service's own nat chains.
	chains []chainRules
}

// ruleCount returns how many rules the service contributes.
func (s *serviceRules) ruleCount() int {
	n := 0
	for _, r := range s.dispatch {
		n += len(r)
	}
	for _, c := range s.chains {
		n += len(c.rules)
	}
	return n
}

// chainName returns prefix + a stable 16-character hash of the parts.
// iptables limits chain names to 28 characters.
func chainName(prefix string, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return prefix + base32.StdEncoding.EncodeToString(h[:])[:16]
}

// ruleContext is what rule generation needs besides the service.
type ruleContext struct {
	cfg proxier.Config
	// masqMark and dropMark are the fwmark values, as hex strings.
	masqMark string
	dropMark string
}

// buildServiceRules computes a service port's rules from its selected
// endpoints. It is a pure function of its arguments.
func (rc *ruleContext) buildServiceRules(sp *proxier.ServicePort, sel proxier.Selection) *serviceRules {
	name := sp.Name.String()
	proto := proxier.ProtocolLower(sp.Name.Protocol)
	port := strconv.Itoa(sp.Port)
	svcChain := chainName(svcChainPrefix, name, proto)
	extChain := chainName(extChainPrefix, name, proto)
	fwChain := chainName(fwChainPrefix, name, proto)
	out := &serviceRules{dispatch: map[topChain][]string{}}
	add := func(tc topChain, args ...string) {
		out.dispatch[tc] = append(out.dispatch[tc], strings.Join(args, " "))
	}
	protoMatch := func(dport string) []string { return []string{"-p", proto, "-m", proto, "--dport", dport} }
	comment := func(what string) string { return strings.Join(proxier.Comment(name+" "+what), " ") }

	sepChains := map[string]string{} // endpoint -> chain
	for _, ep := range sel.All {
		sepChains[ep.String()] = chainName(sepChainPrefix, name, proto, ep.String())
	}
	hasCluster, hasExternal := len(sel.Cluster) > 0, len(sel.External) > 0
	// With externalTrafficPolicy Local and no endpoint on this node, pods
	// and the node itself still reach the other endpoints through the
	// external chain's short-circuit rules; the rest is dropped in filter
	// (after DNAT, so short-circuited traffic no longer matches), as
	// kube-proxy does.
	noLocal := sp.ExternalPolicyLocal && !hasExternal && hasCluster

	// dispatch adds the rule for one address of the service: a jump to
	// target when the service has endpoints for that traffic, else a REJECT
	// in the filter table (a DROP for noLocal external addresses).
	dispatch := func(what, dst, dport string, nat topChain, target string, usable bool, extra ...string) {
		match := append(append([]string{}, extra...), protoMatch(dport)...)
		if dst != "" {
			match = append([]string{"-d", dst + "/32"}, match...)
		}
		external := target != svcChain
		if usable || (noLocal && external) {
			add(nat, append(append([]string{comment(what)}, match...), "-j", target)...)
		}
		if usable {
			return
		}
		reject := filterServices
		if nat == natNodePorts {
			reject = filterExtService
			match = append([]string{"-m", "addrtype", "--dst-type", "LOCAL"}, match...)
		}
		why, verdict := " has no endpoints", "REJECT"
		if noLocal && external {
			why, verdict = " has no local endpoints", "DROP"
		}
		add(reject, append(append([]string{comment(what + why)}, match...), "-j", verdict)...)
	}
	for _, ip := range sp.ClusterIPs {
		dispatch("cluster IP", ip.String(), port, natServices, svcChain, hasCluster)
	}
	for _, ip := range sp.ExternalIPs {
		dispatch("external IP", ip.String(), port, natServices, extChain, hasExternal)
	}
	lbTarget := extChain
	if len(sp.LoadBalancerSourceRanges) > 0 && len(sp.LoadBalancerIPs) > 0 && hasExternal {
		lbTarget = fwChain
		fw := chainRules{name: fwChain}
		for _, r := range sp.LoadBalancerSourceRanges {
			fw.rules = append(fw.rules, comment("loadbalancer source range")+" -s "+r.String()+" -j "+extChain)
		}
		fw.rules = append(fw.rules, comment("not in loadBalancerSourceRanges")+" -j "+markDropChain)
		out.chains = append(out.chains, fw)
	}
	for _, ip := range sp.LoadBalancerIPs {
		dispatch("loadbalancer IP", ip.String(), port, natServices, lbTarget, hasExternal)
	}
	if sp.NodePort != 0 {
		dispatch("node port", "", strconv.Itoa(sp.NodePort), natNodePorts, extChain, hasExternal)
	}

	// The service chain: cluster traffic.
	if hasCluster {
		c := chainRules{name: svcChain}
		for _, ip := range sp.ClusterIPs {
			dst := append([]string{comment("cluster IP"), "-d", ip.String() + "/32"}, protoMatch(port)...)
			switch {
			case rc.cfg.MasqueradeAll:
				c.rules = append(c.rules, strings.Join(append(dst, "-j", proxier.MarkMasqChain), " "))
			case rc.cfg.ClusterCIDR.IsValid():
				c.rules = append(c.rules, strings.Join(append(append([]string{"!", "-s", rc.cfg.ClusterCIDR.String()}, dst...), "-j", proxier.MarkMasqChain), " "))
			}
		}
		c.rules = append(c.rules, rc.balance(sp, sel.Cluster, sepChains)...)
		out.chains = append(out.chains, c)
	}
	// The external chain: NodePorts, external and LoadBalancer IPs.
	if (hasExternal || noLocal) && sp.ExternallyReachable() {
		c := chainRules{name: extChain}
		if !sp.ExternalPolicyLocal {
			c.rules = append(c.rules, comment("masquerade traffic from outside")+" -j "+proxier.MarkMasqChain)
		} else {
			// Pods and the node itself may use every endpoint; only
			// traffic from outside is kept local (and keeps its source).
			if rc.cfg.ClusterCIDR.IsValid() && hasCluster {
				c.rules = append(c.rules, comment("pod traffic to external address")+" -s "+rc.cfg.ClusterCIDR.String()+" -j "+svcChain)
			}
			if hasCluster {
				c.rules = append(c.rules,
					comment("masquerade local traffic")+" -m addrtype --src-type LOCAL -j "+proxier.MarkMasqChain,
					comment("route local traffic to cluster endpoints")+" -m addrtype --src-type LOCAL -j "+svcChain)
			}
		}
		if sameEndpoints(sel.External, sel.Cluster) && hasCluster && !sp.ExternalPolicyLocal {
			c.rules = append(c.rules, "-j "+svcChain)
		} else {
			c.rules = append(c.rules, rc.balance(sp, sel.External, sepChains)...)
		}
		out.chains = append(out.chains, c)
	}
	// Endpoint chains.
	for _, ep := range sel.All {
		sep := sepChains[ep.String()]
		c := chainRules{name: sep}
		c.rules = append(c.rules, comment("hairpin")+" -s "+ep.IP.String()+"/32 -j "+proxier.MarkMasqChain)
		dnat := comment("endpoint") + " -p " + proto + " -m " + proto
		if sp.SessionAffinity() {
			dnat += " -m recent --name " + sep + " --set"
		}
		c.rules = append(c.rules, dnat+" -j DNAT --to-destination "+ep.String())
		out.chains = append(out.chains, c)
	}
	return out
}

// balance writes the rules that spread new connections over eps: affinity
// checks first (when on), then one statistic rule per endpoint.
func (rc *ruleContext) balance(sp *proxier.ServicePort, eps []proxier.Endpoint, sepChains map[string]string) []string {
	var rules []string
	if sp.SessionAffinity() {
		secs := strconv.Itoa(int(sp.StickyTimeout.Seconds()))
		for _, ep := range eps {
			sep := sepChains[ep.String()]
			rules = append(rules, fmt.Sprintf("-m recent --name %s --rcheck --seconds %s --reap -j %s", sep, secs, sep))
		}
	}
	for i, ep := range eps {
		sep := sepChains[ep.String()]
		if left := len(eps) - i; left > 1 {
			rules = append(rules, fmt.Sprintf("-m statistic --mode random --probability %.10f -j %s", 1/float64(left), sep))
		} else {
			rules = append(rules, "-j "+sep)
		}
	}
	return rules
}

func sameEndpoints(a, b []proxier.Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].AddrPort() != b[i].AddrPort() {
			return false
		}
	}
	return true
}

// writeFixed writes the chains whose rules do not depend on services: the
// masquerade and drop marks, the firewall and forward chains.
func (rc *ruleContext) writeFixed(b *proxier.RuleBuffer) {
	b.Table("filter")
	for _, c := range fixedChains["filter"] {
		b.Chain(c)
	}
	b.Rule("-A", firewallChain, append(proxier.Comment("drop traffic outside loadBalancerSourceRanges"), "-m", "mark", "--mark", rc.dropMark+"/"+rc.dropMark, "-j", "DROP")...)
	b.Rule("-A", forwardChain, append(proxier.Comment("forward service traffic marked for SNAT"), "-m", "mark", "--mark", rc.masqMark+"/"+rc.masqMark, "-j", "ACCEPT")...)
	b.Rule("-A", forwardChain, append(proxier.Comment("forward established service traffic"), "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")...)
	b.Commit()
	b.Table("nat")
	for _, c := range fixedChains["nat"] {
		b.Chain(c)
	}
	proxier.MasqueradeRules(b, rc.cfg.MasqueradeBit)
	b.Rule("-A", markDropChain, "-j", "MARK", "--or-mark", rc.dropMark)
	b.Commit()
}

// nodePortJumps writes the jumps to SVCP-NODEPORTS at the end of nat
// SVCP-SERVICES: for every local address, or for the addresses of
// --nodeport-addresses.
func (rc *ruleContext) nodePortJumps(b *proxier.RuleBuffer, nodePortAddrs []string) {
	if len(rc.cfg.NodePortAddresses) == 0 {
		b.Rule("-A", servicesChain, append(proxier.Comment("svcproxy node ports, must be last"), "-m", "addrtype", "--dst-type", "LOCAL", "-j", nodePortsChain)...)
		return
	}
	for _, a := range nodePortAddrs {
		b.Rule("-A", servicesChain, append(proxier.Comment("svcproxy node ports, must be last"), "-d", a+"/32", "-j", nodePortsChain)...)
	}
}

// fixedChains are the chains writeFixed fills; serviceDispatchChains hold the
// per-service dispatch rules.
var (
	fixedChains = map[string][]string{
		"filter": {firewallChain, forwardChain},
		"nat":    {proxier.PostroutingChain, proxier.MarkMasqChain, markDropChain},
	}
	serviceDispatchChains = map[string][]string{
		"filter": {servicesChain, externalServicesChain},
		"nat":    {servicesChain, nodePortsChain},
	}
)

// jumps are the rules in built-in chains that lead to ours.
func jumps() []proxier.Jump {
	newConn := []string{"-m", "conntrack", "--ctstate", "NEW"}
	return []proxier.Jump{
		{Table: "nat", Chain: "PREROUTING", Target: servicesChain, Comment: "svcproxy service portals"},
		{Table: "nat", Chain: "OUTPUT", Target: servicesChain, Comment: "svcproxy service portals"},
		{Table: "nat", Chain: "POSTROUTING", Target: proxier.PostroutingChain, Comment: "svcproxy postrouting rules"},
		{Table: "filter", Chain: "FORWARD", Target: servicesChain, Comment: "svcproxy service portals", Extra: newConn},
		{Table: "filter", Chain: "OUTPUT", Target: servicesChain, Comment: "svcproxy service portals", Extra: newConn},
		{Table: "filter", Chain: "INPUT", Target: externalServicesChain, Comment: "svcproxy external services", Extra: newConn},
		{Table: "filter", Chain: "FORWARD", Target: externalServicesChain, Comment: "svcproxy external services", Extra: newConn},
		{Table: "filter", Chain: "INPUT", Target: firewallChain, Comment: "svcproxy firewall"},
		{Table: "filter", Chain: "FORWARD", Target: firewallChain, Comment: "svcproxy firewall"},
		{Table: "filter", Chain: "OUTPUT", Target: firewallChain, Comment: "svcproxy firewall"},
		{Table: "filter", Chain: "FORWARD", Target: forwardChain, Comment: "svcproxy forwarding rules"},
	}
}
