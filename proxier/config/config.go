// Package config reads kube-proxy's configuration file (a
// KubeProxyConfiguration, kube-proxy's own published type from
// k8s.io/kube-proxy/config/v1alpha1), applies the command line's flags on top
// and resolves the result into the proxier.Config the modes are built from.
//
// Decoding is strict: an unknown or duplicated field, a wrong type or a bad
// value is an error that names the field. The one field svcproxy accepts
// beyond kube-proxy's current type is udpIdleTimeout, which kube-proxy
// dropped with its userspace mode and svcproxy still has.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	componentbaseconfig "k8s.io/component-base/config/v1alpha1"
	"k8s.io/klog/v2"
	kubeproxyconfig "k8s.io/kube-proxy/config/v1alpha1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/svcproxy/svcproxy/proxier"
)

// Defaults that kube-proxy applies to an empty KubeProxyConfiguration
// (pkg/proxy/apis/config/v1alpha1/defaults.go), for the fields svcproxy reads.
const (
	DefaultHealthzBindAddress = "0.0.0.0:10256"
	DefaultMetricsBindAddress = "127.0.0.1:10249"
	defaultHealthzPort        = 10256
	defaultMetricsPort        = 10249
	defaultSyncPeriod         = 30 * time.Second
	defaultIPTablesMinSync    = time.Second
	defaultConfigSyncPeriod   = 15 * time.Minute
	defaultMasqueradeBit      = 14
	defaultUDPIdleTimeout     = 250 * time.Millisecond
	defaultQPS                = 5
	defaultBurst              = 10
	defaultContentType        = "application/vnd.kubernetes.protobuf"
)

// Special values of nodePortAddresses, as kube-proxy defines them.
const (
	NodePortAddressesPrimary   = "primary"
	NodePortAddressesLocalhost = "localhost"
	NodePortAddressesAll       = "all"
)

// ipvsSchedulers are the schedulers the IPVS mode accepts.
var ipvsSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh"}

// Configuration is the file svcproxy reads: kube-proxy's
// KubeProxyConfiguration plus udpIdleTimeout (the userspace mode's idle
// timeout, removed from kube-proxy's type along with its userspace mode).
type Configuration struct {
	kubeproxyconfig.KubeProxyConfiguration `json:",inline"`
	// UDPIdleTimeout ends idle userspace UDP sessions (default 250ms).
	UDPIdleTimeout metav1.Duration `json:"udpIdleTimeout,omitempty"`
}

// Options is everything svcproxy takes from the configuration: the
// proxier.Config of the modes and what cmd/ needs to connect and serve.
type Options struct {
	// Proxier is the modes' configuration. Proxier.Node.Name is the
	// hostnameOverride, or the lower-cased host name.
	Proxier proxier.Config
	// ClientConnection says how to reach the API server (kubeconfig path,
	// QPS, burst, content type); an empty kubeconfig means in-cluster.
	ClientConnection componentbaseconfig.ClientConnectionConfiguration
	// Master overrides the API server address of the kubeconfig (flag
	// --master only; the file has no such field).
	Master string
	// ConfigSyncPeriod is the informers' resync period.
	ConfigSyncPeriod time.Duration
	// MetricsBindAddress and HealthzBindAddress are host:port; empty
	// disables the server.
	MetricsBindAddress string
	HealthzBindAddress string
	// NodePortPrimary is set when nodePortAddresses holds "primary": the
	// node's primary IPs (known once the Node is read) must be added to
	// Proxier.NodePortAddresses, see PrimaryPrefixes.
	NodePortPrimary bool
}

// Default returns the configuration kube-proxy would run with given an empty
// file: its defaults for every field svcproxy reads.
func Default() *Configuration {
	c := &Configuration{}
	c.APIVersion = kubeproxyconfig.SchemeGroupVersion.String()
	c.Kind = "KubeProxyConfiguration"
	setDefaults(c)
	return c
}

