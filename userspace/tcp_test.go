package userspace

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The TCP tests run a proxy socket on 127.0.0.1 in front of backends on
// 127.0.0.1, without iptables: clients connect to the proxy port directly.

var loopback = netip.MustParseAddr("127.0.0.1")

// backendMode says what a test backend does with a connection.
type backendMode int

const (
	// sayName writes the backend's name and a newline, then closes.
	sayName backendMode = iota
	// echoLines answers each line with "<name> <line>".
	echoLines
	// hashUpload reads until EOF, then writes the SHA-256 of what it read
	// (hex) and closes: it works only if half-close is propagated.
	hashUpload
	// streamBytes reads a decimal byte count line and sends that many
	// bytes of patternStream, then closes.
	streamBytes
	// dead is a port where nothing listens (connections are refused).
	dead
)

// startBackend starts a TCP backend on loopback and returns its address.
func startBackend(t testing.TB, name string, mode backendMode) netip.AddrPort {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("backend %s: %v", name, err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	if mode == dead {
		ln.Close() // the port is now free: connects are refused
		return addr
	}
	acceptLoop(t, ln, func(c *net.TCPConn) { serveBackend(c, name, mode) })
	return addr
}

// acceptLoop serves every connection ln accepts with handle (which need not
// close it) until the test ends, then closes ln and waits for the handlers.
func acceptLoop(t testing.TB, ln *net.TCPListener, handle func(*net.TCPConn)) {
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

func serveBackend(c *net.TCPConn, name string, mode backendMode) {
	switch mode {
	case sayName:
		fmt.Fprintf(c, "%s\n", name)
	case echoLines:
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "%s %s\n", name, sc.Text())
		}
	case hashUpload:
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return
		}
		fmt.Fprintf(c, "%x\n", h.Sum(nil))
	case streamBytes:
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		n, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
		if err != nil {
			return
		}
		_, _ = io.Copy(c, io.LimitReader(patternStream(1), n))
	}
}

// patternStream is an endless deterministic byte stream.
func patternStream(seed uint64) io.Reader {
	return &patternReader{rng: rand.NewChaCha8([32]byte{byte(seed)})}
}

type patternReader struct{ rng *rand.ChaCha8 }

func (p *patternReader) Read(b []byte) (int, error) { return p.rng.Read(b) }

// patternHash returns the SHA-256 of the first n bytes of patternStream.
func patternHash(t testing.TB, seed uint64, n int64) string {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(patternStream(seed), n)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// startTCPPortal starts a proxy socket on loopback balancing over eps.
func startTCPPortal(t testing.TB, eps []netip.AddrPort) *tcpPortal {
	t.Helper()
	bal := NewBalancer(nil)
	bal.Update(eps, 0)
	p, err := listenTCP("test/tcp", loopback, bal, DefaultConnectTimeout)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(func() { p.Close(true) })
	return p
}

// dialPortal connects to a portal's port on loopback.
func dialPortal(t testing.TB, port int) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp4", nil, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatalf("dial proxy port %d: %v", port, err)
	}
	return c
}

// askName connects through the portal and returns the backend's name.
func askName(t testing.TB, port int) (string, error) {
	c, err := net.DialTCP("tcp4", nil, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		// A reset can beat the end of connect(2).
		return "", err
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func TestTCPProxySpreadAndRetry(t *testing.T) {
	tests := []struct {
		name     string
		backends []backendMode
		requests int
		// want counts answers per backend index; a request answered by
		// no one counts under "".
		want map[string]int
	}{
		{
			name:     "three backends share the connections evenly",
			backends: []backendMode{sayName, sayName, sayName},
			requests: 30,
			want:     map[string]int{"b0": 10, "b1": 10, "b2": 10},
		},
		{
			name:     "a dead backend costs a retry, not a failed request",
			backends: []backendMode{sayName, dead, sayName},
			requests: 300,
			want:     map[string]int{"b0": 150, "b2": 150},
		},
		{
			name:     "two dead backends of three",
			backends: []backendMode{dead, dead, sayName},
			requests: 30,
			want:     map[string]int{"b2": 30},
		},
		{
			name:     "every backend dead: the client is reset",
			backends: []backendMode{dead, dead},
			requests: 3,
			want:     map[string]int{"": 3},
		},
		{
			name:     "no endpoints: the client is reset",
			requests: 2,
			want:     map[string]int{"": 2},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var eps []netip.AddrPort
			for i, mode := range tt.backends {
				eps = append(eps, startBackend(t, fmt.Sprintf("b%d", i), mode))
			}
			p := startTCPPortal(t, eps)
			got := map[string]int{}
			for i := 0; i < tt.requests; i++ {
				name, err := askName(t, p.Port())
				if err != nil && !isReset(err) {
					t.Fatalf("request %d: %v", i, err)
				}
				got[name]++
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("answers by backend = %v, want %v", got, tt.want)
			}
		})
	}
}

func isReset(err error) bool {
	return errors.Is(err, io.EOF) || strings.Contains(err.Error(), "connection reset")
}

func TestTCPProxyHalfClose(t *testing.T) {
	sizes := []int64{0, 1, 64 << 10, 4 << 20}
	ep := startBackend(t, "hash", hashUpload)
	p := startTCPPortal(t, []netip.AddrPort{ep})
	for _, size := range sizes {
		t.Run(strconv.FormatInt(size, 10), func(t *testing.T) {
			c := dialPortal(t, p.Port())
			defer c.Close()
			if _, err := io.Copy(c, io.LimitReader(patternStream(2), size)); err != nil {
				t.Fatal(err)
			}
			// The backend answers only once it sees EOF: the proxy must
			// pass our FIN on and keep the other direction open.
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if want := patternHash(t, 2, size); strings.TrimSpace(string(got)) != want {
				t.Fatalf("backend hashed %q, want %s", got, want)
			}
		})
	}
}

func TestTCPProxyBulkTransfer(t *testing.T) {
	const size = 100 << 20
	tests := []struct {
		name string
		mode backendMode
	}{
		{"download 100 MB", streamBytes},
		{"upload 100 MB", hashUpload},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startTCPPortal(t, []netip.AddrPort{startBackend(t, "bulk", tt.mode)})
			c := dialPortal(t, p.Port())
			defer c.Close()
			var got string
			switch tt.mode {
			case streamBytes:
				fmt.Fprintf(c, "%d\n", size)
				h := sha256.New()
				n, err := io.Copy(h, c)
				if err != nil {
					t.Fatal(err)
				}
				if n != size {
					t.Fatalf("received %d bytes, want %d", n, size)
				}
				got = hex.EncodeToString(h.Sum(nil))
			case hashUpload:
				if _, err := io.Copy(c, io.LimitReader(patternStream(1), size)); err != nil {
					t.Fatal(err)
				}
				_ = c.CloseWrite()
				b, err := io.ReadAll(c)
				if err != nil {
					t.Fatal(err)
				}
				got = strings.TrimSpace(string(b))
			}
			if want := patternHash(t, 1, size); got != want {
				t.Fatalf("SHA-256 %s, want %s", got, want)
			}
		})
	}
}

