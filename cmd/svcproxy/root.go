package main

import (
	"context"
	goflag "flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// runOptions are the root command's flags.
type runOptions struct {
	cfg               proxier.Config
	source            string
	clusterCIDR       string
	nodePortAddresses []string
	excludeCIDRs      []string
	cleanup           bool
}

func newRootCommand() *cobra.Command {
	o := &runOptions{cfg: proxier.DefaultConfig()}
	cmd := &cobra.Command{
		Use:   "svcproxy",
		Short: "A Kubernetes service proxy with userspace, iptables and IPVS modes",
		Long: `svcproxy programs this node so that traffic to Kubernetes Services reaches
their endpoints, in one of three modes: userspace (proxy sockets), iptables
(NAT chains) or ipvs (kernel virtual servers). It reads Services and
EndpointSlices from a cluster (--source=kube) or from YAML files
(--source=file:PATH).`,
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.cleanup {
				return runCleanup(cmd.Context())
			}
			return o.run(cmd.Context(), cmd.Flags())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.cfg.Mode, "mode", o.cfg.Mode, "proxy mode: userspace, iptables or ipvs")
	f.StringVar(&o.source, "source", "kube", "where Services and EndpointSlices come from: kube, or file:PATH (a YAML file or directory, watched)")
	f.StringVar(&o.cfg.Node.Name, "hostname-override", "", "the name of this node (default: the host name)")
	f.StringVar(&o.clusterCIDR, "cluster-cidr", "", "the pod CIDR; traffic to a cluster IP from outside it is masqueraded")
	f.BoolVar(&o.cfg.MasqueradeAll, "masquerade-all", false, "SNAT all traffic sent through cluster IPs")
	f.IntVar(&o.cfg.MasqueradeBit, "iptables-masquerade-bit", o.cfg.MasqueradeBit, "the fwmark bit (0-31) that marks packets for SNAT")
	f.StringSliceVar(&o.nodePortAddresses, "nodeport-addresses", nil, "CIDRs of the node addresses NodePorts answer on (default: all)")
	f.DurationVar(&o.cfg.SyncPeriod, "sync-period", o.cfg.SyncPeriod, "the longest time between two full resyncs")
	f.DurationVar(&o.cfg.MinSyncPeriod, "min-sync-period", o.cfg.MinSyncPeriod, "the shortest time between two syncs (bursts are coalesced)")
	f.StringVar(&o.cfg.IPVS.Scheduler, "ipvs-scheduler", o.cfg.IPVS.Scheduler, "the IPVS scheduler: rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh")
	f.BoolVar(&o.cfg.IPVS.StrictARP, "ipvs-strict-arp", false, "set arp_ignore=1 and arp_announce=2 for IPVS")
	f.StringSliceVar(&o.excludeCIDRs, "ipvs-exclude-cidrs", nil, "CIDRs whose IPVS virtual servers svcproxy must not touch")
	f.DurationVar(&o.cfg.UDPIdleTimeout, "udp-timeout", o.cfg.UDPIdleTimeout, "idle timeout of userspace UDP sessions")
	f.BoolVar(&o.cleanup, "cleanup", false, "remove everything svcproxy created and exit")

	klogFlags := goflag.NewFlagSet("klog", goflag.ExitOnError)
	klog.InitFlags(klogFlags)
	cmd.PersistentFlags().AddGoFlag(klogFlags.Lookup("v"))

	cmd.AddCommand(newCleanupCommand(), newVersionCommand(), newExplainCommand(), newWhoamiCommand(), newLabCommand())
	return cmd
}

// run resolves the configuration, builds the mode's proxier and syncs until
// SIGINT or SIGTERM.
func (o *runOptions) run(ctx context.Context, _ *pflag.FlagSet) error {
	if err := o.resolve(); err != nil {
		return err
	}
	p, err := newProxier(o.cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	engine := proxier.NewEngine(p, proxier.RunnerOptions{
		MinInterval: o.cfg.MinSyncPeriod,
		MaxInterval: o.cfg.SyncPeriod,
	})
	src, err := newSource(o.source)
	if err != nil {
		return err
	}
	if err := src.Start(ctx, engine.Tracker); err != nil {
		return err
	}
	klog.InfoS("Starting svcproxy", "mode", o.cfg.Mode, "node", o.cfg.Node.Name, "source", o.source)
	engine.Run(ctx)
	klog.InfoS("svcproxy stopped; the rules stay in place so established connections keep working")
	return nil
}

// resolve parses the string flags into o.cfg.
func (o *runOptions) resolve() error {
	if o.cfg.Node.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("node name: %w", err)
		}
		o.cfg.Node.Name = strings.ToLower(host)
	}
	if o.clusterCIDR != "" {
		p, err := netip.ParsePrefix(o.clusterCIDR)
		if err != nil {
			return fmt.Errorf("--cluster-cidr: %w", err)
		}
		o.cfg.ClusterCIDR = p
	}
	var err error
	if o.cfg.NodePortAddresses, err = parsePrefixes("--nodeport-addresses", o.nodePortAddresses); err != nil {
		return err
	}
	if o.cfg.IPVS.ExcludeCIDRs, err = parsePrefixes("--ipvs-exclude-cidrs", o.excludeCIDRs); err != nil {
		return err
	}
	if o.cfg.MasqueradeBit < 0 || o.cfg.MasqueradeBit > 31 {
		return fmt.Errorf("--iptables-masquerade-bit %d out of range 0-31", o.cfg.MasqueradeBit)
	}
	return nil
}

func parsePrefixes(flag string, in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range in {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flag, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// source feeds a tracker.
type source interface {
	Start(ctx context.Context, sink proxier.Sink) error
}

// newSource parses --source.
func newSource(spec string) (source, error) {
	switch {
	case strings.HasPrefix(spec, "file:"):
		return &proxier.FileSource{Path: strings.TrimPrefix(spec, "file:")}, nil
	case spec == "kube":
		return nil, fmt.Errorf("--source=kube is not built yet; use --source=file:PATH")
	default:
		return nil, fmt.Errorf("unknown --source %q: want kube or file:PATH", spec)
	}
}
