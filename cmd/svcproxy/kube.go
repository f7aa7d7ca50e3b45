package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/config"
	"github.com/svcproxy/svcproxy/proxier/kubesource"
	"github.com/svcproxy/svcproxy/proxier/metrics"
)

// nodeWait bounds the wait for this node's Node object at startup.
const nodeWait = 30 * time.Second

// defaultGCPercent is svcproxy's GOGC unless the environment sets one: a
// proxy's heap is mostly long-lived state (the model and the rules), so a
// smaller headroom halves the memory it holds for garbage at little CPU cost.
const defaultGCPercent = 50

// tuneGC applies defaultGCPercent when GOGC is not set.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
}

// addKubeFlags adds the flags of the kube source, the config file and the
// servers. Their values are read back through config.Load, which applies
// only the flags given on the command line over the file.
func addKubeFlags(f *pflag.FlagSet, configFile *string) {
	f.StringVar(configFile, "config", "", "a KubeProxyConfiguration file (kube-proxy's); flags given on the command line override it")
	f.String("kubeconfig", "", "kubeconfig file of the API server (default: in-cluster)")
	f.String("master", "", "the API server's address, overriding the kubeconfig's")
	f.String("metrics-bind-address", config.DefaultMetricsBindAddress, "IP:port of the /metrics server (empty: off)")
	f.String("healthz-bind-address", config.DefaultHealthzBindAddress, "IP:port of the /healthz and /livez server (empty: off)")
}

// kubeRuntime is what the kube source needs once the configuration is known.
type kubeRuntime struct {
	source *kubesource.Source
}

// connectKube builds the API client, reads this node's Node (zone and IPs
// into cfg, with a bounded wait: without it the proxy still runs, with no
// zone) and prepares the source. A later change of the node's zone or IPs
// cancels ctx's run through restart, so the DaemonSet restarts svcproxy
// with the new values (the rules stay in place meanwhile).
func connectKube(ctx context.Context, settings config.Options, cfg *proxier.Config, restart context.CancelCauseFunc) (*kubeRuntime, error) {
	client, err := kubesource.NewClient(settings.ClientConnection, settings.Master)
	if err != nil {
		return nil, err
	}
	node, ips, err := kubesource.FetchNode(ctx, client, cfg.Node.Name, nodeWait)
	fetched := err == nil
	if !fetched {
		klog.ErrorS(err, "Running without this node's zone and IPs (topology hints and nodePortAddresses: primary need them)", "node", cfg.Node.Name)
	}
	cfg.Node = node
	if settings.NodePortPrimary {
		if len(ips) == 0 {
			return nil, fmt.Errorf("nodePortAddresses: primary needs the IPs of Node %q", node.Name)
		}
		cfg.NodePortAddresses = append(cfg.NodePortAddresses, config.PrimaryPrefixes(ips)...)
	}
	src := &kubesource.Source{Client: client, NodeName: node.Name, ResyncPeriod: settings.ConfigSyncPeriod}
	src.OnNode = func(n *v1.Node) {
		if n == nil {
			return
		}
		now, nowIPs := kubesource.NodeInfo(n)
		if fetched && (now.Zone != node.Zone || !slices.Equal(nowIPs, ips)) {
			klog.InfoS("This node's zone or IPs changed; exiting so that svcproxy restarts with them (rules stay in place)",
				"oldZone", node.Zone, "zone", now.Zone, "oldIPs", ips, "ips", nowIPs)
			restart(errors.New("node zone or IPs changed"))
		}
	}
	return &kubeRuntime{source: src}, nil
}

// observability holds the metrics, health and health-check node port
// servers of a run.
type observability struct {
	metrics   *metrics.Metrics
	health    *metrics.HealthServer
	svcHealth *metrics.ServiceHealthServer
}

// startObservability starts the /metrics and /healthz servers (each off when
// its address is empty), hooks the engine's syncs to them and to the
// health-check node ports, and returns the wrapper sink sources must feed.
func startObservability(ctx context.Context, settings config.Options, cfg proxier.Config, engine *proxier.Engine, p proxier.Proxier, kube *kubeRuntime) (*observability, proxier.Sink) {
	o := &observability{metrics: metrics.New()}
	eligible := func() bool { return true }
	if kube != nil {
		eligible = func() bool { return kubesource.NodeEligible(kube.source.Node()) }
	}
	o.health = metrics.NewHealthServer(metrics.HealthOptions{Timeout: 2 * cfg.SyncPeriod, NodeEligible: eligible, Metrics: o.metrics})
	hcAddrs, err := proxier.NodeAddresses(cfg.NodePortAddresses)
	if err != nil || len(cfg.NodePortAddresses) == 0 {
		hcAddrs = nil // listen on all addresses
	}
	o.svcHealth = metrics.NewServiceHealthServer(metrics.ServiceHealthOptions{Addresses: hcAddrs, Healthy: o.health.Healthy})
	hook := metrics.SyncHook(o.metrics, o.health, o.svcHealth, p.RuleCounts, cfg.Node)
	engine.OnSync = func(r proxier.SyncReport) {
		hook(r)
		if r.Full && r.Err == nil {
			// A full sync leaves its whole rule set as garbage; hand the
			// memory back to the kernel now instead of holding the peak.
			debug.FreeOSMemory()
		}
	}

	for _, s := range []struct {
		name, addr string
		run        func() error
	}{
		{"metrics", settings.MetricsBindAddress, func() error {
			return metrics.Serve(ctx, settings.MetricsBindAddress, metrics.MetricsHandler(o.metrics, cfg.Mode))
		}},
		{"healthz", settings.HealthzBindAddress, func() error {
			return metrics.Serve(ctx, settings.HealthzBindAddress, o.health.Handler())
		}},
	} {
		if s.addr == "" {
			continue
		}
		go func() {
			if err := s.run(); err != nil {
				klog.ErrorS(err, "Server stopped", "server", s.name, "address", s.addr)
			}
		}()
		klog.InfoS("Serving", "server", s.name, "address", s.addr)
	}
	go func() {
		<-ctx.Done()
		o.svcHealth.Close()
	}()
	return o, &metrics.QueueingSink{Sink: engine.Tracker, Metrics: o.metrics, Health: o.health}
}
