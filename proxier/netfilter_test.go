package proxier_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/iptablestest"
)

func TestQuoteCommentCannotBreakOut(t *testing.T) {
	inputs := []string{
		"ns/name:port",
		"",
		`" -j DROP`,
		`\" -j DROP #`,
		`\`,
		"a\nCOMMIT\n*nat\n-A PREROUTING -j DROP",
		"tab\there",
		"'single' `back` $(cmd) ;&|",
		"ünïcødé ☃ 名前",
		strings.Repeat(`"x`, 400),
	}
	for _, in := range inputs {
		args := proxier.Comment(in)
		var b proxier.RuleBuffer
		b.Table("filter")
		b.Chain("T")
		b.Rule("-A", "T", append(args, "-j", "ACCEPT")...)
		b.Commit()
		f := iptablestest.New()
		if err := f.Restore(context.Background(), b.Bytes()); err != nil {
			t.Errorf("comment from %q: restore failed: %v\n%s", in, err, b.String())
			continue
		}
		rules, _ := f.Rules("filter", "T")
		if len(rules) != 1 {
			t.Errorf("comment from %q: %d rules, want 1: %v", in, len(rules), rules)
			continue
		}
		// The rule is exactly a comment and the target: parse it back.
		tokens, err := iptablestest.SplitLine(rules[0])
		if err != nil || len(tokens) != 6 || tokens[0] != "-m" || tokens[2] != "--comment" || tokens[4] != "-j" || tokens[5] != "ACCEPT" {
			t.Errorf("comment from %q: rule %q (%v) is not a comment then ACCEPT", in, rules[0], err)
			continue
		}
		if len(tokens[3]) > 256 || strings.ContainsAny(tokens[3], "\"\\\n\t") {
			t.Errorf("comment from %q: unsafe comment %q", in, tokens[3])
		}
		for _, other := range []string{"filter", "nat"} {
			for _, c := range f.Chains(other) {
				if r, _ := f.Rules(other, c); len(r) > 0 && c != "T" {
					t.Errorf("comment from %q wrote a rule into %s/%s: %v", in, other, c, r)
				}
			}
		}
	}
	if got := proxier.QuoteComment("ns/svc:http"); got != `"ns/svc:http"` {
		t.Errorf("a plain name changed: %s", got)
	}
}

// ours is what svcproxy adds on top: chains, jumps from built-in chains and
// from a foreign chain, and a jump between our own chains.
const ours = `*nat
:SVCP-SERVICES - [0:0]
:SVCP-SVC-X - [0:0]
:SVCP-POSTROUTING - [0:0]
-I PREROUTING 1 -m comment --comment "svcproxy service portals" -j SVCP-SERVICES
-A OUTPUT -m comment --comment "svcproxy service portals" -j SVCP-SERVICES
-A POSTROUTING -m comment --comment "svcproxy postrouting rules" -j SVCP-POSTROUTING
-A KUBE-SERVICES -j SVCP-SERVICES
-A SVCP-SERVICES -d 172.30.0.1/32 -p tcp -m tcp --dport 80 -j SVCP-SVC-X
-A SVCP-SVC-X -p tcp -m tcp -j DNAT --to-destination 10.0.1.1:80
-A SVCP-POSTROUTING -j MASQUERADE --random-fully
COMMIT
*filter
:SVCP-FIREWALL - [0:0]
-A INPUT -m comment --comment "svcproxy firewall" -j SVCP-FIREWALL
-A SVCP-FIREWALL -m mark --mark 0x8000/0x8000 -j DROP
COMMIT
`

func saveAll(t *testing.T, f *iptablestest.Fake) string {
	t.Helper()
	var b strings.Builder
	for _, table := range []string{"filter", "nat"} {
		out, err := f.Save(context.Background(), table)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(out)
	}
	return b.String()
}

func TestRemoveOurs(t *testing.T) {
	for _, counters := range []bool{false, true} {
		f := iptablestest.New()
		f.SaveCounters = counters // ExecRestorer saves with -c
		if err := f.Load(iptablestest.ForeignRules); err != nil {
			t.Fatal(err)
		}
		want := saveAll(t, f)
		if err := f.Load(ours); err != nil {
			t.Fatal(err)
		}
		if err := proxier.RemoveOurs(context.Background(), f, "nat", "filter"); err != nil {
			t.Fatalf("counters=%v: %v", counters, err)
		}
		if got := saveAll(t, f); got != want {
			t.Fatalf("counters=%v: after RemoveOurs:\n%s\nwant only the foreign rules:\n%s", counters, got, want)
		}
		// Nothing left to do: no restore at all.
		calls := f.RestoreCalls()
		if err := proxier.RemoveOurs(context.Background(), f, "nat", "filter"); err != nil {
			t.Fatal(err)
		}
		if f.RestoreCalls() != calls {
			t.Fatalf("RemoveOurs on a clean state ran iptables-restore")
		}
	}
}

func TestRemoveOursReportsFailure(t *testing.T) {
	f := iptablestest.New()
	if err := f.Load(iptablestest.ForeignRules + ours); err != nil {
		t.Fatal(err)
	}
	f.FailNextRestore(errors.New("locked")) // fails the first table, nat
	err := proxier.RemoveOurs(context.Background(), f, "nat", "filter")
	if err == nil || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("error %v, want the restore failure", err)
	}
	// nat is untouched, and the other table was still cleaned.
	if _, ok := f.Rules("nat", "SVCP-SVC-X"); !ok {
		t.Fatal("the failed nat cleanup removed chains")
	}
	if _, ok := f.Rules("filter", "SVCP-FIREWALL"); ok {
		t.Fatal("a failure in nat stopped the filter cleanup")
	}
	if err := proxier.RemoveOurs(context.Background(), f, "nat", "filter"); err != nil {
		t.Fatal(err)
	}
	if got := saveAll(t, f); strings.Contains(got, "SVCP-") {
		t.Fatalf("svcproxy rules left:\n%s", got)
	}
}