// setDefaults fills the fields kube-proxy defaults, as kube-proxy does (a
// zero duration means unset).
func setDefaults(c *Configuration) {
	if c.HealthzBindAddress == "" {
		c.HealthzBindAddress = DefaultHealthzBindAddress
	} else {
		c.HealthzBindAddress = appendPortIfNeeded(c.HealthzBindAddress, defaultHealthzPort)
	}
	if c.MetricsBindAddress == "" {
		c.MetricsBindAddress = DefaultMetricsBindAddress
	} else {
		c.MetricsBindAddress = appendPortIfNeeded(c.MetricsBindAddress, defaultMetricsPort)
	}
	if c.IPTables.SyncPeriod.Duration == 0 {
		c.IPTables.SyncPeriod.Duration = defaultSyncPeriod
	}
	if c.IPTables.MinSyncPeriod.Duration == 0 {
		c.IPTables.MinSyncPeriod.Duration = defaultIPTablesMinSync
	}
	if c.IPTables.MasqueradeBit == nil {
		bit := int32(defaultMasqueradeBit)
		c.IPTables.MasqueradeBit = &bit
	}
	// kube-proxy leaves ipvs.minSyncPeriod at zero when unset.
	if c.IPVS.SyncPeriod.Duration == 0 {
		c.IPVS.SyncPeriod.Duration = defaultSyncPeriod
	}
	if c.ConfigSyncPeriod.Duration == 0 {
		c.ConfigSyncPeriod.Duration = defaultConfigSyncPeriod
	}
	if c.ClientConnection.ContentType == "" {
		c.ClientConnection.ContentType = defaultContentType
	}
	if c.ClientConnection.QPS == 0 {
		c.ClientConnection.QPS = defaultQPS
	}
	if c.ClientConnection.Burst == 0 {
		c.ClientConnection.Burst = defaultBurst
	}
	if c.UDPIdleTimeout.Duration == 0 {
		c.UDPIdleTimeout.Duration = defaultUDPIdleTimeout
	}
}

// appendPortIfNeeded adds port to an address given without one, as
// kube-proxy does for its bind addresses ("0.0.0.0" → "0.0.0.0:10256").
func appendPortIfNeeded(addr string, port int) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	ip, err := netip.ParseAddr(strings.Trim(addr, "[]"))
	if err != nil {
		return addr // left for validation to report
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(port))
}

// LoadFile reads and strictly decodes a KubeProxyConfiguration file, with
// kube-proxy's defaults applied. Errors name the file and the field.
func LoadFile(path string) (*Configuration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config file: %w", err)
	}
	c, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return c, nil
}

// Decode strictly decodes a KubeProxyConfiguration (YAML or JSON) and applies
// kube-proxy's defaults. Unknown and duplicated fields, wrong types, bad
// durations and a wrong apiVersion or kind are errors naming the field.
func Decode(data []byte) (*Configuration, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("parse YAML: %w", err)
	}
	c := &Configuration{}
	strictErrs, err := sigsjson.UnmarshalStrict(js, c, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		if path := badDurationField(js); path != "" {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return nil, fmt.Errorf("decode KubeProxyConfiguration: %w", err)
	}
	if len(strictErrs) > 0 {
		return nil, fmt.Errorf("decode KubeProxyConfiguration: %w", errors.Join(strictErrs...))
	}
	want := kubeproxyconfig.SchemeGroupVersion.String()
	if c.APIVersion != want {
		return nil, fmt.Errorf("apiVersion: got %q, want %q", c.APIVersion, want)
	}
	if c.Kind != "KubeProxyConfiguration" {
		return nil, fmt.Errorf("kind: got %q, want \"KubeProxyConfiguration\"", c.Kind)
	}
	setDefaults(c)
	return c, nil
}

var durationType = reflect.TypeFor[metav1.Duration]()

// badDurationField finds the JSON path of a duration field whose value does
// not parse (the duration decoder's own error does not name the field).
func badDurationField(js []byte) string {
	var doc map[string]any
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(js, &doc); err != nil {
		return ""
	}
	return findBadDuration(reflect.TypeFor[Configuration](), doc, "")
}

func findBadDuration(t reflect.Type, doc map[string]any, prefix string) string {
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if f.Anonymous && name == "" {
			if ft.Kind() == reflect.Struct {
				if p := findBadDuration(ft, doc, prefix); p != "" {
					return p
				}
			}
			continue
		}
		if name == "" || name == "-" {
			continue
		}
		v, ok := doc[name]
		if !ok {
			continue
		}
		switch {
		case ft == durationType:
			if s, ok := v.(string); ok {
				if _, err := time.ParseDuration(s); err != nil {
					return prefix + name
				}
			}
		case ft.Kind() == reflect.Struct:
			if sub, ok := v.(map[string]any); ok {
				if p := findBadDuration(ft, sub, prefix+name+"."); p != "" {
					return p
				}
			}
		}
	}
	return ""
}

