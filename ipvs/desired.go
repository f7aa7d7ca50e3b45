package ipvs

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// Schedulers lists the IPVS schedulers the kernel offers, by ipvsadm name.
var Schedulers = map[string]string{
	"rr":    "round robin: each new connection goes to the next real server in turn",
	"wrr":   "weighted round robin: round robin in proportion to the weights",
	"lc":    "least connection: the real server with the fewest active connections",
	"wlc":   "weighted least connection: fewest connections relative to weight",
	"lblc":  "locality-based least connection: the same server per destination unless it is overloaded",
	"lblcr": "locality-based least connection with replication",
	"dh":    "destination hashing: a hash of the destination address picks the server",
	"sh":    "source hashing: a hash of the client address picks the server, so a client keeps its server",
	"sed":   "shortest expected delay: (active connections + 1) / weight, smallest wins",
	"nq":    "never queue: an idle server if there is one, else shortest expected delay",
	"mh":    "maglev hashing: consistent hashing of the client address",
	"fo":    "weighted failover: the available server with the highest weight",
	"ovf":   "weighted overflow: the highest weight server until its connections exceed its weight",
	"twos":  "weighted random twos choice",
}

// schedulerSpec is a parsed scheduler annotation.
type schedulerSpec struct {
	name    string
	weights map[netip.Addr]int
}

// parseScheduler parses the value of proxier.SchedulerAnnotation:
//
//	SCHEDULER[;IP=WEIGHT,IP=WEIGHT...]
//
// e.g. "sh", or "wrr;10.244.1.11=3,10.244.2.10=1". Endpoints not listed get
// weight 1. An empty value means the default scheduler.
func parseScheduler(value, def string) (schedulerSpec, error) {
	spec := schedulerSpec{name: def}
	name, weights, _ := strings.Cut(strings.TrimSpace(value), ";")
	if name = strings.TrimSpace(name); name != "" {
		spec.name = name
	}
	if _, ok := Schedulers[spec.name]; !ok {
		return schedulerSpec{name: def}, fmt.Errorf("unknown IPVS scheduler %q", spec.name)
	}
	for _, kv := range strings.Split(weights, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		ipStr, wStr, ok := strings.Cut(kv, "=")
		ip, err := netip.ParseAddr(strings.TrimSpace(ipStr))
		if !ok || err != nil {
			return schedulerSpec{name: spec.name}, fmt.Errorf("weight %q: want IP=WEIGHT", kv)
		}
		w, err := strconv.Atoi(strings.TrimSpace(wStr))
		if err != nil || w < 0 || w > 65535 {
			return schedulerSpec{name: spec.name}, fmt.Errorf("weight %q: want an integer 0-65535", kv)
		}
		if spec.weights == nil {
			spec.weights = map[netip.Addr]int{}
		}
		spec.weights[ip] = w
	}
	return spec, nil
}

// desiredVS is one virtual server with the real servers and weights it
// should have.
type desiredVS struct {
	vs    VirtualServer
	dests map[netip.AddrPort]int
}

// serviceState is everything one service port puts in the kernel.
type serviceState struct {
	servers map[Key]*desiredVS
	// addrs are the addresses the service needs on kube-ipvs0.
	addrs []netip.Addr
	// entries are the service's ipset members, by set.
	entries map[string][]SetEntry
}

// buildContext is what building a service's state needs besides the
// service.
type buildContext struct {
	cfg       proxier.Config
	nodeAddrs []netip.Addr
}

// build computes a service port's kernel state from its selected
// endpoints. It is a pure function of its arguments.
func (bc *buildContext) build(sp *proxier.ServicePort, sel proxier.Selection) *serviceState {
	st := &serviceState{servers: map[Key]*desiredVS{}, entries: map[string][]SetEntry{}}
	def := bc.cfg.IPVS.Scheduler
	if def == "" {
		def = "rr"
	}
	spec, err := parseScheduler(sp.Scheduler, def)
	if err != nil {
		klog.ErrorS(err, "Ignoring a bad scheduler annotation", "servicePort", sp.Name.String(), "annotation", proxier.SchedulerAnnotation)
	}
	var timeout uint32
	if sp.SessionAffinity() {
		timeout = uint32(max(1, sp.StickyTimeout.Seconds()))
	}
	proto := sp.Name.Protocol
	addEntry := func(set string, e SetEntry) { st.entries[set] = append(st.entries[set], e) }
	addVS := func(ip netip.Addr, port int, eps []proxier.Endpoint) Key {
		k := Key{Address: ip, Protocol: proto, Port: uint16(port)}
		d := &desiredVS{vs: VirtualServer{Key: k, Scheduler: spec.name, Timeout: timeout}, dests: map[netip.AddrPort]int{}}
		for _, ep := range eps {
			if !ep.IP.Is4() {
				continue
			}
			w, ok := spec.weights[ep.IP]
			if !ok {
				w = 1
			}
			d.dests[ep.AddrPort()] = w
		}
		st.servers[k] = d
		if len(d.dests) == 0 {
			addEntry(setNoEndpoints, SetEntry{IP: ip, Protocol: proto, Port: uint16(port)})
		}
		return k
	}
	entry := func(ip netip.Addr, port int) SetEntry { return SetEntry{IP: ip, Protocol: proto, Port: uint16(port)} }
	external := !sp.ExternalPolicyLocal

	for _, ip := range sp.ClusterIPs {
		if !ip.Is4() {
			continue
		}
		addVS(ip, sp.Port, sel.Cluster)
		st.addrs = append(st.addrs, ip)
		addEntry(setClusterIP, entry(ip, sp.Port))
	}
	for _, ip := range sp.ExternalIPs {
		if !ip.Is4() {
			continue
		}
		addVS(ip, sp.Port, sel.External)
		st.addrs = append(st.addrs, ip)
		if external {
			addEntry(setExternalIP, entry(ip, sp.Port))
		}
	}
	for _, ip := range sp.LoadBalancerIPs {
		if !ip.Is4() {
			continue
		}
		addVS(ip, sp.Port, sel.External)
		st.addrs = append(st.addrs, ip)
		if external {
			addEntry(setLoadBalancer, entry(ip, sp.Port))
		}
		if len(sp.LoadBalancerSourceRanges) > 0 {
			addEntry(setLoadBalancerFW, entry(ip, sp.Port))
			for _, r := range sp.LoadBalancerSourceRanges {
				if r.Addr().Is4() {
					e := entry(ip, sp.Port)
					e.Net = r.Masked()
					addEntry(setSourceCIDR, e)
				}
			}
		}
	}
	if sp.NodePort != 0 {
		for _, ip := range bc.nodeAddrs {
			addVS(ip, sp.NodePort, sel.External)
			if external {
				addEntry(setNodePort, entry(ip, sp.NodePort))
			}
		}
	}
	for _, ep := range sel.All {
		if ep.IP.Is4() {
			addEntry(setLoopBack, SetEntry{IP: ep.IP, Protocol: proto, Port: uint16(ep.Port), IP2: ep.IP})
		}
	}
	return st
}
