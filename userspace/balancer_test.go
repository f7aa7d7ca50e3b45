package userspace

import (
	"net/netip"
	"testing"
	"time"
)

// Test conventions (all unit tests of this package): backends are
// 10.0.0.x:80, clients are 192.168.0.x. Nothing is dialled in the balancer
// tests.
var (
	epA = netip.MustParseAddrPort("10.0.0.1:80")
	epB = netip.MustParseAddrPort("10.0.0.2:80")
	epC = netip.MustParseAddrPort("10.0.0.3:80")
	epD = netip.MustParseAddrPort("10.0.0.4:80")

	client1 = netip.MustParseAddr("192.168.0.1")
	client2 = netip.MustParseAddr("192.168.0.2")
	client3 = netip.MustParseAddr("192.168.0.3")
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// balancerStep is one action on a balancer: optionally advance the clock,
// optionally update the endpoints, then pick for client (unless pick is
// false) and compare.
type balancerStep struct {
	advance time.Duration
	update  []netip.AddrPort
	sticky  time.Duration
	// noPick skips the pick (an update-only step).
	noPick bool
	client netip.Addr
	tried  []netip.AddrPort
	want   netip.AddrPort
	// wantNone expects Pick to report no backend.
	wantNone bool
}

func TestBalancer(t *testing.T) {
	abc := []netip.AddrPort{epA, epB, epC}
	tests := []struct {
		name   string
		eps    []netip.AddrPort
		sticky time.Duration
		steps  []balancerStep
	}{
		{
			name: "round robin in order, whoever the client",
			eps:  abc,
			steps: []balancerStep{
				{client: client1, want: epA},
				{client: client1, want: epB},
				{client: client2, want: epC},
				{client: client3, want: epA},
				{client: client1, want: epB},
				{client: client1, want: epC},
			},
		},
		{
			name:  "no endpoints",
			steps: []balancerStep{{client: client1, wantNone: true}},
		},
		{
			name: "a failed backend is skipped and the round robin goes on after the one picked",
			eps:  abc,
			steps: []balancerStep{
				{client: client1, want: epA},
				{client: client1, tried: []netip.AddrPort{epB}, want: epC},
				{client: client1, want: epA},
				{client: client1, tried: []netip.AddrPort{epB, epC}, want: epA},
				{client: client1, tried: []netip.AddrPort{epA, epB, epC}, wantNone: true},
			},
		},
		{
			name:   "affinity keeps a client on its backend while fresh",
			eps:    abc,
			sticky: 10 * time.Second,
			steps: []balancerStep{
				{client: client1, want: epA},
				{client: client2, want: epB},
				{advance: 9 * time.Second, client: client1, want: epA},
				{advance: 9 * time.Second, client: client1, want: epA}, // each use refreshes
				{client: client2, want: epC},                           // 18s idle: expired
				{client: client3, want: epA},
			},
		},
		{
			name:   "affinity expires after the timeout of idleness",
			eps:    abc,
			sticky: 10 * time.Second,
			steps: []balancerStep{
				{client: client1, want: epA},
				{advance: 11 * time.Second, client: client1, want: epB},
				{client: client1, want: epB},
			},
		},
		{
			name:   "affinity yields when the remembered backend fails, and remembers the new one",
			eps:    abc,
			sticky: time.Minute,
			steps: []balancerStep{
				{client: client1, want: epA},
				{client: client1, tried: []netip.AddrPort{epA}, want: epB},
				{client: client1, want: epB},
			},
		},
		{
			name:   "an endpoint that leaves takes its clients' affinity with it",
			eps:    abc,
			sticky: time.Minute,
			steps: []balancerStep{
				{client: client1, want: epA},
				{client: client2, want: epB},
				{update: []netip.AddrPort{epA, epC}, sticky: time.Minute, noPick: true},
				{client: client1, want: epA},
				{client: client2, want: epA}, // not B; the round robin was at index 2, now 0
			},
		},
		{
			name: "new endpoints serve the next pick; the position carries over",
			eps:  abc,
			steps: []balancerStep{
				{client: client1, want: epA},
				{update: []netip.AddrPort{epB, epC, epD}, noPick: true},
				{client: client1, want: epC},
				{client: client1, want: epD},
				{client: client1, want: epB},
			},
		},
		{
			name: "shrinking wraps the position",
			eps:  abc,
			steps: []balancerStep{
				{client: client1, want: epA},
				{client: client1, want: epB},
				{update: []netip.AddrPort{epA, epB}, noPick: true},
				{client: client1, want: epA},
			},
		},
		{
			name:   "turning affinity off forgets every client",
			eps:    abc,
			sticky: time.Minute,
			steps: []balancerStep{
				{client: client1, want: epA},
				{update: abc, sticky: 0, noPick: true},
				{client: client1, want: epB},
				{client: client1, want: epC},
			},
		},
		{
			name: "all endpoints removed",
			eps:  abc,
			steps: []balancerStep{
				{client: client1, want: epA},
				{update: []netip.AddrPort{}, noPick: true},
				{client: client1, wantNone: true},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1_000_000, 0)}
			b := NewBalancer(clock.now)
			b.Update(tt.eps, tt.sticky)
			for i, s := range tt.steps {
				clock.t = clock.t.Add(s.advance)
				if s.update != nil {
					b.Update(s.update, s.sticky)
				}
				if s.noPick {
					continue
				}
				got, ok := b.Pick(s.client, s.tried)
				if s.wantNone {
					if ok {
						t.Fatalf("step %d: Pick = %s, want no backend", i, got)
					}
					continue
				}
				if !ok || got != s.want {
					t.Fatalf("step %d: Pick(%s, tried %v) = %s, %v; want %s", i, s.client, s.tried, got, ok, s.want)
				}
			}
		})
	}
}

func TestBalancerSweepsExpiredAffinity(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_000_000, 0)}
	b := NewBalancer(clock.now)
	b.Update([]netip.AddrPort{epA, epB}, time.Second)
	for i := 0; i < minSweep-1; i++ {
		b.Pick(netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)}), nil)
	}
	if got := b.affinitySize(); got != minSweep-1 {
		t.Fatalf("affinity table has %d clients, want %d", got, minSweep-1)
	}
	clock.t = clock.t.Add(2 * time.Second)
	b.Pick(client1, nil) // reaches minSweep: everything but client1 has expired
	if got := b.affinitySize(); got != 1 {
		t.Fatalf("after the sweep the affinity table has %d clients, want 1", got)
	}
}

func TestBalancerUpdateCopies(t *testing.T) {
	eps := []netip.AddrPort{epA, epB}
	b := NewBalancer(nil)
	b.Update(eps, 0)
	eps[0] = epC
	if got := b.Endpoints(); got[0] != epA {
		t.Fatalf("Update kept the caller's slice: endpoints %v", got)
	}
	if b.Len() != 2 || b.StickyTimeout() != 0 {
		t.Fatalf("Len %d StickyTimeout %s, want 2 and 0", b.Len(), b.StickyTimeout())
	}
}
