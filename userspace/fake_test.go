package userspace

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// fakeRestorer is a stateful proxier.Restorer: it keeps the tables as
// chains of rule lines, applies a payload all or nothing (declaring a
// chain flushes it; -A, -I, -D and -X work as in iptables-restore
// --noflush) and renders iptables-save -c output with made-up counters.
type fakeRestorer struct {
	mu sync.Mutex
	// tables maps table -> chain -> rules ("-A CHAIN ..." lines).
	tables map[string]map[string][]string
	// order keeps chain creation order per table.
	order map[string][]string
	// payloads records every payload Restore was given, applied or not.
	payloads []string
	// failRestore makes the next Restore fail (and apply nothing).
	failRestore error
	// counters is the "[pkts:bytes]" prefix Save puts on every rule.
	counters string
}

func newFakeRestorer() *fakeRestorer {
	f := &fakeRestorer{tables: map[string]map[string][]string{}, order: map[string][]string{}, counters: "[0:0]"}
	for table, chains := range map[string][]string{
		"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
		"filter": {"INPUT", "FORWARD", "OUTPUT"},
	} {
		f.tables[table] = map[string][]string{}
		for _, c := range chains {
			f.tables[table][c] = nil
			f.order[table] = append(f.order[table], c)
		}
	}
	return f
}

func (f *fakeRestorer) Restore(_ context.Context, payload []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.payloads = append(f.payloads, string(payload))
	if err := f.failRestore; err != nil {
		f.failRestore = nil
		return err
	}
	// Work on a copy: all or nothing.
	tables := map[string]map[string][]string{}
	order := map[string][]string{}
	for t, chains := range f.tables {
		tables[t] = map[string][]string{}
		for c, rules := range chains {
			tables[t][c] = slices.Clone(rules)
		}
		order[t] = slices.Clone(f.order[t])
	}
	var table string
	for n, line := range strings.Split(string(payload), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		bad := func(why string) error {
			return fmt.Errorf("fake iptables-restore: line %d failed: %s: %q", n+1, why, line)
		}
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			if tables[table] == nil {
				return bad("no such table")
			}
		case line == "COMMIT":
			table = ""
		case strings.HasPrefix(line, ":"):
			name := fields[0][1:]
			if _, ok := tables[table][name]; !ok {
				order[table] = append(order[table], name)
			}
			tables[table][name] = nil
		case fields[0] == "-A" || fields[0] == "-I" || fields[0] == "-D":
			if len(fields) < 2 {
				return bad("no chain")
			}
			chain := fields[1]
			rules, ok := tables[table][chain]
			if !ok {
				return bad("no chain " + chain)
			}
			rest := fields[2:]
			if fields[0] == "-I" && len(rest) > 0 && rest[0] == "1" {
				rest = rest[1:]
			}
			if target := jumpTarget(rest); target != "" && !isBuiltinTarget(target) {
				if _, ok := tables[table][target]; !ok {
					return bad("no chain " + target)
				}
			}
			rule := "-A " + chain + " " + strings.Join(rest, " ")
			switch fields[0] {
			case "-A":
				tables[table][chain] = append(rules, rule)
			case "-I":
				tables[table][chain] = append([]string{rule}, rules...)
			case "-D":
				i := slices.Index(rules, rule)
				if i < 0 {
					return bad("no such rule")
				}
				tables[table][chain] = slices.Delete(rules, i, i+1)
			}
		case fields[0] == "-X":
			name := fields[1]
			for c, rules := range tables[table] {
				for _, r := range rules {
					if jumpTarget(strings.Fields(r)) == name {
						return bad("chain " + name + " is referenced from " + c)
					}
				}
			}
			delete(tables[table], name)
			order[table] = slices.DeleteFunc(order[table], func(c string) bool { return c == name })
		default:
			return bad("unknown command")
		}
	}
	f.tables, f.order = tables, order
	return nil
}

func jumpTarget(args []string) string {
	for i, a := range args {
		if a == "-j" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

func isBuiltinTarget(t string) bool {
	switch t {
	case "REDIRECT", "REJECT", "DROP", "RETURN", "ACCEPT", "DNAT", "SNAT", "MASQUERADE", "MARK":
		return true
	}
	return false
}

func (f *fakeRestorer) Save(_ context.Context, table string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	chains, ok := f.tables[table]
	if !ok {
		return nil, errors.New("fake iptables-save: no such table " + table)
	}
	var b strings.Builder
	b.WriteString("*" + table + "\n")
	for _, c := range f.order[table] {
		policy := "-"
		if strings.ToUpper(c) == c && !strings.HasPrefix(c, "SVCP-") {
			policy = "ACCEPT"
		}
		fmt.Fprintf(&b, ":%s %s [0:0]\n", c, policy)
	}
	for _, c := range f.order[table] {
		for _, r := range chains[c] {
			b.WriteString(f.counters + " " + r + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String()), nil
}

// rules returns the rules of a chain.
func (f *fakeRestorer) rules(table, chain string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.tables[table][chain])
}

// chains returns the chain names of a table.
func (f *fakeRestorer) chains(table string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.order[table])
}

// restores returns how many payloads Restore was given.
func (f *fakeRestorer) restores() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.payloads)
}
