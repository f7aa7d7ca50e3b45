// Package whoami is a small server that answers like traefik/whoami, built
// into svcproxy so the lab, the e2e suite and the benchmark need no image.
//
// Over HTTP (every configured TCP port, any path) it answers with
//
//	Hostname: <name>
//	IP: <each address of each interface in its network namespace>
//	RemoteAddr: <ip:port>
//	GET /path HTTP/1.1
//	Host: <host>
//	<other headers, sorted>
//
// so `curl -s http://SERVICE | grep Hostname` shows which pod answered.
// Two paths behave differently:
//
//   - /data?size=N streams N deterministic bytes (Pattern), for bulk
//     transfers; N is a byte count, optionally scaled by unit=KB|MB|GB
//     (powers of 1024). Nothing is buffered, so several GB are fine.
//   - /echo with POST or PUT returns the request body.
//
// Over UDP (every configured UDP port) each datagram is answered with
//
//	Hostname: <name>
//	RemoteAddr: <ip:port>
//
// A Server listens in the network namespace of the thread that calls Listen
// (or of the process): the sockets and the netlink socket used to list
// addresses stay in that namespace wherever Serve runs.
package whoami

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/klog/v2"
)

// Config says what a server answers as and where it listens.
type Config struct {
	// Name is the Hostname line; empty means os.Hostname().
	Name string
	// TCPPorts are the ports served over HTTP, on every address.
	TCPPorts []int
	// UDPPorts are the ports served over UDP, on every address.
	UDPPorts []int
}

// Server is a whoami server with its sockets open.
type Server struct {
	name      string
	listeners []net.Listener
	packets   []net.PacketConn
	nl        *netlink.Handle

	closeOnce sync.Once
}

// Serve listens as cfg says and serves until ctx is done (then it returns
// nil) or a socket fails.
func Serve(ctx context.Context, cfg Config) error {
	s, err := Listen(cfg)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

// Listen opens the server's sockets in the calling thread's network
// namespace without serving yet. Close the server if Serve is never called.
func Listen(cfg Config) (*Server, error) {
	if len(cfg.TCPPorts) == 0 && len(cfg.UDPPorts) == 0 {
		return nil, errors.New("whoami: no TCP or UDP port to serve")
	}
	s := &Server{name: cfg.Name}
	if s.name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("whoami: finding the host name: %w", err)
		}
		s.name = h
	}
	var err error
	if s.nl, err = netlink.NewHandle(); err != nil {
		return nil, fmt.Errorf("whoami: opening netlink: %w", err)
	}
	for _, port := range cfg.TCPPorts {
		ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("whoami: listening on TCP port %d: %w", port, err)
		}
		s.listeners = append(s.listeners, ln)
	}
	for _, port := range cfg.UDPPorts {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(port))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("whoami: listening on UDP port %d: %w", port, err)
		}
		s.packets = append(s.packets, pc)
	}
	return s, nil
}

// TCPAddrs returns the addresses of the TCP listeners (useful with port 0).
func (s *Server) TCPAddrs() []net.Addr {
	var addrs []net.Addr
	for _, ln := range s.listeners {
		addrs = append(addrs, ln.Addr())
	}
	return addrs
}

// UDPAddrs returns the addresses of the UDP sockets (useful with port 0).
func (s *Server) UDPAddrs() []net.Addr {
	var addrs []net.Addr
	for _, pc := range s.packets {
		addrs = append(addrs, pc.LocalAddr())
	}
	return addrs
}

// Close closes every socket; Serve then returns.
func (s *Server) Close() error {
	var errs []error
	s.closeOnce.Do(func() {
		for _, ln := range s.listeners {
			if err := ln.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		for _, pc := range s.packets {
			if err := pc.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if s.nl != nil {
			s.nl.Close()
		}
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("whoami: closing: %w", err)
	}
	return nil
}

// Start runs Serve in a new goroutine and returns a function that waits for
// it to return and gives its error (Serve returns once ctx is done).
func (s *Server) Start(ctx context.Context) (wait func() error) {
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx) }()
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() { err = <-errc })
		return err
	}
}

