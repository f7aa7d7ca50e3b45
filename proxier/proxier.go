// Package proxier is svcproxy's shared core: the service and endpoint model,
// the change tracker, the sources that feed it, the sync runner, the Proxier
// interface every mode implements, and the helpers two or more modes need.
package proxier

import (
	"context"
	"io"
	"net/netip"

	v1 "k8s.io/api/core/v1"
)

// Proxier is what a mode (userspace, iptables, IPVS) implements. Proxiers
// never watch the API themselves: the sync runner hands them snapshots.
type Proxier interface {
	// Sync makes the kernel state match snap. changes says what differs from
	// the previous successful Sync; when changes.Full is set (or the proxier
	// has not synced yet) everything is rewritten. On error no service may
	// be left half-written (its previous rules or its new ones stay in
	// force); the engine then retries with a full sync.
	Sync(ctx context.Context, snap Snapshot, changes Changes) error
	// Cleanup removes everything this mode ever created on the node.
	Cleanup(ctx context.Context) error
	// RuleCounts returns the size of the state written by the last
	// successful Sync, by kind (e.g. "iptables-nat", "ipvs-virtual-servers").
	RuleCounts() map[string]int
	// Explain writes, for a packet to dst, the path it takes through the
	// rules currently in the kernel, with backends and counters. It reads
	// the kernel, so it works from another process than the running proxy.
	Explain(ctx context.Context, w io.Writer, proto v1.Protocol, dst netip.AddrPort) error
}