// Resolve validates c and turns it into Options. Every invalid value is
// reported, each with its field path. Fields svcproxy does not use (conntrack,
// nftables, winkernel, detectLocal, oomScoreAdj, portRange, bindAddress,
// featureGates, logging) are accepted and ignored.
func Resolve(c *Configuration) (Options, error) {
	var errs field.ErrorList
	o := Options{
		ClientConnection:   c.ClientConnection,
		ConfigSyncPeriod:   c.ConfigSyncPeriod.Duration,
		MetricsBindAddress: c.MetricsBindAddress,
		HealthzBindAddress: c.HealthzBindAddress,
	}
	cfg := proxier.DefaultConfig()

	switch mode := string(c.Mode); mode {
	case "":
		cfg.Mode = proxier.ModeIPTables
	case proxier.ModeIPTables, proxier.ModeIPVS, proxier.ModeUserspace:
		cfg.Mode = mode
	default:
		errs = append(errs, field.NotSupported(field.NewPath("mode"), mode,
			[]string{proxier.ModeIPTables, proxier.ModeIPVS, proxier.ModeUserspace}))
	}

	// The sync periods come from the mode's own section, as in kube-proxy
	// (the userspace mode used the iptables section).
	syncPath := field.NewPath("iptables")
	sync, minSync := c.IPTables.SyncPeriod.Duration, c.IPTables.MinSyncPeriod.Duration
	if cfg.Mode == proxier.ModeIPVS {
		syncPath = field.NewPath("ipvs")
		sync, minSync = c.IPVS.SyncPeriod.Duration, c.IPVS.MinSyncPeriod.Duration
	}
	if sync <= 0 {
		errs = append(errs, field.Invalid(syncPath.Child("syncPeriod"), sync.String(), "must be greater than 0"))
	}
	if minSync < 0 {
		errs = append(errs, field.Invalid(syncPath.Child("minSyncPeriod"), minSync.String(), "must be greater than or equal to 0"))
	} else if sync > 0 && minSync > sync {
		errs = append(errs, field.Invalid(syncPath.Child("minSyncPeriod"), minSync.String(), "must be less than or equal to "+syncPath.Child("syncPeriod").String()))
	}
	cfg.SyncPeriod, cfg.MinSyncPeriod = sync, minSync

	if c.IPTables.MasqueradeBit != nil {
		bit := int(*c.IPTables.MasqueradeBit)
		if bit < 0 || bit > 31 {
			errs = append(errs, field.Invalid(field.NewPath("iptables", "masqueradeBit"), bit, "must be within the range [0, 31]"))
		}
		cfg.MasqueradeBit = bit
	}
	cfg.MasqueradeAll = c.IPTables.MasqueradeAll

	if c.ClusterCIDR != "" {
		p, err := clusterCIDR(c.ClusterCIDR)
		if err != nil {
			errs = append(errs, field.Invalid(field.NewPath("clusterCIDR"), c.ClusterCIDR, err.Error()))
		}
		cfg.ClusterCIDR = p
	}

	npa, primary, npaErrs := nodePortAddresses(c.NodePortAddresses, field.NewPath("nodePortAddresses"))
	errs = append(errs, npaErrs...)
	cfg.NodePortAddresses, o.NodePortPrimary = npa, primary

	ipvsPath := field.NewPath("ipvs")
	cfg.IPVS.Scheduler = c.IPVS.Scheduler
	if cfg.IPVS.Scheduler == "" {
		cfg.IPVS.Scheduler = "rr"
	}
	if !slices.Contains(ipvsSchedulers, cfg.IPVS.Scheduler) {
		errs = append(errs, field.NotSupported(ipvsPath.Child("scheduler"), cfg.IPVS.Scheduler, ipvsSchedulers))
	}
	cfg.IPVS.StrictARP = c.IPVS.StrictARP
	for i, s := range c.IPVS.ExcludeCIDRs {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			errs = append(errs, field.Invalid(ipvsPath.Child("excludeCIDRs").Index(i), s, "must be a CIDR"))
			continue
		}
		cfg.IPVS.ExcludeCIDRs = append(cfg.IPVS.ExcludeCIDRs, p.Masked())
	}
	for _, t := range []struct {
		name string
		d    time.Duration
		dst  *time.Duration
	}{
		{"tcpTimeout", c.IPVS.TCPTimeout.Duration, &cfg.IPVS.TCPTimeout},
		{"tcpFinTimeout", c.IPVS.TCPFinTimeout.Duration, &cfg.IPVS.TCPFinTimeout},
		{"udpTimeout", c.IPVS.UDPTimeout.Duration, &cfg.IPVS.UDPTimeout},
	} {
		if t.d < 0 {
			errs = append(errs, field.Invalid(ipvsPath.Child(t.name), t.d.String(), "must be greater than or equal to 0"))
		}
		*t.dst = t.d
	}

	if c.UDPIdleTimeout.Duration < 0 {
		errs = append(errs, field.Invalid(field.NewPath("udpIdleTimeout"), c.UDPIdleTimeout.Duration.String(), "must be greater than or equal to 0"))
	}
	cfg.UDPIdleTimeout = c.UDPIdleTimeout.Duration

	for _, a := range []struct{ name, value string }{
		{"metricsBindAddress", c.MetricsBindAddress},
		{"healthzBindAddress", c.HealthzBindAddress},
	} {
		if a.value == "" {
			continue // disabled
		}
		if err := checkHostPort(a.value); err != nil {
			errs = append(errs, field.Invalid(field.NewPath(a.name), a.value, err.Error()))
		}
	}
	if c.OOMScoreAdj != nil && (*c.OOMScoreAdj < -1000 || *c.OOMScoreAdj > 1000) {
		errs = append(errs, field.Invalid(field.NewPath("oomScoreAdj"), *c.OOMScoreAdj, "must be within the range [-1000, 1000]"))
	}
	if c.ConfigSyncPeriod.Duration < 0 {
		errs = append(errs, field.Invalid(field.NewPath("configSyncPeriod"), c.ConfigSyncPeriod.Duration.String(), "must be greater than or equal to 0"))
	}
	if c.ClientConnection.QPS < 0 {
		errs = append(errs, field.Invalid(field.NewPath("clientConnection", "qps"), c.ClientConnection.QPS, "must be greater than or equal to 0"))
	}
	if c.ClientConnection.Burst < 0 {
		errs = append(errs, field.Invalid(field.NewPath("clientConnection", "burst"), c.ClientConnection.Burst, "must be greater than or equal to 0"))
	}

	name := strings.ToLower(strings.TrimSpace(c.HostnameOverride))
	if name == "" {
		host, err := os.Hostname()
		if err != nil {
			return Options{}, fmt.Errorf("node name: no hostnameOverride and no host name: %w", err)
		}
		name = strings.ToLower(host)
	}
	cfg.Node.Name = name

	if len(errs) > 0 {
		return Options{}, fmt.Errorf("invalid KubeProxyConfiguration: %w", errs.ToAggregate())
	}
	o.Proxier = cfg
	return o, nil
}

