package bench

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"runtime"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/e2e/perf"
	"github.com/svcproxy/svcproxy/e2e/topology"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/modes"
)

// MetricKernelNAT is the rule-count kind of the nat rules found in the
// node's kernel after the first full sync (iptables-save -t nat), a
// cross-check of the proxier's own counts.
const MetricKernelNAT = "kernel-nat"

// controlRep is what one repetition of the control-plane measurement saw.
type controlRep struct {
	full    time.Duration
	changes []time.Duration
	heap    float64 // MB
	rules   map[string]int
}

// controlPlane measures mode with n services × e endpoints in-process: a
// warm-up repetition, then o.Reps repetitions, each in a fresh one-node
// namespace: the first full sync into the empty node, o.Changes
// one-endpoint changes, the heap the proxier holds and its rule counts.
func controlPlane(ctx context.Context, o *Options, mode, where string, n int) ([]Record, error) {
	w := perf.Workload{Services: n, Endpoints: o.Endpoints}
	var reps []controlRep
	for rep := 0; rep <= o.Reps; rep++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r, err := controlOnce(ctx, o, mode, w)
		if err != nil {
			return nil, fmt.Errorf("control plane of %s at %d services, repetition %d: %w", mode, n, rep, err)
		}
		if rep == 0 {
			continue // warm-up: page cache, binaries, allocator
		}
		reps = append(reps, r)
	}
	var full, p50, p99, heap []float64
	rules := map[string][]float64{}
	for _, r := range reps {
		full = append(full, r.full.Seconds())
		ch := Seconds(r.changes)
		p50 = append(p50, Percentile(ch, 50))
		p99 = append(p99, Percentile(ch, 99))
		heap = append(heap, r.heap)
		for k, v := range r.rules {
			rules[k] = append(rules[k], float64(v))
		}
	}
	rec := func(metric string, samples []float64) Record {
		return Record{Impl: ImplSvcproxy, Mode: mode, Where: where, Services: n, Endpoints: o.Endpoints, Metric: metric, Stat: Summarize(samples)}
	}
	out := []Record{rec(MetricFullSync, full), rec(MetricChangeP50, p50), rec(MetricChangeP99, p99), rec(MetricHeap, heap)}
	for _, k := range sortedKeys(rules) {
		out = append(out, rec(MetricRulesPrefix+k, rules[k]))
	}
	return out, nil
}

// controlOnce runs one repetition in a fresh one-node topology.
func controlOnce(ctx context.Context, o *Options, mode string, w perf.Workload) (controlRep, error) {
	var r controlRep
	cluster, err := topology.Build(ctx, topology.Spec{Nodes: []topology.NodeSpec{{Name: "bench"}}})
	if err != nil {
		return r, fmt.Errorf("building the namespace: %w", err)
	}
	defer func() {
		if err := cluster.Close(); err != nil {
			klog.ErrorS(err, "Removing the control-plane namespace", "prefix", cluster.Prefix)
		}
	}()
	node := cluster.Nodes[0]
	snap := w.Snapshot()
	cfg := proxier.DefaultConfig()
	cfg.Mode = mode
	cfg.Node = proxier.Node{Name: node.Name}
	cfg.ClusterCIDR = netip.MustParsePrefix(topology.ClusterCIDR)

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var p proxier.Proxier
	err = node.Do(func() error {
		var err error
		if p, err = modes.New(cfg); err != nil {
			return fmt.Errorf("creating the %s proxier: %w", mode, err)
		}
		start := time.Now()
		if err := p.Sync(ctx, snap, perf.FullChanges()); err != nil {
			return fmt.Errorf("first full sync: %w", err)
		}
		r.full = time.Since(start)
		return nil
	})
	if err != nil {
		return r, err
	}
	defer func() {
		err := node.Do(func() error { return p.Cleanup(context.Background()) })
		if err != nil {
			klog.ErrorS(err, "Cleaning up the proxier", "mode", mode)
		}
		if c, ok := p.(proxier.Closer); ok {
			if err := c.Close(); err != nil {
				klog.ErrorS(err, "Closing the proxier", "mode", mode)
			}
		}
	}()
	runtime.GC()
	runtime.ReadMemStats(&after)
	r.heap = (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / (1 << 20)
	r.rules = maps.Clone(p.RuleCounts())
	// Cross-check that the proxier wrote into this node's namespace: count
	// the nat rules the kernel holds there.
	out, err := node.Run(ctx, "iptables-save", "-t", "nat")
	if err != nil {
		return r, fmt.Errorf("reading the node's nat table: %w", err)
	}
	r.rules[MetricKernelNAT] = strings.Count(string(out), "\n-A ")

	err = node.Do(func() error {
		for i := range o.Changes {
			var ch proxier.Changes
			snap, ch = perf.ChangeEndpoint(snap, (i*7919)%w.Services, i+1)
			start := time.Now()
			if err := p.Sync(ctx, snap, ch); err != nil {
				return fmt.Errorf("sync after endpoint change %d: %w", i, err)
			}
			r.changes = append(r.changes, time.Since(start))
		}
		return nil
	})
	return r, err
}
