package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/internal/certs"
)

func newCertCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Create and list the certificates of a secure cluster",
		Long: `Create and list the certificates of a secure cluster, all in one directory:
ca.crt and ca.key (the cluster's CA), node-ID.crt and .key for each node, and
client-NAME.crt and .key for each client user. Every file is written with
mode 0600, and an existing file is replaced only with --overwrite.

A node needs ca.crt and its own pair; a client needs ca.crt and, to sign in
with a certificate, its user's pair. Keep ca.key away from the nodes if you
can (--ca-key). A running node picks up replaced files without a restart.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newCertCreateCACmd(), newCertCreateNodeCmd(), newCertCreateClientCmd(), newCertListCmd())
	return cmd
}

// certFlags are the flags of the cert create commands.
type certFlags struct {
	dir       string
	caKey     string
	keyType   string
	lifetime  time.Duration
	overwrite bool
}

func (c *certFlags) register(cmd *cobra.Command, lifetime time.Duration) {
	f := cmd.Flags()
	registerCertsDir(cmd, &c.dir)
	f.StringVar(&c.caKey, "ca-key", "", "path of the CA's key, to keep it out of --certs-dir (default: CERTS_DIR/ca.key)")
	f.StringVar(&c.keyType, "key-type", string(certs.ECDSA), "key type of the new certificate: ecdsa (P-256) or ed25519")
	f.DurationVar(&c.lifetime, "lifetime", lifetime, "how long the new certificate is valid, 1h to 876000h (100 years); a node's or client's ends with the CA's at the latest")
	f.BoolVar(&c.overwrite, "overwrite", false, "replace existing files")
}

// registerCertsDir adds --certs-dir.
func registerCertsDir(cmd *cobra.Command, dir *string) {
	cmd.Flags().StringVar(dir, "certs-dir", "", "directory of the certificates and keys (required; created, mode 0700, if missing)")
}

func checkCertsDir(dir string) error {
	if dir == "" {
		return fmt.Errorf("--certs-dir (or %s) is required", envName("certs-dir"))
	}
	return nil
}

func (c *certFlags) options() (certs.Options, error) {
	if err := checkCertsDir(c.dir); err != nil {
		return certs.Options{}, err
	}
	kt := certs.KeyType(c.keyType)
	if kt != certs.ECDSA && kt != certs.Ed25519 {
		return certs.Options{}, fmt.Errorf("--key-type %q: want %s or %s", c.keyType, certs.ECDSA, certs.Ed25519)
	}
	if c.lifetime < certs.MinLifetime || c.lifetime > certs.MaxLifetime {
		return certs.Options{}, fmt.Errorf("--lifetime %v: want %v to %v", c.lifetime, certs.MinLifetime, certs.MaxLifetime)
	}
	return certs.Options{Dir: c.dir, CAKeyPath: c.caKey, KeyType: kt, Lifetime: c.lifetime, Overwrite: c.overwrite}, nil
}

// create runs a create command: it checks the flags, calls fn and prints
// what fn wrote: certFile in --certs-dir, with what it is, then the key
// (keyFile in --certs-dir, or --ca-key for the CA's).
func (c *certFlags) create(cmd *cobra.Command, certFile, keyFile string, fn func(certs.Options) error) error {
	o, err := c.options()
	if err != nil {
		return err
	}
	if err := fn(o); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w (--overwrite replaces it)", err)
		}
		return err
	}
	keyPath := filepath.Join(o.Dir, keyFile)
	if keyFile == certs.CAKey && o.CAKeyPath != "" {
		keyPath = o.CAKeyPath
	}
	infos, err := certs.List(o.Dir)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	for _, in := range infos {
		if in.File == certFile && in.Err == nil {
			fmt.Fprintf(w, "wrote %s (%s %s, %s key, valid until %s)\n", filepath.Join(o.Dir, certFile),
				in.Kind, in.Identity, in.KeyType, in.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	fmt.Fprintf(w, "wrote %s\n", keyPath)
	return nil
}

func newCertCreateCACmd() *cobra.Command {
	var cf certFlags
	cmd := &cobra.Command{
		Use:   "create-ca --certs-dir DIR",
		Short: "Create the cluster's CA: ca.crt and ca.key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return cf.create(cmd, certs.CACert, certs.CAKey, certs.CreateCA)
		},
	}
	cf.register(cmd, certs.DefaultCALifetime)
	return cmd
}

func newCertCreateNodeCmd() *cobra.Command {
	var cf certFlags
	cmd := &cobra.Command{
		Use:   "create-node NODE-ID HOST... --certs-dir DIR",
		Short: "Create node NODE-ID's certificate and key, signed by the CA",
		Long: `Create node NODE-ID's certificate and key (node-NODE-ID.crt and .key), signed
