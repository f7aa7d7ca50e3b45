package ipvs

import (
	"errors"
	"net/netip"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
)

// The narrow interfaces this package owns over the kernel: IPVS virtual
// servers (Handle), the dummy interface and node addresses (Links), ipsets
// (IPSets) and sysctls (Sysctl). netlink.go implements them on the real
// kernel; ipvstest implements them as stateful fakes.

// Key identifies one IPVS virtual server.
type Key struct {
	Address  netip.Addr
	Protocol v1.Protocol
	Port     uint16
}

// String renders the key as ipvsadm does: "TCP 10.96.0.1:80".
func (k Key) String() string {
	return string(k.Protocol) + " " + netip.AddrPortFrom(k.Address, k.Port).String()
}

// Stats are the packet and byte counters of a virtual or real server.
type Stats struct {
	Connections           uint32
	PacketsIn, PacketsOut uint32
	BytesIn, BytesOut     uint64
}

// VirtualServer is one IPVS virtual service with its options.
type VirtualServer struct {
	Key
	// Scheduler is the scheduler's name, e.g. "rr".
	Scheduler string
	// Timeout is the persistence timeout in seconds (ClientIP affinity);
	// zero means not persistent.
	Timeout uint32
	// Stats are read from the kernel; ignored when writing.
	Stats Stats
}

// sameOptions reports whether two virtual servers have the same scheduler
// and persistence.
func (vs VirtualServer) sameOptions(o VirtualServer) bool {
	return vs.Scheduler == o.Scheduler && vs.Timeout == o.Timeout
}

// RealServer is one destination of a virtual server; svcproxy always uses
// masquerade (NAT) forwarding.
type RealServer struct {
	Address netip.AddrPort
	Weight  int
	// ActiveConns and InactiveConns are read from the kernel.
	ActiveConns, InactiveConns int
	// Stats are read from the kernel; ignored when writing.
	Stats Stats
}

// Handle is the IPVS part of the kernel svcproxy uses. Errors for a missing
// object satisfy IsNotFound.
type Handle interface {
	// VirtualServers lists every virtual server in the namespace.
	VirtualServers() ([]VirtualServer, error)
	// VirtualServer returns one virtual server; found is false when it
	// does not exist.
	VirtualServer(k Key) (vs VirtualServer, found bool, err error)
	// AddVirtualServer creates a virtual server.
	AddVirtualServer(vs VirtualServer) error
	// UpdateVirtualServer changes a virtual server's scheduler and
	// persistence.
	UpdateVirtualServer(vs VirtualServer) error
	// DeleteVirtualServer deletes a virtual server and its real servers.
	DeleteVirtualServer(k Key) error
	// RealServers lists the real servers of a virtual server.
	RealServers(k Key) ([]RealServer, error)
	// AllRealServers lists the real servers of every virtual server in one
	// read (without stats), for full syncs.
	AllRealServers() (map[Key][]RealServer, error)
	// AddRealServer adds a real server (masquerade forwarding).
	AddRealServer(k Key, rs RealServer) error
	// UpdateRealServer changes a real server's weight.
	UpdateRealServer(k Key, rs RealServer) error
	// DeleteRealServer removes a real server.
	DeleteRealServer(k Key, addr netip.AddrPort) error
	// SetTimeouts sets the tcp, tcpfin and udp connection timeouts; a
	// zero value leaves that timeout as it is.
	SetTimeouts(tcp, tcpFin, udp time.Duration) error
	// Close releases the handle.
	Close() error
}

// Links manages the dummy interface that holds the service addresses and
// lists the node's own addresses.
type Links interface {
	// EnsureDummy creates the dummy interface if it is missing. It is left
	// down: the addresses on it are local all the same.
	EnsureDummy(name string) error
	// DeleteDummy deletes the interface; a missing one is not an error.
	DeleteDummy(name string) error
	// Addresses lists the IPv4 addresses on the interface; nil when the
	// interface does not exist.
	Addresses(name string) ([]netip.Addr, error)
	// AddAddress adds ip/32 to the interface.
	AddAddress(name string, ip netip.Addr) error
	// DeleteAddress removes ip/32 from the interface.
	DeleteAddress(name string, ip netip.Addr) error
	// NodeAddresses lists the node's IPv4 addresses, except loopback ones
	// and those on DummyInterface.
	NodeAddresses() ([]netip.Addr, error)
}

// SetEntry is one ipset member. Which fields matter depends on the set's
// type: hash:ip,port uses IP, Protocol and Port; hash:ip,port,ip adds IP2;
// hash:ip,port,net adds Net.
type SetEntry struct {
	IP       netip.Addr
	Protocol v1.Protocol
	Port     uint16
	IP2      netip.Addr
	Net      netip.Prefix
}

// String renders the entry as ipset does: "10.96.0.1,tcp:80[,10.0.0.0/8]".
func (e SetEntry) String() string {
	s := e.IP.String() + "," + proxier.ProtocolLower(e.Protocol) + ":" + strconv.Itoa(int(e.Port))
	switch {
	case e.IP2.IsValid():
		s += "," + e.IP2.String()
	case e.Net.IsValid():
		s += "," + e.Net.String()
	}
	return s
}

// IPSets manages ipsets.
type IPSets interface {
	// Create creates a set of the given type if it does not exist.
	Create(name, kind string) error
	// Destroy destroys a set; a missing one is not an error. A set that an
	// iptables rule still references cannot be destroyed.
	Destroy(name string) error
	// Names lists every set in the namespace.
	Names() ([]string, error)
	// Entries lists the members of a set.
	Entries(name string) ([]SetEntry, error)
	// Add adds a member; an existing one is not an error.
	Add(name string, e SetEntry) error
	// Del removes a member; a missing one is not an error.
	Del(name string, e SetEntry) error
}

// Sysctl reads and writes the network namespace's sysctls, named as under
// /proc/sys, e.g. "net/ipv4/vs/conntrack".
type Sysctl interface {
	Get(name string) (string, error)
	Set(name, value string) error
}

// notFoundError is returned for a missing virtual or real server.
type notFoundError struct{ what string }

func (e *notFoundError) Error() string { return e.what + " not found" }

// NotFound returns an error that satisfies IsNotFound, for fakes.
func NotFound(what string) error { return &notFoundError{what: what} }

// IsNotFound reports whether err says that a virtual or real server does
// not exist.
func IsNotFound(err error) bool {
	var nf *notFoundError
	return errors.As(err, &nf)
}

// ErrUnavailable is returned when the kernel has no IPVS.
var ErrUnavailable = errors.New("this kernel has no IPVS (no /proc/net/ip_vs)")
