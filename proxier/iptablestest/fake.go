// Package iptablestest holds test doubles for the iptables-based modes: a
// stateful fake of iptables-restore / iptables-save that keeps tables,
// chains and rules in memory, and a packet tracer that walks a packet
// through the fake's rules and reports where it lands.
package iptablestest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/svcproxy/svcproxy/proxier"
)

// builtinChains lists each table's built-in chains in iptables-save order.
var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"raw":    {"PREROUTING", "OUTPUT"},
}

// maxChainName is iptables' limit on chain name length.
const maxChainName = 28

// Fake is a stateful in-memory iptables. Restore applies iptables-restore
// --noflush payloads all or nothing; Save prints iptables-save output. The
// built-in chains of filter, nat, mangle and raw exist from the start, with
// policy ACCEPT. It is safe for concurrent use.
//
// Rules are kept in the canonical form iptables-save 1.8.9 prints, and Save
// output was checked byte for byte against iptables-nft-save and
// iptables-legacy-save after replaying the same payloads in a throwaway
// network namespace. Unlike the real iptables-restore, which commits each
// table at its COMMIT, a failing call changes no table at all.
type Fake struct {
	// SaveCounters makes Save print "[0:0]" rule counters, as
	// iptables-save -c does (proxier.ExecRestorer saves with -c).
	SaveCounters bool
	// CommitPerTable makes Restore commit each table at its COMMIT, as the
	// real iptables-restore (nft and legacy) does: a failure in a later
	// table keeps the earlier ones. By default a call is all or nothing.
	CommitPerTable bool

	mu       sync.Mutex
	tables   map[string]*table
	failNext error
	// failCommit makes the next COMMIT of failCommitTable fail.
	failCommit      error
	failCommitTable string
	failJump        error
	payloads        [][]byte
	lines           []int
	jumps           []proxier.Jump
}

var _ proxier.Restorer = (*Fake)(nil)

type table struct {
	chains map[string]*chain
}

type chain struct {
	builtin bool
	policy  string
	rules   []*Rule
}

// New returns a fake with empty built-in chains.
func New() *Fake {
	f := &Fake{tables: map[string]*table{}}
	for name, chains := range builtinChains {
		t := &table{chains: map[string]*chain{}}
		for _, c := range chains {
			t.chains[c] = &chain{builtin: true, policy: "ACCEPT"}
		}
		f.tables[name] = t
	}
	return f
}

// clone deep-copies the tables (rules are immutable and shared).
func cloneTables(in map[string]*table) map[string]*table {
	out := make(map[string]*table, len(in))
	for name, t := range in {
		nt := &table{chains: make(map[string]*chain, len(t.chains))}
		for cn, c := range t.chains {
			nt.chains[cn] = &chain{builtin: c.builtin, policy: c.policy, rules: slices.Clone(c.rules)}
		}
		out[name] = nt
	}
	return out
}

// FailNextRestore makes the next Restore call return err (wrapped) without
// changing anything; the call is still counted.
func (f *Fake) FailNextRestore(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = err
}

// FailNextCommit makes the next COMMIT of table fail with err (in a later
// Restore call, once it gets there): with CommitPerTable, the tables
// committed before it stay changed.
func (f *Fake) FailNextCommit(table string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failCommit, f.failCommitTable = err, table
}

// FailNextEnsureJumps makes the next EnsureJumps call return err.
func (f *Fake) FailNextEnsureJumps(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failJump = err
}

// RestoreCalls returns how many times Restore was called (failed calls
// included).
func (f *Fake) RestoreCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.payloads)
}

// LinesPerCall returns, per Restore call, the number of non-empty lines of
// its payload.
func (f *Fake) LinesPerCall() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.lines)
}

// Payloads returns every payload given to Restore, in order.
func (f *Fake) Payloads() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, len(f.payloads))
	for i, p := range f.payloads {
		out[i] = string(p)
	}
	return out
}

// LastPayload returns the payload of the last Restore call, or "".
func (f *Fake) LastPayload() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.payloads) == 0 {
		return ""
	}
	return string(f.payloads[len(f.payloads)-1])
}

// Restore applies payload as iptables-restore --noflush does: "*table" opens
// a table, ":CHAIN POLICY [p:b]" creates a user chain or flushes an existing
// one (for a built-in chain it only sets the policy),
// then -A, -I CHAIN [N], -D CHAIN (rulespec or number), -N, -F, -X, and
// "COMMIT" closes the table. The whole call is all or nothing (unless
// CommitPerTable): on error the state is as it was, and the error names the
// failing line.
func (f *Fake) Restore(_ context.Context, payload []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.payloads = append(f.payloads, bytes.Clone(payload))
	f.lines = append(f.lines, countLines(payload))
	if err := f.failNext; err != nil {
		f.failNext = nil
		return fmt.Errorf("fake iptables-restore: %w", err)
	}
	return f.apply(payload)
}

