package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/svcproxy/svcproxy/e2e/isolate"
	"github.com/svcproxy/svcproxy/e2e/lab"
	"github.com/svcproxy/svcproxy/e2e/vm"
	"github.com/svcproxy/svcproxy/proxier"
)

func newLabCommand() *cobra.Command {
	o := lab.Options{Mode: proxier.ModeIPTables}
	var scenario string
	var down bool
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Build a small cluster in network namespaces and show how a Service's packets travel",
		Long: `lab builds a cluster out of network namespaces — a control-plane node with the
net-pod client and three workers with one webpod each — runs svcproxy in the
chosen mode on every node, sends 10, 100 and 1000 requests from net-pod to the
webpod service (ClusterIP port 9000 -> 80) and prints how they spread, the
rules on each node and the path a packet takes. It never touches the host's
own network namespace. With --mode=ipvs on a host without IPVS it runs in
the IPVS VM (see e2e/vm/README.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if down {
				return lab.Down()
			}
			if o.Mode == proxier.ModeIPVS && !vm.HostHasIPVS() && !vm.InVM() {
				if o.Keep {
					return fmt.Errorf("lab: --keep needs a host with IPVS; this one runs IPVS only in a VM that ends with the lab")
				}
				fmt.Fprintln(cmd.OutOrStdout(), "This kernel has no IPVS: running the lab in the IPVS VM (about 10 s to boot)...")
				return vm.Run(cmd.Context(), vm.Options{Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr()}, append([]string{mustExecutable()}, os.Args[1:]...)...)
			}
			if err := isolate.EnsureIsolated(); err != nil {
				return err
			}
			if scenario != "" {
				sc, err := lab.LoadScenario(scenario)
				if err != nil {
					return err
				}
				o.Scenario = sc
			}
			o.Binary = mustExecutable()
			o.Out = cmd.OutOrStdout()
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return lab.Run(ctx, o)
		},
	}
	cmd.Flags().StringVar(&o.Mode, "mode", o.Mode, "the mode svcproxy runs in on every node: iptables, ipvs or userspace")
	cmd.Flags().StringVar(&scenario, "scenario", "", "a scenario YAML file (default: the classic lab; see e2e/lab/classic.yaml)")
	cmd.Flags().BoolVar(&o.Keep, "keep", false, "leave the namespaces running for exploration and print how to enter them")
	cmd.Flags().BoolVar(&down, "down", false, "remove a lab left by --keep")
	return cmd
}

// mustExecutable returns this binary's path, for running it inside the
// lab's namespaces and the VM.
func mustExecutable() string {
	exe, err := os.Executable()
	if err != nil {
		return os.Args[0]
	}
	return exe
}
