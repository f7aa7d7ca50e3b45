// Package modes builds the proxier of a mode by name. It is the one place
// that knows every mode, for the command and the benchmark.
package modes

import (
	"fmt"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/userspace"
)

// All lists every mode.
var All = []string{proxier.ModeIPTables, proxier.ModeUserspace, proxier.ModeIPVS}

// New builds the proxier of cfg.Mode.
func New(cfg proxier.Config) (proxier.Proxier, error) {
	switch cfg.Mode {
	case proxier.ModeIPTables:
		return iptables.New(cfg)
	case proxier.ModeUserspace:
		return userspace.New(cfg)
	case proxier.ModeIPVS:
		return ipvs.New(cfg)
	default:
		return nil, fmt.Errorf("unknown mode %q: want userspace, iptables or ipvs", cfg.Mode)
	}
}
