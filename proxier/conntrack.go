package proxier

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// ClearStaleUDP removes the conntrack entries that would keep UDP clients
// talking to an endpoint that left a service, or to a service that had no
// endpoints and black-holed them. Failures are logged, not returned: stale
// entries expire by themselves, and the rules are already right.
func ClearStaleUDP(snap Snapshot, ch Changes) {
	var filters []netlink.CustomConntrackFilter
	for _, stale := range ch.StaleUDP {
		f := &netlink.ConntrackFilter{}
		_ = f.AddProtocol(unix.IPPROTO_UDP)
		if err := f.AddIP(netlink.ConntrackReplySrcIP, net.IP(stale.Endpoint.Addr().AsSlice())); err != nil {
			klog.ErrorS(err, "Bad conntrack filter", "endpoint", stale.Endpoint)
			continue
		}
		filters = append(filters, &replySrcPortFilter{ConntrackFilter: f, port: stale.Endpoint.Port()})
	}
	for _, spn := range ch.NewlyServedUDP {
		sp, ok := snap.Services[spn]
		if !ok {
			continue
		}
		for _, ip := range serviceIPs(sp) {
			f := &netlink.ConntrackFilter{}
			_ = f.AddProtocol(unix.IPPROTO_UDP)
			_ = f.AddIP(netlink.ConntrackOrigDstIP, net.IP(ip.AsSlice()))
			_ = f.AddPort(netlink.ConntrackOrigDstPort, uint16(sp.Port))
			filters = append(filters, f)
		}
		if sp.NodePort != 0 {
			f := &netlink.ConntrackFilter{}
			_ = f.AddProtocol(unix.IPPROTO_UDP)
			_ = f.AddPort(netlink.ConntrackOrigDstPort, uint16(sp.NodePort))
			filters = append(filters, f)
		}
	}
	if len(filters) == 0 {
		return
	}
	n, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filters...)
	if err != nil {
		klog.ErrorS(err, "Cannot delete stale UDP conntrack entries")
		return
	}
	klog.V(2).InfoS("Deleted stale UDP conntrack entries", "entries", n, "filters", len(filters))
}

// replySrcPortFilter narrows a filter to flows whose reply comes from one
// port (netlink's filter has no reply-port field).
type replySrcPortFilter struct {
	*netlink.ConntrackFilter
	port uint16
}

func (f *replySrcPortFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	return f.ConntrackFilter.MatchConntrackFlow(flow) && flow.Reverse.SrcPort == f.port
}

// serviceIPs returns every address a service port answers on besides
// NodePorts: cluster, external and LoadBalancer IPs.
func serviceIPs(sp *ServicePort) []netip.Addr {
	out := append([]netip.Addr(nil), sp.ClusterIPs...)
	out = append(out, sp.ExternalIPs...)
	return append(out, sp.LoadBalancerIPs...)
}

// ServiceAddressInterface is the dummy interface that holds service IPs in
// IPVS mode (kube-proxy's name); its addresses are not node addresses.
const ServiceAddressInterface = "kube-ipvs0"

// NodeAddresses returns this node's IPv4 addresses inside cidrs (all of
// them when cidrs is empty), skipping loopback and ServiceAddressInterface:
// the addresses NodePorts answer on.
func NodeAddresses(cidrs []netip.Prefix) ([]netip.Addr, error) {
	skip := -1
	if link, err := netlink.LinkByName(ServiceAddressInterface); err == nil {
		skip = link.Attrs().Index
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list node addresses: %w", err)
	}
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || ip.IsLoopback() || a.LinkIndex == skip || seen[ip] {
			continue
		}
		if len(cidrs) > 0 && !containsAny(cidrs, ip) {
			continue
		}
		seen[ip] = true
		out = append(out, ip)
	}
	return out, nil
}

func containsAny(cidrs []netip.Prefix, ip netip.Addr) bool {
	for _, c := range cidrs {
		if c.Contains(ip) {
			return true
		}
	}
	return false
}
