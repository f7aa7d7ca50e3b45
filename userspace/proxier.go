// Package userspace is svcproxy's userspace mode, as kube-proxy's historical
// userspace mode worked: every service port gets a proxy socket on the node
// (an ephemeral port on 0.0.0.0), and NAT rules REDIRECT the service's
// addresses (cluster IPs, NodePorts, external and LoadBalancer IPs) into
// it. The socket accepts, picks a backend with a round-robin balancer
// (ClientIP affinity honoured), connects (trying the next backend when a
// connect fails) and streams both ways with splice(2). UDP gets per-client
// sessions. See README.md for the architecture.
package userspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/svcproxy/svcproxy/proxier"
)

// DefaultStateDir is where the proxy writes its state file for explain.
const DefaultStateDir = "/run/svcproxy"

// portal is a proxy socket, TCP or UDP.
type portal interface {
	// Port is the socket's ephemeral port, the REDIRECT target.
	Port() int
	// Balancer picks the backends of new connections.
	Balancer() *Balancer
	// Start runs the socket's accept or read loop.
	Start()
	// Close closes the socket; with all set, also its open connections.
	// It may be called more than once.
	Close(all bool)
	// OpenConns returns the number of connections (TCP, client side) or
	// sessions (UDP) still open.
	OpenConns() int
}

var (
	_ portal = (*tcpPortal)(nil)
	_ portal = (*udpPortal)(nil)
)

// portalEntry is one proxy socket of a service port and the endpoints it
// should balance over.
type portalEntry struct {
	socket portal
	// traffic is "cluster", "external" or "cluster+external".
	traffic   string
	endpoints []netip.AddrPort
}

// portalSet is a service port's proxy sockets: one for cluster traffic and,
// when external traffic (NodePort, external and LoadBalancer IPs) uses
// another endpoint set (e.g. externalTrafficPolicy: Local), one for that.
type portalSet struct {
	sp       *proxier.ServicePort
	cluster  *portalEntry
	external *portalEntry // nil: external traffic uses the cluster socket
}

// portals returns the set's entries, the cluster one first.
func (s *portalSet) portals() []*portalEntry {
	if s.external == nil {
		return []*portalEntry{s.cluster}
	}
	return []*portalEntry{s.cluster, s.external}
}

// Proxier is the userspace mode. Build it with New; Sync opens the sockets
// and writes the rules; Close closes the sockets.
//
// The sockets live until Close (or until their service port goes away), not
// for the duration of Sync's context: the sync runner's context ends on
// shutdown, and the process that owns the Proxier decides when to Close.
type Proxier struct {
	cfg      proxier.Config
	restorer proxier.Restorer
	// nodeAddrs lists the node addresses NodePorts answer on when
	// cfg.NodePortAddresses is set.
	nodeAddrs func([]netip.Prefix) ([]netip.Addr, error)
	// listenIP is where proxy sockets listen (0.0.0.0; loopback in tests).
	listenIP       netip.Addr
	connectTimeout time.Duration
	udpIdle        time.Duration
	closeGrace     time.Duration
	stateDir       string

	mu      sync.Mutex
	sets    map[proxier.ServicePortName]*portalSet
	applied ruleSet
	synced  bool
	closed  bool
	counts  map[string]int
	// swept is set once stale state files of dead proxies were removed.
	swept bool
}

var _ proxier.Proxier = (*Proxier)(nil)
var _ proxier.Closer = (*Proxier)(nil)

// New returns a userspace proxier for cfg. It starts nothing: sockets are
// opened by Sync, and Explain and Cleanup work without any.
func New(cfg proxier.Config) (*Proxier, error) {
	return &Proxier{
		cfg:            cfg,
		restorer:       proxier.ExecRestorer{},
		nodeAddrs:      proxier.NodeAddresses,
		listenIP:       netip.IPv4Unspecified(),
		connectTimeout: DefaultConnectTimeout,
		udpIdle:        cfg.UDPIdleTimeout,
		closeGrace:     CloseGrace,
		stateDir:       DefaultStateDir,
		sets:           map[proxier.ServicePortName]*portalSet{},
		counts:         map[string]int{},
	}, nil
}

// supported reports why a service port cannot be proxied in this mode, or
// "" if it can.
func supported(sp *proxier.ServicePort) string {
	if sp.Name.Protocol != v1.ProtocolTCP && sp.Name.Protocol != v1.ProtocolUDP {
		return "the userspace mode proxies TCP and UDP only"
	}
	if !slices.ContainsFunc(sp.ClusterIPs, netip.Addr.Is4) && !slices.ContainsFunc(sp.ExternalIPs, netip.Addr.Is4) &&
		!slices.ContainsFunc(sp.LoadBalancerIPs, netip.Addr.Is4) && sp.NodePort == 0 {
		return "the userspace mode proxies IPv4 only"
	}
	return ""
}

