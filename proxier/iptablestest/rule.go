package iptablestest

import (
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// option is one parsed option of a rule: a base match (-s, -d, -p, -i, -o;
// module ""), an option of a match module, or an option of the target.
type option struct {
	module string
	name   string
	neg    bool
	args   []string
	// modIdx is the index in Rule.modules of the module an option
	// belongs to (a module may appear twice in one rule).
	modIdx int
}

// Rule is one parsed rule: the canonical argument list (what follows
// "-A CHAIN" in iptables-save output) and its structure.
type Rule struct {
	// Args is the canonical argument list: base matches first (-s, -d, -i,
	// -o, -p), then match modules in the order given, then the target;
	// addresses are masked prefixes, MARK targets use --set-xmark, mark
	// values are hexadecimal, as iptables-save prints them.
	Args []string

	base    []option
	modules []string // modules in order, each followed by its options in matches
	matches []option
	target  string
	isGoto  bool
	tgtOpts []option
}

// String renders the rule as iptables-save prints it (without "-A CHAIN").
func (r *Rule) String() string { return renderArgs(r.Args) }

// Target returns the rule's target (jump or goto), or "".
func (r *Rule) Target() string { return r.target }

// optionSpec describes one known option: how many arguments it takes.
type optionSpec map[string]int

// matchModules lists the match modules the fake accepts, with their options
// and arities. Anything else is an error, so new rule shapes get support in
// the fake (and the tracer) before they can be tested.
var matchModules = map[string]optionSpec{
	"comment":   {"--comment": 1},
	"tcp":       {"--dport": 1, "--sport": 1},
	"udp":       {"--dport": 1, "--sport": 1},
	"sctp":      {"--dport": 1, "--sport": 1},
	"addrtype":  {"--dst-type": 1, "--src-type": 1, "--limit-iface-in": 0, "--limit-iface-out": 0},
	"statistic": {"--mode": 1, "--probability": 1, "--every": 1, "--packet": 1},
	"recent": {"--name": 1, "--set": 0, "--rcheck": 0, "--update": 0, "--remove": 0, "--seconds": 1,
		"--reap": 0, "--hitcount": 1, "--rsource": 0, "--rdest": 0, "--mask": 1, "--rttl": 0},
	"mark":      {"--mark": 1},
	"conntrack": {"--ctstate": 1, "--ctorigdst": 1, "--ctorigdstport": 1, "--ctorigsrc": 1},
	"set":       {"--match-set": 2},
	"multiport": {"--dports": 1, "--sports": 1},
}

// builtinTargets lists the targets the fake accepts besides user chains,
// with their options and the tables they are valid in (nil: any table).
var builtinTargets = map[string]struct {
	opts   optionSpec
	tables []string
}{
	"ACCEPT":     {optionSpec{}, nil},
	"DROP":       {optionSpec{}, nil},
	"RETURN":     {optionSpec{}, nil},
	"REJECT":     {optionSpec{"--reject-with": 1}, []string{"filter", "mangle"}},
	"DNAT":       {optionSpec{"--to-destination": 1, "--random": 0, "--persistent": 0}, []string{"nat"}},
	"SNAT":       {optionSpec{"--to-source": 1, "--random": 0, "--random-fully": 0, "--persistent": 0}, []string{"nat"}},
	"MASQUERADE": {optionSpec{"--to-ports": 1, "--random": 0, "--random-fully": 0}, []string{"nat"}},
	"REDIRECT":   {optionSpec{"--to-ports": 1, "--random": 0}, []string{"nat"}},
	"MARK": {optionSpec{"--set-xmark": 1, "--set-mark": 1, "--or-mark": 1, "--and-mark": 1, "--xor-mark": 1},
		nil},
	"LOG": {optionSpec{"--log-prefix": 1, "--log-level": 1}, nil},
}

// baseOptions are the matches that need no module; iptables-save prints
// them first, in this order.
var baseOptions = []string{"-s", "-d", "-i", "-o", "-p"}

var baseAliases = map[string]string{
	"--source": "-s", "--src": "-s", "--destination": "-d", "--dst": "-d",
	"--in-interface": "-i", "--out-interface": "-o", "--protocol": "-p",
}

// parseRule parses and canonicalises a rule's arguments for table. chainExists
// says whether a user chain exists (for jump targets).
func parseRule(table string, args []string, chainExists func(string) bool) (*Rule, error) {
	r := &Rule{}
	module := "" // the module whose options follow ("" before any -m)
	inTarget := false
	neg := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "!" {
			if neg {
				return nil, fmt.Errorf("double negation")
			}
			neg = true
			continue
		}
		if alias, ok := baseAliases[a]; ok {
			a = alias
		}
		switch {
		case a == "-m" || a == "--match":
			if neg {
				return nil, fmt.Errorf("'!' before -m")
			}
			if inTarget {
				return nil, fmt.Errorf("-m after the target")
			}
			if i+1 >= len(args) {
				return nil, fmt.Errorf("-m needs a module name")
			}
			i++
			if _, ok := matchModules[args[i]]; !ok {
				return nil, fmt.Errorf("match module %q is not supported by the fake", args[i])
			}
			module = args[i]
			r.modules = append(r.modules, module)
		case a == "-j" || a == "--jump" || a == "-g" || a == "--goto":
			if neg || inTarget {
				return nil, fmt.Errorf("misplaced %s", a)
			}
			if i+1 >= len(args) {
				return nil, fmt.Errorf("%s needs a target", a)
			}
			i++
			r.target = args[i]
			r.isGoto = a == "-g" || a == "--goto"
			inTarget = true
			if bt, ok := builtinTargets[r.target]; ok {
				if r.isGoto {
					return nil, fmt.Errorf("-g needs a chain, not %s", r.target)
				}
				if bt.tables != nil && !contains(bt.tables, table) {
					return nil, fmt.Errorf("target %s is not valid in table %s", r.target, table)
				}
			} else if !chainExists(r.target) {
				return nil, fmt.Errorf("target %q: no such chain or target in table %s", r.target, table)
			}
		case !inTarget && contains(baseOptions, a):
			if i+1 >= len(args) {
				return nil, fmt.Errorf("%s needs an argument", a)
			}
			i++
			v, err := canonicalBase(a, args[i])
			if err != nil {
				return nil, err
			}
			for _, o := range r.base {
				if o.name == a {
					return nil, fmt.Errorf("%s given twice", a)
				}
			}
			r.base = append(r.base, option{name: a, neg: neg, args: []string{v}})
			neg = false
		case strings.HasPrefix(a, "--"):
			var spec optionSpec
			owner := module
			if inTarget {
				owner = r.target
				if bt, ok := builtinTargets[r.target]; ok {
					spec = bt.opts
				}
			} else if module != "" {
				spec = matchModules[module]
			}
			n, ok := spec[a]
			if !ok {
				if owner == "" {
					return nil, fmt.Errorf("unknown option %q", a)
				}
				return nil, fmt.Errorf("unknown option %q for %s", a, owner)
			}
			if i+n >= len(args) {
				return nil, fmt.Errorf("%s needs %d argument(s)", a, n)
			}
			o := option{module: owner, name: a, neg: neg, args: append([]string(nil), args[i+1:i+1+n]...), modIdx: len(r.modules) - 1}
			i += n
			neg = false
			if inTarget {
				if o.neg {
					return nil, fmt.Errorf("'!' before target option %s", a)
				}
				r.tgtOpts = append(r.tgtOpts, o)
			} else {
				r.matches = append(r.matches, o)
			}
		default:
			return nil, fmt.Errorf("unexpected argument %q", a)
		}
	}
	if neg {
		return nil, fmt.Errorf("'!' at the end of the rule")
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	r.Args = r.render()
	return r, nil
}

// check validates option values and combinations.
func (r *Rule) check() error {
	proto := ""
	for _, o := range r.base {
		if o.name == "-p" && !o.neg {
			proto = o.args[0]
		}
	}
	for _, m := range r.modules {
		if (m == "tcp" || m == "udp" || m == "sctp") && proto != m {
			return fmt.Errorf("%s match: only valid with -p %s", m, m)
		}
	}
	for i, o := range r.matches {
		switch o.name {
		case "--dport", "--sport":
			if _, _, err := parsePortRange(o.args[0]); err != nil {
				return err
			}
		case "--probability":
			p, err := strconv.ParseFloat(o.args[0], 64)
			if err != nil || p < 0 || p > 1 {
				return fmt.Errorf("bad --probability %q", o.args[0])
			}
			// The kernel keeps a 31-bit fraction; iptables-save prints it
			// with 11 decimals.
			r.matches[i].args = []string{fmt.Sprintf("%.11f", math.Round(p*0x80000000)/0x80000000)}
		case "--mark":
			v, m, err := parseMark(o.args[0])
			if err != nil {
				return err
			}
			r.matches[i].args = []string{formatMark(v, m)}
		case "--seconds", "--hitcount":
			if _, err := strconv.ParseUint(o.args[0], 10, 32); err != nil {
				return fmt.Errorf("bad %s %q", o.name, o.args[0])
			}
		}
	}
	r.canonicalRecent()
	// REJECT: iptables-save prints the default explicitly.
	if r.target == "REJECT" && optArg(r.tgtOpts, "--reject-with") == "" {
		r.tgtOpts = append(r.tgtOpts, option{module: "REJECT", name: "--reject-with", args: []string{"icmp-port-unreachable"}})
	}
	// MARK: canonicalise to --set-xmark value/mask as iptables-save prints it.
	if r.target == "MARK" {
		if len(r.tgtOpts) != 1 {
			return fmt.Errorf("MARK needs exactly one of --set-xmark, --set-mark, --or-mark, --and-mark, --xor-mark")
		}
		o := r.tgtOpts[0]
		v, m, err := parseMark(o.args[0])
		if err != nil {
			return err
		}
		if o.name != "--set-xmark" && o.name != "--set-mark" && m != 0xffffffff {
			return fmt.Errorf("%s takes no mask", o.name)
		}
		switch o.name {
		case "--or-mark":
			m = v
		case "--xor-mark":
			m = 0
		case "--and-mark":
			v, m = 0, ^v
		case "--set-mark":
			m = v | m // value/mask: clear mask bits, set value
		}
		r.tgtOpts[0] = option{module: "MARK", name: "--set-xmark", args: []string{fmt.Sprintf("%#x/%#x", v, m)}}
	}
	if r.target == "DNAT" {
		dst := optArg(r.tgtOpts, "--to-destination")
		if dst == "" {
			return fmt.Errorf("DNAT needs --to-destination")
		}
		if _, _, err := parseDNAT(dst); err != nil {
			return err
		}
	}
	return nil
}

// render builds the canonical argument list.
func (r *Rule) render() []string {
	var out []string
	for _, name := range baseOptions {
		for _, o := range r.base {
			if o.name == name {
				if o.neg {
					out = append(out, "!")
				}
				out = append(out, o.name, o.args[0])
			}
		}
	}
	for idx, mod := range r.modules {
		out = append(out, "-m", mod)
		for _, o := range r.matches {
			if o.modIdx != idx {
				continue
			}
			if o.neg {
				out = append(out, "!")
			}
			out = append(out, o.name)
			out = append(out, o.args...)
		}
	}
	if r.target != "" {
		if r.isGoto {
			out = append(out, "-g", r.target)
		} else {
			out = append(out, "-j", r.target)
		}
		for _, o := range r.tgtOpts {
			out = append(out, o.name)
			out = append(out, o.args...)
		}
	}
	return out
}

func canonicalBase(name, v string) (string, error) {
	switch name {
	case "-s", "-d":
		// The fake is IPv4 iptables: an IPv6 address fails as it does in
		// iptables (ip6tables is another program with other tables).
		if p, err := netip.ParsePrefix(v); err == nil && p.Addr().Is4() {
			return p.Masked().String(), nil
		}
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			return "", fmt.Errorf("host/network %q not found", v)
		}
		return netip.PrefixFrom(a, a.BitLen()).String(), nil
	case "-p":
		v = strings.ToLower(v)
		switch v {
		case "tcp", "udp", "sctp", "icmp", "all":
			return v, nil
		}
		return "", fmt.Errorf("unknown protocol %q", v)
	}
	return v, nil
}

