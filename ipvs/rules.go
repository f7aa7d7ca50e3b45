package ipvs

import (
	"strings"

	"github.com/svcproxy/svcproxy/proxier"
)

// The ipsets and the constant iptables rules. Per-service data lives in the
// sets; the rules never change with the services, so their number is the
// same at 1 or 10,000 services:
//
//	nat PREROUTING, OUTPUT -> SVCP-IPVS-SERVICES
//	    [! -s clusterCIDR] dst,dst in SVCP-CLUSTER-IP    -> SVCP-MARK-MASQ
//	    dst,dst in SVCP-EXTERNAL-IP                      -> SVCP-MARK-MASQ
//	    dst,dst in SVCP-LOAD-BALANCER                    -> SVCP-MARK-MASQ
//	    dst,dst in SVCP-NODE-PORT                        -> SVCP-MARK-MASQ
//	nat POSTROUTING -> SVCP-IPVS-POSTROUTING
//	    dst,dst,src in SVCP-LOOP-BACK (a pod reaching itself) -> MASQUERADE
//	nat POSTROUTING -> SVCP-POSTROUTING (shared: MASQUERADE marked packets)
//	filter INPUT -> SVCP-IPVS-FILTER
//	    dst,dst in SVCP-LOAD-BALANCER-FW, dst,dst,src not in
//	    SVCP-LOAD-BALANCER-SOURCE-CIDR                   -> DROP
//	    NEW, dst,dst in SVCP-NO-ENDPOINTS                -> REJECT
//
// Service addresses (cluster, external, LoadBalancer IPs) are on kube-ipvs0
// and node ports on node addresses, so every service packet is local: it
// passes filter INPUT (priority 0) before IPVS takes it at LOCAL_IN.
const (
	servicesChain    = "SVCP-IPVS-SERVICES"
	postroutingChain = "SVCP-IPVS-POSTROUTING"
	filterChain      = "SVCP-IPVS-FILTER"
)

// Set names. ipset names are at most 31 characters.
const (
	setClusterIP      = "SVCP-CLUSTER-IP"
	setExternalIP     = "SVCP-EXTERNAL-IP"
	setLoadBalancer   = "SVCP-LOAD-BALANCER"
	setLoadBalancerFW = "SVCP-LOAD-BALANCER-FW"
	setSourceCIDR     = "SVCP-LOAD-BALANCER-SOURCE-CIDR"
	setNodePort       = "SVCP-NODE-PORT"
	setLoopBack       = "SVCP-LOOP-BACK"
	setNoEndpoints    = "SVCP-NO-ENDPOINTS"
)

// setDef describes one of our ipsets.
type setDef struct {
	name, kind, comment string
}

// sets lists every ipset svcproxy's IPVS mode uses.
var sets = []setDef{
	{setClusterIP, "hash:ip,port", "cluster IP:port of every service"},
	{setExternalIP, "hash:ip,port", "external IP:port whose traffic is masqueraded (policy Cluster)"},
	{setLoadBalancer, "hash:ip,port", "LoadBalancer IP:port whose traffic is masqueraded (policy Cluster)"},
	{setLoadBalancerFW, "hash:ip,port", "LoadBalancer IP:port with loadBalancerSourceRanges"},
	{setSourceCIDR, "hash:ip,port,net", "LoadBalancer IP:port and a source range allowed to reach it"},
	{setNodePort, "hash:ip,port", "node address:node port whose traffic is masqueraded (policy Cluster)"},
	{setLoopBack, "hash:ip,port,ip", "endpoint:port,endpoint: a pod reaching itself through a service (hairpin)"},
	{setNoEndpoints, "hash:ip,port", "virtual servers without endpoints: rejected"},
}

// isOurSet reports whether name is one of the sets above.
func isOurSet(name string) bool {
	for _, s := range sets {
		if s.name == name {
			return true
		}
	}
	return false
}

// ruleSet is the constant iptables payload and its size.
type ruleSet struct {
	// bodies holds each table's chain declarations and rules, without
	// "*table" and "COMMIT", in payload order.
	bodies      [2]tableBody
	nat, filter int
}

// tableBody is one table's part of the payload.
type tableBody struct {
	table string
	body  []byte
}

