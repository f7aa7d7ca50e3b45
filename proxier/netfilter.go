package proxier

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// ChainPrefix starts the name of every iptables chain svcproxy creates, so
// cleanup can find them all and touch nothing else.
const ChainPrefix = "SVCP-"

// Chains shared by the modes that use iptables.
const (
	// MarkMasqChain marks a packet for masquerading.
	MarkMasqChain = "SVCP-MARK-MASQ"
	// PostroutingChain masquerades marked packets.
	PostroutingChain = "SVCP-POSTROUTING"
)

// Restorer applies iptables-restore payloads and reads iptables-save output.
// The real one runs the iptables binaries; tests use a fake.
type Restorer interface {
	// Restore applies payload (one or more "*table ... COMMIT" blocks) with
	// --noflush, all or nothing.
	Restore(ctx context.Context, payload []byte) error
	// Save returns iptables-save output for table.
	Save(ctx context.Context, table string) ([]byte, error)
}

// ExecRestorer is the Restorer that runs iptables-restore and iptables-save
// (whatever backend the system's iptables is: nft or legacy).
type ExecRestorer struct{}

// Restore runs iptables-restore --noflush with payload on stdin.
func (ExecRestorer) Restore(ctx context.Context, payload []byte) error {
	cmd := exec.CommandContext(ctx, "iptables-restore", "-w", "5", "--noflush")
	cmd.Stdin = bytes.NewReader(payload)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("iptables-restore: %w: %s%s", err, strings.TrimSpace(stderr.String()), restoreErrorContext(payload, stderr.String()))
	}
	return nil
}

// restoreErrorContext quotes the payload line an iptables-restore error
// names ("line N failed", or the nft backend's "line N: ..." and "Error
// occurred at line: N"), so a log shows what was wrong.
func restoreErrorContext(payload []byte, stderr string) string {
	i, skip := strings.Index(stderr, "line "), 5
	if j := strings.Index(stderr, "line: "); j >= 0 && (i < 0 || j < i) {
		i, skip = j, 6
	}
	if i < 0 {
		return ""
	}
	fields := strings.Fields(stderr[i+skip:])
	if len(fields) == 0 {
		return ""
	}
	n, err := strconv.Atoi(strings.TrimRight(fields[0], ":"))
	if err != nil || n < 1 {
		return ""
	}
	lines := strings.Split(string(payload), "\n")
	if n > len(lines) {
		return ""
	}
	return fmt.Sprintf(" (line %d: %q)", n, lines[n-1])
}

// Save runs iptables-save -t table with counters.
func (ExecRestorer) Save(ctx context.Context, table string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "iptables-save", "-c", "-t", table).Output()
	if err != nil {
		return nil, fmt.Errorf("iptables-save -t %s: %w", table, err)
	}
	return out, nil
}

// Jump is a rule in a built-in chain that sends packets to one of ours.
type Jump struct {
	Table, Chain, Target, Comment string
	// Extra matches placed before the jump, e.g. "-m", "conntrack", ...
	Extra []string
}

func (j Jump) spec() []string {
	spec := append([]string{"-m", "comment", "--comment", j.Comment}, j.Extra...)
	return append(spec, "-j", j.Target)
}

// EnsureJumps creates the target chains if missing and inserts each jump at
// the head of its built-in chain unless it is already there.
func EnsureJumps(jumps []Jump) error {
	ipt, err := iptables.New()
	if err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	for _, j := range jumps {
		if ok, err := ipt.ChainExists(j.Table, j.Target); err != nil {
			return fmt.Errorf("check chain %s/%s: %w", j.Table, j.Target, err)
		} else if !ok {
			if err := ipt.NewChain(j.Table, j.Target); err != nil {
				return fmt.Errorf("create chain %s/%s: %w", j.Table, j.Target, err)
			}
		}
		if err := ipt.InsertUnique(j.Table, j.Chain, 1, j.spec()...); err != nil {
			return fmt.Errorf("insert jump %s/%s -> %s: %w", j.Table, j.Chain, j.Target, err)
		}
	}
	return nil
}

