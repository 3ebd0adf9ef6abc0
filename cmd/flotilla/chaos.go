package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla/flotilla/internal/sim"
	"github.com/flotilla/flotilla/internal/sim/live"
)

// chaosFlags are the flags of `flotilla chaos`.
type chaosFlags struct {
	sim          bool
	seeds        int
	seed         uint64
	nodes        int
	groups       int
	keys         int
	keyOps       int
	duration     time.Duration
	clients      int
	nemesis      string
	out          string
	checkTimeout time.Duration
	output       string
}

func newChaosCmd() *cobra.Command {
	var f chaosFlags
	cmd := &cobra.Command{
		Use:   "chaos",
		Short: "Check linearizability under faults, on real local processes or in deterministic simulation",
		Long: `chaos runs a register workload (put, get, compare-and-swap over a few keys)
under faults and checks the history for linearizability (porcupine) and for
lost acknowledged writes.

With --sim it runs the deterministic simulation (package sim) over --seeds
seeds starting at --seed: the whole cluster in one goroutine under a
simulated clock. Replaying one seed (--seeds 1 --seed S) reproduces it
exactly. Faults (--nemesis): drop, delay, duplicate, partition, blackhole,
crash (alias kill), failpoint, campaign, pause (a node frozen as by SIGSTOP),
transfer (leadership transfers), reqdup (client writes delivered twice, the
copy later and elsewhere), split, merge, membership (a range's leader adds
a learner on a node that does not exist, or removes it; --sim only), move
(a range's replica moved off a node or onto one; --sim only), join (a new,
empty node joins and takes replicas; --sim only), decommission (a node's
replicas move off, then it stops for good; --sim only), or all (the default
with --sim).

Without --sim it starts --nodes real 'flotilla start' processes on
127.0.0.1..N, drives the workload through the Go client for --duration
while injecting faults (blackhole and partition need root and iptables;
kill is SIGKILL and restart; pause is SIGSTOP and SIGCONT; transfer turns
on the nodes' leader balancer, which moves leaders with
TransferLeadership; lose, with --nodes 4 or 5, kills one node for good a
quarter into the run, on nodes started with --replicas 3, --dead-after 3s
and merges off, and after healing waits until its ranges are up-replicated
onto the others), heals, and checks. The history and porcupine's HTML rendering are
written under --out.

Independent keys (without --sim): --keys keys are in use at once, but each
takes at most --key-ops operations; then it is retired and a fresh key takes
its place. Each key's history is checked on its own, bounded by
--check-timeout, so that a long run stays checkable. The verdict
("linearizable" in -w json) is true, false (some key's history is not
linearizable; illegal_keys names them), or "unknown" when no key is illegal
but some key's check ran out of its bound (unknown_keys names them).

Exit status, with or without --sim:
  0  every key (every seed) checked out linearizable, no lost acknowledged write
  1  a violation: a history that is not linearizable, a lost acknowledged
     write, a watcher whose events differ from a fresh watch's (two watchers
     follow every key from revision 1 through the faults, resuming on other
     nodes), or (--sim) any other safety violation; also any error that
     kept the run from finishing (bad flags, a cluster that never got ready)
  3  no violation, but some check ran out of --check-timeout: a key whose
     check is unknown, or (--sim) a seed whose check is unknown; such a run
     proves nothing about that key or seed. Raise --check-timeout, or lower
     --key-ops.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f.output, "json", "table"); err != nil {
				return err
			}
			if f.sim {
				return runChaosSim(cmd, &f)
			}
			return runChaosLive(cmd, &f)
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.sim, "sim", false, "run the deterministic simulation instead of real processes")
	fl.IntVar(&f.seeds, "seeds", 100, "with --sim: how many seeds to run")
	fl.Uint64Var(&f.seed, "seed", 0, "first seed (--sim), or the seed of the fault schedule")
	fl.IntVar(&f.nodes, "nodes", 3, "number of nodes")
	fl.IntVar(&f.groups, "groups", 16, "number of raft groups (--sim default 2)")
	fl.IntVar(&f.keys, "keys", 8, "number of keys in use at once (--sim default 3)")
	fl.IntVar(&f.keyOps, "key-ops", 300, "operations per key before it is retired for a fresh one, 1 to 10000 (not with --sim)")
	fl.DurationVar(&f.duration, "duration", 30*time.Second, "length of the faulty phase (--sim: simulated, default 2s per seed)")
	fl.IntVar(&f.clients, "clients", 16, "concurrent clients (--sim default 4)")
	fl.StringVar(&f.nemesis, "nemesis", "blackhole,partition,kill,pause,transfer", "faults to inject, comma separated (--sim default all)")
	fl.StringVar(&f.out, "out", "", "directory for histories and visualizations (default: a new temporary directory)")
	fl.DurationVar(&f.checkTimeout, "check-timeout", 10*time.Second, "bound on the linearizability check of each key (of each seed with --sim)")
	fl.StringVarP(&f.output, "write-out", "w", "table", "output format: json or table")
	return cmd
}

// simSummary is what `chaos --sim -w json` prints.
type simSummary struct {
	Seeds        int      `json:"seeds"`
	Failed       int      `json:"failed"`
	FailingSeeds []uint64 `json:"failing_seeds"`
	// Unknown counts the seeds whose linearizability check ran out of
	// --check-timeout (a seed that also failed otherwise is in both
	// lists); UnknownSeeds lists them.
	Unknown      int      `json:"unknown"`
	UnknownSeeds []uint64 `json:"unknown_seeds"`
	Ops          int      `json:"ops"`
	Faults       int      `json:"faults"`
	SimSeconds   float64  `json:"sim_seconds"`
	WallSeconds  float64  `json:"wall_seconds"`
	// Visualizations lists porcupine renderings of failing seeds.
	Visualizations []string `json:"visualizations,omitempty"`
}

// simFaults maps --nemesis to simulation faults, with the aliases of the
// real-process mode.
func simFaults(s string) (sim.Faults, error) {
	var parts []string
	for _, p := range strings.Split(s, ",") {
		switch p = strings.TrimSpace(p); p {
		case "kill":
			p = "crash"
		}
		parts = append(parts, p)
	}
	f, err := sim.ParseFaults(strings.Join(parts, ","))
	if err != nil {
		return 0, err
	}
	if f == 0 {
		return 0, fmt.Errorf("--nemesis %q names no fault", s)
	}
	return f, nil
}

func runChaosSim(cmd *cobra.Command, f *chaosFlags) error {
	changed := cmd.Flags().Changed
	cfg := sim.Config{Nodes: f.nodes, Groups: 2, Keys: 3, Clients: 4, Duration: 2 * time.Second, CheckTimeout: 10 * time.Second}
	if changed("groups") {
		cfg.Groups = f.groups
	}
	if changed("keys") {
		cfg.Keys = f.keys
	}
	if changed("clients") {
		cfg.Clients = f.clients
	}
	if changed("duration") {
		cfg.Duration = f.duration
	}
	if changed("check-timeout") {
		cfg.CheckTimeout = f.checkTimeout
	}
	if changed("nemesis") {
		faults, err := simFaults(f.nemesis)
		if err != nil {
			return err
		}
		cfg.Faults = faults
	}
	if f.seeds < 1 {
		return fmt.Errorf("--seeds must be at least 1")
	}
	if changed("key-ops") {
		return fmt.Errorf("--key-ops applies only without --sim")
	}
	cfg.VisualizeDir = f.out
	if cfg.VisualizeDir == "" {
		cfg.VisualizeDir = os.TempDir()
	}
	start := time.Now()
	sum := simSummary{FailingSeeds: []uint64{}, UnknownSeeds: []uint64{}}
	stderr := cmd.ErrOrStderr()
	lastProgress := start
	for i := 0; i < f.seeds; i++ {
		if err := cmd.Context().Err(); err != nil {
			return err
		}
		cfg.Seed = f.seed + uint64(i)
		r, err := sim.Run(cfg)
		if err != nil {
			return err
		}
		sum.Seeds++
		sum.Ops += r.Ops
		sum.Faults += r.Faults
		sum.SimSeconds += r.SimTime.Seconds()
		if r.Linearizable == "unknown" {
			sum.Unknown++
			sum.UnknownSeeds = append(sum.UnknownSeeds, r.Seed)
			fmt.Fprintf(stderr, "seed %d UNKNOWN: the linearizability check of %d ops ran out of %v\n", r.Seed, r.Ops, cfg.CheckTimeout)
		}
		if r.Failed() {
			sum.Failed++
			sum.FailingSeeds = append(sum.FailingSeeds, r.Seed)
			if r.Visualization != "" {
				sum.Visualizations = append(sum.Visualizations, r.Visualization)
			}
			fmt.Fprintf(stderr, "seed %d FAILED: linearizable=%s lost_acks=%d\n", r.Seed, r.Linearizable, r.LostAcks)
			for _, v := range r.Violations {
				if len(v) > 500 {
					v = v[:500] + "…"
				}
				fmt.Fprintf(stderr, "  %s\n", v)
			}
		}
		if time.Since(lastProgress) > 2*time.Second || i == f.seeds-1 {
			lastProgress = time.Now()
			fmt.Fprintf(stderr, "chaos --sim: %d/%d seeds, %d failed, %d unknown\n", sum.Seeds, f.seeds, sum.Failed, sum.Unknown)
		}
	}
	sum.WallSeconds = time.Since(start).Seconds()
	out := cmd.OutOrStdout()
	if f.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(sum); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "SEEDS\tFAILED\tUNKNOWN\tOPS\tFAULTS\tSIM SECONDS\tWALL SECONDS\tFAILING SEEDS\tUNKNOWN SEEDS\n")
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t%v\t%v\n", sum.Seeds, sum.Failed, sum.Unknown, sum.Ops,
			sum.Faults, sum.SimSeconds, sum.WallSeconds, sum.FailingSeeds, sum.UnknownSeeds)
		tw.Flush()
	}
	if sum.Failed > 0 {
		return &exitError{code: live.StatusViolation, err: fmt.Errorf("chaos: %d of %d seeds failed: %v", sum.Failed, sum.Seeds, sum.FailingSeeds)}
	}
	if sum.Unknown > 0 {
		return &exitError{code: live.StatusUnknown, err: fmt.Errorf("chaos: %d of %d seeds unknown (check ran out of %v): %v", sum.Unknown, sum.Seeds, cfg.CheckTimeout, sum.UnknownSeeds)}
	}
	return nil
}

func runChaosLive(cmd *cobra.Command, f *chaosFlags) error {
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("chaos: find own binary: %w", err)
	}
	cfg := live.Config{
		Binary:       bin,
		Dir:          f.out,
		Nodes:        f.nodes,
		Groups:       f.groups,
		Keys:         f.keys,
		KeyOps:       f.keyOps,
		Clients:      f.clients,
		Duration:     f.duration,
		Nemesis:      f.nemesis,
		Seed:         f.seed,
		CheckTimeout: f.checkTimeout,
		Progress:     cmd.ErrOrStderr(),
	}
	res, err := live.Run(cmd.Context(), cfg)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	if f.output == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "OPS\tAMBIGUOUS\tFAULTS\tKEYS\tLINEARIZABLE\tILLEGAL KEYS\tUNKNOWN KEYS\tLOST ACKS\tWATCH EVENTS\tWATCH VIOLATIONS\tHISTORY\n")
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%v\t%s\t%s\t%d\t%d\t%d\t%s\n", res.Ops, res.Ambiguous, res.Faults, res.KeysChecked,
			res.Linearizable, keyList(res.KeysIllegal, res.IllegalKeys), keyList(res.KeysUnknown, res.UnknownKeys), res.LostAcks,
			res.WatchEvents, len(res.WatchViolations), res.History)
		tw.Flush()
	}
	switch res.Status() {
	case live.StatusViolation:
		first := ""
		if len(res.WatchViolations) > 0 {
			first = "; the first watch violation: " + res.WatchViolations[0]
		}
		return &exitError{code: live.StatusViolation, err: fmt.Errorf("chaos: linearizable=%v, illegal keys %s, lost_acks=%d, %d watch violations%s; see %s",
			res.Linearizable, keyList(res.KeysIllegal, res.IllegalKeys), res.LostAcks, len(res.WatchViolations), first, res.Visualization)}
	case live.StatusUnknown:
		return &exitError{code: live.StatusUnknown, err: fmt.Errorf("chaos: linearizable=unknown: the check of %s of %d keys ran out of %v; see %s",
			keyList(res.KeysUnknown, res.UnknownKeys), res.KeysChecked, cfg.CheckTimeout, res.Visualization)}
	}
	return nil
}

// keyList is n and the names of keys for the table: "0", or "2 (k1.0 k3.4)".
func keyList(n int, keys []string) string {
	if n == 0 {
		return "0"
	}
	if len(keys) > 5 {
		keys = append(keys[:5:5], "…")
	}
	return fmt.Sprintf("%d (%s)", n, strings.Join(keys, " "))
}
