package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	kubeproxyconfig "k8s.io/kube-proxy/config/v1alpha1"
)

// flagSetters maps a command-line flag to the configuration field it
// overrides. Names are kube-proxy's where it has the flag, plus svcproxy's
// mode-independent --sync-period and --min-sync-period.
var flagSetters = map[string]func(c *Configuration, v flagValue) error{
	"mode":              func(c *Configuration, v flagValue) error { c.Mode = kubeproxyconfig.ProxyMode(v.str()); return nil },
	"hostname-override": func(c *Configuration, v flagValue) error { c.HostnameOverride = v.str(); return nil },
	"kubeconfig":        func(c *Configuration, v flagValue) error { c.ClientConnection.Kubeconfig = v.str(); return nil },
	"cluster-cidr":      func(c *Configuration, v flagValue) error { c.ClusterCIDR = v.str(); return nil },
	"metrics-bind-address": func(c *Configuration, v flagValue) error {
		c.MetricsBindAddress = appendPortIfNeeded(v.str(), defaultMetricsPort)
		return nil
	},
	"healthz-bind-address": func(c *Configuration, v flagValue) error {
		c.HealthzBindAddress = appendPortIfNeeded(v.str(), defaultHealthzPort)
		return nil
	},
	"masquerade-all": func(c *Configuration, v flagValue) error { return v.boolean(&c.IPTables.MasqueradeAll) },
	"iptables-masquerade-bit": func(c *Configuration, v flagValue) error {
		n, err := strconv.ParseInt(v.str(), 10, 32)
		if err != nil {
			return err
		}
		bit := int32(n)
		c.IPTables.MasqueradeBit = &bit
		return nil
	},
	"nodeport-addresses": func(c *Configuration, v flagValue) error { c.NodePortAddresses = v.list(); return nil },
	"sync-period": func(c *Configuration, v flagValue) error {
		if err := v.duration(&c.IPTables.SyncPeriod.Duration); err != nil {
			return err
		}
		c.IPVS.SyncPeriod = c.IPTables.SyncPeriod
		return nil
	},
	"min-sync-period": func(c *Configuration, v flagValue) error {
		if err := v.duration(&c.IPTables.MinSyncPeriod.Duration); err != nil {
			return err
		}
		c.IPVS.MinSyncPeriod = c.IPTables.MinSyncPeriod
		return nil
	},
	"iptables-sync-period":     func(c *Configuration, v flagValue) error { return v.duration(&c.IPTables.SyncPeriod.Duration) },
	"iptables-min-sync-period": func(c *Configuration, v flagValue) error { return v.duration(&c.IPTables.MinSyncPeriod.Duration) },
	"ipvs-sync-period":         func(c *Configuration, v flagValue) error { return v.duration(&c.IPVS.SyncPeriod.Duration) },
	"ipvs-min-sync-period":     func(c *Configuration, v flagValue) error { return v.duration(&c.IPVS.MinSyncPeriod.Duration) },
	"ipvs-scheduler":           func(c *Configuration, v flagValue) error { c.IPVS.Scheduler = v.str(); return nil },
	"ipvs-strict-arp":          func(c *Configuration, v flagValue) error { return v.boolean(&c.IPVS.StrictARP) },
	"ipvs-exclude-cidrs":       func(c *Configuration, v flagValue) error { c.IPVS.ExcludeCIDRs = v.list(); return nil },
	"ipvs-tcp-timeout":         func(c *Configuration, v flagValue) error { return v.duration(&c.IPVS.TCPTimeout.Duration) },
	"ipvs-tcpfin-timeout":      func(c *Configuration, v flagValue) error { return v.duration(&c.IPVS.TCPFinTimeout.Duration) },
	"ipvs-udp-timeout":         func(c *Configuration, v flagValue) error { return v.duration(&c.IPVS.UDPTimeout.Duration) },
	"udp-timeout":              func(c *Configuration, v flagValue) error { return v.duration(&c.UDPIdleTimeout.Duration) },
	"config-sync-period":       func(c *Configuration, v flagValue) error { return v.duration(&c.ConfigSyncPeriod.Duration) },
	"kube-api-qps": func(c *Configuration, v flagValue) error {
		f, err := strconv.ParseFloat(v.str(), 32)
		c.ClientConnection.QPS = float32(f)
		return err
	},
	"kube-api-burst": func(c *Configuration, v flagValue) error {
		n, err := strconv.ParseInt(v.str(), 10, 32)
		c.ClientConnection.Burst = int32(n)
		return err
	},
	"kube-api-content-type": func(c *Configuration, v flagValue) error { c.ClientConnection.ContentType = v.str(); return nil },
}

// FlagNames lists the flags ApplyFlags knows, for documentation and tests.
func FlagNames() []string {
	names := make([]string, 0, len(flagSetters))
	for n := range flagSetters {
		names = append(names, n)
	}
	return names
}

// ApplyFlags overrides c with every flag of fs that was given on the command
// line (pflag's Changed), and only those: a flag left at its default never
// overrides the file. Flags it does not know (--source, -v, ...) are left
// alone.
func ApplyFlags(fs *pflag.FlagSet, c *Configuration) error {
	var errs []error
	fs.Visit(func(f *pflag.Flag) { // Visit walks only the flags that were set
		set, ok := flagSetters[f.Name]
		if !ok {
			return
		}
		if err := set(c, flagValue{f}); err != nil {
			errs = append(errs, fmt.Errorf("--%s=%s: %w", f.Name, f.Value.String(), err))
		}
	})
	return errors.Join(errs...)
}

// Load builds the Options svcproxy runs with: kube-proxy's defaults, the
// file at configFile if not empty, then the flags of fs that were given on
// the command line (including --master, which has no field in the file).
func Load(fs *pflag.FlagSet, configFile string) (Options, error) {
	c := Default()
	if configFile != "" {
		var err error
		if c, err = LoadFile(configFile); err != nil {
			return Options{}, err
		}
	}
	if err := ApplyFlags(fs, c); err != nil {
		return Options{}, err
	}
	o, err := Resolve(c)
	if err != nil && configFile != "" {
		return Options{}, fmt.Errorf("config file %s with the command line's flags: %w", configFile, err)
	}
	if err != nil {
		return Options{}, err
	}
	if f := fs.Lookup("master"); f != nil {
		o.Master = f.Value.String()
	}
	return o, nil
}

// flagValue reads a flag's value whatever the flag's Go type.
type flagValue struct{ f *pflag.Flag }

func (v flagValue) str() string { return strings.TrimSpace(v.f.Value.String()) }

func (v flagValue) list() []string {
	if sv, ok := v.f.Value.(pflag.SliceValue); ok {
		return sv.GetSlice()
	}
	s := v.str()
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func (v flagValue) boolean(dst *bool) error {
	b, err := strconv.ParseBool(v.str())
	if err != nil {
		return err
	}
	*dst = b
	return nil
}

func (v flagValue) duration(dst *time.Duration) error {
	d, err := time.ParseDuration(v.str())
	if err != nil {
		return err
	}
	*dst = d
	return nil
}
