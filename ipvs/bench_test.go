package ipvs_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxier"
)

// BenchmarkSync measures syncs against the real kernel with n ClusterIP
// services × 3 endpoints:
//
//	full-initial  a full sync into an empty kernel (cleanup before each)
//	full-resync   a full sync when everything is already in place
//	one-endpoint  an incremental sync after one endpoint of one service changed
//
// Besides ns/op it reports the median (ms-median) and the state's size: the
// iptables rules (constant) and the IPVS virtual and real servers.
func BenchmarkSync(b *testing.B) {
	if !ipvs.Available() {
		b.Fatal("the benchmarks need IPVS; on a host without it run them in the VM:\n" +
			"  go test -exec \"$PWD/e2e/vm/run-in-vm.sh\" -run '^$' -bench . -benchtime 5x ./ipvs/")
	}
	for _, n := range []int{1000, 10000} {
		snap := manyServices(n)
		for _, kind := range []string{"full-initial", "full-resync", "one-endpoint"} {
			b.Run(fmt.Sprintf("services=%d/%s", n, kind), func(b *testing.B) { benchSync(b, snap, kind) })
		}
	}
}

func benchSync(b *testing.B, snap proxier.Snapshot, kind string) {
	ctx := context.Background()
	p := newKernelProxier(b, nil)
	defer p.Close()
	if err := p.Cleanup(ctx); err != nil {
		b.Fatal(err)
	}
	if kind != "full-initial" {
		if err := p.Sync(ctx, snap, proxier.Changes{Full: true}); err != nil {
			b.Fatal(err)
		}
	}
	n := len(snap.Services)
	var samples []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ch := proxier.Changes{Full: true}
		switch kind {
		case "full-initial":
			b.StopTimer()
			if err := p.Cleanup(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		case "one-endpoint":
			b.StopTimer()
			name := spn(fmt.Sprintf("s%d", (i*7919)%n), v1.ProtocolTCP)
			next := proxier.Snapshot{Services: snap.Services, Endpoints: cloneMap(snap.Endpoints)}
			moved := slices.Clone(next.Endpoints[name])
			moved[2].IP = moved[2].IP.Next()
			next.Endpoints[name] = moved
			snap = next
			ch = proxier.Changes{Services: map[proxier.ServicePortName]bool{name: true}}
			// collect the harness's garbage (the cloned snapshot) now,
			// not during the measured sync
			runtime.GC()
			b.StartTimer()
		}
		start := time.Now()
		if err := p.Sync(ctx, snap, ch); err != nil {
			b.Fatal(err)
		}
		samples = append(samples, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(samples)
	b.ReportMetric(float64(samples[len(samples)/2].Microseconds())/1000, "ms-median")
	counts := p.RuleCounts()
	b.ReportMetric(float64(counts["iptables-nat"]+counts["iptables-filter"]), "iptables-rules")
	b.ReportMetric(float64(counts["ipvs-virtual-servers"]), "virtual-servers")
	b.ReportMetric(float64(counts["ipvs-real-servers"]), "real-servers")
	if err := p.Cleanup(ctx); err != nil {
		b.Fatal(err)
	}
}
