package iptables

import (
	"bytes"
	"context"
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

func TestExplain(t *testing.T) {
	p, _, _ := syncWorld(t, testConfig())
	const noMatch = "No svcproxy rule matches"
	tests := []struct {
		dst   string
		proto v1.Protocol
		// want must all appear in the output, wantNot must not.
		want, wantNot []string
	}{
		{dst: "172.30.0.41:80", want: []string{"DNAT to 10.0.1.1:8080", "DNAT to 10.0.2.1:8080", "DNAT to 10.0.3.1:8080", "masquerading"}, wantNot: []string{noMatch}},
		{dst: "192.168.0.2:3002", want: []string{"node port", "DNAT to 10.0.1.2:8080", "DNAT to 10.0.2.2:8080"}, wantNot: []string{noMatch}},
		{dst: "5.6.7.8:80", want: []string{"loadbalancer source range", "DNAT to 10.0.2.3:8080", "dropped"}},
		{dst: "172.30.0.44:80", want: []string{"REJECT", "no endpoints"}},
		{dst: "192.168.0.2:3004", want: []string{"REJECT", "node port has no endpoints"}},
		{dst: "172.30.0.10:53", proto: v1.ProtocolUDP, want: []string{"DNAT to 10.0.1.53:5353"}},
		{dst: "172.30.0.41:81", want: []string{noMatch}, wantNot: []string{"DNAT to"}},
		{dst: "8.8.8.8:80", want: []string{noMatch}, wantNot: []string{"conntrack remembers the DNAT"}},
		{dst: "192.168.0.2:9999", want: []string{noMatch}, wantNot: []string{"conntrack remembers the DNAT"}},
	}
	for _, tc := range tests {
		t.Run(tc.dst, func(t *testing.T) {
			proto := tc.proto
			if proto == "" {
				proto = v1.ProtocolTCP
			}
			var b bytes.Buffer
			if err := p.Explain(context.Background(), &b, proto, netip.MustParseAddrPort(tc.dst)); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(out, w) {
					t.Errorf("output has %q:\n%s", w, out)
				}
			}
		})
	}
}
