package whoami

// Test conventions: the binary runs in a throwaway network namespace
// (isolate.MustIsolate in TestMain) and talks to its servers over loopback.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/isolate"
)

func TestMain(m *testing.M) {
	isolate.MustIsolate()
	os.Exit(m.Run())
}

// serve starts a server on random loopback ports and returns its TCP and
// UDP addresses.
func serve(t *testing.T, name string) (tcp, udp string) {
	t.Helper()
	s, err := Listen(Config{Name: name, TCPPorts: []int{0}, UDPPorts: []int{0}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wait := s.Start(ctx)
	t.Cleanup(func() {
		cancel()
		if err := wait(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	port := func(a net.Addr) string {
		_, p, _ := net.SplitHostPort(a.String())
		return "127.0.0.1:" + p
	}
	return port(s.TCPAddrs()[0]), port(s.UDPAddrs()[0])
}

func TestHTTP(t *testing.T) {
	tcp, _ := serve(t, "webpod-1")
	tests := []struct {
		name       string
		method     string
		path       string
		body       string
		wantStatus int
		wantLines  []string // lines the answer must contain
		wantBody   string   // exact body, if set
		wantLen    int64    // verify the /data pattern of this length, if >= 0
	}{
		{
			name: "root", method: "GET", path: "/", wantStatus: 200, wantLen: -1,
			wantLines: []string{"Hostname: webpod-1", "IP: 127.0.0.1", "GET / HTTP/1.1", "Host: " + tcp, "X-Test: yes"},
		},
		{
			name: "any path with query", method: "GET", path: "/a/b?c=d", wantStatus: 200, wantLen: -1,
			wantLines: []string{"Hostname: webpod-1", "GET /a/b?c=d HTTP/1.1"},
		},
		{name: "data bytes", method: "GET", path: "/data?size=100000", wantStatus: 200, wantLen: 100000},
		{name: "data unit", method: "GET", path: "/data?size=2&unit=kb", wantStatus: 200, wantLen: 2048},
		{name: "data empty", method: "GET", path: "/data?size=0", wantStatus: 200, wantLen: 0},
		{name: "data bad size", method: "GET", path: "/data?size=-3", wantStatus: 400, wantLen: -1},
		{name: "echo", method: "POST", path: "/echo", body: "hello\x00world", wantStatus: 200, wantBody: "hello\x00world", wantLen: -1},
		{
			name: "echo GET is a whoami answer", method: "GET", path: "/echo", wantStatus: 200, wantLen: -1,
			wantLines: []string{"Hostname: webpod-1"},
		},
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, "http://"+tcp+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Test", "yes")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			if tt.wantLen >= 0 {
				if resp.ContentLength != tt.wantLen {
					t.Errorf("Content-Length %d, want %d", resp.ContentLength, tt.wantLen)
				}
				if n, err := VerifyPattern(resp.Body, tt.wantLen); err != nil {
					t.Errorf("after %d bytes: %v", n, err)
				}
				return
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantBody != "" && string(body) != tt.wantBody {
				t.Errorf("body %q, want %q", body, tt.wantBody)
			}
			lines := strings.Split(string(body), "\n")
			for _, want := range tt.wantLines {
				if !contains(lines, want) {
					t.Errorf("answer %q has no line %q", body, want)
				}
			}
			if len(tt.wantLines) > 0 && !strings.HasPrefix(lines[0], "Hostname: ") {
				t.Errorf("first line %q, want Hostname first", lines[0])
			}
		})
	}
}

func contains(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}

func TestUDP(t *testing.T) {
	_, udp := serve(t, "webpod-2")
	conn, err := net.Dial("udp", udp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := conn.Write([]byte(fmt.Sprintf("ping %d", i))); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		k, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("Hostname: webpod-2\nRemoteAddr: %s\n", conn.LocalAddr())
		if string(buf[:k]) != want {
			t.Errorf("answer %q, want %q", buf[:k], want)
		}
	}
}

func TestListenErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no ports", Config{Name: "x"}},
		{"bad port", Config{Name: "x", TCPPorts: []int{70000}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := Listen(tt.cfg); err == nil {
				s.Close()
				t.Fatalf("Listen(%+v) succeeded, want an error", tt.cfg)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		size, unit string
		want       int64
		wantErr    bool
	}{
		{"0", "", 0, false},
		{"123", "", 123, false},
		{"5000000000", "", 5000000000, false},
		{"3", "KB", 3072, false},
		{"2", "mb", 2 << 20, false},
		{"4", "GB", 4 << 30, false},
		{"", "", 0, true},
		{"-1", "", 0, true},
		{"1", "PB", 0, true},
		{"9000000000", "TB", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.size+tt.unit, func(t *testing.T) {
			got, err := ParseSize(tt.size, tt.unit)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseSize(%q, %q) = %d, %v; want %d, error %v", tt.size, tt.unit, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestPattern(t *testing.T) {
	good := func(n int) []byte {
		b, _ := io.ReadAll(Pattern(int64(n)))
		return b
	}
	corrupt := good(1000)
	corrupt[600]++
	tests := []struct {
		name    string
		data    []byte
		n       int64
		wantErr string
	}{
		{"exact", good(100000), 100000, ""},
		{"empty", nil, 0, ""},
		{"short", good(10), 11, "ended after 10 of 11"},
		{"long", good(12), 11, "longer than 11"},
		{"corrupt", corrupt, 1000, "differs at byte 600"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := VerifyPattern(bytes.NewReader(tt.data), tt.n)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("VerifyPattern = %v, want error %q", err, tt.wantErr)
			}
		})
	}
	if b := good(300); b[0] != 0 || b[250] != 250 || b[251] != 0 || b[299] != PatternByte(299) {
		t.Errorf("pattern does not follow PatternByte: % x", b[248:253])
	}
}
