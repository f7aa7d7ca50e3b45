package perf

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/svcproxy/svcproxy/e2e/isolate"
	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/proxier"
)

// TestMain moves the benchmarks into a throwaway network namespace: they
// program the real kernel.
func TestMain(m *testing.M) {
	isolate.MustIsolate()
	os.Exit(m.Run())
}

var sizes = []int{1000, 10000}

// BenchmarkIPTablesFullSync measures a full resync of N services × 3
// endpoints through the real iptables-restore.
func BenchmarkIPTablesFullSync(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			p, snap := syncedIPTables(b, n)
			b.ResetTimer()
			for range b.N {
				if err := p.Sync(context.Background(), snap, FullChanges()); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportRules(b, p)
		})
	}
}

// BenchmarkIPTablesEndpointChange measures the partial sync after one
// endpoint of one service changed.
func BenchmarkIPTablesEndpointChange(b *testing.B) {
	for _, n := range sizes {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			p, snap := syncedIPTables(b, n)
			b.ResetTimer()
			for i := range b.N {
				var ch proxier.Changes
				snap, ch = ChangeEndpoint(snap, i%n, i+1)
				if err := p.Sync(context.Background(), snap, ch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// syncedIPTables returns an iptables proxier that has fully synced the
// workload; the rules are removed when the benchmark ends.
func syncedIPTables(b *testing.B, n int) (*iptables.Proxier, proxier.Snapshot) {
	b.Helper()
	p, err := iptables.New(proxier.DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	snap := Workload{Services: n, Endpoints: 3}.Snapshot()
	if err := p.Sync(context.Background(), snap, FullChanges()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.Cleanup(context.Background()) })
	return p, snap
}

func reportRules(b *testing.B, p proxier.Proxier) {
	total := 0
	for k, v := range p.RuleCounts() {
		if k == "iptables-nat" || k == "iptables-filter" {
			total += v
		}
	}
	b.ReportMetric(float64(total), "rules")
}
