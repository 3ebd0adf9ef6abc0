package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/client"
)

func newGetCmd() *cobra.Command {
	var cf clientFlags
	var serializable bool
	var rev uint64
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Read a key (linearizable unless --serializable); exits 1 if it has no value",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			var opts []client.ReadOption
			if serializable {
				opts = append(opts, client.Serializable())
			}
			if rev > 0 {
				opts = append(opts, client.AtRevision(rev))
			}
			kv, err := cl.Get(ctx, []byte(args[0]), opts...)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n", kv.Value)
			return nil
		},
	}
	cf.register(cmd)
	cmd.Flags().Uint64Var(&rev, "rev", 0, "read the key as of this revision of its range (0: now); fails with \"compacted\" before the history kept")
	cmd.Flags().BoolVar(&serializable, "serializable", false, "read from the answering replica without confirming with the leader (may be stale)")
	return cmd
}