// addrPorts returns the endpoints' addresses.
func addrPorts(eps []proxier.Endpoint) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(eps))
	for _, e := range eps {
		if e.IP.Is4() {
			out = append(out, e.AddrPort())
		}
	}
	return out
}

// Sync opens the proxy sockets of new service ports, closes those of
// removed ones, points each socket's balancer at its endpoints and rewrites
// the REDIRECT rules with one iptables-restore. If the rules cannot be
// written, the sockets it opened are closed again and the previous state
// stays in force. Endpoint changes alone leave the rules untouched (their
// counters keep counting): they only reach the balancers.
func (p *Proxier) Sync(ctx context.Context, snap proxier.Snapshot, ch proxier.Changes) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("userspace: sync after Close")
	}
	full := ch.Full || !p.synced

	var names []proxier.ServicePortName
	if full {
		for spn := range p.sets {
			names = append(names, spn)
		}
		for spn := range snap.Services {
			if _, ok := p.sets[spn]; !ok {
				names = append(names, spn)
			}
		}
	} else {
		for spn := range ch.Services {
			names = append(names, spn)
		}
	}

	next := make(map[proxier.ServicePortName]*portalSet, len(p.sets))
	for spn, s := range p.sets {
		next[spn] = s
	}
	var opened, dropped []portal
	fail := func(err error) error {
		for _, o := range opened {
			o.Close(true)
		}
		return err
	}
	for _, spn := range names {
		old := p.sets[spn]
		sp, ok := snap.Services[spn]
		if ok {
			if why := supported(sp); why != "" {
				klog.V(2).InfoS("Not proxying service port", "servicePort", spn.String(), "reason", why)
				ok = false
			}
		}
		if !ok {
			if old != nil {
				for _, e := range old.portals() {
					dropped = append(dropped, e.socket)
				}
				delete(next, spn)
			}
			continue
		}
		sel := proxier.SelectEndpoints(sp, snap.Endpoints[spn], p.cfg.Node)
		clusterEps, externalEps := addrPorts(sel.Cluster), addrPorts(sel.External)
		set := &portalSet{sp: sp}
		var err error
		if set.cluster, err = p.entry(old, false, sp, clusterEps, &opened); err != nil {
			return fail(err)
		}
		if sp.ExternallyReachable() && !slices.Equal(clusterEps, externalEps) {
			set.cluster.traffic = "cluster"
			if set.external, err = p.entry(old, true, sp, externalEps, &opened); err != nil {
				return fail(err)
			}
		} else if old != nil && old.external != nil {
			dropped = append(dropped, old.external.socket)
		}
		next[spn] = set
	}

	sets := sortedSets(next)
	np, err := p.nodePorts()
	if err != nil {
		return fail(err)
	}
	// rs (without jumps) is what the previous sync is compared with.
	rs := buildRules(sets, np, nil)
	write := !bytes.Equal(rs.payload, p.applied.payload)
	payload := rs.payload
	if full {
		// Check the kernel: jumps present, nobody flushed our chains.
		savedNat, err := p.restorer.Save(ctx, "nat")
		if err != nil {
			return fail(fmt.Errorf("userspace: %w", err))
		}
		savedFilter, err := p.restorer.Save(ctx, "filter")
		if err != nil {
			return fail(fmt.Errorf("userspace: %w", err))
		}
		if missing := missingJumps(savedNat, savedFilter); len(missing) > 0 {
			write = true
			payload = buildRules(sets, np, missing).payload
		} else if !write {
			if err := inKernel(rs, savedNat, savedFilter); err != nil {
				klog.InfoS("Userspace rules in the kernel differ from what was written; rewriting them", "reason", err)
				write = true
			}
		}
	}
	// Unchanged rules are not rewritten, so their counters keep counting.
	if write {
		if err := p.restorer.Restore(ctx, payload); err != nil {
			return fail(fmt.Errorf("userspace: write rules: %w", err))
		}
	}

	// The rules are in force: commit.
	for _, s := range sets {
		for _, e := range s.portals() {
			e.socket.Balancer().Update(e.endpoints, s.sp.StickyTimeout)
			if u, ok := e.socket.(*udpPortal); ok {
				u.DropSessionsNotIn(e.endpoints)
			}
		}
	}
	for _, d := range dropped {
		d.Close(false)
	}
	for _, o := range opened {
		o.Start()
	}
	p.sets = next
	p.applied = rs
	p.synced = true
	sockets := 0
	for _, s := range sets {
		sockets += len(s.portals())
	}
	p.counts = map[string]int{"userspace-proxy-sockets": sockets, "iptables-nat": rs.nat, "iptables-filter": rs.filter}
	if err := p.writeState(sets, np); err != nil {
		klog.ErrorS(err, "Cannot write the userspace state file; explain will not show endpoints")
	}
	return nil
}

