package proxier

import "net/netip"

// Selection is the endpoints a service port sends traffic to, split as
// kube-proxy splits them: traffic from inside the cluster and traffic from
// outside (NodePort, external and LoadBalancer IPs) may use different sets.
type Selection struct {
	// Cluster receives traffic to the cluster IPs.
	Cluster []Endpoint
	// External receives traffic to NodePorts, external IPs and LoadBalancer
	// IPs.
	External []Endpoint
	// All is the union of Cluster and External, in order.
	All []Endpoint
	// LocalCount is the number of usable endpoints on this node (reported
	// by the health-check node port).
	LocalCount int
}

// SelectEndpoints picks the endpoints of sp for this node, following
// kube-proxy: ready endpoints, or the serving terminating ones when none is
// ready; topology (PreferClose / zone hints) narrows cluster traffic to the
// node's zone when every endpoint has a hint and one matches; Local traffic
// policies restrict to endpoints on this node.
func SelectEndpoints(sp *ServicePort, eps []Endpoint, node Node) Selection {
	usable := usableEndpoints(eps, func(Endpoint) bool { return true })
	local := usableEndpoints(eps, func(e Endpoint) bool { return e.NodeName == node.Name && node.Name != "" })
	sel := Selection{LocalCount: len(local)}

	cluster := usable
	if sp.InternalPolicyLocal {
		cluster = local
	} else if zoned := preferZone(sp, usable, node); zoned != nil {
		cluster = zoned
	}
	external := cluster
	if sp.ExternalPolicyLocal {
		external = local
	} else if sp.InternalPolicyLocal {
		external = usable
	}
	sel.Cluster, sel.External = cluster, external
	sel.All = append([]Endpoint(nil), cluster...)
	in := map[netip.AddrPort]bool{}
	for _, e := range cluster {
		in[e.AddrPort()] = true
	}
	for _, e := range external {
		if !in[e.AddrPort()] {
			sel.All = append(sel.All, e)
			in[e.AddrPort()] = true
		}
	}
	return sel
}

// usableEndpoints returns the ready endpoints that keep, or when none is
// ready the serving terminating ones.
func usableEndpoints(eps []Endpoint, keep func(Endpoint) bool) []Endpoint {
	var ready, terminating []Endpoint
	for _, e := range eps {
		if !keep(e) {
			continue
		}
		switch {
		case e.Ready:
			ready = append(ready, e)
		case e.Serving && e.Terminating:
			terminating = append(terminating, e)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return terminating
}

// preferZone returns the endpoints meant for the node's zone, or nil when
// topology does not apply (no zone, no preference, a missing hint, or no
// endpoint for the zone).
func preferZone(sp *ServicePort, eps []Endpoint, node Node) []Endpoint {
	if node.Zone == "" || len(eps) == 0 {
		return nil
	}
	var out []Endpoint
	hinted := true
	for _, e := range eps {
		if len(e.ZoneHints) == 0 {
			hinted = false
		}
		for _, z := range e.ZoneHints {
			if z == node.Zone {
				out = append(out, e)
				break
			}
		}
	}
	if hinted && len(out) > 0 {
		return out
	}
	if !sp.PreferClose {
		return nil
	}
	out = out[:0]
	for _, e := range eps {
		if e.Zone == node.Zone {
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
