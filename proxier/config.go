package proxier

import (
	"net/netip"
	"time"
)

// Mode names, as --mode and KubeProxyConfiguration.mode spell them.
const (
	ModeUserspace = "userspace"
	ModeIPTables  = "iptables"
	ModeIPVS      = "ipvs"
)

// Config is the resolved configuration every mode is built from: the
// KubeProxyConfiguration file with the command line's flags applied on top.
type Config struct {
	Mode string
	Node Node
	// ClusterCIDR: traffic to a cluster IP from outside it is masqueraded.
	ClusterCIDR netip.Prefix
	// MasqueradeAll masquerades all traffic to cluster IPs.
	MasqueradeAll bool
	// MasqueradeBit is the fwmark bit that asks for SNAT (default 14).
	MasqueradeBit int
	// NodePortAddresses limits the addresses NodePorts answer on; empty
	// means every local address.
	NodePortAddresses []netip.Prefix
	// SyncPeriod is the periodic full resync; MinSyncPeriod coalesces bursts.
	SyncPeriod    time.Duration
	MinSyncPeriod time.Duration
	// UDPIdleTimeout ends idle userspace UDP sessions.
	UDPIdleTimeout time.Duration
	IPVS           IPVSConfig
}

// IPVSConfig is the IPVS mode's part of Config.
type IPVSConfig struct {
	Scheduler     string
	StrictARP     bool
	ExcludeCIDRs  []netip.Prefix
	TCPTimeout    time.Duration
	TCPFinTimeout time.Duration
	UDPTimeout    time.Duration
}

// DefaultConfig returns kube-proxy's defaults.
func DefaultConfig() Config {
	return Config{
		Mode:           ModeIPTables,
		MasqueradeBit:  14,
		SyncPeriod:     30 * time.Second,
		MinSyncPeriod:  time.Second,
		UDPIdleTimeout: 250 * time.Millisecond,
		IPVS:           IPVSConfig{Scheduler: "rr"},
	}
}

// MasqueradeMark returns the fwmark value of the masquerade bit.
func (c Config) MasqueradeMark() uint32 { return 1 << c.MasqueradeBit }
