package userspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"k8s.io/klog/v2"
)

// Defaults of the TCP proxy.
const (
	// DefaultConnectTimeout bounds one connection attempt to a backend.
	DefaultConnectTimeout = time.Second
	// MaxConnectAttempts bounds how many backends one client connection
	// tries before it is reset.
	MaxConnectAttempts = 4
	// SocketBuffer is the send and receive buffer size set on both sockets
	// of a proxied connection. Left to autotuning, loopback buffers grow to
	// megabytes: per connection that is memory a proxy should not hold,
	// and on this project's benchmark machine the larger amount of data in
	// flight cost about a third more CPU per byte (cache misses in the
	// copies at both ends) and a quarter of the throughput. 256 KiB (the
	// kernel doubles it) still fills a 1 GB/s path with a 0.25 ms round
	// trip.
	SocketBuffer = 256 << 10
)

// tcpPortal is a TCP proxy socket: it accepts the connections the REDIRECT
// rules send it, connects each to a backend the balancer picks (trying the
// next one when a connect fails) and streams both ways with io.Copy, which
// splices (zero-copy) between two *net.TCPConn on Linux.
type tcpPortal struct {
	name           string
	ln             *net.TCPListener
	bal            *Balancer
	connectTimeout time.Duration
	dialer         net.Dialer

	// ctx ends when the portal is closed with its connections.
	ctx    context.Context
	cancel context.CancelFunc
	// loop is done when the accept loop has returned.
	loop sync.WaitGroup

	mu    sync.Mutex
	conns map[*net.TCPConn]struct{}
	// clients counts the client connections being served.
	clients int
}

// listenTCP opens a TCP proxy socket on ip with an ephemeral port. Start
// runs its accept loop.
func listenTCP(name string, ip netip.Addr, bal *Balancer, connectTimeout time.Duration) (*tcpPortal, error) {
	// Accepted sockets inherit the listener's buffer sizes, and backend
	// sockets get theirs before connecting: no extra system calls per
	// connection, and the window scale is negotiated for them.
	lc := net.ListenConfig{Control: setBuffers}
	l, err := lc.Listen(context.Background(), "tcp4", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		return nil, fmt.Errorf("open TCP proxy socket for %s: %w", name, err)
	}
	ln := l.(*net.TCPListener)
	ctx, cancel := context.WithCancel(context.Background())
	return &tcpPortal{
		name:           name,
		ln:             ln,
		bal:            bal,
		connectTimeout: connectTimeout,
		dialer:         net.Dialer{Control: setBuffers},
		ctx:            ctx,
		cancel:         cancel,
		conns:          map[*net.TCPConn]struct{}{},
	}, nil
}

func (p *tcpPortal) Port() int            { return int(p.addr().Port()) }
func (p *tcpPortal) Balancer() *Balancer  { return p.bal }
func (p *tcpPortal) addr() netip.AddrPort { return p.ln.Addr().(*net.TCPAddr).AddrPort() }

// Start runs the accept loop in a goroutine.
func (p *tcpPortal) Start() {
	p.loop.Add(1)
	go func() {
		defer p.loop.Done()
		p.acceptLoop()
	}()
}

// OpenConns returns the number of client connections being served.
func (p *tcpPortal) OpenConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.clients
}

// Close stops accepting. With all set it also resets the open connections;
// otherwise they finish on their own.
func (p *tcpPortal) Close(all bool) {
	_ = p.ln.Close()
	p.loop.Wait()
	if !all {
		return
	}
	p.cancel()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
}

func (p *tcpPortal) acceptLoop() {
	backoff := 5 * time.Millisecond
	for {
		c, err := p.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Typically EMFILE: wait and retry rather than spin.
			klog.ErrorS(err, "Accept failed on proxy socket", "service", p.name, "retryIn", backoff)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		p.mu.Lock()
		p.clients++
		p.mu.Unlock()
		go p.serve(c)
	}
}

// track adds or removes a connection from the set Close(true) resets.
func (p *tcpPortal) track(c *net.TCPConn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		if p.ctx.Err() != nil { // closed with its connections meanwhile
			_ = c.Close()
			return
		}
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

// serve connects one client to a backend and streams until both sides end.
// The accept loop has counted it in p.clients.
func (p *tcpPortal) serve(client *net.TCPConn) {
	defer func() {
		p.mu.Lock()
		p.clients--
		p.mu.Unlock()
	}()
	p.track(client, true)
	defer p.track(client, false)
	clientAddr := client.RemoteAddr().(*net.TCPAddr).AddrPort()
	backend, ep, err := p.connect(clientAddr.Addr().Unmap())
	if err != nil {
		klog.V(2).InfoS("No backend for connection; resetting it", "service", p.name, "client", clientAddr, "err", err)
		_ = client.SetLinger(0)
		_ = client.Close()
		return
	}
	p.track(backend, true)
	defer p.track(backend, false)
	klog.V(4).InfoS("Proxying connection", "service", p.name, "client", clientAddr, "backend", ep)
	splice(client, backend)
}

// connect dials backends in balancer order until one accepts, at most
// MaxConnectAttempts of them.
func (p *tcpPortal) connect(client netip.Addr) (*net.TCPConn, netip.AddrPort, error) {
	var tried []netip.AddrPort
	var lastErr error
	for len(tried) < MaxConnectAttempts {
		ep, ok := p.bal.Pick(client, tried)
		if !ok {
			break
		}
		ctx, cancel := context.WithTimeout(p.ctx, p.connectTimeout)
		c, err := p.dialer.DialContext(ctx, "tcp4", ep.String())
		cancel()
		if err == nil {
			return c.(*net.TCPConn), ep, nil
		}
		klog.V(2).InfoS("Backend connect failed; trying the next one", "service", p.name, "backend", ep, "err", err)
		tried = append(tried, ep)
		lastErr = err
	}
	if lastErr == nil {
		return nil, netip.AddrPort{}, errors.New("no endpoints")
	}
	return nil, netip.AddrPort{}, fmt.Errorf("%d backends failed, last: %w", len(tried), lastErr)
}

// setBuffers sets SocketBuffer as send and receive buffer size of a socket
// before it listens or connects.
func setBuffers(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, SocketBuffer); serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, SocketBuffer)
		}
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set socket buffers: %w", serr)
	}
	return nil
}

// splice streams a and b both ways until both directions end, then closes
// both. A direction that ends cleanly (EOF) half-closes its destination
// (CloseWrite), so a client that shuts down its sending side still gets the
// whole answer. A direction that fails resets both connections. io.Copy
// between two *net.TCPConn uses splice(2) on Linux: the bytes never enter
// user space.
func splice(a, b *net.TCPConn) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pipe(b, a)
	}()
	pipe(a, b)
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
}

// pipe copies src to dst; see splice.
func pipe(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		// Abort: make the failure visible to both peers as a reset.
		_ = dst.SetLinger(0)
		_ = src.SetLinger(0)
		_ = dst.Close()
		_ = src.Close()
		return
	}
	_ = dst.CloseWrite()
}
