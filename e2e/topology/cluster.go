package topology

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"k8s.io/klog/v2"
)

// Spec describes a cluster to build.
type Spec struct {
	// Prefix starts every namespace name. Empty means a random "svcpXXXX"
	// that no namespace in /run/netns uses yet.
	Prefix string
	// Nodes are the nodes in order: the first is node 1.
	Nodes []NodeSpec
	// External adds the external client (namespace "<prefix>-external").
	External bool
	// LogDir receives the logs of started processes. Empty means a fresh
	// temporary directory that Close removes; a given directory is kept.
	LogDir string
}

// NodeSpec describes one node and its pods.
type NodeSpec struct {
	// Name is the node name, unique among nodes and pods.
	Name string
	// Pods are the pod names, unique among nodes and pods.
	Pods []string
}

// Cluster is a built topology. Close it when done.
type Cluster struct {
	// Prefix starts every namespace name of the cluster.
	Prefix string
	// Fabric is the namespace holding the bridge (no IP).
	Fabric *Host
	// Nodes are the nodes in Spec order.
	Nodes []*Node
	// Pods are all pods, node by node, in Spec order.
	Pods []*Pod
	// External is the external client, nil unless Spec.External.
	External *Host
	// LogDir holds the logs of started processes.
	LogDir string

	ownLogDir bool
	closeMu   sync.Mutex // serializes Close calls

	mu     sync.Mutex // guards the fields below
	closed bool
	procs  []*Proc
	logSeq int
}

// namePattern restricts host names to what is safe in a namespace name and
// a log file name.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// validate checks names and sizes against the address plan.
func (s Spec) validate() error {
	if len(s.Nodes) == 0 {
		return errors.New("a cluster needs at least one node")
	}
	if len(s.Nodes) > MaxNodes {
		return fmt.Errorf("%d nodes requested, the address plan holds %d", len(s.Nodes), MaxNodes)
	}
	if s.Prefix != "" && !namePattern.MatchString(s.Prefix) {
		return fmt.Errorf("invalid prefix %q: want %s", s.Prefix, namePattern)
	}
	seen := map[string]bool{FabricName: true, ExternalName: true}
	check := func(kind, name string) error {
		if !namePattern.MatchString(name) {
			return fmt.Errorf("invalid %s name %q: want %s", kind, name, namePattern)
		}
		if seen[name] {
			return fmt.Errorf("%s name %q is used twice or reserved", kind, name)
		}
		seen[name] = true
		return nil
	}
	for _, n := range s.Nodes {
		if err := check("node", n.Name); err != nil {
			return err
		}
		if len(n.Pods) > MaxPodsPerNode {
			return fmt.Errorf("node %s: %d pods requested, the address plan holds %d", n.Name, len(n.Pods), MaxPodsPerNode)
		}
		for _, p := range n.Pods {
			if err := check("pod", p); err != nil {
				return err
			}
		}
	}
	return nil
}

// randomPrefix returns "svcp" and 4 random hex digits not used in /run/netns.
func randomPrefix() (string, error) {
	for range 100 {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("reading random bytes: %w", err)
		}
		prefix := "svcp" + hex.EncodeToString(b[:])
		used, err := namespacesWithPrefix(prefix)
		if err != nil {
			return "", err
		}
		if len(used) == 0 {
			return prefix, nil
		}
	}
	return "", errors.New("no free random namespace prefix found")
}

// Build creates the namespaces, links, addresses, routes and sysctls that
// spec describes. On failure, or if Close is called meanwhile, it removes
// whatever it created and returns an error.
func Build(ctx context.Context, spec Spec) (*Cluster, error) {
	if err := spec.validate(); err != nil {
		return nil, fmt.Errorf("invalid topology: %w", err)
	}
	prefix := spec.Prefix
	if prefix == "" {
		var err error
		if prefix, err = randomPrefix(); err != nil {
			return nil, err
		}
	} else if used, err := namespacesWithPrefix(prefix); err != nil {
		return nil, err
	} else if len(used) > 0 {
		return nil, fmt.Errorf("namespaces with prefix %s exist already (%v): remove them with RemoveByPrefix", prefix, used)
	}
	c := &Cluster{Prefix: prefix, LogDir: spec.LogDir}
	if c.LogDir == "" {
		dir, err := os.MkdirTemp("", prefix+"-logs-")
		if err != nil {
			return nil, fmt.Errorf("creating log directory: %w", err)
		}
		c.LogDir, c.ownLogDir = dir, true
	} else if err := os.MkdirAll(c.LogDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating log directory: %w", err)
	}
	b := &builder{c: c, handles: map[string]*nsHandles{}}
	err := b.build(ctx, spec)
	b.closeHandles()
	if err != nil {
		if cerr := c.Close(); cerr != nil {
			klog.ErrorS(cerr, "Cleaning up after a failed build", "prefix", prefix)
		}
		return nil, fmt.Errorf("building topology %s: %w", prefix, err)
	}
	klog.V(1).InfoS("Built topology", "prefix", prefix, "nodes", len(c.Nodes), "pods", len(c.Pods), "external", c.External != nil)
	return c, nil
}