// clusterCIDR parses kube-proxy's comma-separated clusterCIDR. svcproxy's
// modes take one CIDR: the first IPv4 one (or the first one, when all are
// IPv6); the others are logged and ignored.
func clusterCIDR(s string) (netip.Prefix, error) {
	var all []netip.Prefix
	for _, part := range strings.Split(s, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(part))
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("must be a CIDR or a comma-separated pair of CIDRs: %w", err)
		}
		all = append(all, p.Masked())
	}
	if len(all) > 2 {
		return netip.Prefix{}, errors.New("at most two CIDRs (one per IP family)")
	}
	chosen := all[0]
	for _, p := range all {
		if p.Addr().Is4() {
			chosen = p
			break
		}
	}
	if len(all) > 1 {
		klog.InfoS("clusterCIDR lists two CIDRs; svcproxy uses one", "used", chosen, "clusterCIDR", s)
	}
	return chosen, nil
}

// nodePortAddresses parses nodePortAddresses: CIDRs and kube-proxy's
// keywords. "all" (or an empty list) means every address; "localhost" adds
// the loopback ranges; "primary" asks for the node's primary IPs, resolved
// later with PrimaryPrefixes.
func nodePortAddresses(in []string, path *field.Path) ([]netip.Prefix, bool, field.ErrorList) {
	var out []netip.Prefix
	var errs field.ErrorList
	primary, all := false, false
	for i, s := range in {
		s = strings.TrimSpace(s)
		switch s {
		case NodePortAddressesAll:
			all = true
		case NodePortAddressesPrimary:
			primary = true
		case NodePortAddressesLocalhost:
			out = append(out, netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"))
		default:
			p, err := netip.ParsePrefix(s)
			if err != nil {
				errs = append(errs, field.Invalid(path.Index(i), s, "must be a CIDR or one of \"primary\", \"localhost\", \"all\""))
				continue
			}
			out = append(out, p.Masked())
		}
	}
	if all {
		return nil, false, errs
	}
	return out, primary, errs
}

// PrimaryPrefixes turns the node's primary IPs into the single-address
// prefixes that "nodePortAddresses: [primary]" stands for.
func PrimaryPrefixes(ips []netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, ip := range ips {
		out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
	}
	return out
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("must be IP:port: %w", err)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("must be IP:port: %w", err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q must be a number in 0-65535", port)
	}
	return nil
}
