package userspace

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	v1 "k8s.io/api/core/v1"
)

// explain implements Explain; see there.
func (p *Proxier) explain(ctx context.Context, w io.Writer, proto v1.Protocol, dst netip.AddrPort) error {
	savedNat, err := p.restorer.Save(ctx, "nat")
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	savedFilter, err := p.restorer.Save(ctx, "filter")
	if err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	local := localAddrs()
	ew := &errWriter{w: w}
	ew.printf("%s packet to %s, userspace mode\n\n", proto, dst)

	// Step 1: the REDIRECT rules.
	ports := map[int]bool{}
	var portOrder []int
	found := false
	for _, step := range []struct{ chain, hook, result string }{
		{ContainerChain, "arriving at this node (nat PREROUTING -> " + ContainerChain + ")",
			"the destination becomes <address of the interface it arrived on>:%d"},
		{HostChain, "sent from this node itself (nat OUTPUT -> " + HostChain + ")",
			"the destination becomes 127.0.0.1:%d (REDIRECT in OUTPUT always picks loopback)"},
	} {
		rules, exists := parseSaved(savedNat, step.chain)
		if !exists {
			continue
		}
		var hits []savedRule
		for _, r := range rules {
			if redirectMatches(r, proto, dst, local) {
				hits = append(hits, r)
			}
		}
		if len(hits) == 0 {
			continue
		}
		if !found {
			ew.printf("1. NAT: the REDIRECT rules that catch it\n")
			found = true
		}
		ew.printf("   %s:\n", step.hook)
		for _, r := range hits {
			to, _ := arg(r.args, "--to-ports")
			port, _ := strconv.Atoi(to)
			ew.printf("     [%d pkts, %d bytes] %s\n", r.packets, r.bytes, r.line)
			ew.printf("       -> "+step.result+"\n", port)
			if !ports[port] {
				ports[port] = true
				portOrder = append(portOrder, port)
			}
		}
	}
	if !found {
		if _, exists := parseSaved(savedNat, ContainerChain); !exists {
			ew.printf("No userspace rules in this network namespace (chain %s is missing):\nthe userspace proxy is not running here, or another mode is.\n", ContainerChain)
			return ew.err
		}
		ew.printf("No REDIRECT rule in %s or %s catches %s %s:\nthe userspace proxy does not serve that address; the packet is routed as it is.\n",
			ContainerChain, HostChain, proto, dst)
		return ew.err
	}
	ew.printf("   (NAT rules see only the first packet of each flow; conntrack rewrites\n   the later ones the same way, and turns the replies' source back into\n   %s.)\n\n", dst)

	// Step 2: filter rules on the proxy port.
	ew.printf("2. Filter (filter INPUT -> %s)\n", InputChain)
	rules, _ := parseSaved(savedFilter, InputChain)
	anyFilter := false
	for _, r := range rules {
		if !filterMatches(r, proto, dst, ports) {
			continue
		}
		anyFilter = true
		target, _ := arg(r.args, "-j")
		ew.printf("     [%d pkts, %d bytes] %s\n", r.packets, r.bytes, r.line)
		switch target {
		case "REJECT":
			if proto == v1.ProtocolUDP {
				ew.printf("       -> the service port has no endpoints: datagrams get ICMP port unreachable\n")
			} else {
				ew.printf("       -> the service port has no endpoints: connections are refused\n")
			}
		case "RETURN":
			src, _ := arg(r.args, "-s")
			ew.printf("       -> sources in %s may pass (loadBalancerSourceRanges)\n", src)
		case "DROP":
			if origDst, _ := arg(r.args, "--ctorigdst"); origDst != "" {
				ew.printf("       -> any other source is dropped\n")
			} else {
				ew.printf("       -> no endpoint on this node for external traffic (Local policy): dropped\n")
			}
		}
	}
	if !anyFilter {
		ew.printf("     none: the packet is delivered to the proxy socket\n")
	}
	ew.printf("\n")

	// Step 3: the proxy sockets.
	ew.printf("3. The proxy socket\n")
	for _, port := range portOrder {
		sock, err := findSocket(proto, port)
		switch {
		case err != nil:
			ew.printf("   %s port %d: cannot read the socket table: %v\n", proto, port, err)
		case sock == nil:
			ew.printf("   %s port %d: NO SOCKET LISTENS: the rules are stale (proxy stopped?); connections are refused\n", proto, port)
		default:
			owner := "owner not found (another pid namespace?)"
			if sock.pid > 0 {
				owner = fmt.Sprintf("owned by pid %d (%s)", sock.pid, sock.comm)
			}
			ew.printf("   %s %s, socket inode %d, %s\n", proto, sock.local, sock.inode, owner)
		}
	}
	if proto == v1.ProtocolUDP {
		ew.printf("   The proxy keeps a session per client and forwards each datagram to the\n   backend from its own socket; replies leave the proxy socket from the\n   redirected address, so conntrack turns their source back into %s.\n\n", dst)
	} else {
		ew.printf("   The proxy accepts the connection, picks a backend and opens a second\n   connection to it (the backend sees the node's address as the source),\n   trying the next backend if the connect fails, then splices bytes both ways.\n\n")
	}

	// Step 4: the service and its endpoints, from the state file.
	st, path, err := p.readState()
	switch {
	case err != nil:
		ew.printf("4. Endpoints: %v\n", err)
	case st == nil:
		ew.printf("4. Endpoints: no state file at %s (the proxy writes it at every sync)\n", path)
	default:
		ew.printf("4. Service and endpoints (from %s, written by pid %d at %s)\n", path, st.PID, st.Synced.Format("15:04:05 MST"))
		if err := syscall.Kill(st.PID, 0); errors.Is(err, syscall.ESRCH) {
			ew.printf("   (pid %d is gone: this is what the proxy knew when it stopped)\n", st.PID)
		}
		for _, port := range portOrder {
			for _, ps := range st.Portals {
				if ps.ProxyPort != port || ps.Protocol != string(proto) {
					continue
				}
				ew.printf("   %s (%s traffic) on proxy port %d\n", ps.Service, ps.Traffic, ps.ProxyPort)
				ew.printf("     catches: %s\n", strings.Join(ps.Captures, ", "))
				if ps.StickyTimeout != "" {
					ew.printf("     balancing: round robin, ClientIP affinity for %s\n", ps.StickyTimeout)
				} else {
					ew.printf("     balancing: round robin, no session affinity\n")
				}
				if len(ps.Endpoints) == 0 {
					ew.printf("     endpoints: none\n")
				} else {
					ew.printf("     endpoints (%d): %s\n", len(ps.Endpoints), strings.Join(ps.Endpoints, ", "))
				}
			}
		}
	}
	return ew.err
}

