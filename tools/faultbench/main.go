// Command faultbench measures what clients see through one fault of one
// node of a real 3-node cluster: it starts `flotilla start` processes on
// 127.0.0.1..3 (internal/chaos.ProcCluster, fsync on, production tick and
// election timeout), runs a closed-loop put load through the Go client (the
// loop of `flotilla bench put`), hits one node, and prints the per-second
// throughput through the fault, the errors by kind, how long the victim's
// groups took to be led again, and whether any other group changed leader
// or term (BENCHMARKS.md, "Faults at the client").
//
// Usage:
//
//	go run ./tools/faultbench --fault sigstop|kill|sigterm|balance [flags]
//
// sigstop freezes the node leading the most groups for --hold, then
// resumes it; kill is kill -9 and a restart after --hold; sigterm is a
// graceful stop (leaderships handed away, requests drained) and a restart
// after --hold; balance kills and restarts that node before the load, so
// that during the load the balancer hands it its share of leaderships back
// (after --balance-settle). --naive drives the load with the client's
// failover detection off (one attempt at a time, each up to 5s): the
// client before this change, for comparison.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/chaos"
)

func main() {
	fault := flag.String("fault", "", "sigstop, kill, sigterm or balance (required)")
	groups := flag.Int("groups", 64, "raft groups")
	clients := flag.Int("clients", 64, "closed-loop clients")
	valueSize := flag.Int("value-size", 256, "value size in bytes")
	keys := flag.Int("keys", 100000, "distinct keys")
	before := flag.Duration("before", 6*time.Second, "load before the fault")
	hold := flag.Duration("hold", 8*time.Second, "how long the fault holds")
	after := flag.Duration("after", 6*time.Second, "load after the fault")
	victim := flag.Uint64("victim", 0, "node to hit (0: the one leading the most groups)")
	naive := flag.Bool("naive", false, "client without failover detection (one attempt at a time, 5s each)")
	tick := flag.Duration("tick", 100*time.Millisecond, "raft tick of the nodes")
	settle := flag.Duration("balance-settle", 10*time.Second, "the nodes' --balance-settle")
	bin := flag.String("binary", "", "flotilla binary (default: built from this checkout)")
	dir := flag.String("dir", "", "directory for the nodes' data and logs (default: a temporary one, removed)")
	out := flag.String("w", "table", "output: table or json")
	flag.Parse()
	if err := run(*fault, *groups, *clients, *valueSize, *keys, *before, *hold, *after, *victim, *naive, *tick, *settle, *bin, *dir, *out); err != nil {
		fmt.Fprintln(os.Stderr, "faultbench:", err)
		os.Exit(1)
	}
}

func run(fault string, groups, clients, valueSize, keys int, before, hold, after time.Duration, victim uint64,
	naive bool, tick, settle time.Duration, bin, dir, out string) error {
	if out != "table" && out != "json" {
		return fmt.Errorf("-w %q: want table or json", out)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if dir == "" {
		d, err := os.MkdirTemp("", "faultbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	if bin == "" {
		bin = filepath.Join(dir, "flotilla")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/flotilla")
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building flotilla (run from the repository root): %w", err)
		}
	}
	c, err := chaos.StartProcCluster(chaos.ProcConfig{Binary: bin, Dir: dir, Nodes: 3, Groups: groups, Tick: tick,
		ElectionTicks: 10, Balance: 2 * time.Second, BalanceSettle: settle})
	if err != nil {
		return err
	}
	defer c.Close()
	cfg := chaos.FaultLoadConfig{Fault: fault, Victim: victim, Clients: clients, ValueSize: valueSize, Keys: keys,
		Before: before, Hold: hold, After: after, Progress: os.Stderr}
	if naive {
		cfg.Client = client.Config{DisableFailover: true, AttemptTimeout: 5 * time.Second}
	}
	r, err := chaos.RunFaultLoad(ctx, c, cfg)
	if err != nil {
		return err
	}
	if out == "json" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	var secs []string
	for _, s := range r.Load.PerSecond {
		mark := ""
		if float64(s.T) > r.FaultAt && float64(s.T-1) < r.FaultAt+r.HoldSeconds {
			mark = "*"
		}
		secs = append(secs, fmt.Sprintf("%d%s", s.Ops, mark))
	}
	fmt.Printf("fault %s on node %d at %.1fs for %.1fs (%d groups it led)\n", r.Fault, r.Victim, r.FaultAt, r.HoldSeconds, r.VictimGroups)
	fmt.Printf("ops/s per second (* = in the fault): %s\n", strings.Join(secs, " "))
	fmt.Printf("healthy %.0f ops/s, in the fault %.0f ops/s: %.2fx; %d ops, %d errors %v, p99 %.1f ms, %d hedges\n",
		r.HealthyOpsPerSec, r.FaultOpsPerSec, r.Ratio, r.Load.Ops, r.Load.Errors, r.Load.ErrorsByKind, r.Load.P99Ms, r.Hedges)
	fmt.Printf("victim's groups led again after %.0f ms; other groups that changed leader or term: %d %v; leader changes seen: %d\n",
		r.FailoverMs, r.OtherGroupsChanged, r.Changed, r.LeaderChanges)
	return nil
}
