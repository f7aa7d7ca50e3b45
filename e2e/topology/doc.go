// Package topology builds a small Kubernetes-like cluster out of named
// network namespaces: nodes, pods routed to their node over point-to-point
// veths, and an optional external client, all joined by one bridge.
//
// # Address plan
//
// Every namespace is named "<prefix>-<name>" (prefix unique per run, e.g.
// "svcp3f9a"), so `ip netns exec svcp3f9a-node1 ...` works while the cluster
// lives.
//
//	           netns <prefix>-fabric: bridge br0 (no address)
//	  +----------------+----------------+-----------------+
//	 vn1              vn2              vnK               vext
//	  |                |                |                 |
//	eth0 .11/24      eth0 .12/24      eth0 .(10+K)/24   eth0 .100/24
//	<prefix>-node1   <prefix>-node2   <prefix>-nodeK    <prefix>-external
//	veth-<pod>       veth-<pod>        (fabric 172.30.0.0/24)
//	.11/32           .12/32
//	  |  p2p veth      |
//	eth0             eth0
//	10.244.1.10/32   10.244.2.10/32
//	<prefix>-<pod>   <prefix>-<pod>
//
// In detail:
//
//   - Fabric: 172.30.0.0/24 (FabricCIDR) on bridge br0 in the "fabric"
//     namespace. Node i (counted from 1) has eth0 172.30.0.(10+i)/24
//     (NodeIP); the external client has eth0 172.30.0.100/24 (ExternalIP).
//   - Pods: pod j (counted from 0) of node i has eth0 10.244.i.(10+j)/32
//     (PodIP), a link route to its node's address and a default route via it
//     (onlink). There is no bridge on the node: the node side of the veth,
//     Pod.HostIfName ("veth-<pod>" or a short generated name within the 15
//     byte limit), carries the node's own address as a /32 plus a /32 route
//     to the pod. Node i's pods are in 10.244.i.0/24 (PodCIDR).
//   - Node routes: 10.244.k.0/24 via 172.30.0.(10+k) for every other node k;
//     the service range 10.96.0.0/16 (ServiceCIDR) and the external /
//     LoadBalancer range 203.0.113.0/24 (ExternalCIDR) as link routes on
//     eth0, so that local connections to a service pick the node's address
//     as source before any proxy rewrites the destination.
//   - External client: 10.244.k.0/24 via node k, and 10.96.0.0/16 and
//     203.0.113.0/24 via node 1.
//   - Sysctls, written in each namespace through /proc/sys from a thread set
//     into it: nodes have net.ipv4.ip_forward=1; every namespace has
//     net.ipv4.conf.{all,default}.rp_filter=0; the fabric does not send
//     bridged traffic through its netfilter (net.bridge.bridge-nf-call-*=0).
//     Loopback is up everywhere.
//
// # Running things inside
//
// Host.Do runs a function on an OS thread switched into a namespace; sockets
// created there stay in it, so servers and clients can live in this process.
// Host.Start and Host.Run run commands inside (the child is forked from such
// a thread, which is what `ip netns exec` does minus the exec of ip itself
// and the /sys remount), Host.Dial dials from inside.
//
// Cluster.Close stops every process the cluster started, kills any other
// process left in its namespaces and deletes them; RemoveByPrefix does the
// same for a prefix left over by an earlier run.
package topology

import (
	"fmt"
	"net/netip"
)

// Address plan constants; see the package documentation.
const (
	// FabricCIDR is the node network on the fabric bridge.
	FabricCIDR = "172.30.0.0/24"
	// ExternalIP is the address of the external client on the fabric.
	ExternalIP = "172.30.0.100"
	// ClusterCIDR holds every pod address; node i owns PodCIDR(i).
	ClusterCIDR = "10.244.0.0/16"
	// ServiceCIDR is the range ClusterIPs are taken from.
	ServiceCIDR = "10.96.0.0/16"
	// ExternalCIDR is the range for externalIPs and LoadBalancer ingress IPs
	// (TEST-NET-3), routed from the external client to node 1.
	ExternalCIDR = "203.0.113.0/24"
	// BridgeName is the bridge in the fabric namespace.
	BridgeName = "br0"
	// FabricName is the short name of the fabric namespace.
	FabricName = "fabric"
	// ExternalName is the short name of the external client's namespace.
	ExternalName = "external"
	// MaxNodes is the largest number of nodes the address plan holds
	// (172.30.0.99 is the last node address).
	MaxNodes = 89
	// MaxPodsPerNode is the largest number of pods per node the address plan
	// holds (10.244.i.254 is the last pod address).
	MaxPodsPerNode = 245
)

// NodeIP returns the fabric address of node i (counted from 1):
// 172.30.0.(10+i).
func NodeIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{172, 30, 0, byte(10 + i)})
}

// PodIP returns the address of pod j (counted from 0) on node i (counted
// from 1): 10.244.i.(10+j).
func PodIP(i, j int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 244, byte(i), byte(10 + j)})
}

// PodCIDR returns the pod range of node i: 10.244.i.0/24.
func PodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)
}

// NamespaceName returns the network namespace name used for a host called
// name in a cluster with the given prefix: "<prefix>-<name>".
func NamespaceName(prefix, name string) string {
	return fmt.Sprintf("%s-%s", prefix, name)
}