// Node returns the node called name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Pod returns the pod called name, or nil.
func (c *Cluster) Pod(name string) *Pod {
	for _, p := range c.Pods {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// Host returns the host called name (node, pod, "external" or "fabric"),
// or nil.
func (c *Cluster) Host(name string) *Host {
	if n := c.Node(name); n != nil {
		return &n.Host
	}
	if p := c.Pod(name); p != nil {
		return &p.Host
	}
	if c.External != nil && name == c.External.Name {
		return c.External
	}
	if c.Fabric != nil && name == c.Fabric.Name {
		return c.Fabric
	}
	return nil
}

// Hosts returns every host: fabric, nodes, pods, then the external client.
func (c *Cluster) Hosts() []*Host {
	var hosts []*Host
	if c.Fabric != nil {
		hosts = append(hosts, c.Fabric)
	}
	for _, n := range c.Nodes {
		hosts = append(hosts, &n.Host)
	}
	for _, p := range c.Pods {
		hosts = append(hosts, &p.Host)
	}
	if c.External != nil {
		hosts = append(hosts, c.External)
	}
	return hosts
}

// Close stops every process the cluster started (SIGTERM, SIGKILL after
// StopTimeout), kills any other process left in its namespaces, deletes all
// namespaces with the cluster's prefix and, if it created it, the log
// directory. It is idempotent, safe after a partial build and safe to call
// concurrently with Build, Start or another Close (for example from a signal
// handler): once it has begun, no new namespace or process is added.
func (c *Cluster) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()

	c.mu.Lock()
	c.closed = true
	procs := c.procs
	c.procs = nil
	c.mu.Unlock()

	var errs []error
	var wg sync.WaitGroup
	var errMu sync.Mutex
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Stop(); err != nil {
				errMu.Lock()
				errs = append(errs, err)
				errMu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := RemoveByPrefix(c.Prefix); err != nil {
		errs = append(errs, err)
	}
	if c.ownLogDir {
		if err := os.RemoveAll(c.LogDir); err != nil {
			errs = append(errs, fmt.Errorf("removing log directory: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing topology %s: %w", c.Prefix, err)
	}
	klog.V(1).InfoS("Closed topology", "prefix", c.Prefix)
	return nil
}

// track registers a started process, or refuses it once Close has begun.
func (c *Cluster) track(p *Proc) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("topology is closed")
	}
	c.procs = append(c.procs, p)
	return nil
}

// nextLogPath returns a fresh log file path for a process of host.
func (c *Cluster) nextLogPath(host, cmd string) string {
	c.mu.Lock()
	c.logSeq++
	seq := c.logSeq
	c.mu.Unlock()
	return filepath.Join(c.LogDir, fmt.Sprintf("%s.%s.%d.log", host, cmd, seq))
}

// newNamespace creates the namespace of a host unless Close has begun. The
// lock is held across the creation so Close never misses a namespace.
func (c *Cluster) newNamespace(name string) (netns.NsHandle, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return netns.None(), errors.New("topology is closed")
	}
	return createNamespace(NamespaceName(c.Prefix, name))
}

// nsHandles are the open handles of one namespace during the build.
type nsHandles struct {
	ns netns.NsHandle
	nl *netlink.Handle
}

// builder carries the open handles while a cluster is built.
type builder struct {
	c       *Cluster
	handles map[string]*nsHandles // by host name
}

func (b *builder) closeHandles() {
	for _, h := range b.handles {
		if h.nl != nil {
			h.nl.Close()
		}
		h.ns.Close()
	}
}

// addHost creates the namespace of a host, applies its sysctls and brings
// its loopback up.
func (b *builder) addHost(h *Host, settings []sysctl) (*nsHandles, error) {
	ns, err := b.c.newNamespace(h.Name)
	if err != nil {
		return nil, err
	}
	hs := &nsHandles{ns: ns}
	b.handles[h.Name] = hs
	h.NS = NamespaceName(b.c.Prefix, h.Name)
	h.cluster = b.c
	if hs.nl, err = netlink.NewHandleAt(ns); err != nil {
		return nil, fmt.Errorf("opening netlink in %s: %w", h.NS, err)
	}
	settings = append([]sysctl{
		{key: "net.ipv4.conf.all.rp_filter", value: "0"},
		{key: "net.ipv4.conf.default.rp_filter", value: "0"},
	}, settings...)
	if err := writeSysctls(ns, settings); err != nil {
		return nil, fmt.Errorf("in %s: %w", h.NS, err)
	}
	if err := setUp(hs.nl, "lo"); err != nil {
		return nil, fmt.Errorf("in %s: %w", h.NS, err)
	}
	klog.V(3).InfoS("Created namespace", "netns", h.NS)
	return hs, nil
}

func (b *builder) build(ctx context.Context, spec Spec) error {
	c := b.c
	c.Fabric = &Host{Name: FabricName}
	fabric, err := b.addHost(c.Fabric, []sysctl{
		{key: "net.bridge.bridge-nf-call-iptables", value: "0", optional: true},
		{key: "net.bridge.bridge-nf-call-ip6tables", value: "0", optional: true},
		{key: "net.bridge.bridge-nf-call-arptables", value: "0", optional: true},
	})
	if err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName}}
	if err := fabric.nl.LinkAdd(br); err != nil {
		return fmt.Errorf("adding bridge %s: %w", BridgeName, err)
	}
	if err := setUp(fabric.nl, BridgeName); err != nil {
		return err
	}

	fabricNet := netip.MustParsePrefix(FabricCIDR)
	for i, ns := range spec.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		node := &Node{Host: Host{Name: ns.Name, IP: NodeIP(i + 1)}, Index: i + 1}
		hs, err := b.addHost(&node.Host, []sysctl{{key: "net.ipv4.ip_forward", value: "1"}})
		if err != nil {
			return err
		}
		c.Nodes = append(c.Nodes, node)
		if err := b.attachToFabric(fabric, hs, fmt.Sprintf("vn%d", node.Index), netip.PrefixFrom(node.IP, fabricNet.Bits())); err != nil {
			return fmt.Errorf("node %s: %w", node.Name, err)
		}
	}
	if spec.External {
		ext := &Host{Name: ExternalName, IP: netip.MustParseAddr(ExternalIP)}
		hs, err := b.addHost(ext, nil)
		if err != nil {
			return err
		}
		c.External = ext
		if err := b.attachToFabric(fabric, hs, "vext", netip.PrefixFrom(ext.IP, fabricNet.Bits())); err != nil {
			return fmt.Errorf("external client: %w", err)
		}
		eth0, err := hs.nl.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("external client: %w", err)
		}
		gw := c.Nodes[0].IP
		routes := []netip.Prefix{netip.MustParsePrefix(ServiceCIDR), netip.MustParsePrefix(ExternalCIDR)}
		for _, dst := range routes {
			if err := addRoute(hs.nl, &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(dst), Gw: gw.AsSlice()}); err != nil {
				return fmt.Errorf("external client: %w", err)
			}
		}
		for _, n := range c.Nodes {
			if err := addRoute(hs.nl, &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(PodCIDR(n.Index)), Gw: n.IP.AsSlice()}); err != nil {
				return fmt.Errorf("external client: %w", err)
			}
		}
	}
	for i, ns := range spec.Nodes {
		node := c.Nodes[i]
		if err := b.nodeRoutes(node); err != nil {
			return fmt.Errorf("node %s: %w", node.Name, err)
		}
		used := map[string]bool{}
		for j, name := range ns.Pods {
			if err := ctx.Err(); err != nil {
				return err
			}
			pod := &Pod{Host: Host{Name: name, IP: PodIP(node.Index, j)}, Node: node, Index: j, HostIfName: hostIfName(name, j, used)}
			if err := b.addPod(node, pod); err != nil {
				return fmt.Errorf("pod %s on %s: %w", pod.Name, node.Name, err)
			}
			node.Pods = append(node.Pods, pod)
			c.Pods = append(c.Pods, pod)
		}
	}
	return nil
}