// redirectMatches reports whether a portal rule catches proto to dst.
func redirectMatches(r savedRule, proto v1.Protocol, dst netip.AddrPort, local map[netip.Addr]bool) bool {
	if target, _ := arg(r.args, "-j"); target != "REDIRECT" || protoOf(r.args) != proto {
		return false
	}
	if port, _ := arg(r.args, "--dport"); port != strconv.Itoa(int(dst.Port())) {
		return false
	}
	if d, _ := arg(r.args, "-d"); d != "" {
		pfx, err := netip.ParsePrefix(d)
		return err == nil && pfx.Contains(dst.Addr())
	}
	if t, _ := arg(r.args, "--dst-type"); t == "LOCAL" {
		return local[dst.Addr()] || dst.Addr().IsLoopback()
	}
	return false
}

// filterMatches reports whether a rule of InputChain applies to a packet to
// dst that was redirected to one of ports.
func filterMatches(r savedRule, proto v1.Protocol, dst netip.AddrPort, ports map[int]bool) bool {
	if protoOf(r.args) != proto {
		return false
	}
	if origDst, _ := arg(r.args, "--ctorigdst"); origDst != "" {
		pfx, err := netip.ParsePrefix(origDst)
		origPort, _ := arg(r.args, "--ctorigdstport")
		return err == nil && pfx.Contains(dst.Addr()) && origPort == strconv.Itoa(int(dst.Port()))
	}
	port, _ := arg(r.args, "--dport")
	n, err := strconv.Atoi(port)
	return err == nil && ports[n]
}

// localAddrs returns this namespace's IPv4 addresses.
func localAddrs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok {
				out[ip] = true
			}
		}
	}
	return out
}

// socketInfo is a listening (TCP) or bound (UDP) socket and its owner.
type socketInfo struct {
	local netip.AddrPort
	inode uint64
	pid   int
	comm  string
}

// findSocket finds the IPv4 socket on port (listening, for TCP) in this
// network namespace's /proc/net table, and the process holding it. It
// returns nil when there is none.
func findSocket(proto v1.Protocol, port int) (*socketInfo, error) {
	table, state := "tcp", "0A" // TCP_LISTEN
	if proto == v1.ProtocolUDP {
		table, state = "udp", "07" // TCP_CLOSE: an unconnected UDP socket
	}
	// thread-self, not self: the calling thread may have been switched into
	// another network namespace than the process's main thread.
	f, err := os.Open("/proc/thread-self/net/" + table)
	if err != nil {
		return nil, fmt.Errorf("explain: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != state {
			continue
		}
		addr, ok := parseProcAddr(fields[1])
		if !ok || int(addr.Port()) != port {
			continue
		}
		inode, err := strconv.ParseUint(fields[9], 10, 64)
		if err != nil {
			continue
		}
		info := &socketInfo{local: addr, inode: inode}
		info.pid, info.comm = socketOwner(inode)
		return info, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("explain: read /proc/net/%s: %w", table, err)
	}
	return nil, nil
}

// parseProcAddr parses "0100007F:9C40" (IPv4 in host byte order, port in
// hex) from /proc/net/tcp.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	ipHex, portHex, ok := strings.Cut(s, ":")
	if !ok || len(ipHex) != 8 {
		return netip.AddrPort{}, false
	}
	raw, err := hex.DecodeString(ipHex)
	if err != nil {
		return netip.AddrPort{}, false
	}
	port, err := strconv.ParseUint(portHex, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	var ip [4]byte
	binary.BigEndian.PutUint32(ip[:], binary.LittleEndian.Uint32(raw))
	return netip.AddrPortFrom(netip.AddrFrom4(ip), uint16(port)), true
}

// socketOwner finds the process with a file descriptor on socket inode, by
// scanning /proc/*/fd. It returns pid 0 when none is visible.
func socketOwner(inode uint64) (int, string) {
	want := "socket:[" + strconv.FormatUint(inode, 10) + "]"
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range procs {
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if err != nil || link != want {
				continue
			}
			pid, _ := strconv.Atoi(filepath.Base(dir))
			comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
			return pid, strings.TrimSpace(string(comm))
		}
	}
	return 0, ""
}

// errWriter keeps the first write error, so the report reads straight.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err != nil {
		return
	}
	_, e.err = fmt.Fprintf(e.w, format, args...)
}
