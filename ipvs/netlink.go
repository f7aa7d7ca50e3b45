package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	mobyipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	v1 "k8s.io/api/core/v1"
)

// The real kernel: IPVS through github.com/moby/ipvs, links, addresses and
// ipsets through github.com/vishvananda/netlink, sysctls through /proc/sys.

const (
	// svcFlagPersistent is IP_VS_SVC_F_PERSISTENT.
	svcFlagPersistent = 0x1
	// persistenceNetmask makes persistence per client address (/32).
	persistenceNetmask = 0xffffffff
)

// Available reports whether this network namespace's kernel has IPVS.
func Available() bool {
	_, err := os.Stat("/proc/net/ip_vs")
	return err == nil
}

// kernelHandle is Handle over github.com/moby/ipvs in the calling
// process's network namespace.
type kernelHandle struct{ h *mobyipvs.Handle }

// NewKernelHandle opens an IPVS handle in the current network namespace.
func NewKernelHandle() (Handle, error) {
	if !Available() {
		return nil, ErrUnavailable
	}
	h, err := mobyipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("open IPVS netlink handle: %w", err)
	}
	return &kernelHandle{h: h}, nil
}

func protoNumber(p v1.Protocol) uint16 {
	switch p {
	case v1.ProtocolUDP:
		return unix.IPPROTO_UDP
	case v1.ProtocolSCTP:
		return unix.IPPROTO_SCTP
	default:
		return unix.IPPROTO_TCP
	}
}

func protoName(n uint16) v1.Protocol {
	switch n {
	case unix.IPPROTO_UDP:
		return v1.ProtocolUDP
	case unix.IPPROTO_SCTP:
		return v1.ProtocolSCTP
	default:
		return v1.ProtocolTCP
	}
}

func toMobyService(k Key) *mobyipvs.Service {
	return &mobyipvs.Service{
		Address:       net.IP(k.Address.AsSlice()),
		Protocol:      protoNumber(k.Protocol),
		Port:          k.Port,
		AddressFamily: unix.AF_INET,
		Netmask:       persistenceNetmask,
	}
}

func toMobyVS(vs VirtualServer) *mobyipvs.Service {
	s := toMobyService(vs.Key)
	s.SchedName = vs.Scheduler
	if vs.Timeout > 0 {
		s.Flags = svcFlagPersistent
		s.Timeout = vs.Timeout
	}
	return s
}

func fromMobyVS(s *mobyipvs.Service) VirtualServer {
	addr, _ := netip.AddrFromSlice(s.Address)
	vs := VirtualServer{
		Key:       Key{Address: addr.Unmap(), Protocol: protoName(s.Protocol), Port: s.Port},
		Scheduler: s.SchedName,
		Stats: Stats{Connections: s.Stats.Connections, PacketsIn: s.Stats.PacketsIn, PacketsOut: s.Stats.PacketsOut,
			BytesIn: s.Stats.BytesIn, BytesOut: s.Stats.BytesOut},
	}
	if s.Flags&svcFlagPersistent != 0 {
		vs.Timeout = s.Timeout
	}
	return vs
}

func toMobyDest(rs RealServer) *mobyipvs.Destination {
	return &mobyipvs.Destination{
		Address:         net.IP(rs.Address.Addr().AsSlice()),
		Port:            rs.Address.Port(),
		Weight:          rs.Weight,
		ConnectionFlags: mobyipvs.ConnectionFlagMasq,
		AddressFamily:   unix.AF_INET,
	}
}

// notFound maps the kernel's "no such service / destination" errors.
func notFound(err error, what string) error {
	if errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("%s: %w", what, NotFound(what))
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (k *kernelHandle) VirtualServers() ([]VirtualServer, error) {
	svcs, err := k.h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("list IPVS virtual servers: %w", err)
	}
	out := make([]VirtualServer, 0, len(svcs))
	for _, s := range svcs {
		if s.FWMark != 0 || s.AddressFamily != unix.AF_INET {
			continue // not a kind svcproxy creates
		}
		out = append(out, fromMobyVS(s))
	}
	return out, nil
}

