package userspace

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// The userspace mode's chains. Their names start with proxier.ChainPrefix
// and differ from every chain of the iptables mode.
const (
	// ContainerChain (nat, jumped to from PREROUTING) redirects traffic that
	// arrives at the node (from pods or from outside) into the proxy
	// sockets.
	ContainerChain = "SVCP-PORTALS-CONTAINER"
	// HostChain (nat, jumped to from OUTPUT) redirects traffic that starts
	// on the node itself; REDIRECT in OUTPUT sends it to 127.0.0.1.
	HostChain = "SVCP-PORTALS-HOST"
	// InputChain (filter, jumped to from INPUT) rejects connections to
	// proxy sockets of service ports without endpoints and enforces
	// loadBalancerSourceRanges.
	InputChain = "SVCP-PORTALS-INPUT"
)

// jumpComment marks the jumps from the built-in chains.
const jumpComment = "svcproxy userspace portals"

// jump is one rule in a built-in chain that sends packets to ours.
type jump struct{ table, from, to string }

// jumps lists the jumps the userspace mode needs, in payload order.
var jumps = []jump{
	{"nat", "PREROUTING", ContainerChain},
	{"nat", "OUTPUT", HostChain},
	{"filter", "INPUT", InputChain},
}

// Capture kinds, as they appear in rule comments and explain output.
const (
	kindClusterIP    = "cluster IP"
	kindExternalIP   = "external IP"
	kindLoadBalancer = "load balancer IP"
	kindNodePort     = "node port"
)

// capture is one destination a proxy socket catches.
type capture struct {
	kind string
	// dst is the destination address; invalid for a node port on every
	// local address (matched with addrtype LOCAL).
	dst  netip.Addr
	port int
}

// String renders the destination, e.g. "10.96.0.10:9000" or
// "<any local address>:30080".
func (c capture) String() string {
	if !c.dst.IsValid() {
		return "<any local address>:" + strconv.Itoa(c.port)
	}
	return netip.AddrPortFrom(c.dst, uint16(c.port)).String()
}

// nodePorts says where NodePorts answer: every local address (allLocal) or
// the listed ones.
type nodePorts struct {
	allLocal bool
	addrs    []netip.Addr
}

// captures returns what the cluster socket and the external socket of sp
// catch. IPv6 addresses are left out: the proxy sockets are IPv4.
func captures(sp *proxier.ServicePort, np nodePorts) (cluster, external []capture) {
	for _, ip := range sp.ClusterIPs {
		if ip.Is4() {
			cluster = append(cluster, capture{kind: kindClusterIP, dst: ip, port: sp.Port})
		}
	}
	for _, ip := range sp.ExternalIPs {
		if ip.Is4() {
			external = append(external, capture{kind: kindExternalIP, dst: ip, port: sp.Port})
		}
	}
	for _, ip := range sp.LoadBalancerIPs {
		if ip.Is4() {
			external = append(external, capture{kind: kindLoadBalancer, dst: ip, port: sp.Port})
		}
	}
	if sp.NodePort != 0 {
		if np.allLocal {
			external = append(external, capture{kind: kindNodePort, port: sp.NodePort})
		}
		for _, ip := range np.addrs {
			external = append(external, capture{kind: kindNodePort, dst: ip, port: sp.NodePort})
		}
	}
	return cluster, external
}

// ruleSet is an iptables-restore payload and its size.
type ruleSet struct {
	payload []byte
	// nat and filter count the rules in our chains (jumps excluded).
	nat, filter int
}

// buildRules writes the whole userspace rule set: every proxy socket's
// REDIRECT rules, the REJECT rules of sockets without endpoints and the
// load balancer source range checks. missing lists the jumps from built-in
// chains that are not in the kernel yet; they are inserted first in their
// chain.
func buildRules(sets []*portalSet, np nodePorts, missing []jump) ruleSet {
	var nat, filter proxier.RuleBuffer
	nat.Table("nat")
	nat.Chain(ContainerChain)
	nat.Chain(HostChain)
	filter.Table("filter")
	filter.Chain(InputChain)
	for _, j := range missing {
		b := &nat
		if j.table == "filter" {
			b = &filter
		}
		// Written directly: a jump is not counted as one of our rules.
		b.WriteString("-I " + j.from + " 1 " + strings.Join(proxier.Comment(jumpComment), " ") + " -j " + j.to + "\n")
	}
	var firewall proxier.RuleBuffer // source range checks go after the REJECTs
	for _, s := range sets {
		proto := proxier.ProtocolLower(s.sp.Name.Protocol)
		cl, ext := captures(s.sp, np)
		ps := s.portals()
		for i, caps := range [][]capture{cl, ext} {
			target := ps[0]
			if i == 1 {
				target = ps[len(ps)-1]
			}
			for _, c := range caps {
				args := proxier.Comment(s.sp.Name.String() + " " + c.kind)
				if c.dst.IsValid() {
					args = append(args, "-d", c.dst.String()+"/32")
				} else {
					args = append(args, "-m", "addrtype", "--dst-type", "LOCAL")
				}
				args = append(args, "-p", proto, "-m", proto, "--dport", strconv.Itoa(c.port),
					"-j", "REDIRECT", "--to-ports", strconv.Itoa(target.socket.Port()))
				nat.Rule("-A", ContainerChain, args...)
				nat.Rule("-A", HostChain, args...)
			}
		}
		for _, pt := range ps {
			if len(pt.endpoints) > 0 {
				continue
			}
			// As kube-proxy: a service without endpoints is refused; external
			// traffic of a Local policy without local endpoints is dropped
			// (a load balancer's health check then moves it elsewhere).
			comment, verdict := " has no endpoints", "REJECT"
			if pt != s.cluster && len(s.cluster.endpoints) > 0 {
				comment, verdict = " has no local endpoints", "DROP"
			}
			filter.Rule("-A", InputChain, append(proxier.Comment(s.sp.Name.String()+comment),
				"-p", proto, "-m", proto, "--dport", strconv.Itoa(pt.socket.Port()), "-j", verdict)...)
		}
		writeSourceRanges(&firewall, s.sp, proto)
	}
	filter.Write(firewall.Bytes())
	nat.Commit()
	filter.Commit()
	payload := append(nat.Bytes(), filter.Bytes()...)
	return ruleSet{payload: payload, nat: nat.Rules(), filter: filter.Rules() + firewall.Rules()}
}

