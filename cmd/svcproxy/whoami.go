package main

import (
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/svcproxy/svcproxy/e2e/whoami"
)

// newWhoamiCommand returns the hidden `svcproxy whoami` command: the built-in
// test server that answers like traefik/whoami (see package whoami). The lab
// and the e2e suite start it inside pod namespaces.
func newWhoamiCommand() *cobra.Command {
	var cfg whoami.Config
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Serve whoami answers over HTTP and UDP (test server for the lab and e2e)",
		Long: `Serve answers like traefik/whoami: every HTTP request on the --tcp ports gets
Hostname, IP, RemoteAddr, the request line and headers; /data?size=N streams N
bytes; POST /echo returns the body. Every datagram on the --udp ports gets
Hostname and RemoteAddr back. Runs until SIGINT or SIGTERM.`,
		Example: "  svcproxy whoami --name webpod-1 --tcp 80,81 --udp 80",
		Hidden:  true,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return whoami.Serve(ctx, cfg)
		},
	}
	cmd.Flags().StringVar(&cfg.Name, "name", "", "name in the Hostname line (default: the host name)")
	cmd.Flags().IntSliceVar(&cfg.TCPPorts, "tcp", []int{80}, "TCP ports to serve HTTP on")
	cmd.Flags().IntSliceVar(&cfg.UDPPorts, "udp", nil, "UDP ports to answer datagrams on")
	return cmd
}