by the CA of --certs-dir. Its identity is the node ID. The HOSTs (DNS names or IP
addresses, without ports: those of its --peer-addr, --client-addr and
--http-addr) are written into it for tools that check host names; Flotilla
itself checks the node ID.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return fmt.Errorf("want NODE-ID and at least one HOST, got %d arguments", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil || id == 0 {
				return fmt.Errorf("NODE-ID %q: want a positive integer", args[0])
			}
			return cf.create(cmd, certs.NodeCert(id), certs.NodeKey(id), func(o certs.Options) error {
				return certs.CreateNode(o, id, args[1:])
			})
		},
	}
	cf.register(cmd, certs.DefaultLeafLifetime)
	return cmd
}

func newCertCreateClientCmd() *cobra.Command {
	var cf certFlags
	cmd := &cobra.Command{
		Use:   "create-client NAME --certs-dir DIR",
		Short: "Create client user NAME's certificate and key, signed by the CA",
		Long: `Create client user NAME's certificate and key (client-NAME.crt and .key), signed
by the CA of --certs-dir. NAME is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_'
and '-', and does not start with "node.".`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			return cf.create(cmd, certs.ClientCert(name), certs.ClientKey(name), func(o certs.Options) error {
				return certs.CreateClient(o, name)
			})
		},
	}
	cf.register(cmd, certs.DefaultLeafLifetime)
	return cmd
}

// certJSON is one certificate of `flotilla cert list -w json`.
type certJSON struct {
	File     string `json:"file"`
	Kind     string `json:"kind"`
	Identity string `json:"identity"`
	NotAfter string `json:"not_after,omitempty"`
	KeyType  string `json:"key_type,omitempty"`
	Error    string `json:"error,omitempty"`
}

func newCertListCmd() *cobra.Command {
	var dir, output string
	cmd := &cobra.Command{
		Use:   "list --certs-dir DIR",
		Short: "List the certificates of a directory: file, kind, identity, expiry, key type",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			if err := checkCertsDir(dir); err != nil {
				return err
			}
			infos, err := certs.List(dir)
			if err != nil {
				return err
			}
			out := []certJSON{}
			for _, in := range infos {
				c := certJSON{File: in.File, Kind: in.Kind, Identity: in.Identity, KeyType: string(in.KeyType)}
				if in.Err != nil {
					c.Error = in.Err.Error()
				} else {
					c.NotAfter = in.NotAfter.UTC().Format(time.RFC3339)
				}
				out = append(out, c)
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				b, err := json.Marshal(map[string]any{"certs": out})
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "%s\n", b)
				return nil
			}
			tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "FILE\tKIND\tIDENTITY\tNOT AFTER\tKEY TYPE")
			for _, c := range out {
				if c.Error != "" {
					fmt.Fprintf(tw, "%s\t%s\t\t\t\t%s\n", c.File, c.Kind, c.Error)
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.File, c.Kind, c.Identity, c.NotAfter, c.KeyType)
			}
			return tw.Flush()
		},
	}
	registerCertsDir(cmd, &dir)
	cmd.Flags().StringVarP(&output, "write-out", "w", "table", "output format: table or json")
	return cmd
}