// Serve answers on every socket until ctx is done (it returns nil) or a
// socket fails (it returns that error). It closes the server on return.
func (s *Server) Serve(ctx context.Context) error {
	defer s.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(s.listeners)+len(s.packets))
	srv := &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout: 10 * time.Second,
	}
	for _, ln := range s.listeners {
		go func() {
			err := srv.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			errc <- err
		}()
	}
	for _, pc := range s.packets {
		go func() { errc <- s.serveUDP(ctx, pc) }()
	}
	klog.V(1).InfoS("Whoami serving", "name", s.name, "tcp", addrStrings(s.TCPAddrs()), "udp", addrStrings(s.UDPAddrs()))

	var first error
	select {
	case <-ctx.Done():
	case first = <-errc:
	}
	cancel()
	shutdownCtx, stop := context.WithTimeout(context.Background(), 2*time.Second)
	defer stop()
	_ = srv.Shutdown(shutdownCtx) // closes the listeners; open connections get 2 s
	_ = srv.Close()
	s.Close()
	if first != nil && !isClosed(first) {
		return fmt.Errorf("whoami: %w", first)
	}
	return nil
}

// addrStrings formats addresses for logs.
func addrStrings(addrs []net.Addr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

// isClosed reports whether err comes from a socket closed on purpose.
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed)
}

// serveUDP answers each datagram on pc until ctx is done.
func (s *Server) serveUDP(ctx context.Context, pc net.PacketConn) error {
	buf := make([]byte, 64*1024)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || isClosed(err) {
				return nil
			}
			return fmt.Errorf("reading UDP on %s: %w", pc.LocalAddr(), err)
		}
		reply := fmt.Sprintf("Hostname: %s\nRemoteAddr: %s\n", s.name, from)
		if _, err := pc.WriteTo([]byte(reply), from); err != nil {
			// One unreachable client must not stop the server.
			klog.V(2).InfoS("Whoami UDP reply failed", "to", from, "err", err)
		}
	}
}

// serveHTTP dispatches a request.
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/data":
		s.serveData(w, r)
	case r.URL.Path == "/echo" && (r.Method == http.MethodPost || r.Method == http.MethodPut):
		w.Header().Set("Content-Type", "application/octet-stream")
		if _, err := io.Copy(w, r.Body); err != nil {
			klog.V(2).InfoS("Whoami echo failed", "remote", r.RemoteAddr, "err", err)
		}
	default:
		s.serveWhoami(w, r)
	}
}

// serveWhoami writes the traefik/whoami style answer.
func (s *Server) serveWhoami(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "Hostname: %s\n", s.name)
	for _, ip := range s.addresses() {
		fmt.Fprintf(bw, "IP: %s\n", ip)
	}
	fmt.Fprintf(bw, "RemoteAddr: %s\n", r.RemoteAddr)
	fmt.Fprintf(bw, "%s %s %s\n", r.Method, r.URL.RequestURI(), r.Proto)
	fmt.Fprintf(bw, "Host: %s\n", r.Host)
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range r.Header[k] {
			fmt.Fprintf(bw, "%s: %s\n", k, v)
		}
	}
	if err := bw.Flush(); err != nil {
		klog.V(2).InfoS("Whoami answer failed", "remote", r.RemoteAddr, "err", err)
	}
}

// addresses lists every address of every interface in the server's
// namespace, interface by interface (IPv4 before IPv6 within one).
func (s *Server) addresses() []string {
	addrs, err := s.nl.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		klog.V(2).InfoS("Whoami cannot list addresses", "err", err)
		return nil
	}
	sort.SliceStable(addrs, func(i, j int) bool { return addrs[i].LinkIndex < addrs[j].LinkIndex })
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.IP.String())
	}
	return out
}

// units are the multipliers /data accepts in its unit parameter.
var units = map[string]int64{"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}

// ParseSize parses the size and unit parameters of /data: a byte count,
// optionally multiplied by unit (B, KB, MB, GB or TB, powers of 1024, any
// case).
func ParseSize(size, unit string) (int64, error) {
	n, err := strconv.ParseInt(size, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: want a non-negative integer", size)
	}
	mult, ok := units[strings.ToUpper(unit)]
	if !ok {
		return 0, fmt.Errorf("invalid unit %q: want B, KB, MB, GB or TB", unit)
	}
	if n > 0 && mult > (1<<63-1)/n {
		return 0, fmt.Errorf("size %s%s is too large", size, unit)
	}
	return n * mult, nil
}

// serveData streams the deterministic pattern.
func (s *Server) serveData(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	size, err := ParseSize(q.Get("size"), q.Get("unit"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(w, Pattern(size)); err != nil {
		klog.V(2).InfoS("Whoami data stream ended early", "remote", r.RemoteAddr, "err", err)
	}
}
