package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/client"
)

// clientFlags are the flags of every command that talks to a cluster.
type clientFlags struct {
	endpoints string
	timeout   time.Duration
}

func (c *clientFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.endpoints, "endpoints", "127.0.0.1:2379", "client addresses of some nodes, comma separated")
	cmd.Flags().DurationVar(&c.timeout, "timeout", 10*time.Second, "how long the command may take")
}

func (c *clientFlags) list() ([]string, error) {
	var out []string
	for _, e := range strings.Split(c.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--endpoints is empty; want HOST:PORT[,HOST:PORT...]")
	}
	return out, nil
}

// connect returns a client and a context bounded by --timeout.
func (c *clientFlags) connect(cmd *cobra.Command) (*client.Client, context.Context, context.CancelFunc, error) {
	if c.timeout <= 0 {
		return nil, nil, nil, fmt.Errorf("--timeout must be positive")
	}
	eps, err := c.list()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	cl, err := client.New(ctx, client.Config{Endpoints: eps})
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return cl, ctx, cancel, nil
}

func checkOutput(w string, allowed ...string) error {
	for _, a := range allowed {
		if w == a {
			return nil
		}
	}
	return fmt.Errorf("-w %q: want one of %s", w, strings.Join(allowed, ", "))
}
