package main

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/modes"
)

func newExplainCommand() *cobra.Command {
	mode := proxier.ModeIPTables
	proto := "tcp"
	cmd := &cobra.Command{
		Use:   "explain IP:PORT",
		Short: "Show the path a packet to IP:PORT takes through the rules in the kernel now",
		Long: `explain reads the rules the given mode left in this node's kernel (it does
not need the running proxy) and prints, for a packet to IP:PORT, each hop:
the chains or virtual server it meets, the endpoints it may be sent to, and
the packet counters of each.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dst, err := netip.ParseAddrPort(args[0])
			if err != nil {
				return fmt.Errorf("explain: %q is not IP:PORT: %w", args[0], err)
			}
			var p v1.Protocol
			switch strings.ToLower(proto) {
			case "tcp":
				p = v1.ProtocolTCP
			case "udp":
				p = v1.ProtocolUDP
			case "sctp":
				p = v1.ProtocolSCTP
			default:
				return fmt.Errorf("explain: unknown protocol %q", proto)
			}
			cfg := proxier.DefaultConfig()
			cfg.Mode = mode
			px, err := modes.New(cfg)
			if err != nil {
				return err
			}
			return px.Explain(cmd.Context(), cmd.OutOrStdout(), p, dst)
		},
	}
	cmd.Flags().StringVar(&mode, "mode", mode, "the mode whose rules to read: userspace, iptables or ipvs")
	cmd.Flags().StringVar(&proto, "protocol", proto, "tcp, udp or sctp")
	return cmd
}