func (k *kernelHandle) VirtualServer(key Key) (VirtualServer, bool, error) {
	s, err := k.h.GetService(toMobyService(key))
	if err != nil {
		if errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOENT) {
			return VirtualServer{}, false, nil
		}
		return VirtualServer{}, false, fmt.Errorf("get virtual server %s: %w", key, err)
	}
	return fromMobyVS(s), true, nil
}

func (k *kernelHandle) AddVirtualServer(vs VirtualServer) error {
	if err := k.h.NewService(toMobyVS(vs)); err != nil {
		return fmt.Errorf("add virtual server %s: %w", vs.Key, err)
	}
	return nil
}

func (k *kernelHandle) UpdateVirtualServer(vs VirtualServer) error {
	if err := k.h.UpdateService(toMobyVS(vs)); err != nil {
		return notFound(err, "update virtual server "+vs.Key.String())
	}
	return nil
}

func (k *kernelHandle) DeleteVirtualServer(key Key) error {
	if err := k.h.DelService(toMobyService(key)); err != nil {
		return notFound(err, "delete virtual server "+key.String())
	}
	return nil
}

func (k *kernelHandle) RealServers(key Key) ([]RealServer, error) {
	dests, err := k.h.GetDestinations(toMobyService(key))
	if err != nil {
		return nil, notFound(err, "list real servers of "+key.String())
	}
	out := make([]RealServer, 0, len(dests))
	for _, d := range dests {
		addr, _ := netip.AddrFromSlice(d.Address)
		out = append(out, RealServer{
			Address:       netip.AddrPortFrom(addr.Unmap(), d.Port),
			Weight:        d.Weight,
			ActiveConns:   d.ActiveConnections,
			InactiveConns: d.InactiveConnections,
			Stats: Stats{Connections: d.Stats.Connections, PacketsIn: d.Stats.PacketsIn, PacketsOut: d.Stats.PacketsOut,
				BytesIn: d.Stats.BytesIn, BytesOut: d.Stats.BytesOut},
		})
	}
	return out, nil
}

func (k *kernelHandle) AddRealServer(key Key, rs RealServer) error {
	if err := k.h.NewDestination(toMobyService(key), toMobyDest(rs)); err != nil {
		return fmt.Errorf("add real server %s to %s: %w", rs.Address, key, err)
	}
	return nil
}

func (k *kernelHandle) UpdateRealServer(key Key, rs RealServer) error {
	if err := k.h.UpdateDestination(toMobyService(key), toMobyDest(rs)); err != nil {
		return notFound(err, fmt.Sprintf("update real server %s of %s", rs.Address, key))
	}
	return nil
}

func (k *kernelHandle) DeleteRealServer(key Key, addr netip.AddrPort) error {
	if err := k.h.DelDestination(toMobyService(key), toMobyDest(RealServer{Address: addr})); err != nil {
		return notFound(err, fmt.Sprintf("delete real server %s of %s", addr, key))
	}
	return nil
}

func (k *kernelHandle) SetTimeouts(tcp, tcpFin, udp time.Duration) error {
	if err := k.h.SetConfig(&mobyipvs.Config{TimeoutTCP: tcp, TimeoutTCPFin: tcpFin, TimeoutUDP: udp}); err != nil {
		return fmt.Errorf("set IPVS timeouts: %w", err)
	}
	return nil
}

func (k *kernelHandle) Close() error {
	k.h.Close()
	return nil
}

// kernelLinks is Links over netlink in the current network namespace. It
// remembers the dummy interface's index, so adding an address costs one
// netlink request rather than two.
type kernelLinks struct {
	mu    sync.Mutex
	index map[string]int
}

// NewKernelLinks returns Links for the current network namespace.
func NewKernelLinks() Links { return &kernelLinks{index: map[string]int{}} }

// link returns a handle on the named link, from the cached index when
// there is one.
func (l *kernelLinks) link(name string) (netlink.Link, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i, ok := l.index[name]; ok {
		return &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name, Index: i}}, nil
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", name, err)
	}
	l.index[name] = link.Attrs().Index
	return link, nil
}

// forget drops a cached index (the link was deleted or an operation failed).
func (l *kernelLinks) forget(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.index, name)
}

