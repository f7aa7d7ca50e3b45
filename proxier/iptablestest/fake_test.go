package iptablestest

import (
	"context"
	"errors"
	"math"
	"net/netip"
	"strings"
	"testing"

	"github.com/svcproxy/svcproxy/proxier"
)

func mustSave(t *testing.T, f *Fake, table string) string {
	t.Helper()
	out, err := f.Save(context.Background(), table)
	if err != nil {
		t.Fatalf("Save(%s): %v", table, err)
	}
	return string(out)
}

func TestRestore(t *testing.T) {
	const base = `*nat
:FOO - [0:0]
:BAR - [0:0]
-A FOO -m comment --comment "two words" -d 10.0.0.1 -p tcp -m tcp --dport 80 -j BAR
-A BAR -j MARK --or-mark 0x4000
-A PREROUTING -j FOO
COMMIT
`
	tests := []struct {
		name    string
		payload string
		// wantErr is a substring of the error; "" means success.
		wantErr string
		// want lists rules expected in nat after the call ("CHAIN rule").
		want []string
	}{
		{
			name:    "no-op",
			payload: "*nat\nCOMMIT\n",
			want: []string{
				`FOO -d 10.0.0.1/32 -p tcp -m comment --comment "two words" -m tcp --dport 80 -j BAR`,
				`BAR -j MARK --set-xmark 0x4000/0x4000`,
				`PREROUTING -j FOO`,
			},
		},
		{
			name:    "declaring flushes",
			payload: "*nat\n:FOO - [0:0]\n-A FOO -j RETURN\nCOMMIT\n",
			want:    []string{`FOO -j RETURN`, `BAR -j MARK --set-xmark 0x4000/0x4000`, `PREROUTING -j FOO`},
		},
		{
			name:    "insert at position and delete by spec in another order",
			payload: "*nat\n-I FOO 1 -j RETURN\n-D FOO -p tcp -d 10.0.0.1/32 -m comment --comment \"two words\" -m tcp --dport 80 -j BAR\n-I PREROUTING 2 -s 10.1.0.0/16 -j ACCEPT\nCOMMIT\n",
			want:    []string{`FOO -j RETURN`, `BAR -j MARK --set-xmark 0x4000/0x4000`, `PREROUTING -j FOO`, `PREROUTING -s 10.1.0.0/16 -j ACCEPT`},
		},
		{
			name:    "delete chain",
			payload: "*nat\n-D PREROUTING -j FOO\n:FOO - [0:0]\n-X FOO\nCOMMIT\n",
			want:    []string{`BAR -j MARK --set-xmark 0x4000/0x4000`},
		},
		{
			name:    "declaring a built-in chain keeps its rules",
			payload: "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n",
			want: []string{
				`FOO -d 10.0.0.1/32 -p tcp -m comment --comment "two words" -m tcp --dport 80 -j BAR`,
				`BAR -j MARK --set-xmark 0x4000/0x4000`,
				`PREROUTING -j FOO`,
			},
		},
		{name: "delete missing rule", payload: "*nat\n-D FOO -j RETURN\nCOMMIT\n", wantErr: "line 2 failed"},
		{name: "delete referenced chain", payload: "*nat\n:BAR - [0:0]\n-X BAR\nCOMMIT\n", wantErr: "still referenced"},
		{name: "delete non-empty chain", payload: "*nat\n-D PREROUTING -j FOO\n-X FOO\nCOMMIT\n", wantErr: "not empty"},
		{name: "delete missing chain", payload: "*nat\n-X NOPE\nCOMMIT\n", wantErr: "no chain NOPE"},
		{name: "delete built-in chain", payload: "*nat\n-X OUTPUT\nCOMMIT\n", wantErr: "built-in"},
		{name: "jump to missing chain", payload: "*nat\n-A FOO -j NOPE\nCOMMIT\n", wantErr: "no such chain"},
		{name: "append to missing chain", payload: "*nat\n-A NOPE -j RETURN\nCOMMIT\n", wantErr: "no chain NOPE"},
		{name: "DNAT in filter", payload: "*filter\n-A INPUT -j DNAT --to-destination 1.2.3.4\nCOMMIT\n", wantErr: "not valid in table filter"},
		{name: "tcp match without -p tcp", payload: "*nat\n-A FOO -m tcp --dport 80 -j RETURN\nCOMMIT\n", wantErr: "only valid with -p tcp"},
		{name: "unknown module", payload: "*nat\n-A FOO -m owner --uid-owner 0 -j RETURN\nCOMMIT\n", wantErr: "not supported"},
		{name: "unknown option", payload: "*nat\n-A FOO -m comment --frobnicate x -j RETURN\nCOMMIT\n", wantErr: "unknown option"},
		{name: "IPv6 address", payload: "*nat\n-A FOO -d fd00::1/128 -j RETURN\nCOMMIT\n", wantErr: "not found"},
		{name: "IPv6 DNAT", payload: "*nat\n-A FOO -p tcp -j DNAT --to-destination [fd00::1]:80\nCOMMIT\n", wantErr: "bad --to-destination"},
		{name: "DNAT reachable from POSTROUTING", payload: "*nat\n:X - [0:0]\n-A X -p tcp -j DNAT --to-destination 1.2.3.4:80\n-A POSTROUTING -j X\nCOMMIT\n", wantErr: "reachable from POSTROUTING"},
		{name: "MASQUERADE reachable from PREROUTING", payload: "*nat\n-A BAR -j MASQUERADE\nCOMMIT\n", wantErr: "reachable from PREROUTING"},
		{name: "NAT targets in an unreachable chain are fine", payload: "*nat\n:Z - [0:0]\n-A Z -j MASQUERADE\n-A Z -p tcp -j DNAT --to-destination 1.2.3.4:80\nCOMMIT\n",
			want: []string{`FOO -d 10.0.0.1/32 -p tcp -m comment --comment "two words" -m tcp --dport 80 -j BAR`, `BAR -j MARK --set-xmark 0x4000/0x4000`, `PREROUTING -j FOO`, `Z -j MASQUERADE`, `Z -p tcp -j DNAT --to-destination 1.2.3.4:80`}},
		{name: "missing COMMIT", payload: "*nat\n-A FOO -j RETURN\n", wantErr: "COMMIT expected"},
		{name: "unterminated quote", payload: "*nat\n-A FOO -m comment --comment \"x -j RETURN\nCOMMIT\n", wantErr: "unterminated quote"},
		{name: "chain name too long", payload: "*nat\n:SVCP-0123456789012345678901234 - [0:0]\nCOMMIT\n", wantErr: "longer than"},
		{name: "late failure undoes earlier lines", payload: "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n*nat\n-A FOO -j RETURN\n-A FOO -j NOPE\nCOMMIT\n", wantErr: "line 6 failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := New()
			if err := f.Load(base); err != nil {
				t.Fatalf("Load: %v", err)
			}
			before := mustSave(t, f, "nat") + mustSave(t, f, "filter")
			err := f.Restore(context.Background(), []byte(tc.payload))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Restore error = %v, want one containing %q", err, tc.wantErr)
				}
				if after := mustSave(t, f, "nat") + mustSave(t, f, "filter"); after != before {
					t.Fatalf("a failed Restore changed the state:\nbefore:\n%s\nafter:\n%s", before, after)
				}
				return
			}
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			var got []string
			for _, c := range f.Chains("nat") {
				rules, _ := f.Rules("nat", c)
				for _, r := range rules {
					got = append(got, c+" "+r)
				}
			}
			if strings.Join(got, "\n") != strings.Join(sortedLike(tc.want, f), "\n") {
				t.Fatalf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// sortedLike orders "CHAIN rule" lines by the fake's chain order, keeping
// the order within a chain.
func sortedLike(lines []string, f *Fake) []string {
	var out []string
	for _, c := range f.Chains("nat") {
		for _, l := range lines {
			if strings.HasPrefix(l, c+" ") {
				out = append(out, l)
			}
		}
	}
	return out
}

func TestSaveRoundTrip(t *testing.T) {
	f := New()
	f.SaveCounters = true
	if err := f.Load("*filter\n:X - [0:0]\n-A X -m comment --comment \"a \\\"quoted\\\" 'word'\" -j ACCEPT\n-A X -m comment --comment plain_word-1 -j DROP\n-A INPUT -j X\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	saved := mustSave(t, f, "filter")
	for _, want := range []string{
		":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:X - [0:0]\n",
		`[0:0] -A X -m comment --comment "a \"quoted\" \'word\'" -j ACCEPT`,
		`[0:0] -A X -m comment --comment plain_word-1 -j DROP`,
	} {
		if !strings.Contains(saved, want) {
			t.Errorf("save output lacks %q:\n%s", want, saved)
		}
	}
	// Deleting every rule by the spec Save printed must work.
	var del strings.Builder
	del.WriteString("*filter\n")
	for _, l := range strings.Split(saved, "\n") {
		if i := strings.Index(l, "-A "); i >= 0 {
			del.WriteString("-D " + l[i+3:] + "\n")
		}
	}
	del.WriteString("-X X\nCOMMIT\n")
	if err := f.Restore(context.Background(), []byte(del.String())); err != nil {
		t.Fatalf("deleting by saved spec: %v", err)
	}
	if got := f.Chains("filter"); len(got) != 3 {
		t.Fatalf("chains left: %v", got)
	}
}

func TestFailNextAndCounters(t *testing.T) {
	f := New()
	f.FailNextRestore(errors.New("boom"))
	p := []byte("*nat\n:A - [0:0]\nCOMMIT\n")
	if err := f.Restore(context.Background(), p); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("first Restore = %v, want the injected error", err)
	}
	if _, ok := f.Rules("nat", "A"); ok {
		t.Fatal("a failed Restore created a chain")
	}
	if err := f.Restore(context.Background(), p); err != nil {
		t.Fatalf("second Restore: %v", err)
	}
	if f.RestoreCalls() != 2 || len(f.LinesPerCall()) != 2 || f.LinesPerCall()[1] != 3 {
		t.Fatalf("calls=%d lines=%v, want 2 calls of 3 lines", f.RestoreCalls(), f.LinesPerCall())
	}
	if f.LastPayload() != string(p) {
		t.Fatalf("LastPayload = %q", f.LastPayload())
	}
}

func TestEnsureJumps(t *testing.T) {
	f := New()
	jumps := []proxier.Jump{
		{Table: "filter", Chain: "FORWARD", Target: "SVCP-A", Comment: "first", Extra: []string{"-m", "conntrack", "--ctstate", "NEW"}},
		{Table: "filter", Chain: "FORWARD", Target: "SVCP-B", Comment: "second"},
	}
	for range 2 { // idempotent
		if err := f.EnsureJumps(jumps); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := f.Rules("filter", "FORWARD")
	want := []string{
		`-m comment --comment second -j SVCP-B`,
		`-m comment --comment first -m conntrack --ctstate NEW -j SVCP-A`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("FORWARD:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(f.Jumps()) != 4 {
		t.Fatalf("recorded %d jumps, want 4", len(f.Jumps()))
	}
	f.FailNextEnsureJumps(errors.New("nope"))
	if err := f.EnsureJumps(jumps); err == nil {
		t.Fatal("injected EnsureJumps failure not returned")
	}
}

func TestTracer(t *testing.T) {
	f := New()
	err := f.Load(`*nat
:SVC - [0:0]
:SEP1 - [0:0]
:SEP2 - [0:0]
:SEP3 - [0:0]
:MASQ - [0:0]
:POST - [0:0]
-A PREROUTING -j SVC
-A OUTPUT -j SVC
-A POSTROUTING -j POST
-A SVC ! -s 10.0.0.0/8 -d 172.30.0.1/32 -p tcp -m tcp --dport 80 -j MASQ
-A SVC -d 172.30.0.1/32 -p tcp -m tcp --dport 80 -m recent --name SEP1 --rcheck --seconds 10 --reap -j SEP1
-A SVC -d 172.30.0.1/32 -p tcp -m tcp --dport 80 -m statistic --mode random --probability 0.3333333333 -j SEP1
-A SVC -d 172.30.0.1/32 -p tcp -m tcp --dport 80 -m statistic --mode random --probability 0.5 -j SEP2
-A SVC -d 172.30.0.1/32 -p tcp -m tcp --dport 80 -j SEP3
-A SEP1 -s 10.0.1.1/32 -j MASQ
-A SEP1 -p tcp -m recent --name SEP1 --set -m tcp -j DNAT --to-destination 10.0.1.1:8080
-A SEP2 -p tcp -m tcp -j DNAT --to-destination 10.0.2.1:8080
-A SEP3 -p tcp -m tcp -j DNAT --to-destination 10.0.3.1
-A MASQ -j MARK --or-mark 0x4000
-A POST -m mark ! --mark 0x4000/0x4000 -j RETURN
-A POST -j MARK --xor-mark 0x4000
-A POST -j MASQUERADE --random-fully
-A PREROUTING -d 5.6.7.8/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 40000
-A OUTPUT -d 5.6.7.8/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 40000
COMMIT
*filter
:REJ - [0:0]
-A FORWARD -m conntrack --ctstate NEW -j REJ
-A OUTPUT -m conntrack --ctstate NEW -j REJ
-A REJ -d 172.30.0.2/32 -p tcp -m tcp --dport 80 -j REJECT
-A REJ -m addrtype --dst-type LOCAL -p udp -m udp --dport 53 -j DROP
-A INPUT -p tcp -m conntrack --ctorigdst 5.6.7.8/32 --ctorigdstport 80 -s 203.0.113.0/25 -j RETURN
-A INPUT -p tcp -m conntrack --ctorigdst 5.6.7.8/32 --ctorigdstport 80 -j DROP
COMMIT
`)
	if err != nil {
		t.Fatal(err)
	}
	tr := &Tracer{Fake: f, NodeIPs: []netip.Addr{netip.MustParseAddr("192.168.0.2")}}
	ip := netip.MustParseAddr
	tests := []struct {
		name    string
		pkt     Packet
		summary string
		masq    string // "all", "none", "some"
	}{
		{"pod to cluster IP", Packet{Source: ip("10.0.5.5"), Dest: ip("172.30.0.1"), DestPort: 80}, "10.0.1.1:8080, 10.0.2.1:8080, 10.0.3.1:80", "none"},
		{"node to cluster IP", Packet{Source: ip("192.168.0.2"), Dest: ip("172.30.0.1"), DestPort: 80, Hook: Output}, "10.0.1.1:8080, 10.0.2.1:8080, 10.0.3.1:80", "all"},
		{"hairpin", Packet{Source: ip("10.0.1.1"), Dest: ip("172.30.0.1"), DestPort: 80}, "10.0.1.1:8080, 10.0.2.1:8080, 10.0.3.1:80", "some"},
		{"wrong port", Packet{Source: ip("10.0.5.5"), Dest: ip("172.30.0.1"), DestPort: 81}, "ACCEPT", "none"},
		{"wrong protocol", Packet{Source: ip("10.0.5.5"), Dest: ip("172.30.0.1"), DestPort: 80, Protocol: "udp"}, "ACCEPT", "none"},
		{"reject", Packet{Source: ip("10.0.5.5"), Dest: ip("172.30.0.2"), DestPort: 80}, "REJECT", "none"},
		{"redirect, allowed source", Packet{Source: ip("203.0.113.5"), Dest: ip("5.6.7.8"), DestPort: 80}, "192.168.0.2:40000", "none"},
		{"redirect, denied source", Packet{Source: ip("203.0.113.200"), Dest: ip("5.6.7.8"), DestPort: 80}, "DROP", "none"},
		{"redirect from the node", Packet{Source: ip("192.168.0.2"), Dest: ip("5.6.7.8"), DestPort: 80, Hook: Output}, "127.0.0.1:40000", "none"},
		{"drop local udp", Packet{Source: ip("192.168.0.2"), Dest: ip("192.168.0.2"), DestPort: 53, Protocol: "udp", Hook: Output}, "DROP", "none"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := tr.Trace(tc.pkt)
			if err != nil {
				t.Fatal(err)
			}
			if got := res.Summary(); got != tc.summary {
				t.Errorf("summary %q, want %q\n%s", got, tc.summary, res.Explain())
			}
			all, any := res.Masquerade()
			masq := map[bool]map[bool]string{true: {true: "all"}, false: {true: "some", false: "none"}}[all][any]
			if masq != tc.masq {
				t.Errorf("masquerade %s, want %s\n%s", masq, tc.masq, res.Explain())
			}
			total := 0.0
			for _, o := range res.Outcomes {
				total += o.Probability
			}
			if math.Abs(total-1) > 1e-9 {
				t.Errorf("probabilities sum to %v\n%s", total, res.Explain())
			}
		})
	}
	res, err := tr.Trace(Packet{Source: ip("10.0.5.5"), Dest: ip("172.30.0.1"), DestPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	for dst, p := range res.Destinations() {
		if math.Abs(p-1.0/3) > 1e-6 {
			t.Errorf("%s reached with probability %v, want 1/3", dst, p)
		}
	}
}

func TestTracerFailsOnUnmodelledRules(t *testing.T) {
	for _, rule := range []string{
		"-A PREROUTING -i eth0 -j ACCEPT",
		"-A PREROUTING -m addrtype --dst-type BROADCAST -j ACCEPT",
		"-A PREROUTING -m statistic --mode nth --every 2 -j ACCEPT",
		"-A PREROUTING -p tcp -m tcp --sport 80 -j ACCEPT",
		"-A PREROUTING -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
		"-A PREROUTING -p tcp -m multiport --dports 80,443 -j ACCEPT",
	} {
		f := New()
		if err := f.Load("*nat\n" + rule + "\nCOMMIT\n"); err != nil {
			t.Fatalf("%s: %v", rule, err)
		}
		tr := &Tracer{Fake: f}
		_, err := tr.Trace(Packet{Source: netip.MustParseAddr("1.1.1.1"), Dest: netip.MustParseAddr("2.2.2.2"), DestPort: 80})
		if err == nil {
			t.Errorf("tracing through %q did not fail", rule)
		}
	}
}

// TestSaveMatchesIptablesSave pins the canonical forms iptables-save 1.8.9
// prints (checked against iptables-nft and iptables-legacy in a throwaway
// network namespace): base matches first, defaults spelled out, MARK as
// --set-xmark, probabilities as the kernel's 31-bit fraction.
func TestSaveMatchesIptablesSave(t *testing.T) {
	tests := []struct{ table, in, want string }{
		{"nat", `-m comment --comment "a b" -d 10.0.0.1 -p tcp -m tcp --dport 80 -j RETURN`,
			`-d 10.0.0.1/32 -p tcp -m comment --comment "a b" -m tcp --dport 80 -j RETURN`},
		{"nat", `-m statistic --mode random --probability 0.3333333333 -j RETURN`,
			`-m statistic --mode random --probability 0.33333333349 -j RETURN`},
		{"nat", `-m recent --name X --rcheck --seconds 10 --reap -j RETURN`,
			`-m recent --rcheck --seconds 10 --reap --name X --mask 255.255.255.255 --rsource -j RETURN`},
		{"nat", `-p udp -m udp -m recent --name X --set -j DNAT --to-destination 10.0.0.1:53`,
			`-p udp -m udp -m recent --set --name X --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.0.0.1:53`},
		{"filter", `-p tcp -m tcp --dport 80 -j REJECT`, `-p tcp -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable`},
		{"nat", `-j MARK --or-mark 0x4000`, `-j MARK --set-xmark 0x4000/0x4000`},
		{"nat", `-j MARK --xor-mark 0x4000`, `-j MARK --set-xmark 0x4000/0x0`},
		{"nat", `-m mark ! --mark 0x4000/0x4000 -j RETURN`, `-m mark ! --mark 0x4000/0x4000 -j RETURN`},
		{"nat", `-s 10.1.2.3/8 -j RETURN`, `-s 10.0.0.0/8 -j RETURN`},
		{"nat", `-m comment --comment plain-word_1 -j RETURN`, `-m comment --comment plain-word_1 -j RETURN`},
	}
	for _, tc := range tests {
		f := New()
		if err := f.Load("*" + tc.table + "\n:C - [0:0]\n-A C " + tc.in + "\nCOMMIT\n"); err != nil {
			t.Errorf("%s: %v", tc.in, err)
			continue
		}
		got, _ := f.Rules(tc.table, "C")
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s\n got %q\nwant %q", tc.in, got, tc.want)
		}
		// Deleting by the original spec works, as in iptables.
		if err := f.Load("*" + tc.table + "\n-D C " + tc.in + "\nCOMMIT\n"); err != nil {
			t.Errorf("delete %s: %v", tc.in, err)
		}
	}
}

func TestCommitPerTable(t *testing.T) {
	payload := []byte("*filter\n:T1 - [0:0]\nCOMMIT\n*nat\n:T2 - [0:0]\n-A T2 -j NOPE\nCOMMIT\n")
	for _, perTable := range []bool{false, true} {
		f := New()
		f.CommitPerTable = perTable
		if err := f.Restore(context.Background(), payload); err == nil || !strings.Contains(err.Error(), "line 6") {
			t.Fatalf("perTable=%v: error %v, want line 6", perTable, err)
		}
		if _, ok := f.Rules("filter", "T1"); ok != perTable {
			t.Errorf("perTable=%v: filter committed=%v", perTable, ok)
		}
		if _, ok := f.Rules("nat", "T2"); ok {
			t.Errorf("perTable=%v: the failed nat table was committed", perTable)
		}
	}
	f := New()
	f.CommitPerTable = true
	f.FailNextCommit("nat", errors.New("injected"))
	ok := []byte("*filter\n:T1 - [0:0]\nCOMMIT\n*nat\n:T2 - [0:0]\nCOMMIT\n")
	if err := f.Restore(context.Background(), ok); err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("error %v, want the injected one", err)
	}
	_, filterOK := f.Rules("filter", "T1")
	_, natOK := f.Rules("nat", "T2")
	if !filterOK || natOK {
		t.Fatalf("filter committed=%v nat committed=%v, want true/false", filterOK, natOK)
	}
	if err := f.Restore(context.Background(), ok); err != nil {
		t.Fatalf("the injected failure stuck: %v", err)
	}
}
