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
			return writeStatus(cmd, &cf, out, func(st api.Status) api.Status { return st }, printStatus)
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVarP(&out, "write-out", "w", "table", "output format: table or json")
	return cmd
}

// writeStatus gathers the cluster's status (client.Status) and writes
// what doc makes of it, as indented JSON with -w json, else as table
// does: the body of status and node list.
func writeStatus[T any](cmd *cobra.Command, cf *clientFlags, out string, doc func(api.Status) T, table func(io.Writer, T)) error {
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
	d := doc(st)
	if out == "json" {
		enc := json.NewEncoder(cmd.OutOrStdout())
		enc.SetIndent("", "  ")
		return enc.Encode(d)
	}
	table(cmd.OutOrStdout(), d)
	return nil
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
