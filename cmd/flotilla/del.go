package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newDelCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "del KEY",
		Short: "Delete a key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			deleted, err := cl.Delete(ctx, []byte(args[0]))
			if err != nil {
				return err
			}
			if deleted {
				fmt.Fprintln(cmd.OutOrStdout(), "deleted")
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), "not found")
			}
			return nil
		},
	}
	cf.register(cmd)
	return cmd
}
