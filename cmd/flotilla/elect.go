package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/kv"
)

// Exit codes of elect.
const (
	// exitNoLeader: elect --leader found nobody holding the election.
	exitNoLeader = 3
	// exitLeaseLost: elect NAME VALUE lost its lease while holding or
	// campaigning (cut off from the cluster for a TTL).
	exitLeaseLost = 4
)

func newElectCmd() *cobra.Command {
	var cf clientFlags
	var ttl time.Duration
	var leader, observe bool
	cmd := &cobra.Command{
		Use:   "elect NAME [VALUE]",
		Short: "Campaign in, read or observe an election among outside processes",
		Long: `elect NAME VALUE campaigns with a lease of --ttl, prints a line with
"elected" once elected, holds the leadership until SIGINT or SIGTERM, then
resigns and revokes its lease. If the lease is lost (no keep-alive
succeeded for a TTL) it prints "lost" and exits 4.

elect NAME --leader prints the holder's value; exit 3 when there is none.
elect NAME --observe prints each change of the election as it happens.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case leader && observe:
				return errors.New("--leader and --observe exclude each other")
			case (leader || observe) && len(args) != 1:
				return errors.New("--leader and --observe take only NAME")
			case !leader && !observe && len(args) != 2:
				return errors.New("want NAME VALUE to campaign, or NAME with --leader or --observe")
			}
			if err := kv.CheckKey([]byte(args[0])); err != nil {
				return fmt.Errorf("NAME: %w", err)
			}
			if !leader && !observe {
				if err := kv.CheckTTL(ttl); err != nil {
					return fmt.Errorf("--ttl: %w", err)
				}
			}
			if cf.timeout <= 0 {
				return errors.New("--timeout must be positive")
			}
			ccfg, err := cf.config()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			dctx, cancel := context.WithTimeout(ctx, cf.timeout)
			cl, err := client.New(dctx, ccfg)
			cancel()
			if err != nil {
				return err
			}
			defer cl.Close()
			e, err := cl.Election(args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch {
			case leader:
				return electLeader(ctx, cf.timeout, e, out)
			case observe:
				return electObserve(ctx, e, out)
			}
			return electCampaign(ctx, cf.timeout, cl, e, []byte(args[1]), ttl, out)
		},
	}
	cf.register(cmd)
	cmd.Flags().DurationVar(&ttl, "ttl", 5*time.Second, "lease time to live when campaigning (100ms..24h)")
	cmd.Flags().BoolVar(&leader, "leader", false, "print the holder's value; exit 3 when there is none")
	cmd.Flags().BoolVar(&observe, "observe", false, "print each change of the election until interrupted")
	return cmd
}

func electLeader(ctx context.Context, timeout time.Duration, e *client.Election, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := e.Leader(ctx)
	if errors.Is(err, client.ErrNoLeader) {
		return &exitError{code: exitNoLeader, err: err}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%s\n", st.Value)
	return nil
}

func electObserve(ctx context.Context, e *client.Election, out io.Writer) error {
	obs := e.Observe(ctx)
	defer obs.Close()
	for {
		st, err := obs.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted
			}
			return err
		}
		skipped := ""
		if st.Skipped {
			skipped = " (changes skipped)"
		}
		if st.HasLeader {
			fmt.Fprintf(out, "leader %s token=%d revision=%d%s\n", st.Value, st.Token, st.Revision, skipped)
		} else {
			fmt.Fprintf(out, "no leader revision=%d%s\n", st.Revision, skipped)
		}
	}
}

func electCampaign(ctx context.Context, timeout time.Duration, cl *client.Client, e *client.Election, value []byte, ttl time.Duration, out io.Writer) error {
	gctx, cancel := context.WithTimeout(ctx, timeout)
	lease, err := cl.GrantFor(gctx, e.Name(), ttl)
	cancel()
	if err != nil {
		return err
	}
	release := func() error {
		rctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		rerr := e.Resign(rctx)
		if err := lease.Revoke(rctx); rerr == nil {
			rerr = err
		}
		return rerr
	}
	fmt.Fprintf(os.Stderr, "campaigning for %q with lease %d (ttl %v)\n", e.Name(), lease.ID(), ttl)
	l, err := e.Campaign(ctx, lease, value)
	switch {
	case errors.Is(err, client.ErrLeaseLost):
		fmt.Fprintf(out, "lost %s: %v\n", e.Name(), err)
		_ = release()
		return &exitError{code: exitLeaseLost, err: err}
	case err != nil && ctx.Err() != nil:
		// Interrupted while waiting: Campaign withdrew the candidate.
		return release()
	case err != nil:
		_ = release()
		return err
	}
	fmt.Fprintf(out, "elected %s token=%d lease=%d\n", e.Name(), l.Token, lease.ID())
	select {
	case <-ctx.Done():
		if err := release(); err != nil {
			return fmt.Errorf("resign: %w", err)
		}
		fmt.Fprintf(out, "resigned %s\n", e.Name())
		return nil
	case <-l.Done():
		err := lease.Err()
		fmt.Fprintf(out, "lost %s: %v\n", e.Name(), err)
		_ = release()
		return &exitError{code: exitLeaseLost, err: err}
	}
}
