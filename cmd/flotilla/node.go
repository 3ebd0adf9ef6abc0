package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/api"
)

func newNodeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "The cluster's nodes",
	}
	cmd.AddCommand(newNodeListCmd(), newNodeDrainCmd(), newNodeUndrainCmd(), newNodeDecommissionCmd())
	return cmd
}

func newNodeListCmd() *cobra.Command {
	var cf clientFlags
	var out string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the nodes: addresses, state (live, suspect or dead), replicas and leaders held",
		Long: `List every node of the cluster with its addresses, its state and the
ranges it holds a replica of and leads, and the bytes it stores and has
left. The state is the cluster's gossip membership's (SWIM): a node that
answers its probes, directly or through other nodes, is live; one it
counts down is suspect, and dead once down for the asked node's
--dead-after (its replicas then move to live nodes).

-w json prints {"nodes":[{"id","peer_addr","client_addr","http_addr","state","replicas","leaders"}]},
with "used_bytes" and "available_bytes" when known, and "drained" when marked.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return writeStatus(cmd, &cf, out, api.NodeListOf, printNodeList)
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVarP(&out, "write-out", "w", "table", "output format: table or json")
	return cmd
}

// printNodeList writes nl as a table.
func printNodeList(w io.Writer, nl api.NodeList) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NODE\tSTATE\tREPLICAS\tLEADERS\tPEER\tCLIENT\tHTTP\tUSED\tAVAILABLE\n")
	for _, n := range nl.Nodes {
		state := n.State
		if n.Drained {
			state += ",drained"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", n.ID, state, n.Replicas, n.Leaders, n.PeerAddr, n.ClientAddr, n.HTTPAddr,
			sizeOf(n.UsedBytes), sizeOf(n.AvailableBytes))
	}
	tw.Flush()
}

// sizeOf writes a byte count for people: "-" when not known.
func sizeOf(b uint64) string {
	switch {
	case b == 0:
		return "-"
	case b >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%dB", b)
}
