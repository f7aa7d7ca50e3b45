package iptables

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// Explain reads the nat and filter tables and prints the path a new
// connection to dst takes through svcproxy's chains, with packet counters.
func (p *Proxier) Explain(ctx context.Context, w io.Writer, proto v1.Protocol, dst netip.AddrPort) error {
	nat, err := p.opts.Restorer.Save(ctx, "nat")
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	filter, err := p.opts.Restorer.Save(ctx, "filter")
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	e := explainer{w: w, nat: parseSave(string(nat)), proto: proxier.ProtocolLower(proto), dst: dst}
	fmt.Fprintf(w, "A new %s connection to %s, through svcproxy's iptables rules (counters: packets/bytes)\n\n", strings.ToUpper(e.proto), dst)
	saved := parseSave(string(filter))
	for _, chain := range []string{servicesChain, externalServicesChain} {
		for _, r := range saved.chains[chain] {
			if r.matches(e.proto, dst, chain == externalServicesChain) {
				fmt.Fprintf(w, "filter %s: %s\n  -> %s\n", chain, r.describe(), verdict(r.target()))
				return nil
			}
		}
	}
	fmt.Fprintf(w, "1. nat PREROUTING (from a pod or outside) or OUTPUT (from this node) jumps to %s.\n", servicesChain)
	if !e.walk(servicesChain, 1) {
		fmt.Fprintf(w, "\nNo svcproxy rule matches %s/%s: the packet is routed as it is (not a service address here).\n", dst, e.proto)
		return nil
	}
	fmt.Fprintf(w, "\nThen: conntrack remembers the DNAT, so every later packet of the connection (both ways)\n"+
		"is translated without walking these chains again; nat POSTROUTING jumps to %s,\n"+
		"which masquerades (SNATs to this node's address) only packets marked by %s,\n"+
		"and the packet is routed to the endpoint's node.\n", proxier.PostroutingChain, proxier.MarkMasqChain)
	return nil
}

// verdict explains a filter target that ends a connection attempt.
func verdict(target string) string {
	switch target {
	case "REJECT":
		return "REJECT: no endpoint can take this traffic, so the kernel answers \"connection refused\" at once"
	case "DROP":
		return "DROP: no local endpoint for this external traffic (externalTrafficPolicy: Local); the packet is dropped silently"
	default:
		return target
	}
}

// explainer walks the saved nat table for one destination.
type explainer struct {
	w     io.Writer
	nat   savedTable
	proto string
	dst   netip.AddrPort
}

// walk prints the rules of chain that can apply to the packet and follows
// their jumps; it reports whether the packet was DNATed.
func (e *explainer) walk(chain string, depth int) bool {
	indent := strings.Repeat("   ", depth)
	rules := e.nat.chains[chain]
	fmt.Fprintf(e.w, "%s%s (%d rules):\n", indent, chain, len(rules))
	for _, r := range rules {
		top := chain == servicesChain || chain == nodePortsChain
		if top && !r.matches(e.proto, e.dst, chain == nodePortsChain) {
			continue
		}
		target := r.target()
		fmt.Fprintf(e.w, "%s - [%s] %s\n", indent, r.counters, r.describe())
		switch {
		case target == "DNAT":
			fmt.Fprintf(e.w, "%s   => DNAT to %s: the destination becomes this endpoint\n", indent, r.arg("--to-destination"))
		case target == proxier.MarkMasqChain:
			fmt.Fprintf(e.w, "%s   => mark the packet for masquerading (SNAT in POSTROUTING)\n", indent)
		case target == markDropChain:
			fmt.Fprintf(e.w, "%s   => mark the packet to be dropped (source not allowed)\n", indent)
		case strings.HasPrefix(target, proxier.ChainPrefix) && depth < 6:
			if !e.walk(target, depth+1) && top {
				continue // e.g. the node port jump, for a port that is no node port
			}
		}
		if top {
			return true
		}
	}
	return chain != servicesChain && chain != nodePortsChain
}

// savedTable is a parsed iptables-save table.
type savedTable struct {
	chains map[string][]savedRule
}

// savedRule is one "-A" line with its counters.
type savedRule struct {
	counters string
	fields   []string
}

// parseSave parses iptables-save -c output.
func parseSave(text string) savedTable {
	t := savedTable{chains: map[string][]savedRule{}}
	for _, line := range strings.Split(text, "\n") {
		counters := ""
		if strings.HasPrefix(line, "[") {
			if i := strings.Index(line, "] "); i > 0 {
				counters = strings.Replace(line[1:i], ":", "/", 1)
				line = line[i+2:]
			}
		}
		if !strings.HasPrefix(line, "-A ") {
			continue
		}
		fields := splitQuoted(line)
		t.chains[fields[1]] = append(t.chains[fields[1]], savedRule{counters: counters, fields: fields[2:]})
	}
	return t
}

// splitQuoted splits a rule line on spaces, keeping "quoted strings" whole.
func splitQuoted(line string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, r := range line {
		switch {
		case r == '"':
			quoted = !quoted
		case r == ' ' && !quoted:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// arg returns the value after flag, or "".
func (r savedRule) arg(flag string) string {
	for i, f := range r.fields {
		if f == flag && i+1 < len(r.fields) {
			return r.fields[i+1]
		}
	}
	return ""
}

func (r savedRule) target() string { return r.arg("-j") }

// matches reports whether a dispatch rule applies to a packet to dst.
// anyAddress ignores the destination address (NodePorts).
func (r savedRule) matches(proto string, dst netip.AddrPort, anyAddress bool) bool {
	if p := r.arg("-p"); p != "" && p != proto {
		return false
	}
	if d := r.arg("--dport"); d != "" && d != strconv.Itoa(int(dst.Port())) {
		return false
	}
	if d := r.arg("-d"); d != "" && !anyAddress {
		pfx, err := netip.ParsePrefix(d)
		if err != nil || !pfx.Contains(dst.Addr()) {
			return false
		}
	}
	return true
}

// describe renders a rule for people: its comment, then its matches.
func (r savedRule) describe() string {
	var parts []string
	comment := ""
	for i := 0; i < len(r.fields); i++ {
		f := r.fields[i]
		switch f {
		case "-m":
			i++ // the match module name adds nothing for a reader
		case "--comment":
			i++
			comment = r.fields[i]
		case "-j":
			parts = append(parts, "-> "+strings.Join(r.fields[i+1:], " "))
			i = len(r.fields)
		default:
			parts = append(parts, f)
		}
	}
	if comment != "" {
		return fmt.Sprintf("%q %s", comment, strings.Join(parts, " "))
	}
	return strings.Join(parts, " ")
}
