package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/svcproxy/svcproxy/proxier"
	"github.com/svcproxy/svcproxy/proxier/modes"
)

func newCleanupCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "cleanup",
		Short: "Remove every rule, virtual server, interface and socket svcproxy created, in every mode",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCleanup(cmd.Context())
		},
	}
}

// runCleanup asks every mode to remove what it created.
func runCleanup(ctx context.Context) error {
	var errs []error
	for _, mode := range modes.All {
		cfg := proxier.DefaultConfig()
		cfg.Mode = mode
		p, err := modes.New(cfg)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := p.Cleanup(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", mode, err))
		}
	}
	return errors.Join(errs...)
}
