package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/api"
)

func newStatusCmd() *cobra.Command {
	var cf clientFlags
	var out string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show nodes, groups and links, gathered from every node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(out, "table", "json"); err != nil {
				return err
			}
			cl, ctx, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			st, err := cl.Status(ctx)
			if err != nil {
				return err
			}
			if out == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVarP(&out, "write-out", "w", "table", "output format: table or json")
	return cmd
}

// printStatus writes st as three tables.
func printStatus(w io.Writer, st api.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NODE\tPEER\tCLIENT\tHTTP\tALIVE\tLEADS\n")
	leads := map[uint64]int{}
	for _, g := range st.Groups {
		leads[g.Leader]++
	}
	for _, n := range st.Nodes {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%v\t%d\n", n.ID, n.PeerAddr, n.ClientAddr, n.HTTPAddr, n.Alive, leads[n.ID])
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "GROUP\tLEADER\tTERM\tREPLICAS\tCOMMIT\tAPPLIED\n")
	for _, g := range st.Groups {
		reps := make([]string, len(g.Replicas))
		for i, r := range g.Replicas {
			reps[i] = fmt.Sprint(r)
		}
		leader := fmt.Sprint(g.Leader)
		if g.Leader == 0 {
			leader = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%d\t%d\n", g.ID, leader, g.Term, strings.Join(reps, ","), g.Commit, g.Applied)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "LINK\tQUEUE\tSENT\tDROPPED\n")
	for _, p := range st.Peers {
		fmt.Fprintf(tw, "%d->%d\t%d\t%d\t%d\n", p.From, p.To, p.QueueLen, p.Sent, p.Dropped)
	}
	tw.Flush()
}
