package iptablestest

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Hook is where a traced packet enters netfilter.
type Hook int

const (
	// Prerouting is a packet arriving at the node (from a pod or from
	// outside): nat PREROUTING, then filter INPUT or FORWARD, then nat
	// POSTROUTING if forwarded.
	Prerouting Hook = iota
	// Output is a packet the node itself sends: nat OUTPUT, filter OUTPUT,
	// nat POSTROUTING.
	Output
)

// Packet is the first packet of a new connection.
type Packet struct {
	Source, Dest netip.Addr
	// Protocol is "tcp", "udp" or "sctp"; "" means tcp.
	Protocol string
	DestPort int
	Hook     Hook
	// DestLocal says Dest is a local address of the node (it also is when
	// Dest is one of the tracer's NodeIPs).
	DestLocal bool
}

// Verdict is what finally happens to a traced packet.
type Verdict string

// Verdicts.
const (
	Accept Verdict = "ACCEPT"
	Drop   Verdict = "DROP"
	Reject Verdict = "REJECT"
)

// Outcome is one possible fate of a packet: rules with -m statistic split a
// trace into branches, each with its probability.
type Outcome struct {
	Probability float64
	// Dest is the destination after DNAT (or the original one).
	Dest netip.AddrPort
	// DNAT says a DNAT rule rewrote the destination.
	DNAT bool
	// Mark is the packet mark when it left nat POSTROUTING.
	Mark uint32
	// Marked says a MARK rule in the nat table changed the mark (the
	// tracer does not know which bit means what; Masquerade is the effect).
	Marked bool
	// Masquerade says the packet reached a MASQUERADE rule in POSTROUTING.
	Masquerade bool
	Verdict    Verdict
	// Path lists the rules that matched, for failure messages.
	Path []string
}

// Result is every outcome of a trace.
type Result struct {
	Outcomes []Outcome
}

// Destinations returns the accepted DNAT destinations and the probability of
// reaching each.
func (r *Result) Destinations() map[netip.AddrPort]float64 {
	out := map[netip.AddrPort]float64{}
	for _, o := range r.Outcomes {
		if o.DNAT && o.Verdict == Accept {
			out[o.Dest] += o.Probability
		}
	}
	return out
}

