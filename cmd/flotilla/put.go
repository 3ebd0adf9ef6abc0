package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/client"
)

func newPutCmd() *cobra.Command {
	var cf clientFlags
	var lease uint64
	cmd := &cobra.Command{
		Use:   "put KEY VALUE",
		Short: "Set a key",
		Long: `Set a key.

With --lease ID the key is attached to that lease and deleted when the
lease is revoked or expires. The lease must have been granted in the
key's group (client.GrantFor with the key) and be kept alive by its
holder; without --lease the key is detached from any lease.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			var opts []client.WriteOption
			if lease != 0 {
				opts = append(opts, client.WithLeaseID(0, lease))
			}
			rev, err := cl.Put(ctx, []byte(args[0]), []byte(args[1]), opts...)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK (group %d, revision %d)\n", cl.GroupOf([]byte(args[0])), rev)
			return nil
		},
	}
	cmd.Flags().Uint64Var(&lease, "lease", 0, "attach the key to this lease of the key's group (0: none)")
	cf.register(cmd)
	return cmd
}
