package userspace

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// MinUDPIdleTimeout is the shortest UDP session idle timeout the proxy uses.
// kube-proxy's default udpIdleTimeout of 250ms ends a session (and so drops
// a late reply) whenever a backend takes longer than that to answer; one
// second keeps slow DNS answers and costs only an idle socket per client
// for a little longer.
const MinUDPIdleTimeout = time.Second

// maxDatagram is the largest UDP payload.
const maxDatagram = 65535

// udpPortal is a UDP proxy socket. Each client (source address and port,
// and the address it sent to) gets a session: a connected socket to the
// backend the balancer picked, kept until it has been idle for the idle
// timeout. Replies go back through the proxy socket with the client's
// original destination (after REDIRECT) as source address, set with
// IP_PKTINFO, so that conntrack's reverse NAT recognises them and the
// client sees the service address. Without that, a reply to a client on
// this node would leave from another address and never match.
type udpPortal struct {
	name string
	conn *net.UDPConn
	bal  *Balancer
	idle time.Duration

	loop   sync.WaitGroup
	closed atomic.Bool

	mu       sync.Mutex
	sessions map[sessionKey]*udpSession
}

// sessionKey identifies a client flow: the client's address and where its
// datagrams arrived (after REDIRECT).
type sessionKey struct {
	client netip.AddrPort
	local  netip.Addr
}

// udpSession is one client's flow to one backend.
type udpSession struct {
	key     sessionKey
	backend netip.AddrPort
	conn    *net.UDPConn
	// last is the time of the last datagram either way (UnixNano).
	last atomic.Int64
}

// listenUDP opens a UDP proxy socket on ip with an ephemeral port and turns
// on IP_PKTINFO. Start runs its read loop.
func listenUDP(name string, ip netip.Addr, bal *Balancer, idle time.Duration) (*udpPortal, error) {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		return nil, fmt.Errorf("open UDP proxy socket for %s: %w", name, err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("UDP proxy socket for %s: %w", name, err)
	}
	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		sockErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
	}); err != nil || sockErr != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("UDP proxy socket for %s: set IP_PKTINFO: %w", name, errors.Join(err, sockErr))
	}
	return &udpPortal{
		name:     name,
		conn:     conn,
		bal:      bal,
		idle:     max(idle, MinUDPIdleTimeout),
		sessions: map[sessionKey]*udpSession{},
	}, nil
}

func (p *udpPortal) Port() int           { return int(p.conn.LocalAddr().(*net.UDPAddr).Port) }
func (p *udpPortal) Balancer() *Balancer { return p.bal }

// Start runs the read loop in a goroutine.
func (p *udpPortal) Start() {
	p.loop.Add(1)
	go func() {
		defer p.loop.Done()
		p.readLoop()
	}()
}

// Close closes the proxy socket and every session (a UDP session cannot
// outlive the socket its replies leave through). all is accepted for
// symmetry with TCP.
func (p *udpPortal) Close(bool) {
	p.closed.Store(true)
	_ = p.conn.Close()
	p.closeSessions()
	p.loop.Wait()
	p.closeSessions() // any the read loop opened meanwhile
}

// closeSessions closes every session's backend socket; its reply loop then
// ends.
func (p *udpPortal) closeSessions() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, s := range p.sessions {
		delete(p.sessions, key)
		_ = s.conn.Close()
	}
}

// DropSessionsNotIn ends the sessions whose backend is not in keep (it left
// the service): the client's next datagram starts a session to a live one.
func (p *udpPortal) DropSessionsNotIn(keep []netip.AddrPort) {
	in := map[netip.AddrPort]bool{}
	for _, ep := range keep {
		in[ep] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for key, s := range p.sessions {
		if !in[s.backend] {
			delete(p.sessions, key)
			_ = s.conn.Close()
		}
	}
}

func (p *udpPortal) readLoop() {
	buf := make([]byte, maxDatagram)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofInet4Pktinfo))
	for {
		n, oobn, _, from, err := p.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.closed.Load() {
				return
			}
			klog.ErrorS(err, "Read failed on UDP proxy socket", "service", p.name)
			time.Sleep(5 * time.Millisecond)
			continue
		}
		key := sessionKey{client: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), local: localAddr(oob[:oobn])}
		s, err := p.session(key)
		if err != nil {
			klog.V(2).InfoS("Dropping datagram", "service", p.name, "client", key.client, "err", err)
			continue
		}
		s.touch()
		if _, err := s.conn.Write(buf[:n]); err != nil {
			klog.V(2).InfoS("Forwarding datagram failed", "service", p.name, "client", key.client, "backend", s.backend, "err", err)
		}
	}
}

// session returns the client's session, opening one to a backend the
// balancer picks if there is none.
func (p *udpPortal) session(key sessionKey) (*udpSession, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.sessions[key]; ok {
		return s, nil
	}
	if p.closed.Load() {
		return nil, net.ErrClosed
	}
	ep, ok := p.bal.Pick(key.client.Addr(), nil)
	if !ok {
		return nil, errors.New("no endpoints")
	}
	conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(ep))
	if err != nil {
		return nil, fmt.Errorf("connect to backend %s: %w", ep, err)
	}
	s := &udpSession{key: key, backend: ep, conn: conn}
	s.touch()
	p.sessions[key] = s
	p.loop.Add(1)
	go func() {
		defer p.loop.Done()
		p.replyLoop(s)
	}()
	klog.V(4).InfoS("New UDP session", "service", p.name, "client", key.client, "backend", ep)
	return s, nil
}

// replyLoop sends the backend's datagrams back to the client until the
// session has been idle for p.idle or is closed.
func (p *udpPortal) replyLoop(s *udpSession) {
	defer p.end(s)
	buf := make([]byte, maxDatagram)
	var oob []byte
	if s.key.local.IsValid() {
		oob = unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: s.key.local.As4()})
	}
	client := s.key.client
	for {
		_ = s.conn.SetReadDeadline(time.Unix(0, s.last.Load()).Add(p.idle))
		n, err := s.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if time.Since(time.Unix(0, s.last.Load())) >= p.idle {
					return
				}
				continue // traffic came meanwhile: wait again
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ECONNREFUSED (the backend's port is closed) and the like:
			// keep the session; the client retries or times out.
			klog.V(4).InfoS("UDP backend read failed", "service", p.name, "backend", s.backend, "err", err)
			continue
		}
		s.touch()
		if _, _, err := p.conn.WriteMsgUDPAddrPort(buf[:n], oob, client); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			klog.V(2).InfoS("Reply to UDP client failed", "service", p.name, "client", client, "err", err)
		}
	}
}

// end removes a finished session.
func (p *udpPortal) end(s *udpSession) {
	p.mu.Lock()
	if p.sessions[s.key] == s {
		delete(p.sessions, s.key)
	}
	p.mu.Unlock()
	_ = s.conn.Close()
}

// OpenConns returns the number of open sessions.
func (p *udpPortal) OpenConns() int { return p.sessionCount() }

// sessionCount returns the number of open sessions.
func (p *udpPortal) sessionCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.sessions)
}

func (s *udpSession) touch() { s.last.Store(time.Now().UnixNano()) }

// localAddr returns the destination address from an IP_PKTINFO control
// message, or the zero Addr if there is none.
func localAddr(oob []byte) netip.Addr {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}
	}
	for _, m := range msgs {
		// struct in_pktinfo: ifindex (4 bytes), spec_dst, addr (the
		// header's destination, after NAT).
		if m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo {
			return netip.AddrFrom4([4]byte(m.Data[8:12]))
		}
	}
	return netip.Addr{}
}