func (l *kernelLinks) EnsureDummy(name string) error {
	if link, err := netlink.LinkByName(name); err == nil {
		l.mu.Lock()
		l.index[name] = link.Attrs().Index
		l.mu.Unlock()
		return nil
	}
	l.forget(name) // recreated below: a new index
	if err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("create dummy interface %s: %w", name, err)
	}
	return nil
}

func (l *kernelLinks) DeleteDummy(name string) error {
	l.forget(name)
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func (l *kernelLinks) Addresses(name string) ([]netip.Addr, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("find %s: %w", name, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", name, err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			out = append(out, ip)
		}
	}
	return out, nil
}

func hostAddr(ip netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(32, 32)}}
}

func (l *kernelLinks) AddAddress(name string, ip netip.Addr) error {
	link, err := l.link(name)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(link, hostAddr(ip)); err != nil && !errors.Is(err, syscall.EEXIST) {
		l.forget(name)
		return fmt.Errorf("add %s to %s: %w", ip, name, err)
	}
	return nil
}

func (l *kernelLinks) DeleteAddress(name string, ip netip.Addr) error {
	link, err := l.link(name)
	if err != nil {
		return err
	}
	if err := netlink.AddrDel(link, hostAddr(ip)); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) && !errors.Is(err, syscall.ENOENT) {
		l.forget(name)
		return fmt.Errorf("remove %s from %s: %w", ip, name, err)
	}
	return nil
}

func (l *kernelLinks) NodeAddresses() ([]netip.Addr, error) {
	return proxier.NodeAddresses(nil)
}

// kernelIPSets is IPSets over netlink in the current network namespace.
type kernelIPSets struct{}

// NewKernelIPSets returns IPSets for the current network namespace.
func NewKernelIPSets() IPSets { return kernelIPSets{} }

func (kernelIPSets) Create(name, kind string) error {
	if err := netlink.IpsetCreate(name, kind, netlink.IpsetCreateOptions{Replace: true}); err != nil {
		return fmt.Errorf("create ipset %s (%s): %w", name, kind, err)
	}
	return nil
}

func (kernelIPSets) Destroy(name string) error {
	if err := netlink.IpsetDestroy(name); err != nil {
		if errors.Is(err, nl.IPSetError(nl.IPSET_ERR_PROTOCOL)) || isNoSet(err) {
			return nil
		}
		return fmt.Errorf("destroy ipset %s: %w", name, err)
	}
	return nil
}

// isNoSet reports whether err says the set does not exist.
func isNoSet(err error) bool {
	return errors.Is(err, syscall.ENOENT) || strings.Contains(err.Error(), "does not exist")
}

func (kernelIPSets) Names() ([]string, error) {
	all, err := netlink.IpsetListAll()
	if err != nil {
		return nil, fmt.Errorf("list ipsets: %w", err)
	}
	out := make([]string, 0, len(all))
	for _, s := range all {
		out = append(out, s.SetName)
	}
	return out, nil
}

func (kernelIPSets) Entries(name string) ([]SetEntry, error) {
	res, err := netlink.IpsetList(name)
	if err != nil {
		return nil, fmt.Errorf("list ipset %s: %w", name, err)
	}
	out := make([]SetEntry, 0, len(res.Entries))
	for _, e := range res.Entries {
		var se SetEntry
		se.IP, _ = netip.AddrFromSlice(e.IP.To4())
		if e.Port != nil {
			se.Port = *e.Port
		}
		if e.Protocol != nil {
			se.Protocol = protoName(uint16(*e.Protocol))
		}
		if e.IP2 != nil {
			ip2, _ := netip.AddrFromSlice(e.IP2.To4())
			if res.TypeName == "hash:ip,port,net" {
				se.Net = netip.PrefixFrom(ip2, int(e.CIDR2))
			} else {
				se.IP2 = ip2
			}
		}
		out = append(out, se)
	}
	return out, nil
}

func toNetlinkEntry(e SetEntry) *netlink.IPSetEntry {
	proto := uint8(protoNumber(e.Protocol))
	port := e.Port
	ne := &netlink.IPSetEntry{IP: net.IP(e.IP.AsSlice()), Protocol: &proto, Port: &port, Replace: true}
	switch {
	case e.IP2.IsValid():
		ne.IP2 = net.IP(e.IP2.AsSlice())
	case e.Net.IsValid():
		ne.IP2 = net.IP(e.Net.Masked().Addr().AsSlice())
		ne.CIDR2 = uint8(e.Net.Bits())
	}
	return ne
}

