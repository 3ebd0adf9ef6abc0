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
	certsDir  string
	user      string
	token     string
	insecure  bool
}

func (c *clientFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.endpoints, "endpoints", "127.0.0.1:2379", "client addresses of some nodes, comma separated")
	cmd.Flags().DurationVar(&c.timeout, "timeout", 10*time.Second, "how long the command may take")
	cmd.Flags().StringVar(&c.certsDir, "certs-dir", "", "directory with the cluster's ca.crt and the client certificate of --user (a cluster started with --certs-dir)")
	cmd.Flags().StringVar(&c.user, "user", "root", "the user whose certificate (client-USER.crt) the command presents")
	cmd.Flags().StringVar(&c.token, "token", "", "authenticate with this user token (flotilla user add) instead of a client certificate; needs --certs-dir for ca.crt")
	cmd.Flags().BoolVar(&c.insecure, "insecure", false, "talk plaintext to a cluster started with --insecure (the default without --certs-dir; overrides it)")
}

// config returns the client configuration the flags describe.
func (c *clientFlags) config() (client.Config, error) {
	eps, err := c.list()
	if err != nil {
		return client.Config{}, err
	}
	cfg := client.Config{Endpoints: eps}
	switch {
	case c.insecure:
		// Wins over a --certs-dir from the environment (FLOTILLA_CERTS_DIR).
		return cfg, nil
	case c.certsDir == "" && c.token != "":
		return cfg, fmt.Errorf("--token needs --certs-dir (the cluster's ca.crt): a token is only sent over TLS")
	case c.certsDir == "":
		return cfg, nil
	}
	user := c.user
	if c.token != "" {
		user = "" // the token names the user
	}
	if cfg.TLS, err = client.LoadTLS(c.certsDir, user); err != nil {
		return cfg, err
	}
	cfg.Token = c.token
	return cfg, nil
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
	cfg, err := c.config()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), c.timeout)
	cl, err := client.New(ctx, cfg)
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
