package userspace

import (
	"net/netip"
	"slices"
	"sync"
	"time"
)

// minSweep is the affinity table size below which expired entries are not
// swept (they are ignored when looked up anyway).
const minSweep = 1024

// Balancer picks the backend of each new connection (or UDP session) of one
// proxy socket: round robin over the endpoints, or, with ClientIP session
// affinity, the backend the client used last if it did so within the
// affinity timeout. It is safe for concurrent use.
//
// Endpoint changes take effect for the next Pick; connections already open
// are not the balancer's business. Affinity entries that point to an
// endpoint that left are dropped by Update.
type Balancer struct {
	mu  sync.Mutex
	now func() time.Time

	endpoints []netip.AddrPort
	// next is the index in endpoints the round robin tries first.
	next int
	// sticky is the ClientIP affinity timeout; 0 means no affinity.
	sticky   time.Duration
	affinity map[netip.Addr]affinityEntry
	// sweepAt is the affinity table size that triggers a sweep of expired
	// entries.
	sweepAt int
}

// affinityEntry is the backend a client used last, and when.
type affinityEntry struct {
	backend netip.AddrPort
	last    time.Time
}

// NewBalancer returns a balancer with no endpoints. now is the clock
// (time.Now when nil); tests inject their own.
func NewBalancer(now func() time.Time) *Balancer {
	if now == nil {
		now = time.Now
	}
	return &Balancer{now: now, affinity: map[netip.Addr]affinityEntry{}, sweepAt: minSweep}
}

// Update replaces the endpoints and the ClientIP affinity timeout (0 turns
// affinity off). The round robin continues from where it was; clients
// whose remembered backend left are balanced afresh.
func (b *Balancer) Update(endpoints []netip.AddrPort, sticky time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !slices.Equal(b.endpoints, endpoints) {
		b.endpoints = slices.Clone(endpoints)
		if len(b.endpoints) > 0 {
			b.next %= len(b.endpoints)
		} else {
			b.next = 0
		}
	}
	b.sticky = sticky
	if sticky == 0 {
		clear(b.affinity)
		return
	}
	now := b.now()
	for client, e := range b.affinity {
		if !slices.Contains(b.endpoints, e.backend) || b.expired(e, now) {
			delete(b.affinity, client)
		}
	}
}

// Endpoints returns a copy of the current endpoints.
func (b *Balancer) Endpoints() []netip.AddrPort {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.endpoints)
}

// Len returns the number of endpoints.
func (b *Balancer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.endpoints)
}

// StickyTimeout returns the ClientIP affinity timeout (0: no affinity).
func (b *Balancer) StickyTimeout() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sticky
}

// Pick returns the backend for a new connection from client, never one of
// tried (the backends that already failed to connect for this connection).
// ok is false when every endpoint has been tried or there is none. With
// affinity on, the client's remembered backend is returned while it is
// fresh, and whatever Pick returns becomes the remembered one.
func (b *Balancer) Pick(client netip.Addr, tried []netip.AddrPort) (backend netip.AddrPort, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(b.endpoints)
	if n == 0 {
		return netip.AddrPort{}, false
	}
	now := b.now()
	if b.sticky > 0 {
		if e, found := b.affinity[client]; found && !b.expired(e, now) && !slices.Contains(tried, e.backend) &&
			slices.Contains(b.endpoints, e.backend) {
			b.affinity[client] = affinityEntry{backend: e.backend, last: now}
			return e.backend, true
		}
	}
	for i := 0; i < n; i++ {
		idx := (b.next + i) % n
		ep := b.endpoints[idx]
		if slices.Contains(tried, ep) {
			continue
		}
		b.next = (idx + 1) % n
		if b.sticky > 0 {
			b.affinity[client] = affinityEntry{backend: ep, last: now}
			b.maybeSweep(now)
		}
		return ep, true
	}
	return netip.AddrPort{}, false
}

// expired reports whether an affinity entry is older than the timeout.
// Callers hold b.mu.
func (b *Balancer) expired(e affinityEntry, now time.Time) bool {
	return now.Sub(e.last) > b.sticky
}

// maybeSweep drops expired affinity entries once the table has doubled
// since the last sweep. Callers hold b.mu.
func (b *Balancer) maybeSweep(now time.Time) {
	if len(b.affinity) < b.sweepAt {
		return
	}
	for client, e := range b.affinity {
		if b.expired(e, now) {
			delete(b.affinity, client)
		}
	}
	b.sweepAt = max(minSweep, 2*len(b.affinity))
}

// affinitySize returns the number of remembered clients (for tests).
func (b *Balancer) affinitySize() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.affinity)
}
