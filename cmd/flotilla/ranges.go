package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/kv"
)

// rangeJSON is one range of `flotilla ranges -w json`: start "" is the
// beginning of the keyspace, end "" its end; learners, the replicas being
// added (not voting yet); sticky, a boundary at start that the merge
// queue never undoes (an operator's split, or the bootstrap's). bytes
// and ops_per_sec are left out with --stats=false.
type rangeJSON struct {
	ID        uint64   `json:"id"`
	Start     string   `json:"start"`
	End       string   `json:"end"`
	Replicas  []uint64 `json:"replicas"`
	Learners  []uint64 `json:"learners"`
	Leader    uint64   `json:"leader"`
	Bytes     *uint64  `json:"bytes,omitempty"`
	OpsPerSec *float64 `json:"ops_per_sec,omitempty"`
	Sticky    bool     `json:"sticky"`
}

func newRangesCmd() *cobra.Command {
	var cf clientFlags
	var output string
	var stats bool
	cmd := &cobra.Command{
		Use:   "ranges",
		Short: "List the ranges (spans of the keyspace) with their replicas, leaders, sizes and loads",
		Long: `List the ranges (spans of the keyspace) with their replicas, leaders, sizes
and loads.

The node that answers measures the size of each range it holds a replica
of by reading the range's data whole, on each listing (other ranges show
the size their leader last reported, 0 if none did yet, and a load of 0):
on a node that holds much data, or when polled, that read costs the node
CPU and disk its clients would have used. --stats=false lists the rest
without it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "json", "table"); err != nil {
				return err
			}
			cl, ctx, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			rs, err := allRanges(ctx, cl, stats)
			if err != nil {
				return err
			}
			out := []rangeJSON{}
			for _, r := range rs {
				j := rangeJSON{ID: r.Id, Start: string(r.Start), End: string(r.End),
					Replicas: r.Replicas, Learners: append([]uint64{}, r.Learners...), Leader: r.Leader, Sticky: r.Sticky}
				if stats {
					j.Bytes, j.OpsPerSec = &r.Bytes, &r.OpsPerSec
				}
				out = append(out, j)
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				b, err := json.Marshal(map[string]any{"ranges": out})
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "%s\n", b)
				return nil
			}
			tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
			if stats {
				fmt.Fprintln(tw, "ID\tSTART\tEND\tREPLICAS\tLEADER\tBYTES\tOPS/S")
			} else {
				fmt.Fprintln(tw, "ID\tSTART\tEND\tREPLICAS\tLEADER")
			}
			for _, r := range out {
				end := fmt.Sprintf("%q", r.End)
				if r.End == "" {
					end = "∞"
				}
				reps := make([]string, len(r.Replicas))
				for i, n := range r.Replicas {
					reps[i] = fmt.Sprint(n)
				}
				fmt.Fprintf(tw, "%d\t%q\t%s\t%s\t%d", r.ID, r.Start, end, strings.Join(reps, ","), r.Leader)
				if stats {
					fmt.Fprintf(tw, "\t%d\t%.1f", *r.Bytes, *r.OpsPerSec)
				}
				fmt.Fprintln(tw)
			}
			return tw.Flush()
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVarP(&output, "write-out", "w", "table", "output format: table or json")
	cmd.Flags().BoolVar(&stats, "stats", true, "list each range's size and load (false: leave them out, and spare the answering node a read of its ranges' data)")
	return cmd
}

// scanJSON is the answer of `flotilla scan -w json` (docs/design.md,
// contracts).
type scanJSON struct {
	KVs []kvJSON `json:"kvs"`
	// More: the limit cut the list short. After, the last key listed,
	// continues it (--after); Next is the key the next page starts at
	// (--from, when it is printable: it may end in a zero byte).
	More  bool   `json:"more"`
	After string `json:"after,omitempty"`
	Next  string `json:"next,omitempty"`
}

type kvJSON struct {
	Key      string `json:"key"`
	Value    string `json:"value"`
	Revision uint64 `json:"revision"`
	Range    uint64 `json:"range"`
}

func newScanCmd() *cobra.Command {
	var cf clientFlags
	var output, prefix, from, to, after string
	var limit int
	var serializable bool
	cmd := &cobra.Command{
		Use:   "scan (--prefix P | [--from A] [--to B]) [--after K] [--limit N]",
		Short: "List keys in order: those with a prefix, or those of [--from, --to)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "json", "table"); err != nil {
				return err
			}
			if prefix != "" && (from != "" || to != "") {
				return fmt.Errorf("--prefix cannot go with --from or --to")
			}
			if limit < 1 {
				return fmt.Errorf("--limit %d: want 1 or more", limit)
			}
			start, end := []byte(from), []byte(to)
			if prefix != "" {
				start, end = []byte(prefix), kv.PrefixEnd([]byte(prefix))
			}
			if cmd.Flags().Changed("after") {
				// The first key after K is K followed by a zero byte.
				if next := append([]byte(after), 0); string(next) > string(start) {
					start = next
				}
				if len(end) > 0 && string(start) >= string(end) {
					return fmt.Errorf("--after %q: nothing of the span lies after it", after)
				}
			}
			if len(end) > 0 && string(start) >= string(end) {
				return fmt.Errorf("--from %q is not below --to %q", from, to)
			}
			cl, ctx, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			res := scanJSON{KVs: []kvJSON{}}
			at := start
			for len(res.KVs) < limit {
				kvs, resume, err := cl.ScanRange(ctx, at, end, min(limit-len(res.KVs), kv.MaxScanLimit), readOpts(serializable)...)
				if err != nil {
					return err
				}
				for _, k := range kvs {
					res.KVs = append(res.KVs, kvJSON{Key: string(k.Key), Value: string(k.Value), Revision: k.Revision, Range: k.Group})
				}
				if len(resume) == 0 {
					at = nil
					break
				}
				at = resume
			}
			if at != nil {
				res.More, res.Next = true, string(at)
				if n := len(res.KVs); n > 0 {
					res.After = res.KVs[n-1].Key
				}
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				b, err := json.Marshal(res)
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "%s\n", b)
				return nil
			}
			for _, k := range res.KVs {
				fmt.Fprintf(w, "%s\t%s\n", k.Key, k.Value)
			}
			if res.More {
				fmt.Fprintf(cmd.ErrOrStderr(), "(more: continue with --after %q)\n", res.After)
			}
			return nil
		},
	}
	cf.register(cmd)
	cmd.Flags().StringVarP(&output, "write-out", "w", "table", "output format: table or json")
	cmd.Flags().StringVar(&prefix, "prefix", "", "list the keys that start with this prefix")
	cmd.Flags().StringVar(&from, "from", "", "first key of the span (default: the beginning of the keyspace)")
	cmd.Flags().StringVar(&to, "to", "", "end of the span, exclusive (default: the end of the keyspace)")
	cmd.Flags().StringVar(&after, "after", "", "list only keys after this one: continue a listing from the last key it printed")
	cmd.Flags().IntVar(&limit, "limit", 1000, "the most keys to list")
	cmd.Flags().BoolVar(&serializable, "serializable", false, "read from the answering replicas without confirming with the leaders (may be stale)")
	return cmd
}

// readOpts returns the read options of --serializable.
func readOpts(serializable bool) []client.ReadOption {
	if serializable {
		return []client.ReadOption{client.Serializable()}
	}
	return nil
}

func newSplitCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "split KEY",
		Short: "Split the range that holds KEY at KEY (KEY starts a new range)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			left, right, err := cl.Split(ctx, []byte(args[0]))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK: range %d %s, range %d %s\n", left.Id, kv.SpanString(left.Start, left.End),
				right.Id, kv.SpanString(right.Start, right.End))
			return nil
		},
	}
	cf.register(cmd)
	return cmd
}

func newMergeCmd() *cobra.Command {
	var cf clientFlags
	cmd := &cobra.Command{
		Use:   "merge KEY",
		Short: "Merge the range that holds KEY with the range after it",
		Long: `Merge the range that holds KEY with the range after it.

If the two are on different nodes, the left range's replicas are first moved
onto the right range's nodes, one replica move at a time (each a snapshot of
the left range). While a node of the right range is drained, leaving, dead or
down, nothing is moved, and the command asks again until its --timeout.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, ctx, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			m, err := cl.Merge(ctx, []byte(args[0]))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK: range %d %s\n", m.Id, kv.SpanString(m.Start, m.End))
			return nil
		},
	}
	cf.register(cmd)
	return cmd
}