func TestTCPProxyEndpointChange(t *testing.T) {
	a := startBackend(t, "a", echoLines)
	b := startBackend(t, "b", echoLines)
	p := startTCPPortal(t, []netip.AddrPort{a})

	old := dialPortal(t, p.Port())
	defer old.Close()
	oldR := bufio.NewReader(old)
	ask := func(c net.Conn, r *bufio.Reader, line string) string {
		t.Helper()
		fmt.Fprintf(c, "%s\n", line)
		s, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("ask %q: %v", line, err)
		}
		return strings.TrimSpace(s)
	}
	if got := ask(old, oldR, "1"); got != "a 1" {
		t.Fatalf("before the change: %q, want %q", got, "a 1")
	}

	p.Balancer().Update([]netip.AddrPort{b}, 0)
	fresh := dialPortal(t, p.Port())
	defer fresh.Close()
	if got := ask(fresh, bufio.NewReader(fresh), "2"); got != "b 2" {
		t.Fatalf("new connection after the change: %q, want %q", got, "b 2")
	}
	if got := ask(old, oldR, "3"); got != "a 3" {
		t.Fatalf("open connection after the change: %q, want %q (it must finish on its backend)", got, "a 3")
	}

	// Closing the socket without its connections: the open one goes on,
	// new ones are refused.
	p.Close(false)
	if got := ask(old, oldR, "4"); got != "a 4" {
		t.Fatalf("open connection after the socket closed: %q, want %q", got, "a 4")
	}
	if c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", p.Port())); err == nil {
		c.Close()
		t.Fatalf("the closed proxy socket still accepts connections")
	}

	// Closing with its connections resets the open one.
	p.Close(true)
	fmt.Fprintf(old, "5\n")
	if _, err := oldR.ReadString('\n'); err == nil {
		t.Fatalf("the connection survived Close(true)")
	}
}

func TestTCPProxyConnectTimeout(t *testing.T) {
	black := blackholeBackend(t)
	good := startBackend(t, "good", sayName)
	bal := NewBalancer(nil)
	bal.Update([]netip.AddrPort{black, good}, 0)
	p, err := listenTCP("test/timeout", loopback, bal, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	defer p.Close(true)
	for i := 0; i < 4; i++ {
		name, err := askName(t, p.Port())
		if err != nil || name != "good" {
			t.Fatalf("request %d: %q, %v; want good", i, name, err)
		}
	}
}

// blackholeBackend returns a loopback port whose SYNs go unanswered: a
// socket listening with a backlog of 0 that never accepts, its accept
// queue filled first. A connect to it can only time out.
func blackholeBackend(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(loopback, uint16(sa.(*unix.SockaddrInet4).Port))
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp4", addr.String(), 200*time.Millisecond)
		if err != nil {
			return addr // the queue is full: SYNs are dropped now
		}
		t.Cleanup(func() { c.Close() })
		if i == 8 {
			t.Fatalf("the accept queue of a backlog-0 socket never filled")
		}
	}
}

func TestTCPProxySocketBuffers(t *testing.T) {
	// Both sockets of a proxied connection carry SocketBuffer (the kernel
	// reports it doubled).
	p := startTCPPortal(t, []netip.AddrPort{startBackend(t, "e", echoLines)})
	c := dialPortal(t, p.Port())
	defer c.Close()
	fmt.Fprintf(c, "x\n")
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.conns) != 2 {
		t.Fatalf("%d tracked connections, want 2", len(p.conns))
	}
	for conn := range p.conns {
		raw, err := conn.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		for _, opt := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF} {
			var got int
			var gerr error
			if err := raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, opt) }); err != nil || gerr != nil {
				t.Fatal(err, gerr)
			}
			if got != 2*SocketBuffer {
				t.Errorf("%s: buffer option %d is %d, want %d", conn.LocalAddr(), opt, got, 2*SocketBuffer)
			}
		}
	}
}
