package userspace

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Benchmarks of the TCP proxy socket against going to the backend directly,
// on loopback (no iptables: the client dials the proxy port). Run with
//
//	go test -run '^$' -bench . -count 5 ./userspace
//
// and compare each "proxy" line with its "direct" line:
//   - BenchmarkConnect: one small request and answer per new connection;
//     req/s and p50/p99 latency (connect, request, answer, close);
//   - BenchmarkStream: one connection streaming 256 MB; MB/s.

// benchBackend is a loopback server for the benchmarks. For each
// connection it reads one line: "ping" gets a 64-byte answer, a number N
// gets N bytes from a static buffer; then it closes.
func benchBackend(b *testing.B) netip.AddrPort {
	b.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	answer := []byte(strings.Repeat("x", 63) + "\n")
	block := make([]byte, 1<<20)
	acceptLoop(b, ln, func(c *net.TCPConn) {
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSpace(line)
		if line == "ping" {
			_, _ = c.Write(answer)
			return
		}
		n, err := strconv.Atoi(line)
		if err != nil {
			return
		}
		for n > 0 {
			k, err := c.Write(block[:min(n, len(block))])
			if err != nil {
				return
			}
			n -= k
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// benchTargets returns the two targets: the backend itself and a proxy
// socket in front of it.
func benchTargets(b *testing.B) []struct {
	name string
	addr netip.AddrPort
} {
	backend := benchBackend(b)
	bal := NewBalancer(nil)
	bal.Update([]netip.AddrPort{backend}, 0)
	p, err := listenTCP("bench", loopback, bal, DefaultConnectTimeout)
	if err != nil {
		b.Fatal(err)
	}
	p.Start()
	b.Cleanup(func() { p.Close(true) })
	return []struct {
		name string
		addr netip.AddrPort
	}{
		{"direct", backend},
		{"proxy", netip.AddrPortFrom(loopback, uint16(p.Port()))},
	}
}

func BenchmarkConnect(b *testing.B) {
	for _, target := range benchTargets(b) {
		b.Run(target.name, func(b *testing.B) {
			addr := net.TCPAddrFromAddrPort(target.addr)
			buf := make([]byte, 128)
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				c, err := net.DialTCP("tcp4", nil, addr)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := c.Write([]byte("ping\n")); err != nil {
					b.Fatal(err)
				}
				n, err := io.ReadFull(c, buf[:64])
				if err != nil || n != 64 {
					b.Fatalf("answer: %d bytes, %v", n, err)
				}
				_ = c.Close()
				lat = append(lat, time.Since(t0))
			}
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

func BenchmarkStream(b *testing.B) {
	const size = 256 << 20
	for _, target := range benchTargets(b) {
		b.Run(target.name, func(b *testing.B) {
			addr := net.TCPAddrFromAddrPort(target.addr)
			buf := make([]byte, 1<<20)
			b.SetBytes(size)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, err := net.DialTCP("tcp4", nil, addr)
				if err != nil {
					b.Fatal(err)
				}
				fmt.Fprintf(c, "%d\n", size)
				var got int64
				for {
					n, err := c.Read(buf)
					got += int64(n)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				_ = c.Close()
				if got != size {
					b.Fatalf("received %d bytes, want %d", got, size)
				}
			}
		})
	}
}