func parsePortRange(s string) (lo, hi int, err error) {
	a, b, isRange := strings.Cut(s, ":")
	lo, err = strconv.Atoi(a)
	if err != nil || lo < 0 || lo > 65535 {
		return 0, 0, fmt.Errorf("invalid port %q", s)
	}
	hi = lo
	if isRange {
		hi, err = strconv.Atoi(b)
		if err != nil || hi < lo || hi > 65535 {
			return 0, 0, fmt.Errorf("invalid port range %q", s)
		}
	}
	return lo, hi, nil
}

// parseMark parses "value[/mask]"; a missing mask is 0xffffffff.
func parseMark(s string) (value, mask uint32, err error) {
	vs, ms, hasMask := strings.Cut(s, "/")
	v, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("bad mark %q", s)
	}
	m := uint64(0xffffffff)
	if hasMask {
		if m, err = strconv.ParseUint(ms, 0, 32); err != nil {
			return 0, 0, fmt.Errorf("bad mark mask %q", s)
		}
	}
	return uint32(v), uint32(m), nil
}

func formatMark(v, m uint32) string {
	if m == 0xffffffff {
		return fmt.Sprintf("%#x", v)
	}
	return fmt.Sprintf("%#x/%#x", v, m)
}

// parseDNAT parses a --to-destination value: "ip" or "ip:port".
func parseDNAT(s string) (netip.Addr, int, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().Is4() {
		return ap.Addr(), int(ap.Port()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, 0, fmt.Errorf("bad --to-destination %q", s)
	}
	return a, 0, nil
}

func optArg(opts []option, name string) string {
	for _, o := range opts {
		if o.name == name && len(o.args) > 0 {
			return o.args[0]
		}
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// recentOrder is the order in which iptables-save prints -m recent options.
var recentOrder = []string{"--set", "--rcheck", "--update", "--remove", "--seconds", "--reap", "--hitcount", "--rttl", "--name", "--mask", "--rsource", "--rdest"}

// canonicalRecent puts each -m recent's options in iptables-save order and
// adds the defaults it prints (--name DEFAULT, --mask 255.255.255.255,
// --rsource).
func (r *Rule) canonicalRecent() {
	for idx, mod := range r.modules {
		if mod != "recent" {
			continue
		}
		var mine, rest []option
		for _, o := range r.matches {
			if o.modIdx == idx {
				mine = append(mine, o)
			} else {
				rest = append(rest, o)
			}
		}
		has := func(name string) bool {
			for _, o := range mine {
				if o.name == name {
					return true
				}
			}
			return false
		}
		if !has("--name") {
			mine = append(mine, option{module: mod, name: "--name", args: []string{"DEFAULT"}, modIdx: idx})
		}
		if !has("--mask") {
			mine = append(mine, option{module: mod, name: "--mask", args: []string{"255.255.255.255"}, modIdx: idx})
		}
		if !has("--rsource") && !has("--rdest") {
			mine = append(mine, option{module: mod, name: "--rsource", modIdx: idx})
		}
		sort.SliceStable(mine, func(i, j int) bool {
			return indexOf(recentOrder, mine[i].name) < indexOf(recentOrder, mine[j].name)
		})
		r.matches = append(rest, mine...)
	}
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return len(list)
}