// RemoveOurs deletes every rule in the built-in chains that jumps to a
// chain named with ChainPrefix, then flushes and deletes those chains, in
// the tables given. Nothing else is touched.
func RemoveOurs(ctx context.Context, r Restorer, tables ...string) error {
	var errs []error
	for _, table := range tables {
		saved, err := r.Save(ctx, table)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var buf RuleBuffer
		var chains []string
		buf.Table(table)
		for _, line := range strings.Split(string(saved), "\n") {
			line = stripCounters(line)
			switch {
			case strings.HasPrefix(line, ":"+ChainPrefix):
				name := strings.Fields(line[1:])[0]
				chains = append(chains, name)
				buf.Chain(name) // declaring flushes it
			case strings.HasPrefix(line, "-A ") && strings.Contains(line, "-j "+ChainPrefix):
				fields := strings.Fields(line)
				if len(fields) > 1 && !strings.HasPrefix(fields[1], ChainPrefix) {
					buf.WriteString("-D" + line[2:] + "\n")
				}
			}
		}
		for _, c := range chains {
			buf.WriteString("-X " + c + "\n")
		}
		buf.Commit()
		if len(chains) == 0 {
			continue
		}
		if err := r.Restore(ctx, buf.Bytes()); err != nil {
			errs = append(errs, fmt.Errorf("remove svcproxy chains from %s: %w", table, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("cleanup: %v", errs)
	}
	return nil
}

// stripCounters drops the "[pkts:bytes] " prefix of iptables-save -c.
func stripCounters(line string) string {
	if strings.HasPrefix(line, "[") {
		if i := strings.Index(line, "] "); i > 0 {
			return line[i+2:]
		}
	}
	return line
}

// RuleBuffer builds an iptables-restore payload. Every argument is quoted
// so that names from the cluster cannot change the rule's meaning.
type RuleBuffer struct {
	bytes.Buffer
	lines int
}

// Table starts a "*table" block.
func (b *RuleBuffer) Table(name string) { b.WriteString("*" + name + "\n") }

// Chain declares (and so flushes) a chain.
func (b *RuleBuffer) Chain(name string) { b.WriteString(":" + name + " - [0:0]\n") }

// Commit ends the current table block.
func (b *RuleBuffer) Commit() { b.WriteString("COMMIT\n") }

// Rule writes one rule line: "-A chain args...". Arguments are written as
// they are; use Comment for text that comes from the cluster.
func (b *RuleBuffer) Rule(op, chain string, args ...string) {
	b.WriteString(op)
	b.WriteByte(' ')
	b.WriteString(chain)
	for _, a := range args {
		b.WriteByte(' ')
		b.WriteString(a)
	}
	b.WriteByte('\n')
	b.lines++
}

// Rules returns how many rule lines were written.
func (b *RuleBuffer) Rules() int { return b.lines }

// Comment returns the "-m comment --comment TEXT" arguments with TEXT quoted
// for iptables-restore: only characters safe in a quoted token survive.
func Comment(text string) []string {
	return []string{"-m", "comment", "--comment", QuoteComment(text)}
}

// QuoteComment makes text safe as one iptables-restore token: it keeps
// letters, digits and a few punctuation marks, replaces anything else with
// '_', truncates to the 256-byte comment limit and wraps it in quotes.
func QuoteComment(text string) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for i, r := range text {
		if i >= 250 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9',
			strings.ContainsRune(" ./:-_=,", r):
			sb.WriteRune(r)
		default:
			sb.WriteByte('_')
		}
	}
	sb.WriteByte('"')
	return sb.String()
}

// MasqueradeRules writes the shared masquerade chains into a nat block:
// MarkMasqChain sets the mark bit, PostroutingChain masquerades packets that
// carry it (clearing it first, so a re-routed packet is not SNATed twice).
func MasqueradeRules(b *RuleBuffer, markBit int) {
	mark := fmt.Sprintf("%#x", 1<<markBit)
	b.Rule("-A", MarkMasqChain, "-j", "MARK", "--or-mark", mark)
	b.Rule("-A", PostroutingChain, "-m", "mark", "!", "--mark", mark+"/"+mark, "-j", "RETURN")
	b.Rule("-A", PostroutingChain, "-j", "MARK", "--xor-mark", mark)
	b.Rule("-A", PostroutingChain, append(Comment("svcproxy service traffic requiring SNAT"), "-j", "MASQUERADE", "--random-fully")...)
}
