package kubesource

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// ToBeDeletedTaint marks a node the cluster autoscaler is about to remove;
// kube-proxy's /healthz reports such a node as not eligible.
const ToBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// FetchNode reads the Node called name, retrying (it may not be registered
// yet when the proxy starts first) until it exists, ctx ends or timeout
// passes. It returns the node's name and zone, and its primary IPs (see
// NodeIPs).
func FetchNode(ctx context.Context, client kubernetes.Interface, name string, timeout time.Duration) (proxier.Node, []netip.Addr, error) {
	var node *v1.Node
	var lastErr error
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			lastErr = err
			if apierrors.IsNotFound(err) {
				klog.V(2).InfoS("Waiting for this node's Node object", "node", name)
			} else {
				klog.V(2).InfoS("Cannot read this node's Node object yet", "node", name, "err", err)
			}
			return false, nil
		}
		node = n
		return true, nil
	})
	if err != nil {
		if lastErr != nil {
			err = fmt.Errorf("%w (last error: %w)", err, lastErr)
		}
		return proxier.Node{Name: name}, nil, fmt.Errorf("read Node %q: %w", name, err)
	}
	info, ips := NodeInfo(node)
	klog.InfoS("Read this node's Node object", "node", info.Name, "zone", info.Zone, "ips", ips)
	return info, ips, nil
}

// NodeInfo returns what the proxy needs from a Node: its name and zone
// (topology.kubernetes.io/zone, or the deprecated beta label), and its
// primary IPs (see NodeIPs).
func NodeInfo(node *v1.Node) (proxier.Node, []netip.Addr) {
	zone := node.Labels[v1.LabelTopologyZone]
	if zone == "" {
		zone = node.Labels[v1.LabelFailureDomainBetaZone]
	}
	return proxier.Node{Name: node.Name, Zone: zone}, NodeIPs(node)
}

// NodeIPs returns the node's primary IPs, at most one per IP family: its
// InternalIP addresses, or its ExternalIP addresses when it has no internal
// one (kube-proxy's rule).
func NodeIPs(node *v1.Node) []netip.Addr {
	var out []netip.Addr
	for _, kind := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range node.Status.Addresses {
			if a.Type != kind {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				continue
			}
			ip = ip.Unmap()
			if !hasFamily(out, ip) {
				out = append(out, ip)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return out
}

func hasFamily(ips []netip.Addr, ip netip.Addr) bool {
	for _, x := range ips {
		if x.Is4() == ip.Is4() {
			return true
		}
	}
	return false
}

// NodeEligible reports whether a node may receive traffic from load
// balancers, as kube-proxy's /healthz decides: it exists, is not being
// deleted and does not carry the autoscaler's ToBeDeleted taint.
func NodeEligible(node *v1.Node) bool {
	if node == nil || node.DeletionTimestamp != nil {
		return false
	}
	for _, t := range node.Spec.Taints {
		if t.Key == ToBeDeletedTaint {
			return false
		}
	}
	return true
}