func newMoveCmd() *cobra.Command {
	var cf clientFlags
	var from, to uint64
	cmd := &cobra.Command{
		Use:   "move KEY --from N --to M",
		Short: "Move the replica of the range that holds KEY from node N to node M",
		Long: `Move the replica of the range that holds KEY from node N to node M: M gets
a learner replica, which catches up (a snapshot) and is promoted to a
voter; then N's replica is removed, with its data. The range keeps
serving throughout. --from 0 only adds a replica on M; --to 0 only
removes N's.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if from == 0 && to == 0 {
				return fmt.Errorf("give --from, --to or both")
			}
			cl, ctx, cancel, err := cf.connect(cmd)
			if err != nil {
				return err
			}
			defer cancel()
			defer cl.Close()
			r, err := cl.Move(ctx, []byte(args[0]), from, to)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "OK: range %d %s on nodes %v\n", r.Id, kv.SpanString(r.Start, r.End), r.Replicas)
			return nil
		},
	}
	cmd.Flags().Uint64Var(&from, "from", 0, "the node whose replica leaves (0: none)")
	cmd.Flags().Uint64Var(&to, "to", 0, "the node that gets a replica (0: none)")
	cf.register(cmd)
	cf.timeout = 2 * time.Minute // a snapshot to send
	cmd.Flags().Lookup("timeout").DefValue = cf.timeout.String()
	return cmd
}
