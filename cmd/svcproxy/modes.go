package main

import (
	"fmt"

	"github.com/svcproxy/svcproxy/iptables"
	"github.com/svcproxy/svcproxy/ipvs"
	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/userspace"
)

// newProxier builds the proxier of cfg.Mode.
func newProxier(cfg proxier.Config) (proxier.Proxier, error) {
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

// allModes lists every mode, for cleanup.
var allModes = []string{proxier.ModeIPTables, proxier.ModeUserspace, proxier.ModeIPVS}