// attachToFabric connects a host's eth0 to the bridge and gives it addr.
func (b *builder) attachToFabric(fabric, hs *nsHandles, portName string, addr netip.Prefix) error {
	br, err := fabric.nl.LinkByName(BridgeName)
	if err != nil {
		return fmt.Errorf("finding bridge: %w", err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: portName, MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(hs.ns),
	}
	if err := fabric.nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth %s/eth0: %w", portName, err)
	}
	if err := setUp(fabric.nl, portName); err != nil {
		return err
	}
	return configureLink(hs.nl, "eth0", addr)
}

// nodeRoutes adds a node's routes to the other nodes' pods, the service
// range and the external range.
func (b *builder) nodeRoutes(node *Node) error {
	hs := b.handles[node.Name]
	eth0, err := hs.nl.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("finding eth0: %w", err)
	}
	idx := eth0.Attrs().Index
	for _, other := range b.c.Nodes {
		if other == node {
			continue
		}
		if err := addRoute(hs.nl, &netlink.Route{LinkIndex: idx, Dst: ipNet(PodCIDR(other.Index)), Gw: other.IP.AsSlice()}); err != nil {
			return err
		}
	}
	for _, cidr := range []string{ServiceCIDR, ExternalCIDR} {
		r := &netlink.Route{LinkIndex: idx, Dst: ipNet(netip.MustParsePrefix(cidr)), Scope: netlink.SCOPE_LINK}
		if err := addRoute(hs.nl, r); err != nil {
			return err
		}
	}
	return nil
}

