package proxier

import "testing"

// The stderr texts are what iptables-restore 1.8.9 prints (legacy and nft
// backends) for a failing payload.
func TestRestoreErrorContext(t *testing.T) {
	payload := []byte("*nat\n:X - [0:0]\n-A X -j NOPE\nCOMMIT\n")
	tests := []struct{ stderr, want string }{
		{"iptables-restore: line 3 failed", ` (line 3: "-A X -j NOPE")`},
		{"iptables-nft-restore v1.8.9 (nf_tables): \nline 3: RULE_APPEND failed (Invalid argument): rule in chain X", ` (line 3: "-A X -j NOPE")`},
		{"iptables-nft-restore v1.8.9 (nf_tables): Chain 'NOPE' does not exist\nError occurred at line: 3\nTry `iptables-nft-restore -h' for more information.", ` (line 3: "-A X -j NOPE")`},
		{"iptables-restore: line 99 failed", ""},
		{"Another app is currently holding the xtables lock", ""},
	}
	for _, tc := range tests {
		if got := restoreErrorContext(payload, tc.stderr); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.stderr, got, tc.want)
		}
	}
}