// payload returns the iptables-restore input: the constant rules plus the
// jumps from built-in chains that are missing.
func (rs ruleSet) payload(missing []proxier.Jump) []byte {
	var b proxier.RuleBuffer
	for _, tb := range rs.bodies {
		b.Table(tb.table)
		b.Write(tb.body)
		for _, j := range missing {
			if j.Table == tb.table {
				b.Rule("-I", j.Chain, append([]string{"1"}, append(proxier.Comment(j.Comment), "-j", j.Target)...)...)
			}
		}
		b.Commit()
	}
	return b.Bytes()
}

// missingJumps returns the jumps not in the iptables-save output of their
// tables.
func missingJumps(saved map[string]string) []proxier.Jump {
	var out []proxier.Jump
	for _, j := range jumps() {
		found := false
		for _, line := range strings.Split(saved[j.Table], "\n") {
			if strings.HasPrefix(line, "[") {
				if i := strings.Index(line, "] "); i > 0 {
					line = line[i+2:]
				}
			}
			if strings.HasPrefix(line, "-A "+j.Chain+" ") && strings.HasSuffix(line, " -j "+j.Target) {
				found = true
				break
			}
		}
		if !found {
			out = append(out, j)
		}
	}
	return out
}

// buildRules writes the constant rules for cfg.
func buildRules(cfg proxier.Config) ruleSet {
	var b proxier.RuleBuffer
	var rs ruleSet
	for _, c := range []string{servicesChain, postroutingChain, proxier.MarkMasqChain, proxier.PostroutingChain} {
		b.Chain(c)
	}
	match := func(set, dirs string) []string { return []string{"-m", "set", "--match-set", set, dirs} }
	masq := func(comment string, args ...string) {
		b.Rule("-A", servicesChain, append(append(proxier.Comment(comment), args...), "-j", proxier.MarkMasqChain)...)
	}
	switch {
	case cfg.MasqueradeAll:
		masq("masquerade all traffic to cluster IPs", match(setClusterIP, "dst,dst")...)
	case cfg.ClusterCIDR.IsValid():
		masq("masquerade off-cluster traffic to cluster IPs", append([]string{"!", "-s", cfg.ClusterCIDR.String()}, match(setClusterIP, "dst,dst")...)...)
	}
	masq("masquerade traffic to external IPs", match(setExternalIP, "dst,dst")...)
	masq("masquerade traffic to LoadBalancer IPs", match(setLoadBalancer, "dst,dst")...)
	masq("masquerade traffic to node ports", match(setNodePort, "dst,dst")...)
	b.Rule("-A", postroutingChain, append(append(proxier.Comment("masquerade a pod reaching itself through a service"), match(setLoopBack, "dst,dst,src")...), "-j", "MASQUERADE")...)
	proxier.MasqueradeRules(&b, cfg.MasqueradeBit)
	rs.nat = b.Rules()
	rs.bodies[0] = tableBody{table: "nat", body: b.Bytes()}

	var fb proxier.RuleBuffer
	fb.Chain(filterChain)
	fb.Rule("-A", filterChain, append(append(append(proxier.Comment("drop sources outside loadBalancerSourceRanges"),
		match(setLoadBalancerFW, "dst,dst")...), "-m", "set", "!", "--match-set", setSourceCIDR, "dst,dst,src"), "-j", "DROP")...)
	fb.Rule("-A", filterChain, append(append(proxier.Comment("reject services without endpoints"),
		append([]string{"-m", "conntrack", "--ctstate", "NEW"}, match(setNoEndpoints, "dst,dst")...)...), "-j", "REJECT")...)
	rs.filter = fb.Rules()
	rs.bodies[1] = tableBody{table: "filter", body: fb.Bytes()}
	return rs
}

// jumps are the rules in built-in chains that lead to ours.
func jumps() []proxier.Jump {
	return []proxier.Jump{
		{Table: "nat", Chain: "PREROUTING", Target: servicesChain, Comment: "svcproxy ipvs services"},
		{Table: "nat", Chain: "OUTPUT", Target: servicesChain, Comment: "svcproxy ipvs services"},
		{Table: "nat", Chain: "POSTROUTING", Target: proxier.PostroutingChain, Comment: "svcproxy postrouting rules"},
		{Table: "nat", Chain: "POSTROUTING", Target: postroutingChain, Comment: "svcproxy ipvs hairpin"},
		{Table: "filter", Chain: "INPUT", Target: filterChain, Comment: "svcproxy ipvs filter"},
	}
}
