package traffic

// Test conventions: the binary runs in a throwaway network namespace
// (isolate.MustIsolate in TestMain); whoami servers listen on loopback.

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/isolate"
	"github.com/svcproxy/svcproxy/e2e/whoami"
)

func TestMain(m *testing.M) {
	isolate.MustIsolate()
	os.Exit(m.Run())
}

func TestFair(t *testing.T) {
	pods := []string{"a", "b", "c"}
	tests := []struct {
		name    string
		result  Result
		n       int
		wantErr string // empty: fair
	}{
		{"round robin", Result{Counts: map[string]int{"a": 334, "b": 333, "c": 333}}, 1000, ""},
		{"random spread", Result{Counts: map[string]int{"a": 290, "b": 360, "c": 350}}, 1000, ""},
		{"at the 20% floor", Result{Counts: map[string]int{"a": 200, "b": 400, "c": 400}}, 1000, ""},
		{"below the floor", Result{Counts: map[string]int{"a": 190, "b": 405, "c": 405}}, 1000, "pod a got 190"},
		{"one pod hogs", Result{Counts: map[string]int{"a": 900, "b": 50, "c": 50}}, 1000, "pod a got 900"},
		{"one pod starved", Result{Counts: map[string]int{"a": 500, "b": 500}}, 1000, "pod a got 500"},
		{"unknown pod", Result{Counts: map[string]int{"a": 333, "b": 333, "x": 334}}, 1000, `"x"`},
		{"errors", Result{Counts: map[string]int{"a": 333, "b": 333, "c": 333}, Errors: 1, FirstError: errors.New("boom")}, 1000, "boom"},
		{"missing answers", Result{Counts: map[string]int{"a": 333, "b": 333, "c": 300}}, 1000, "966 answers"},
		{"small sample", Result{Counts: map[string]int{"a": 6, "b": 4}}, 10, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.result.Fair(pods, tt.n)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Fair = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Fair = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
	if err := (Result{}).Fair(nil, 0); err == nil {
		t.Errorf("Fair without pods succeeded, want an error")
	}
}

func TestTable(t *testing.T) {
	tests := []struct {
		name   string
		result Result
		pods   []string
		want   string
	}{
		{
			name:   "spread with an unexpected pod",
			result: Result{Counts: map[string]int{"webpod-1": 50, "webpod-2": 25, "other": 25}},
			pods:   []string{"webpod-1", "webpod-2", "webpod-3"},
			want: "" +
				"POD       COUNT  PERCENT\n" +
				"webpod-1     50    50.0% ####################\n" +
				"webpod-2     25    25.0% ##########\n" +
				"webpod-3      0     0.0% \n" +
				"other        25    25.0% ##########\n",
		},
		{
			name:   "errors",
			result: Result{Counts: map[string]int{"a": 3}, Errors: 1, FirstError: errors.New("refused")},
			pods:   []string{"a"},
			want: "" +
				"POD       COUNT  PERCENT\n" +
				"a             3    75.0% ##############################\n" +
				"(errors)      1    25.0% xxxxxxxxxx\n" +
				"first error: refused\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b strings.Builder
			if err := tt.result.Table(&b, tt.pods); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("Table:\n%s\nwant:\n%s", b.String(), tt.want)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	r := Result{Latencies: []time.Duration{5, 1, 4, 2, 3}}
	tests := []struct {
		p    float64
		want time.Duration
	}{{50, 3}, {100, 5}, {1, 1}, {80, 4}}
	for _, tt := range tests {
		if got := r.Percentile(tt.p); got != tt.want {
			t.Errorf("Percentile(%v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if got := (Result{}).Percentile(50); got != 0 {
		t.Errorf("Percentile without latencies = %v, want 0", got)
	}
}

// startWhoami serves one whoami on random loopback ports.
func startWhoami(t *testing.T, name string) (tcp, udp string) {
	t.Helper()
	s, err := whoami.Listen(whoami.Config{Name: name, TCPPorts: []int{0}, UDPPorts: []int{0}})
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
	return s.TCPAddrs()[0].String(), s.UDPAddrs()[0].String()
}

func TestRequests(t *testing.T) {
	tcp, udp := startWhoami(t, "pod-x")
	// A port nobody listens on: grab one and close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()

	var d net.Dialer
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	tests := []struct {
		name       string
		run        func() Result
		wantCount  int
		wantErrors int
	}{
		{"http", func() Result { return HTTP(ctx, d.DialContext, "http://"+tcp+"/", 20, 5*time.Second) }, 20, 0},
		{"udp", func() Result { return UDP(ctx, d.DialContext, udp, 20, 5*time.Second) }, 20, 0},
		{"http refused", func() Result { return HTTP(ctx, d.DialContext, "http://"+closed+"/", 3, 5*time.Second) }, 0, 3},
		{"not a whoami", func() Result { return HTTP(ctx, d.DialContext, "http://"+tcp+"/data?size=10", 2, 5*time.Second) }, 0, 2},
		{"cancelled", func() Result { return UDP(cancelled, d.DialContext, udp, 4, 5*time.Second) }, 0, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.run()
			if r.Counts["pod-x"] != tt.wantCount || r.Errors != tt.wantErrors {
				t.Fatalf("counts %v, %d errors (first: %v); want %d from pod-x, %d errors",
					r.Counts, r.Errors, r.FirstError, tt.wantCount, tt.wantErrors)
			}
			if (r.FirstError != nil) != (tt.wantErrors > 0) {
				t.Errorf("FirstError = %v with %d errors", r.FirstError, r.Errors)
			}
			if len(r.Latencies) != tt.wantCount {
				t.Errorf("%d latencies, want %d", len(r.Latencies), tt.wantCount)
			}
		})
	}
}