// Load applies payload like Restore but is not counted: use it to set up a
// starting state (e.g. foreign rules the proxier must leave alone).
func (f *Fake) Load(payload string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.apply([]byte(payload))
}

func countLines(payload []byte) int {
	n := 0
	for _, l := range strings.Split(string(payload), "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n
}

// apply runs a payload against a copy of the state and keeps the copy only
// if every line succeeded. Callers hold f.mu.
func (f *Fake) apply(payload []byte) error {
	work := cloneTables(f.tables)
	var cur *table
	curName := ""
	for i, raw := range strings.Split(string(payload), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		lineErr := func(err error) error {
			return fmt.Errorf("fake iptables-restore: line %d failed: %q: %w", i+1, line, err)
		}
		switch {
		case strings.HasPrefix(line, "*"):
			if cur != nil {
				return lineErr(fmt.Errorf("table %s not committed", curName))
			}
			curName = line[1:]
			if cur = work[curName]; cur == nil {
				return lineErr(fmt.Errorf("no table %q", curName))
			}
		case line == "COMMIT":
			if cur == nil {
				return lineErr(errors.New("COMMIT outside a table"))
			}
			if err := cur.checkHooks(curName); err != nil {
				return lineErr(err)
			}
			if f.failCommit != nil && f.failCommitTable == curName {
				err := f.failCommit
				f.failCommit = nil
				return lineErr(err)
			}
			if f.CommitPerTable {
				f.tables[curName] = cloneTables(map[string]*table{curName: cur})[curName]
			}
			cur, curName = nil, ""
		case cur == nil:
			return lineErr(errors.New("line outside a table"))
		case strings.HasPrefix(line, ":"):
			if err := cur.declare(line[1:]); err != nil {
				return lineErr(err)
			}
		default:
			args, err := SplitLine(line)
			if err != nil {
				return lineErr(err)
			}
			if err := cur.command(curName, args); err != nil {
				return lineErr(err)
			}
		}
	}
	if cur != nil {
		return fmt.Errorf("fake iptables-restore: table %s: COMMIT expected at end of input", curName)
	}
	f.tables = work
	return nil
}

// declare handles ":CHAIN POLICY [p:b]".
func (t *table) declare(spec string) error {
	fields := strings.Fields(spec)
	if len(fields) < 2 {
		return errors.New("chain declaration needs a name and a policy")
	}
	name, policy := fields[0], fields[1]
	if len(fields) > 3 || (len(fields) == 3 && !isCounters(fields[2])) {
		return errors.New("bad chain declaration")
	}
	if c, ok := t.chains[name]; ok && c.builtin {
		if policy != "ACCEPT" && policy != "DROP" {
			return fmt.Errorf("bad policy %q for built-in chain %s", policy, name)
		}
		c.policy = policy // with --noflush a built-in chain keeps its rules
		return nil
	}
	if policy != "-" {
		return fmt.Errorf("user chain %s cannot have policy %q", name, policy)
	}
	if err := validChainName(name); err != nil {
		return err
	}
	t.chains[name] = &chain{policy: "-"} // creates, or flushes an existing chain
	return nil
}

func isCounters(s string) bool {
	if !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") {
		return false
	}
	a, b, ok := strings.Cut(s[1:len(s)-1], ":")
	if !ok {
		return false
	}
	_, err1 := strconv.ParseUint(a, 10, 64)
	_, err2 := strconv.ParseUint(b, 10, 64)
	return err1 == nil && err2 == nil
}

func validChainName(name string) error {
	switch {
	case name == "" || strings.HasPrefix(name, "-") || strings.HasPrefix(name, "!"):
		return fmt.Errorf("invalid chain name %q", name)
	case len(name) > maxChainName:
		return fmt.Errorf("chain name %q longer than %d characters", name, maxChainName)
	case builtinTargets[name].opts != nil:
		return fmt.Errorf("chain name %q is a target name", name)
	}
	return nil
}