// addPod creates the pod namespace and its point-to-point veth to the node.
func (b *builder) addPod(node *Node, pod *Pod) error {
	hs, err := b.addHost(&pod.Host, nil)
	if err != nil {
		return err
	}
	nodeHS := b.handles[node.Name]
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: pod.HostIfName},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(hs.ns),
	}
	if err := nodeHS.nl.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth %s/eth0: %w", pod.HostIfName, err)
	}
	// Node side: the node's own address as /32 and a /32 route to the pod.
	if err := configureLink(nodeHS.nl, pod.HostIfName, netip.PrefixFrom(node.IP, 32)); err != nil {
		return err
	}
	hostIf, err := nodeHS.nl.LinkByName(pod.HostIfName)
	if err != nil {
		return fmt.Errorf("finding %s: %w", pod.HostIfName, err)
	}
	toPod := &netlink.Route{LinkIndex: hostIf.Attrs().Index, Dst: ipNet(netip.PrefixFrom(pod.IP, 32)), Scope: netlink.SCOPE_LINK}
	if err := addRoute(nodeHS.nl, toPod); err != nil {
		return err
	}
	// Pod side: its /32, a link route to the node, a default route via it.
	if err := configureLink(hs.nl, "eth0", netip.PrefixFrom(pod.IP, 32)); err != nil {
		return err
	}
	eth0, err := hs.nl.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("finding eth0: %w", err)
	}
	toNode := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: ipNet(netip.PrefixFrom(node.IP, 32)), Scope: netlink.SCOPE_LINK}
	if err := addRoute(hs.nl, toNode); err != nil {
		return err
	}
	def := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: node.IP.AsSlice(), Flags: int(netlink.FLAG_ONLINK)}
	return addRoute(hs.nl, def)
}

// hostIfName returns the node-side interface name of a pod's veth:
// "veth-<pod>" when that fits in 15 bytes, else "veth" and a hash of the
// name, else "vethp<index>".
func hostIfName(pod string, index int, used map[string]bool) string {
	h := fnv.New32a()
	h.Write([]byte(pod))
	for _, name := range []string{"veth-" + pod, fmt.Sprintf("veth%08x", h.Sum32()), fmt.Sprintf("vethp%d", index)} {
		if len(name) <= 15 && !used[name] {
			used[name] = true
			return name
		}
	}
	name := fmt.Sprintf("vethq%d", index) // unreachable in practice
	used[name] = true
	return name
}

// setUp sets the link called name up.
func setUp(nl *netlink.Handle, name string) error {
	link, err := nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding link %s: %w", name, err)
	}
	if err := nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting link %s up: %w", name, err)
	}
	return nil
}

// configureLink adds addr to the link called name and sets it up.
func configureLink(nl *netlink.Handle, name string, addr netip.Prefix) error {
	link, err := nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding link %s: %w", name, err)
	}
	if err := nl.AddrAdd(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("adding %s to %s: %w", addr, name, err)
	}
	if err := nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting link %s up: %w", name, err)
	}
	return nil
}

// addRoute adds r, naming it in the error.
func addRoute(nl *netlink.Handle, r *netlink.Route) error {
	if err := nl.RouteAdd(r); err != nil {
		return fmt.Errorf("adding route %s: %w", r, err)
	}
	return nil
}

// ipNet converts an IPv4 prefix to the net.IPNet netlink wants. The address
// is kept as given (not masked), as an interface address needs.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// LogTails returns the last n lines of every process log of the cluster,
// each under a "=== file ===" header, for a failed test to print.
func (c *Cluster) LogTails(n int) string {
	var b strings.Builder
	entries, _ := os.ReadDir(c.LogDir)
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(c.LogDir, e.Name()))
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(&b, "=== %s ===\n%s\n", e.Name(), strings.Join(lines, "\n"))
	}
	return b.String()
}
