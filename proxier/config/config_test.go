package config

import (
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	v1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/proxier"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestLoadGoodFiles(t *testing.T) {
	tests := []struct {
		file  string
		check func(t *testing.T, o Options)
	}{
		{
			file: "operator-guide-ipvs.yaml",
			check: func(t *testing.T, o Options) {
				want := proxier.DefaultConfig()
				want.Mode = proxier.ModeIPVS
				want.Node.Name = o.Proxier.Node.Name // the host name
				want.SyncPeriod = 30 * time.Second
				want.MinSyncPeriod = 0 // kube-proxy leaves ipvs.minSyncPeriod at 0
				want.MasqueradeBit = 14
				want.UDPIdleTimeout = 250 * time.Millisecond
				want.IPVS.Scheduler = "rr"
				if !reflect.DeepEqual(o.Proxier, want) {
					t.Errorf("Proxier config:\n got %+v\nwant %+v", o.Proxier, want)
				}
				if o.MetricsBindAddress != "0.0.0.0:10249" || o.HealthzBindAddress != DefaultHealthzBindAddress {
					t.Errorf("bind addresses: metrics %q healthz %q", o.MetricsBindAddress, o.HealthzBindAddress)
				}
				if o.NodePortPrimary || o.Proxier.NodePortAddresses != nil {
					t.Errorf("nodePortAddresses: null must mean all addresses, got %v primary=%v", o.Proxier.NodePortAddresses, o.NodePortPrimary)
				}
				if o.ClientConnection.Kubeconfig != "" || o.ClientConnection.QPS != 5 || o.ClientConnection.Burst != 10 {
					t.Errorf("client connection defaults: %+v", o.ClientConnection)
				}
				if o.Proxier.Node.Name == "" {
					t.Error("node name must default to the host name")
				}
			},
		},
		{
			file: "full-iptables.yaml",
			check: func(t *testing.T, o Options) {
				p := o.Proxier
				if p.Mode != proxier.ModeIPTables || p.SyncPeriod != time.Minute || p.MinSyncPeriod != 2*time.Second {
					t.Errorf("mode/sync: %s %v %v", p.Mode, p.SyncPeriod, p.MinSyncPeriod)
				}
				if !p.MasqueradeAll || p.MasqueradeBit != 15 {
					t.Errorf("masquerade: all=%v bit=%d", p.MasqueradeAll, p.MasqueradeBit)
				}
				if p.ClusterCIDR != netip.MustParsePrefix("10.244.0.0/16") {
					t.Errorf("clusterCIDR: got %v, want the IPv4 one", p.ClusterCIDR)
				}
				if p.Node.Name != "worker-1" {
					t.Errorf("hostnameOverride must be lower-cased, got %q", p.Node.Name)
				}
				if !slices.Equal(p.NodePortAddresses, prefixes("192.168.0.0/16", "127.0.0.0/8", "::1/128")) || !o.NodePortPrimary {
					t.Errorf("nodePortAddresses: %v primary=%v", p.NodePortAddresses, o.NodePortPrimary)
				}
				wantIPVS := proxier.IPVSConfig{Scheduler: "wrr", StrictARP: true, ExcludeCIDRs: prefixes("10.0.0.0/8"),
					TCPTimeout: 900 * time.Second, TCPFinTimeout: 120 * time.Second, UDPTimeout: 300 * time.Second}
				if !reflect.DeepEqual(p.IPVS, wantIPVS) {
					t.Errorf("ipvs: got %+v want %+v", p.IPVS, wantIPVS)
				}
				if o.HealthzBindAddress != "0.0.0.0:10256" {
					t.Errorf("healthzBindAddress without a port must get 10256, got %q", o.HealthzBindAddress)
				}
				if o.ClientConnection.Kubeconfig != "/var/lib/svcproxy/kubeconfig" || o.ClientConnection.QPS != 10 || o.ClientConnection.Burst != 20 {
					t.Errorf("client connection: %+v", o.ClientConnection)
				}
				if o.ConfigSyncPeriod != 10*time.Minute {
					t.Errorf("configSyncPeriod: %v", o.ConfigSyncPeriod)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			c, err := LoadFile(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatalf("LoadFile: %v", err)
			}
			o, err := Resolve(c)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			tc.check(t, o)
		})
	}
}

func TestLoadBadFiles(t *testing.T) {
	tests := []struct {
		file string
		// want are substrings the error must contain: the field's name and
		// what is wrong with it.
		want []string
	}{
		{"unknown-field.yaml", []string{`unknown field "ipvs.schedular"`}},
		{"bad-scheduler.yaml", []string{"ipvs.scheduler", `"fastest"`}},
		{"bad-duration.yaml", []string{"iptables.syncPeriod", "invalid duration"}},
		{"bad-type.yaml", []string{"masqueradeBit"}},
		{"bad-mode.yaml", []string{"mode", `"nftables"`, "ipvs"}},
		{"bad-values.yaml", []string{"clusterCIDR", "iptables.masqueradeBit", "iptables.minSyncPeriod", "nodePortAddresses[0]", "metricsBindAddress"}},
		{"wrong-kind.yaml", []string{"kind", "KubeletConfiguration"}},
		{"wrong-version.yaml", []string{"apiVersion", "v1beta1"}},
		{"duplicate-field.yaml", []string{"mode"}},
		{"wrong-case.yaml", []string{`unknown field "Mode"`}},
		{"does-not-exist.yaml", []string{"does-not-exist.yaml"}},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			c, err := LoadFile(filepath.Join("testdata", tc.file))
			if err == nil {
				_, err = Resolve(c)
			}
			if err == nil {
				t.Fatal("want an error, got none")
			}
			t.Logf("error: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// newFlags declares the flags the way cmd/svcproxy does, with their own
// defaults, which must never override the file unless given.
func newFlags() *pflag.FlagSet {
	fs := pflag.NewFlagSet("svcproxy", pflag.ContinueOnError)
	fs.String("mode", "iptables", "")
	fs.String("source", "kube", "")
	fs.String("hostname-override", "", "")
	fs.String("kubeconfig", "", "")
	fs.String("master", "", "")
	fs.String("cluster-cidr", "", "")
	fs.Bool("masquerade-all", false, "")
	fs.Int("iptables-masquerade-bit", 14, "")
	fs.StringSlice("nodeport-addresses", nil, "")
	fs.Duration("sync-period", 30*time.Second, "")
	fs.Duration("min-sync-period", time.Second, "")
	fs.String("ipvs-scheduler", "rr", "")
	fs.Bool("ipvs-strict-arp", false, "")
	fs.StringSlice("ipvs-exclude-cidrs", nil, "")
	fs.Duration("udp-timeout", 250*time.Millisecond, "")
	fs.String("metrics-bind-address", DefaultMetricsBindAddress, "")
	fs.String("healthz-bind-address", DefaultHealthzBindAddress, "")
	return fs
}

func TestFlagsOverrideFile(t *testing.T) {
	tests := []struct {
		name  string
		file  string
		args  []string
		check func(t *testing.T, o Options)
	}{
		{
			name: "no flags: the file wins over flag defaults",
			file: "operator-guide-ipvs.yaml",
			check: func(t *testing.T, o Options) {
				if o.Proxier.Mode != proxier.ModeIPVS || o.Proxier.MinSyncPeriod != 0 || o.MetricsBindAddress != "0.0.0.0:10249" {
					t.Errorf("got mode %s minSync %v metrics %s", o.Proxier.Mode, o.Proxier.MinSyncPeriod, o.MetricsBindAddress)
				}
			},
		},
		{
			name: "given flags override",
			file: "operator-guide-ipvs.yaml",
			args: []string{"--ipvs-scheduler=sh", "--hostname-override=Node-A", "--metrics-bind-address=127.0.0.1:9999",
				"--sync-period=10s", "--min-sync-period=500ms", "--ipvs-exclude-cidrs=10.1.0.0/16,10.2.0.0/16",
				"--master=https://10.0.0.1:6443", "--kubeconfig=/k", "--healthz-bind-address=127.0.0.1"},
			check: func(t *testing.T, o Options) {
				p := o.Proxier
				if p.Mode != proxier.ModeIPVS || p.IPVS.Scheduler != "sh" || p.Node.Name != "node-a" {
					t.Errorf("got mode %s scheduler %s node %s", p.Mode, p.IPVS.Scheduler, p.Node.Name)
				}
				if p.SyncPeriod != 10*time.Second || p.MinSyncPeriod != 500*time.Millisecond {
					t.Errorf("sync periods %v %v", p.SyncPeriod, p.MinSyncPeriod)
				}
				if !slices.Equal(p.IPVS.ExcludeCIDRs, prefixes("10.1.0.0/16", "10.2.0.0/16")) {
					t.Errorf("exclude CIDRs %v", p.IPVS.ExcludeCIDRs)
				}
				if o.MetricsBindAddress != "127.0.0.1:9999" || o.HealthzBindAddress != "127.0.0.1:10256" {
					t.Errorf("bind addresses %s %s", o.MetricsBindAddress, o.HealthzBindAddress)
				}
				if o.Master != "https://10.0.0.1:6443" || o.ClientConnection.Kubeconfig != "/k" {
					t.Errorf("master %q kubeconfig %q", o.Master, o.ClientConnection.Kubeconfig)
				}
			},
		},
		{
			name: "no file: kube-proxy defaults",
			check: func(t *testing.T, o Options) {
				p := o.Proxier
				if p.Mode != proxier.ModeIPTables || p.SyncPeriod != 30*time.Second || p.MinSyncPeriod != time.Second || p.MasqueradeBit != 14 {
					t.Errorf("defaults: %+v", p)
				}
				if o.MetricsBindAddress != DefaultMetricsBindAddress || o.HealthzBindAddress != DefaultHealthzBindAddress {
					t.Errorf("bind addresses %s %s", o.MetricsBindAddress, o.HealthzBindAddress)
				}
			},
		},
		{
			name: "no file, flags",
			args: []string{"--mode=userspace", "--masquerade-all", "--iptables-masquerade-bit=4", "--cluster-cidr=10.8.0.0/16",
				"--nodeport-addresses=primary", "--udp-timeout=1s", "--healthz-bind-address="},
			check: func(t *testing.T, o Options) {
				p := o.Proxier
				if p.Mode != proxier.ModeUserspace || !p.MasqueradeAll || p.MasqueradeBit != 4 || p.UDPIdleTimeout != time.Second {
					t.Errorf("got %+v", p)
				}
				if p.ClusterCIDR != netip.MustParsePrefix("10.8.0.0/16") || !o.NodePortPrimary {
					t.Errorf("clusterCIDR %v primary %v", p.ClusterCIDR, o.NodePortPrimary)
				}
				if o.HealthzBindAddress != "" {
					t.Errorf("an empty --healthz-bind-address disables the server, got %q", o.HealthzBindAddress)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFlags()
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			file := ""
			if tc.file != "" {
				file = filepath.Join("testdata", tc.file)
			}
			o, err := Load(fs, file)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tc.check(t, o)
		})
	}
}

func TestBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--mode=kernelspace"}, "mode"},
		{[]string{"--ipvs-scheduler=best"}, "ipvs.scheduler"},
		{[]string{"--sync-period=0s"}, "iptables.syncPeriod"},
		{[]string{"--mode=ipvs", "--min-sync-period=1m"}, "ipvs.minSyncPeriod"},
		{[]string{"--cluster-cidr=10.0.0.0"}, "clusterCIDR"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			fs := newFlags()
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			_, err := Load(fs, "")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error naming %q, got %v", tc.want, err)
			}
		})
	}
}

func TestPrimaryPrefixes(t *testing.T) {
	got := PrimaryPrefixes([]netip.Addr{netip.MustParseAddr("192.168.1.5"), netip.MustParseAddr("fd00::5")})
	if !slices.Equal(got, prefixes("192.168.1.5/32", "fd00::5/128")) {
		t.Fatalf("got %v", got)
	}
}

func TestEveryFlagNameIsKnown(t *testing.T) {
	fs := newFlags()
	for _, name := range []string{"mode", "kubeconfig", "sync-period", "ipvs-scheduler", "metrics-bind-address"} {
		if !slices.Contains(FlagNames(), name) || fs.Lookup(name) == nil {
			t.Errorf("flag %s is not mapped", name)
		}
	}
}

// TestDeployConfigMapLoads keeps deploy/configmap.yaml's config.conf valid.
func TestDeployConfigMapLoads(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "configmap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm v1.ConfigMap
	if err := yaml.UnmarshalStrict(raw, &cm); err != nil {
		t.Fatalf("deploy/configmap.yaml: %v", err)
	}
	c, err := Decode([]byte(cm.Data["config.conf"]))
	if err != nil {
		t.Fatalf("config.conf: %v", err)
	}
	o, err := Resolve(c)
	if err != nil {
		t.Fatalf("config.conf: %v", err)
	}
	if o.Proxier.Mode != proxier.ModeIPTables || o.ClientConnection.Kubeconfig != "/var/lib/svcproxy/kubeconfig.conf" {
		t.Errorf("config.conf: mode %s kubeconfig %s", o.Proxier.Mode, o.ClientConnection.Kubeconfig)
	}
}