// entry returns the cluster (or external) portal entry of a service port:
// the old socket when there is one, else a new socket added to opened (with
// its balancer already loaded, so it serves from the moment the rules point
// to it).
func (p *Proxier) entry(old *portalSet, external bool, sp *proxier.ServicePort, eps []netip.AddrPort, opened *[]portal) (*portalEntry, error) {
	e := &portalEntry{traffic: "cluster+external", endpoints: eps}
	if external {
		e.traffic = "external"
	} else if !sp.ExternallyReachable() {
		e.traffic = "cluster"
	}
	if old != nil {
		if external && old.external != nil {
			e.socket = old.external.socket
			return e, nil
		}
		if !external {
			e.socket = old.cluster.socket
			return e, nil
		}
	}
	name := sp.Name.String()
	if external {
		name += " (external)"
	}
	bal := NewBalancer(nil)
	bal.Update(eps, sp.StickyTimeout)
	var sock portal
	var err error
	if sp.Name.Protocol == v1.ProtocolUDP {
		sock, err = listenUDP(name, p.listenIP, bal, p.udpIdle)
	} else {
		sock, err = listenTCP(name, p.listenIP, bal, p.connectTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("userspace: %w", err)
	}
	e.socket = sock
	*opened = append(*opened, sock)
	klog.InfoS("Opened proxy socket", "servicePort", sp.Name.String(), "protocol", sp.Name.Protocol,
		"proxyPort", sock.Port(), "traffic", e.traffic, "endpoints", len(eps))
	return e, nil
}

// nodePorts resolves where NodePorts answer.
func (p *Proxier) nodePorts() (nodePorts, error) {
	if len(p.cfg.NodePortAddresses) == 0 {
		return nodePorts{allLocal: true}, nil
	}
	addrs, err := p.nodeAddrs(p.cfg.NodePortAddresses)
	if err != nil {
		return nodePorts{}, fmt.Errorf("userspace: %w", err)
	}
	return nodePorts{addrs: addrs}, nil
}

// sortedSets returns the sets in service port name order, so the rules come
// out the same way every time.
func sortedSets(m map[proxier.ServicePortName]*portalSet) []*portalSet {
	out := make([]*portalSet, 0, len(m))
	for _, s := range m {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *portalSet) int {
		if c := strings.Compare(a.sp.Name.String(), b.sp.Name.String()); c != 0 {
			return c
		}
		return strings.Compare(string(a.sp.Name.Protocol), string(b.sp.Name.Protocol))
	})
	return out
}

// RuleCounts returns the number of proxy sockets and of rules written by
// the last successful Sync.
func (p *Proxier) RuleCounts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.counts))
	for k, v := range p.counts {
		out[k] = v
	}
	return out
}

// CloseGrace is how long Close lets open TCP connections finish before it
// resets them.
const CloseGrace = 2 * time.Second

// Close shuts the proxy down gracefully: every proxy socket stops
// accepting at once (UDP sockets and their sessions close), open TCP
// connections get up to CloseGrace to finish, and those still open then are
// reset. The state file for explain is removed. The rules stay, so that a restarted proxy finds its chains (new
// connections are refused meanwhile); Cleanup removes them. Sync fails
// after Close.
func (p *Proxier) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	var all []portal
	for _, s := range p.sets {
		for _, e := range s.portals() {
			all = append(all, e.socket)
		}
	}
	p.sets = map[proxier.ServicePortName]*portalSet{}
	open := func() int {
		n := 0
		for _, s := range all {
			n += s.OpenConns()
		}
		return n
	}
	for _, s := range all {
		s.Close(false)
	}
	deadline := time.Now().Add(p.closeGrace)
	for open() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	reset := open()
	for _, s := range all {
		s.Close(true)
	}
	if path, err := p.statePath(); err == nil {
		if err := removeIfExists(path); err != nil {
			klog.ErrorS(err, "Cannot remove the userspace state file")
		}
	}
	klog.InfoS("Closed the userspace proxy sockets", "sockets", len(all), "connectionsReset", reset)
	return nil
}

// Cleanup removes every chain svcproxy created in the nat and filter tables
// in any mode (all are named with proxier.ChainPrefix) and the state file.
// It does not close sockets; see Close.
func (p *Proxier) Cleanup(ctx context.Context) error {
	err := proxier.RemoveOurs(ctx, p.restorer, "nat", "filter")
	if path, perr := p.statePath(); perr == nil {
		if rerr := removeIfExists(path); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	if err != nil {
		return fmt.Errorf("userspace cleanup: %w", err)
	}
	return nil
}

// Explain writes how a packet to dst reaches a backend through the
// userspace mode: the REDIRECT rules that catch it (with counters), the
// proxy socket they send it to and the process that owns it, the filter
// rules that may reject it, and the endpoints the proxy balances over (from
// the state file the running proxy writes). It reads the kernel and /proc,
// so it works from another process than the proxy.
func (p *Proxier) Explain(ctx context.Context, w io.Writer, proto v1.Protocol, dst netip.AddrPort) error {
	return p.explain(ctx, w, proto, dst)
}