func (kernelIPSets) Add(name string, e SetEntry) error {
	if err := netlink.IpsetAdd(name, toNetlinkEntry(e)); err != nil {
		return fmt.Errorf("add %s to ipset %s: %w", e, name, err)
	}
	return nil
}

func (kernelIPSets) Del(name string, e SetEntry) error {
	if err := netlink.IpsetDel(name, toNetlinkEntry(e)); err != nil {
		return fmt.Errorf("delete %s from ipset %s: %w", e, name, err)
	}
	return nil
}

// procSysctl is Sysctl over /proc/sys, which shows the sysctls of the
// network namespace of the process that opens it.
type procSysctl struct{}

// NewProcSysctl returns the /proc/sys Sysctl.
func NewProcSysctl() Sysctl { return procSysctl{} }

func (procSysctl) Get(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", name))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (procSysctl) Set(name, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// procIPVS is the kernel's text listing of this namespace's IPVS table.
const procIPVS = "/proc/net/ip_vs"

// AllRealServers reads /proc/net/ip_vs: one read lists every real server
// with weight and connection counts, where netlink needs one dump per
// virtual server.
func (k *kernelHandle) AllRealServers() (map[Key][]RealServer, error) {
	data, err := os.ReadFile(procIPVS)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", procIPVS, err)
	}
	out, err := parseProcIPVS(string(data))
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", procIPVS, err)
	}
	return out, nil
}

// parseProcIPVS parses /proc/net/ip_vs (IPv4 services only; fwmark and
// IPv6 ones are skipped with their real servers):
//
//	TCP  0A000001:0050 rr  persistent 150000 FFFFFFFF
//	  -> 0A010001:1F90      Masq    3      0          0
func parseProcIPVS(text string) (map[Key][]RealServer, error) {
	out := map[Key][]RealServer{}
	var cur *Key
	for i, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if i < 3 || len(f) == 0 {
			continue
		}
		if f[0] == "->" {
			if cur == nil {
				continue
			}
			if len(f) < 6 {
				return nil, fmt.Errorf("line %d: %q", i+1, line)
			}
			addr, err := parseHexAddrPort(f[1])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			w, err1 := strconv.Atoi(f[3])
			act, err2 := strconv.Atoi(f[4])
			inact, err3 := strconv.Atoi(f[5])
			if err := errors.Join(err1, err2, err3); err != nil {
				return nil, fmt.Errorf("line %d: %w", i+1, err)
			}
			out[*cur] = append(out[*cur], RealServer{Address: addr, Weight: w, ActiveConns: act, InactiveConns: inact})
			continue
		}
		cur = nil
		var proto v1.Protocol
		switch f[0] {
		case "TCP":
			proto = v1.ProtocolTCP
		case "UDP":
			proto = v1.ProtocolUDP
		case "SCTP":
			proto = v1.ProtocolSCTP
		default:
			continue // FWM, or a protocol svcproxy does not use
		}
		if len(f) < 2 {
			return nil, fmt.Errorf("line %d: %q", i+1, line)
		}
		addr, err := parseHexAddrPort(f[1])
		if err != nil {
			continue // IPv6: [addr]:port
		}
		k := Key{Address: addr.Addr(), Protocol: proto, Port: addr.Port()}
		cur = &k
		if _, ok := out[k]; !ok {
			out[k] = nil
		}
	}
	return out, nil
}

// parseHexAddrPort parses "0A000001:0050".
func parseHexAddrPort(s string) (netip.AddrPort, error) {
	if len(s) != 13 || s[8] != ':' {
		return netip.AddrPort{}, fmt.Errorf("bad address %q", s)
	}
	ip, err1 := strconv.ParseUint(s[:8], 16, 32)
	port, err2 := strconv.ParseUint(s[9:], 16, 16)
	if err := errors.Join(err1, err2); err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad address %q: %w", s, err)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)}), uint16(port)), nil
}
