package main

import (
	"fmt"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/svcproxy/svcproxy/e2e/bench"
	"github.com/svcproxy/svcproxy/e2e/isolate"
)

// newBenchCommand returns `svcproxy bench`: the modes (and upstream
// kube-proxy) side by side; the logic is in package e2e/bench.
func newBenchCommand() *cobra.Command {
	o := bench.FullOptions()
	var quick bool
	var render string
	var sizes []int
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the modes (and upstream kube-proxy) side by side and write a report with plots",
		Long: `bench measures every mode on the same machine and workload, in network
namespaces of its own (never the host's): the control plane at N services ×
E endpoints (full sync, one-endpoint change p50/p99, rule counts, memory), the
proxy process (first sync, RSS, CPU, time from a new Service to traffic) and
the data plane with N services loaded (new connections per second, latency
p50/p99, one stream's throughput, through a ClusterIP and straight to the
pods). IPVS runs in the QEMU VM when the kernel lacks it. It prints a table
and writes REPORT.md, results.json, results.csv, sync.svg and latency.svg.`,
		Example: "  svcproxy bench --quick\n  svcproxy bench --sizes=1000,10000,30000 --modes=iptables,ipvs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if render != "" {
				return bench.Render(render, o.OutDir, cmd.OutOrStdout())
			}
			if quick {
				q := bench.QuickOptions()
				o.Preset = q.Preset
				for name, set := range map[string]func(){
					"sizes":    func() { sizes = q.Sizes },
					"reps":     func() { o.Reps = q.Reps },
					"requests": func() { o.Requests = q.Requests },
					"vm-modes": func() { o.VMModes = q.VMModes },
				} {
					if !cmd.Flags().Changed(name) {
						set()
					}
				}
			} else if cmd.Flags().Changed("sizes") {
				o.Preset = "custom"
			}
			o.Sizes = sizes
			if !cmd.Flags().Changed("out") && quick {
				o.OutDir = "docs/bench/quick"
			}
			if err := isolate.EnsureIsolated(); err != nil {
				return err
			}
			o.Binary = mustExecutable()
			o.Out = cmd.OutOrStdout()
			logFile, err := bench.RedirectLogs(o.InnerJSON == "")
			if err != nil {
				return err
			}
			if logFile != "" {
				fmt.Fprintf(o.Out, "svcproxy bench: logs in %s\n", logFile)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			_, err = bench.Run(ctx, o)
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVar(&quick, "quick", false, "the quick preset: N = 100 and 1,000, 3 repetitions (minutes)")
	f.IntSliceVar(&sizes, "sizes", o.Sizes, "numbers of services N to measure")
	f.IntVar(&o.Endpoints, "endpoints", o.Endpoints, "endpoints per service E")
	f.StringSliceVar(&o.Modes, "modes", o.Modes, "svcproxy modes to measure")
	f.StringSliceVar(&o.Peers, "peers", o.Peers, "upstream peers: kube-proxy-iptables, kube-proxy-nftables (empty: none)")
	f.IntVar(&o.Reps, "reps", o.Reps, "measured repetitions after one warm-up")
	f.IntVar(&o.Changes, "changes", o.Changes, "one-endpoint changes per repetition")
	f.IntVar(&o.Requests, "requests", o.Requests, "requests per repetition and side in the data plane")
	f.Int64Var(&o.StreamBytes, "stream-bytes", o.StreamBytes, "bytes of the throughput stream")
	f.StringSliceVar(&o.VMModes, "vm-modes", o.VMModes, "modes that also run in the IPVS VM when this kernel has no IPVS (IPVS always does)")
	f.BoolVar(&o.SkipDataPlane, "control-plane-only", false, "measure the control plane only")
	f.StringVar(&o.OutDir, "out", "docs/bench", "directory for REPORT.md, results.json, results.csv and the plots (--quick: docs/bench/quick)")
	f.StringVar(&render, "render", "", "measure nothing: write the report, table and plots again from this results.json")
	f.StringVar(&o.InnerJSON, "inner-json", "", "write only the JSON results to this file (used inside the VM)")
	_ = f.MarkHidden("inner-json")
	return cmd
}
