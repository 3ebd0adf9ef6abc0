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
ranges it holds a replica of and leads. A node that answers is live; one
that does not is suspect, and dead once the node asked has not reached it
for its --dead-after (its replicas then move to live nodes).

-w json prints {"nodes":[{"id","peer_addr","client_addr","http_addr","state","replicas","leaders"}]}.`,
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
	fmt.Fprintf(tw, "NODE\tSTATE\tREPLICAS\tLEADERS\tPEER\tCLIENT\tHTTP\n")
	for _, n := range nl.Nodes {
		state := n.State
		if n.Drained {
			state += ",drained"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%s\t%s\n", n.ID, state, n.Replicas, n.Leaders, n.PeerAddr, n.ClientAddr, n.HTTPAddr)
	}
	tw.Flush()
}