// Summary renders the outcomes as a sorted, comma-separated list of unique
// results: "ip:port" for an accepted DNAT, else the verdict ("ACCEPT" for a
// packet that passes untranslated, "DROP", "REJECT").
func (r *Result) Summary() string {
	seen := map[string]bool{}
	var out []string
	for _, o := range r.Outcomes {
		s := string(o.Verdict)
		if o.DNAT && o.Verdict == Accept {
			s = o.Dest.String()
		}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// Masquerade reports whether every accepted outcome is masqueraded (all) and
// whether any is (any).
func (r *Result) Masquerade() (all, any bool) {
	all = true
	n := 0
	for _, o := range r.Outcomes {
		if o.Verdict != Accept {
			continue
		}
		n++
		all = all && o.Masquerade
		any = any || o.Masquerade
	}
	return all && n > 0, any
}

// Explain renders every outcome with its path, for failure messages.
func (r *Result) Explain() string {
	var b strings.Builder
	for _, o := range r.Outcomes {
		fmt.Fprintf(&b, "p=%.4f %s dest=%s dnat=%v masq=%v mark=%#x\n", o.Probability, o.Verdict, o.Dest, o.DNAT, o.Masquerade, o.Mark)
		for _, p := range o.Path {
			b.WriteString("    " + p + "\n")
		}
	}
	return b.String()
}

// Tracer walks packets through a Fake's rules as netfilter would for the
// first packet of a connection (conntrack state NEW, no recent-list
// entries). It follows every -m statistic branch instead of picking one, and
// fails on any match, option or target it does not model, so a new rule
// shape cannot pass unchecked.
type Tracer struct {
	Fake *Fake
	// NodeIPs are the node's own addresses: --dst-type/--src-type LOCAL
	// match them (and loopback).
	NodeIPs []netip.Addr
}

// traceState is one branch of a trace.
type traceState struct {
	prob   float64
	mark   uint32
	dst    netip.AddrPort
	dnat   bool
	marked bool
	masq   bool
	path   []string
}

func (s traceState) with(prob float64) traceState {
	s.prob = prob
	s.path = append([]string(nil), s.path...)
	return s
}

type exitKind int

const (
	exitReturn exitKind = iota // fell off or RETURNed from a user chain
	exitAccept
	exitDrop
	exitReject
)

type exit struct {
	st   traceState
	kind exitKind
}

// walker holds one trace's fixed facts.
type walker struct {
	tr       *Tracer
	pkt      Packet
	proto    string
	srcLocal bool
}

// maxDepth bounds chain recursion (a loop is an error).
const maxDepth = 32

// Trace walks p through the fake's nat and filter tables.
func (tr *Tracer) Trace(p Packet) (*Result, error) {
	if !p.Source.IsValid() || !p.Dest.IsValid() || p.DestPort < 1 || p.DestPort > 65535 {
		return nil, fmt.Errorf("trace: packet needs a source, a destination and a port: %+v", p)
	}
	w := &walker{tr: tr, pkt: p, proto: strings.ToLower(p.Protocol)}
	if w.proto == "" {
		w.proto = "tcp"
	}
	w.srcLocal = p.Hook == Output || tr.isNodeIP(p.Source)
	start := traceState{prob: 1, dst: netip.AddrPortFrom(p.Dest, uint16(p.DestPort))}

	natChain, filterLocal, filterOther := "PREROUTING", "INPUT", "FORWARD"
	if p.Hook == Output {
		natChain, filterLocal, filterOther = "OUTPUT", "OUTPUT", "OUTPUT"
	}
	var res Result
	natExits, err := w.walkBuiltin("nat", natChain, start)
	if err != nil {
		return nil, err
	}
	for _, ne := range natExits {
		if ne.kind != exitAccept {
			res.Outcomes = append(res.Outcomes, w.outcome(ne))
			continue
		}
		local := w.isLocal(ne.st)
		fchain := filterOther
		if local {
			fchain = filterLocal
		}
		filterExits, err := w.walkBuiltin("filter", fchain, ne.st)
		if err != nil {
			return nil, err
		}
		for _, fe := range filterExits {
			if fe.kind != exitAccept || (local && p.Hook == Prerouting) {
				res.Outcomes = append(res.Outcomes, w.outcome(fe))
				continue
			}
			postExits, err := w.walkBuiltin("nat", "POSTROUTING", fe.st)
			if err != nil {
				return nil, err
			}
			for _, pe := range postExits {
				res.Outcomes = append(res.Outcomes, w.outcome(pe))
			}
		}
	}
	return &res, nil
}

func (w *walker) outcome(e exit) Outcome {
	v := Accept
	switch e.kind {
	case exitDrop:
		v = Drop
	case exitReject:
		v = Reject
	}
	return Outcome{Probability: e.st.prob, Dest: e.st.dst, DNAT: e.st.dnat, Mark: e.st.mark,
		Marked: e.st.marked, Masquerade: e.st.masq, Verdict: v, Path: e.st.path}
}

func (tr *Tracer) isNodeIP(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	for _, n := range tr.NodeIPs {
		if n == a {
			return true
		}
	}
	return false
}

// isLocal reports whether a branch's current destination is a local address.
func (w *walker) isLocal(st traceState) bool {
	if w.tr.isNodeIP(st.dst.Addr()) {
		return true
	}
	return !st.dnat && w.pkt.DestLocal
}

// walkBuiltin walks a built-in chain; falling off it or RETURN applies the
// chain's policy.
func (w *walker) walkBuiltin(tableName, chainName string, st traceState) ([]exit, error) {
	exits, err := w.walk(tableName, chainName, st, 0)
	if err != nil {
		return nil, err
	}
	_, _, policy, _ := w.tr.Fake.chainRules(tableName, chainName)
	for i := range exits {
		if exits[i].kind == exitReturn {
			exits[i].kind = exitAccept
			if policy == "DROP" {
				exits[i].kind = exitDrop
			}
		}
	}
	return exits, nil
}

func (w *walker) walk(tableName, chainName string, st traceState, depth int) ([]exit, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("trace: chain recursion deeper than %d at %s/%s (a loop?)", maxDepth, tableName, chainName)
	}
	rules, _, _, ok := w.tr.Fake.chainRules(tableName, chainName)
	if !ok {
		return nil, fmt.Errorf("trace: no chain %s/%s", tableName, chainName)
	}
	live := []traceState{st}
	var out []exit
	for i, r := range rules {
		var next []traceState
		for _, s := range live {
			frac, err := w.match(r, s)
			if err != nil {
				return nil, fmt.Errorf("trace: %s/%s rule %d %q: %w", tableName, chainName, i+1, r.String(), err)
			}
			if frac < 1 {
				next = append(next, s.with(s.prob*(1-frac)))
			}
			if frac == 0 {
				continue
			}
			m := s.with(s.prob * frac)
			m.path = append(m.path, fmt.Sprintf("%s/%s #%d: %s", tableName, chainName, i+1, r.String()))
			exits, err := w.target(tableName, r, m, depth)
			if err != nil {
				return nil, fmt.Errorf("trace: %s/%s rule %d %q: %w", tableName, chainName, i+1, r.String(), err)
			}
			for _, e := range exits {
				if e.kind == exitReturn && !r.isGoto && r.target != "RETURN" {
					next = append(next, e.st) // continue after the rule
				} else {
					out = append(out, e)
				}
			}
		}
		live = next
		if len(live) == 0 {
			break
		}
	}
	for _, s := range live {
		out = append(out, exit{st: s, kind: exitReturn})
	}
	return out, nil
}

// target applies r's target to a matching branch. exitReturn means "go on
// after this rule", except for RETURN and goto, which leave the chain.
func (w *walker) target(tableName string, r *Rule, st traceState, depth int) ([]exit, error) {
	switch r.target {
	case "":
		return []exit{{st: st, kind: exitReturn}}, nil
	case "ACCEPT":
		return []exit{{st: st, kind: exitAccept}}, nil
	case "DROP":
		return []exit{{st: st, kind: exitDrop}}, nil
	case "REJECT":
		return []exit{{st: st, kind: exitReject}}, nil
	case "RETURN":
		return []exit{{st: st, kind: exitReturn}}, nil
	case "MARK":
		v, m, err := parseMark(optArg(r.tgtOpts, "--set-xmark"))
		if err != nil {
			return nil, err
		}
		st.mark = (st.mark &^ m) ^ v
		if tableName == "nat" {
			st.marked = true
		}
		return []exit{{st: st, kind: exitReturn}}, nil
	case "DNAT":
		ip, port, err := parseDNAT(optArg(r.tgtOpts, "--to-destination"))
		if err != nil {
			return nil, err
		}
		if port == 0 {
			port = int(st.dst.Port())
		}
		st.dst, st.dnat = netip.AddrPortFrom(ip, uint16(port)), true
		return []exit{{st: st, kind: exitAccept}}, nil
	case "MASQUERADE":
		st.masq = true
		return []exit{{st: st, kind: exitAccept}}, nil
	case "REDIRECT":
		// To the node itself: loopback from OUTPUT, else the address
		// the packet came to (the first node IP stands for it).
		to := optArg(r.tgtOpts, "--to-ports")
		port, err := strconv.Atoi(to)
		if err != nil {
			return nil, fmt.Errorf("REDIRECT --to-ports %q is not modelled by the tracer", to)
		}
		ip := netip.MustParseAddr("127.0.0.1")
		if w.pkt.Hook == Prerouting {
			if len(w.tr.NodeIPs) == 0 {
				return nil, fmt.Errorf("REDIRECT in PREROUTING needs the tracer's NodeIPs")
			}
			ip = w.tr.NodeIPs[0]
		}
		st.dst, st.dnat = netip.AddrPortFrom(ip, uint16(port)), true
		return []exit{{st: st, kind: exitAccept}}, nil
	}
	if _, ok := builtinTargets[r.target]; ok {
		return nil, fmt.Errorf("target %s is not modelled by the tracer", r.target)
	}
	exits, err := w.walk(tableName, r.target, st, depth+1)
	if err != nil {
		return nil, err
	}
	return exits, nil
}

// match returns the probability that r's matches all hold for st: 0 or 1,
// or a fraction for -m statistic.
func (w *walker) match(r *Rule, st traceState) (float64, error) {
	for _, o := range r.base {
		ok, err := w.matchBase(o, st)
		if err != nil {
			return 0, err
		}
		if ok == o.neg {
			return 0, nil
		}
	}
	frac := 1.0
	for _, o := range r.matches {
		if o.module == "statistic" {
			p, err := statisticProbability(o)
			if err != nil {
				return 0, err
			}
			if o.neg && o.name == "--probability" {
				p = 1 - p
			}
			frac *= p
			continue
		}
		ok, known, err := w.matchOption(o, st)
		if err != nil {
			return 0, err
		}
		if !known {
			continue // a modifier (e.g. --name, --seconds)
		}
		if ok == o.neg {
			return 0, nil
		}
	}
	return frac, nil
}

func (w *walker) matchBase(o option, st traceState) (bool, error) {
	switch o.name {
	case "-s", "-d":
		pfx, err := netip.ParsePrefix(o.args[0])
		if err != nil {
			return false, err
		}
		if o.name == "-s" {
			return pfx.Contains(w.pkt.Source), nil
		}
		return pfx.Contains(st.dst.Addr()), nil
	case "-p":
		return o.args[0] == "all" || o.args[0] == w.proto, nil
	}
	return false, fmt.Errorf("match %s is not modelled by the tracer", o.name)
}

// statisticProbability returns the probability of a statistic option; the
// --mode option itself counts as 1 (it must be "random").
func statisticProbability(o option) (float64, error) {
	switch o.name {
	case "--mode":
		if o.args[0] != "random" {
			return 0, fmt.Errorf("statistic --mode %s is not modelled by the tracer", o.args[0])
		}
		return 1, nil
	case "--probability":
		return strconv.ParseFloat(o.args[0], 64)
	}
	return 0, fmt.Errorf("statistic %s is not modelled by the tracer", o.name)
}

// matchOption evaluates one module option. known is false for options that
// only modify another (they neither match nor fail).
func (w *walker) matchOption(o option, st traceState) (ok, known bool, err error) {
	switch o.module + " " + o.name {
	case "comment --comment":
		return true, false, nil
	case "tcp --dport", "udp --dport", "sctp --dport":
		lo, hi, err := parsePortRange(o.args[0])
		if err != nil {
			return false, true, err
		}
		p := int(st.dst.Port())
		return o.module == w.proto && p >= lo && p <= hi, true, nil
	case "addrtype --dst-type", "addrtype --src-type":
		if o.args[0] != "LOCAL" {
			return false, true, fmt.Errorf("addrtype type %s is not modelled by the tracer", o.args[0])
		}
		if o.name == "--dst-type" {
			return w.isLocal(st), true, nil
		}
		return w.srcLocal, true, nil
	case "recent --rcheck", "recent --update", "recent --remove":
		return false, true, nil // a new client has no entry in any list
	case "recent --set":
		return true, true, nil // records the source; always matches
	case "recent --name", "recent --seconds", "recent --reap", "recent --rsource", "recent --mask", "recent --hitcount":
		return true, false, nil
	case "mark --mark":
		v, m, err := parseMark(o.args[0])
		if err != nil {
			return false, true, err
		}
		return st.mark&m == v, true, nil
	case "conntrack --ctorigdst":
		pfx, err := netip.ParsePrefix(o.args[0])
		if err != nil {
			if a, err2 := netip.ParseAddr(o.args[0]); err2 == nil {
				pfx, err = netip.PrefixFrom(a, a.BitLen()), nil
			}
		}
		if err != nil {
			return false, true, err
		}
		return pfx.Contains(w.pkt.Dest), true, nil
	case "conntrack --ctorigdstport":
		lo, hi, err := parsePortRange(o.args[0])
		if err != nil {
			return false, true, err
		}
		return w.pkt.DestPort >= lo && w.pkt.DestPort <= hi, true, nil
	case "conntrack --ctstate":
		for _, s := range strings.Split(o.args[0], ",") {
			if s == "NEW" {
				return true, true, nil
			}
		}
		return false, true, nil
	}
	return false, true, fmt.Errorf("match -m %s %s is not modelled by the tracer", o.module, o.name)
}
