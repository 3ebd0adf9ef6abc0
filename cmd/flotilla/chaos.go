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
crash (alias kill), failpoint, campaign (alias transfer), pause (a full
partition of one side), or all (the default with --sim).

Without --sim it starts --nodes real 'flotilla start' processes on
127.0.0.1..N, drives the workload through the Go client for --duration
while injecting faults (blackhole and partition need root and iptables;
kill is SIGKILL and restart; pause is SIGSTOP and SIGCONT; transfer turns
on the nodes' leader balancer, which moves leaders with
TransferLeadership), heals, and checks. The history and porcupine's HTML
rendering are written under --out.`,
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
	fl.IntVar(&f.keys, "keys", 8, "number of keys of the workload (--sim default 3)")
	fl.DurationVar(&f.duration, "duration", 30*time.Second, "length of the faulty phase (--sim: simulated, default 2s per seed)")
	fl.IntVar(&f.clients, "clients", 16, "concurrent clients (--sim default 4)")
	fl.StringVar(&f.nemesis, "nemesis", "blackhole,partition,kill,pause,transfer", "faults to inject, comma separated (--sim default all)")
	fl.StringVar(&f.out, "out", "", "directory for histories and visualizations (default: a new temporary directory)")
	fl.DurationVar(&f.checkTimeout, "check-timeout", time.Minute, "bound on the linearizability check (per seed with --sim, default 10s)")
	fl.StringVarP(&f.output, "write-out", "w", "table", "output format: json or table")
	return cmd
}

// simSummary is what `chaos --sim -w json` prints.
type simSummary struct {
	Seeds        int      `json:"seeds"`
	Failed       int      `json:"failed"`
	FailingSeeds []uint64 `json:"failing_seeds"`
	Unknown      int      `json:"unknown"`
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
		case "transfer":
			p = "campaign"
		case "pause":
			p = "partition"
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
	cfg.VisualizeDir = f.out
	if cfg.VisualizeDir == "" {
		cfg.VisualizeDir = os.TempDir()
	}
	start := time.Now()
	sum := simSummary{FailingSeeds: []uint64{}}
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
		fmt.Fprintf(tw, "SEEDS\tFAILED\tUNKNOWN\tOPS\tFAULTS\tSIM SECONDS\tWALL SECONDS\tFAILING SEEDS\n")
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t%v\n", sum.Seeds, sum.Failed, sum.Unknown, sum.Ops,
			sum.Faults, sum.SimSeconds, sum.WallSeconds, sum.FailingSeeds)
		tw.Flush()
	}
	if sum.Failed > 0 {
		return &exitError{code: 1, err: fmt.Errorf("chaos: %d of %d seeds failed: %v", sum.Failed, sum.Seeds, sum.FailingSeeds)}
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
		fmt.Fprintf(tw, "OPS\tAMBIGUOUS\tFAULTS\tLINEARIZABLE\tLOST ACKS\tHISTORY\n")
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%d\t%s\n", res.Ops, res.Ambiguous, res.Faults, res.Linearizable, res.LostAcks, res.History)
		tw.Flush()
	}
	if res.Linearizable == "illegal" || res.LostAcks > 0 {
		return &exitError{code: 1, err: fmt.Errorf("chaos: linearizable=%s lost_acks=%d; see %s", res.Linearizable, res.LostAcks, res.Visualization)}
	}
	return nil
}
