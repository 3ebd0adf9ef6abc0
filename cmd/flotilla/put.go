package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newPutCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "put KEY VALUE",
		Short: "Set a key",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			rev, err := cl.Put(ctx, []byte(args[0]), []byte(args[1]))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK (group %d, revision %d)\n", cl.GroupOf([]byte(args[0])), rev)
			return nil
		},
	}
	cf.register(cmd)
	return cmd
}
