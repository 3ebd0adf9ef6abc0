// Command flotilla runs a Flotilla node and talks to a Flotilla cluster.
// One file per command; flags are contracts (docs/design.md): each also reads
// FLOTILLA_<FLAG> from the environment, and a flag given on the command
// line beats the environment.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func main() {
	ensureProcs()
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "flotilla: %v\n", err)
		os.Exit(exitCode(err))
	}
}

// minProcs is the fewest Ps the node runs with. Raft workers and Pebble's
// WAL writer spend much of their time in fsync; with GOMAXPROCS 2, two
// threads in the syscall hold both Ps until sysmon retakes them, and on a
// 2-core machine throughput falls by 2-4x (BENCHMARKS.md, "Engine").
const minProcs = 4

// ensureProcs raises GOMAXPROCS to minProcs unless the operator set
// GOMAXPROCS explicitly.
func ensureProcs() {
	if _, set := os.LookupEnv("GOMAXPROCS"); !set && runtime.GOMAXPROCS(0) < minProcs {
		runtime.GOMAXPROCS(minProcs)
	}
}

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "flotilla",
		Short:         "Flotilla: a replicated key-value and leader-election service on multi-raft",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return bindEnv(cmd.Flags())
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(newStartCmd(), newPutCmd(), newGetCmd(), newDelCmd(), newStatusCmd(), newBenchCmd(), newDemoCmd(), newChaosCmd(), newElectCmd(), newRangesCmd(), newScanCmd(), newSplitCmd(), newMergeCmd(), newMoveCmd(), newUserCmd(), newRoleCmd(), newTxnCmd(), newWatchCmd(), newNodeCmd())
	root.AddCommand(newCertCmd())
	return root
}

// envName returns the environment variable of a flag: FLOTILLA_ and the
// flag's name in upper case with dashes as underscores.
func envName(flag string) string {
	return "FLOTILLA_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// bindEnv sets every flag not given on the command line from its
// environment variable, if set.
func bindEnv(fs *pflag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed || f.Name == "help" {
			return
		}
		v, ok := os.LookupEnv(envName(f.Name))
		if !ok {
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = fmt.Errorf("invalid %s=%q: %v", envName(f.Name), v, serr)
		}
	})
	return err
}