// command applies one -A/-I/-D/-N/-F/-X line.
func (t *table) command(tableName string, args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("%q needs a chain", strings.Join(args, " "))
	}
	op, name, rest := args[0], args[1], args[2:]
	if op == "-N" {
		if _, ok := t.chains[name]; ok {
			return fmt.Errorf("chain %s already exists", name)
		}
		if err := validChainName(name); err != nil {
			return err
		}
		t.chains[name] = &chain{policy: "-"}
		return nil
	}
	c, ok := t.chains[name]
	if !ok {
		return fmt.Errorf("no chain %s in table %s", name, tableName)
	}
	exists := func(n string) bool { _, ok := t.chains[n]; return ok }
	switch op {
	case "-A", "--append":
		r, err := parseRule(tableName, rest, exists)
		if err != nil {
			return err
		}
		c.rules = append(c.rules, r)
	case "-I", "--insert":
		pos := 1
		if len(rest) > 0 {
			if n, err := strconv.Atoi(rest[0]); err == nil {
				pos, rest = n, rest[1:]
			}
		}
		if pos < 1 || pos > len(c.rules)+1 {
			return fmt.Errorf("index of insertion %d too big for chain %s (%d rules)", pos, name, len(c.rules))
		}
		r, err := parseRule(tableName, rest, exists)
		if err != nil {
			return err
		}
		c.rules = slices.Insert(c.rules, pos-1, r)
	case "-D", "--delete":
		if len(rest) == 1 {
			if n, err := strconv.Atoi(rest[0]); err == nil {
				if n < 1 || n > len(c.rules) {
					return fmt.Errorf("index of deletion %d too big for chain %s", n, name)
				}
				c.rules = slices.Delete(c.rules, n-1, n)
				return nil
			}
		}
		r, err := parseRule(tableName, rest, exists)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(c.rules, func(x *Rule) bool { return slices.Equal(x.Args, r.Args) })
		if i < 0 {
			return fmt.Errorf("bad rule (does a matching rule exist in chain %s?)", name)
		}
		c.rules = slices.Delete(c.rules, i, i+1)
	case "-F", "--flush":
		c.rules = nil
	case "-X", "--delete-chain":
		if c.builtin {
			return fmt.Errorf("cannot delete built-in chain %s", name)
		}
		if len(c.rules) > 0 {
			return fmt.Errorf("chain %s is not empty", name)
		}
		for other, oc := range t.chains {
			for _, r := range oc.rules {
				if r.target == name {
					return fmt.Errorf("chain %s is still referenced from %s", name, other)
				}
			}
		}
		delete(t.chains, name)
	default:
		return fmt.Errorf("unsupported command %q", op)
	}
	return nil
}

// Save returns iptables-save output for table: built-in chains first, then
// user chains sorted by name, then every chain's rules.
func (f *Fake) Save(_ context.Context, tableName string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[tableName]
	if t == nil {
		return nil, fmt.Errorf("fake iptables-save: no table %q", tableName)
	}
	var b strings.Builder
	b.WriteString("# Generated by svcproxy iptablestest.Fake\n*" + tableName + "\n")
	names := t.chainOrder(tableName)
	for _, n := range names {
		fmt.Fprintf(&b, ":%s %s [0:0]\n", n, t.chains[n].policy)
	}
	for _, n := range names {
		for _, r := range t.chains[n].rules {
			if f.SaveCounters {
				b.WriteString("[0:0] ")
			}
			b.WriteString("-A " + n + " " + r.String() + "\n")
		}
	}
	b.WriteString("COMMIT\n# Completed\n")
	return []byte(b.String()), nil
}

func (t *table) chainOrder(tableName string) []string {
	names := slices.Clone(builtinChains[tableName])
	var user []string
	for n, c := range t.chains {
		if !c.builtin {
			user = append(user, n)
		}
	}
	sort.Strings(user)
	return append(names, user...)
}

// Chains returns the chain names of table (built-in first, then sorted).
func (f *Fake) Chains(tableName string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[tableName]
	if t == nil {
		return nil
	}
	return t.chainOrder(tableName)
}

// Rules returns the rules of a chain, as iptables-save prints them after
// "-A CHAIN ", and whether the chain exists.
func (f *Fake) Rules(tableName, chainName string) ([]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[tableName]
	if t == nil {
		return nil, false
	}
	c, ok := t.chains[chainName]
	if !ok {
		return nil, false
	}
	out := make([]string, len(c.rules))
	for i, r := range c.rules {
		out[i] = r.String()
	}
	return out, true
}

// chainRules returns the parsed rules and policy of a chain (for the tracer).
func (f *Fake) chainRules(tableName, chainName string) (rules []*Rule, builtin bool, policy string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[tableName]
	if t == nil {
		return nil, false, "", false
	}
	c, ok := t.chains[chainName]
	if !ok {
		return nil, false, "", false
	}
	return c.rules, c.builtin, c.policy, true
}

