package userspace

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// startUDPBackend starts a UDP backend on loopback that answers each
// datagram with "<name> <datagram>".
func startUDPBackend(t testing.TB, name string) netip.AddrPort {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		c.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteToUDPAddrPort([]byte(name+" "+string(buf[:n])), from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort()
}

// startUDPPortal starts a UDP proxy socket on loopback with idle timeout
// idle (taken as is, below MinUDPIdleTimeout too, so tests stay short).
func startUDPPortal(t testing.TB, eps []netip.AddrPort, idle time.Duration) *udpPortal {
	t.Helper()
	bal := NewBalancer(nil)
	bal.Update(eps, 0)
	p, err := listenUDP("test/udp", loopback, bal, idle)
	if err != nil {
		t.Fatal(err)
	}
	p.idle = idle
	p.Start()
	t.Cleanup(func() { p.Close(true) })
	return p
}

// udpClient is a connected UDP socket to a portal: the kernel drops any
// reply that does not come from the portal's address and port, so a reply
// proves the source was right.
func udpClient(t testing.TB, port int) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends msg and returns the reply ("" after a second without one).
func exchange(t testing.TB, c *net.UDPConn, msg string) string {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

func TestUDPProxy(t *testing.T) {
	tests := []struct {
		name     string
		backends int
		clients  int
		perConn  int
		// want counts replies by backend name ("" = no reply).
		want map[string]int
	}{
		{"three clients spread over three backends", 3, 3, 1, map[string]int{"u0": 1, "u1": 1, "u2": 1}},
		{"a client's datagrams stay in its session", 3, 1, 5, map[string]int{"u0": 5}},
		{"six clients, two rounds", 3, 6, 2, map[string]int{"u0": 4, "u1": 4, "u2": 4}},
		{"no endpoints: no reply", 0, 1, 1, map[string]int{"": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var eps []netip.AddrPort
			for i := 0; i < tt.backends; i++ {
				eps = append(eps, startUDPBackend(t, fmt.Sprintf("u%d", i)))
			}
			p := startUDPPortal(t, eps, time.Minute)
			got := map[string]int{}
			for i := 0; i < tt.clients; i++ {
				c := udpClient(t, p.Port())
				for j := 0; j < tt.perConn; j++ {
					msg := fmt.Sprintf("c%d-%d", i, j)
					reply := exchange(t, c, msg)
					name, rest, _ := strings.Cut(reply, " ")
					if reply != "" && rest != msg {
						t.Fatalf("reply %q to %q", reply, msg)
					}
					got[name]++
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("replies by backend = %v, want %v", got, tt.want)
			}
			if want := tt.clients; tt.backends > 0 && p.sessionCount() != want {
				t.Fatalf("%d sessions, want %d", p.sessionCount(), want)
			}
		})
	}
}

func TestUDPSessionIdleTimeout(t *testing.T) {
	p := startUDPPortal(t, []netip.AddrPort{startUDPBackend(t, "u0"), startUDPBackend(t, "u1")}, 20*time.Millisecond)
	c := udpClient(t, p.Port())
	if got := exchange(t, c, "x"); got != "u0 x" {
		t.Fatalf("first reply %q", got)
	}
	waitFor(t, "the idle session to end", func() bool { return p.sessionCount() == 0 })
	// A new session, so the round robin moves on.
	if got := exchange(t, c, "y"); got != "u1 y" {
		t.Fatalf("reply after the idle timeout %q, want from the next backend", got)
	}
}

func TestUDPSessionsOfRemovedEndpointsEnd(t *testing.T) {
	u0, u1 := startUDPBackend(t, "u0"), startUDPBackend(t, "u1")
	p := startUDPPortal(t, []netip.AddrPort{u0, u1}, time.Minute)
	c0, c1 := udpClient(t, p.Port()), udpClient(t, p.Port())
	if exchange(t, c0, "a") != "u0 a" || exchange(t, c1, "b") != "u1 b" {
		t.Fatalf("sessions did not spread")
	}
	p.Balancer().Update([]netip.AddrPort{u1}, 0)
	p.DropSessionsNotIn([]netip.AddrPort{u1})
	if got := exchange(t, c0, "c"); got != "u1 c" {
		t.Fatalf("client of the removed backend got %q, want u1 c", got)
	}
	if got := exchange(t, c1, "d"); got != "u1 d" {
		t.Fatalf("client of the kept backend got %q, want u1 d", got)
	}
}

func TestUDPCloseEndsSessions(t *testing.T) {
	p := startUDPPortal(t, []netip.AddrPort{startUDPBackend(t, "u0")}, time.Minute)
	c := udpClient(t, p.Port())
	if got := exchange(t, c, "a"); got != "u0 a" {
		t.Fatalf("reply %q", got)
	}
	p.Close(true) // returns only once every session's goroutine is gone
	if n := p.sessionCount(); n != 0 {
		t.Fatalf("%d sessions left after Close", n)
	}
	if got := exchange(t, c, "b"); got != "" {
		t.Fatalf("closed socket answered %q", got)
	}
}

func TestLocalAddrParsesPktinfo(t *testing.T) {
	// A datagram to 127.0.0.1 must report 127.0.0.1 as its destination.
	p := startUDPPortal(t, []netip.AddrPort{startUDPBackend(t, "u0")}, time.Minute)
	c := udpClient(t, p.Port())
	exchange(t, c, "a")
	p.mu.Lock()
	defer p.mu.Unlock()
	for key := range p.sessions {
		if key.local != loopback {
			t.Fatalf("session local address %s, want %s", key.local, loopback)
		}
		return
	}
	t.Fatalf("no session")
}

// waitFor polls cond until it holds, failing after 10 s (a deadlock guard,
// not a timing assertion).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
