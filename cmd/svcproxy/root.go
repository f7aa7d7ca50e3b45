package main

import (
	"context"
	"errors"
	goflag "flag"
	"fmt"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/config"
	"github.com/svcproxy/svcproxy/proxier/modes"
)

// runOptions are the root command's flags.
type runOptions struct {
	cfg               proxier.Config
	source            string
	clusterCIDR       string
	nodePortAddresses []string
	excludeCIDRs      []string
	cleanup           bool
	configFile        string
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
	addKubeFlags(f, &o.configFile)

	klogFlags := goflag.NewFlagSet("klog", goflag.ExitOnError)
	klog.InitFlags(klogFlags)
	cmd.PersistentFlags().AddGoFlag(klogFlags.Lookup("v"))

	cmd.AddCommand(newCleanupCommand(), newVersionCommand(), newExplainCommand(), newWhoamiCommand(), newLabCommand(), newBenchCommand())
	return cmd
}

// run resolves the configuration (kube-proxy's defaults, then --config,
// then the flags given on the command line), builds the mode's proxier,
// starts the metrics and health servers and syncs until SIGINT or SIGTERM.
func (o *runOptions) run(ctx context.Context, fs *pflag.FlagSet) error {
	settings, err := config.Load(fs, o.configFile)
	if err != nil {
		return err
	}
	o.cfg = settings.Proxier
	tuneGC()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, restart := context.WithCancelCause(ctx)
	defer restart(nil)

	var kube *kubeRuntime
	if o.source == "kube" {
		if kube, err = connectKube(ctx, settings, &o.cfg, restart); err != nil {
			return err
		}
	}
	p, err := modes.New(o.cfg)
	if err != nil {
		return err
	}
	engine := proxier.NewEngine(p, proxier.RunnerOptions{
		MinInterval: o.cfg.MinSyncPeriod,
		MaxInterval: o.cfg.SyncPeriod,
	})
	obs, sink := startObservability(ctx, settings, o.cfg, engine, p, kube)
	src, err := newSource(o.source, kube)
	if err != nil {
		return err
	}
	if err := src.Start(ctx, sink); err != nil {
		return err
	}
	klog.InfoS("Starting svcproxy", "mode", o.cfg.Mode, "node", o.cfg.Node.Name, "zone", o.cfg.Node.Zone, "source", o.source)
	obs.health.Updated() // the sync loop starts, as kube-proxy marks it
	engine.Run(ctx)
	if c, ok := p.(proxier.Closer); ok {
		if err := c.Close(); err != nil {
			klog.ErrorS(err, "Closing the proxier")
		}
	}
	klog.InfoS("svcproxy stopped; the rules stay in place so established connections keep working")
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// source feeds a tracker.
type source interface {
	Start(ctx context.Context, sink proxier.Sink) error
}

// newSource parses --source; kube is the prepared kube source (nil unless
// --source=kube).
func newSource(spec string, kube *kubeRuntime) (source, error) {
	switch {
	case strings.HasPrefix(spec, "file:"):
		return &proxier.FileSource{Path: strings.TrimPrefix(spec, "file:")}, nil
	case spec == "kube" && kube != nil:
		return kube.source, nil
	default:
		return nil, fmt.Errorf("unknown --source %q: want kube or file:PATH", spec)
	}
}
