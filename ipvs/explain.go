package ipvs

import (
	"context"
	"io"
	"net/netip"

	v1 "k8s.io/api/core/v1"
)

// Explain is written below.
func (p *Proxier) Explain(ctx context.Context, w io.Writer, proto v1.Protocol, dst netip.AddrPort) error {
	return nil
}