// EnsureJumps is a fake of proxier.EnsureJumps: it creates each target chain
// if missing and inserts the jump at the head of its built-in chain unless
// an identical rule is already there. It records the jumps it was given.
func (f *Fake) EnsureJumps(jumps []proxier.Jump) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failJump; err != nil {
		f.failJump = nil
		return fmt.Errorf("fake EnsureJumps: %w", err)
	}
	work := cloneTables(f.tables)
	for _, j := range jumps {
		t := work[j.Table]
		if t == nil {
			return fmt.Errorf("fake EnsureJumps: no table %q", j.Table)
		}
		c, ok := t.chains[j.Chain]
		if !ok {
			return fmt.Errorf("fake EnsureJumps: no chain %s/%s", j.Table, j.Chain)
		}
		if _, ok := t.chains[j.Target]; !ok {
			if err := validChainName(j.Target); err != nil {
				return fmt.Errorf("fake EnsureJumps: %w", err)
			}
			t.chains[j.Target] = &chain{policy: "-"}
		}
		args := append([]string{"-m", "comment", "--comment", j.Comment}, j.Extra...)
		args = append(args, "-j", j.Target)
		r, err := parseRule(j.Table, args, func(n string) bool { _, ok := t.chains[n]; return ok })
		if err != nil {
			return fmt.Errorf("fake EnsureJumps: jump %s/%s -> %s: %w", j.Table, j.Chain, j.Target, err)
		}
		if !slices.ContainsFunc(c.rules, func(x *Rule) bool { return slices.Equal(x.Args, r.Args) }) {
			c.rules = slices.Insert(c.rules, 0, r)
		}
		if err := t.checkHooks(j.Table); err != nil {
			return fmt.Errorf("fake EnsureJumps: jump %s/%s -> %s: %w", j.Table, j.Chain, j.Target, err)
		}
	}
	f.tables = work
	f.jumps = append(f.jumps, jumps...)
	return nil
}

// Jumps returns every jump given to EnsureJumps, in order.
func (f *Fake) Jumps() []proxier.Jump {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.jumps)
}

// SplitLine splits an iptables-restore line into arguments the way
// iptables-restore does: on blanks, with "double quotes" grouping words and
// a backslash escaping the next character inside quotes.
func SplitLine(line string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (c == ' ' || c == '\t'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if inQuote {
		return nil, errors.New("unterminated quote")
	}
	if have {
		out = append(out, cur.String())
	}
	return out, nil
}

// renderArgs joins canonical arguments as iptables-save prints them:
// comments are quoted unless they are one plain word, as xtables does.
func renderArgs(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		plain := a != "" && !strings.ContainsAny(a, " \t\"'\\")
		if i > 0 && args[i-1] == "--comment" {
			plain = a != "" && strings.Trim(a, "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") == ""
		}
		if plain {
			b.WriteString(a)
			continue
		}
		b.WriteByte('"')
		for j := 0; j < len(a); j++ {
			if strings.IndexByte("\"\\'", a[j]) >= 0 {
				b.WriteByte('\\')
			}
			b.WriteByte(a[j])
		}
		b.WriteByte('"')
	}
	return b.String()
}

// hookTargets lists, per NAT target, the built-in chains it may be reached
// from; the kernel refuses a table where it is reachable from another.
var hookTargets = map[string][]string{
	"DNAT":       {"PREROUTING", "OUTPUT"},
	"REDIRECT":   {"PREROUTING", "OUTPUT"},
	"SNAT":       {"POSTROUTING", "INPUT"},
	"MASQUERADE": {"POSTROUTING"},
}

// checkHooks reports a NAT target reachable from a built-in chain where the
// kernel does not allow it (e.g. DNAT from POSTROUTING), as the kernel does
// when the table is committed.
func (t *table) checkHooks(tableName string) error {
	for _, hook := range builtinChains[tableName] {
		seen := map[string]bool{}
		var visit func(name string) error
		visit = func(name string) error {
			if seen[name] {
				return nil
			}
			seen[name] = true
			c := t.chains[name]
			if c == nil {
				return nil
			}
			for _, r := range c.rules {
				if allowed, ok := hookTargets[r.target]; ok && !contains(allowed, hook) {
					return fmt.Errorf("target %s in chain %s is reachable from %s (invalid argument)", r.target, name, hook)
				}
				if _, builtin := builtinTargets[r.target]; !builtin && r.target != "" {
					if err := visit(r.target); err != nil {
						return err
					}
				}
			}
			return nil
		}
		if err := visit(hook); err != nil {
			return err
		}
	}
	return nil
}