// writeSourceRanges writes the loadBalancerSourceRanges check of sp: a
// packet whose original destination (before REDIRECT) is one of its load
// balancer IPs passes when it comes from an allowed range and is dropped
// otherwise.
func writeSourceRanges(b *proxier.RuleBuffer, sp *proxier.ServicePort, proto string) {
	var ranges []netip.Prefix
	for _, r := range sp.LoadBalancerSourceRanges {
		if r.Addr().Is4() {
			ranges = append(ranges, r)
		}
	}
	if len(sp.LoadBalancerSourceRanges) == 0 {
		return
	}
	for _, ip := range sp.LoadBalancerIPs {
		if !ip.Is4() {
			continue
		}
		match := append(proxier.Comment(sp.Name.String()+" load balancer source ranges"),
			"-p", proto, "-m", "conntrack", "--ctorigdst", ip.String()+"/32", "--ctorigdstport", strconv.Itoa(sp.Port))
		for _, r := range ranges {
			b.Rule("-A", InputChain, append(slices.Clone(match), "-s", r.String(), "-j", "RETURN")...)
		}
		b.Rule("-A", InputChain, append(slices.Clone(match), "-j", "DROP")...)
	}
}

// savedRule is one rule line of iptables-save -c output.
type savedRule struct {
	packets, bytes uint64
	// line is the rule without its counters ("-A CHAIN ...").
	line string
	args []string
}

// parseSaved returns the rules of chain in iptables-save (-c) output, and
// whether the chain exists.
func parseSaved(saved []byte, chain string) (rules []savedRule, exists bool) {
	sc := bufio.NewScanner(bytes.NewReader(saved))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, ":"+chain+" ") {
			exists = true
			continue
		}
		var r savedRule
		if strings.HasPrefix(line, "[") {
			end := strings.Index(line, "] ")
			if end < 0 {
				continue
			}
			if pkts, bts, ok := strings.Cut(line[1:end], ":"); ok {
				r.packets, _ = strconv.ParseUint(pkts, 10, 64)
				r.bytes, _ = strconv.ParseUint(bts, 10, 64)
			}
			line = line[end+2:]
		}
		if !strings.HasPrefix(line, "-A "+chain+" ") {
			continue
		}
		r.line = line
		r.args = splitArgs(line)
		rules = append(rules, r)
	}
	return rules, exists
}

// splitArgs splits an iptables-save rule into its arguments, keeping a
// double-quoted argument (a comment) as one, without the quotes.
func splitArgs(line string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case ch == '\\' && inQuote && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case ch == '"':
			inQuote = !inQuote
			have = true
		case ch == ' ' && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(ch)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// arg returns the value after flag in args ("" if absent), and whether a
// "!" preceded the flag.
func arg(args []string, flag string) (value string, negated bool) {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1], i > 0 && args[i-1] == "!"
		}
	}
	return "", false
}

// missingJumps returns the jumps that are not in the saved nat and filter
// tables.
func missingJumps(savedNat, savedFilter []byte) []jump {
	var out []jump
	for _, j := range jumps {
		saved := savedNat
		if j.table == "filter" {
			saved = savedFilter
		}
		found := false
		rules, _ := parseSaved(saved, j.from)
		for _, r := range rules {
			if target, _ := arg(r.args, "-j"); target == j.to {
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

// inKernel reports whether the saved tables hold exactly as many rules in
// our chains as rs wrote: a cheap check that nobody flushed or edited them.
func inKernel(rs ruleSet, savedNat, savedFilter []byte) error {
	check := func(saved []byte, chain string, want int) error {
		rules, exists := parseSaved(saved, chain)
		if !exists {
			return fmt.Errorf("chain %s is missing", chain)
		}
		if len(rules) != want {
			return fmt.Errorf("chain %s has %d rules, want %d", chain, len(rules), want)
		}
		return nil
	}
	if err := check(savedNat, ContainerChain, rs.nat/2); err != nil {
		return err
	}
	if err := check(savedNat, HostChain, rs.nat/2); err != nil {
		return err
	}
	return check(savedFilter, InputChain, rs.filter)
}

// protoOf parses the protocol of a rule ("-p tcp").
func protoOf(args []string) v1.Protocol {
	p, _ := arg(args, "-p")
	switch p {
	case "udp":
		return v1.ProtocolUDP
	case "sctp":
		return v1.ProtocolSCTP
	case "tcp":
		return v1.ProtocolTCP
	}
	return ""
}
