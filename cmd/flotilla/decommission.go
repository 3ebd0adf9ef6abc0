package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/client"
)

func newNodeDecommissionCmd() *cobra.Command {
	var cf clientFlags
	var poll time.Duration
	cmd := &cobra.Command{
		Use:   "decommission N",
		Short: "Move every replica off node N, then remove it from the cluster for good",
		Long: `Mark node N decommissioning: no replica moves onto it any more, and the
leader of each range with a replica there moves that replica to a member
(a learner there, its catch-up, its promotion, then the removal of N's
replica and its data). The mark is kept in the cluster, so the moves go on
if this command stops; run it again to follow them. The command prints how
many replicas N still holds whenever that changes, and ends once N holds
none and is marked removed. A removed node stops, and the other nodes
refuse it if it comes back; its ID is never given out again.

It fails at once if too few nodes would be left for the replication
factor.`,
		Args: cobra.ExactArgs(1),
		RunE: onNode(&cf, func(ctx context.Context, cl *client.Client, node uint64, w io.Writer) error {
			return decommission(ctx, cl, node, poll, w)
		}),
	}
	cf.register(cmd)
	cf.timeout = 30 * time.Minute // a drain moves many ranges
	cmd.Flags().Lookup("timeout").DefValue = cf.timeout.String()
	cmd.Flags().DurationVar(&poll, "poll", time.Second, "how often to ask how far the drain got")
	return cmd
}

// decommission marks node decommissioning and follows its drain until it
// is removed, printing each new count of its replicas to w.
func decommission(ctx context.Context, cl *client.Client, node uint64, poll time.Duration, w io.Writer) error {
	if poll <= 0 {
		return fmt.Errorf("--poll %v: want a positive duration", poll)
	}
	start := time.Now()
	first, last := -1, -1
	for {
		state, n, err := cl.Decommission(ctx, node)
		if err != nil {
			if last >= 0 {
				return fmt.Errorf("node %d: %w (it is still decommissioning: run the command again to follow it)", node, err)
			}
			return fmt.Errorf("node %d: %w", node, err)
		}
		if state == api.NodeRemoved {
			if first < 0 {
				fmt.Fprintf(w, "node %d removed\n", node)
			} else {
				fmt.Fprintf(w, "node %d removed in %v (it held %d replicas when this command started)\n", node, time.Since(start).Round(time.Millisecond), first)
			}
			return nil
		}
		if first < 0 {
			first = n
		}
		if n != last {
			fmt.Fprintf(w, "node %d decommissioning: %d replicas left (%v)\n", node, n, time.Since(start).Round(time.Millisecond))
			last = n
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %d still holds %d replicas: %w (it is still decommissioning: run the command again to follow it)", node, last, ctx.Err())
		case <-time.After(poll):
		}
	}
}
