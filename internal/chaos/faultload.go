package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/loadgen"
)

// Faults of a FaultLoad: what happens to the victim node at the fault.
const (
	// FaultSIGSTOP freezes the victim for Hold, then SIGCONT.
	FaultSIGSTOP = "sigstop"
	// FaultKill kills the victim with SIGKILL, and restarts it after Hold.
	FaultKill = "kill"
	// FaultSIGTERM stops the victim gracefully (it hands its leaderships
	// away and drains), and restarts it after Hold.
	FaultSIGTERM = "sigterm"
	// FaultBalance measures a balancer round: before the load starts the
	// victim is killed, its groups fail over, and it is restarted leading
	// nothing; during the load, once the live set has been stable for the
	// nodes' --balance-settle, the balancer hands it its share back with
	// leadership transfers. Nothing happens at the fault time itself.
	FaultBalance = "balance"
)

// FaultLoadConfig configures RunFaultLoad. Zero fields take the defaults.
type FaultLoadConfig struct {
	// Fault is one of FaultSIGSTOP, FaultKill, FaultSIGTERM, FaultBalance.
	Fault string
	// Victim is the node the fault hits; 0: the node leading the most
	// groups.
	Victim uint64
	// Clients, ValueSize, Keys: the closed-loop put load, as `flotilla
	// bench put`. Defaults 64, 256 and 100000.
	Clients, ValueSize, Keys int
	// Before, Hold, After: the load runs Before, then the fault holds for
	// Hold, then the load runs After. Defaults 6s, 8s, 6s.
	Before, Hold, After time.Duration
	// Client configures the load's client (Endpoints are filled in). The
	// zero Config is the client's defaults.
	Client client.Config
	// Progress receives progress lines; nil: none.
	Progress io.Writer
}

// FaultReport is what a FaultLoad measured: the client-side throughput and
// errors through the fault, and what the fault did to the groups' leaders.
type FaultReport struct {
	Fault  string `json:"fault"`
	Victim uint64 `json:"victim"`
	// The load (loadgen's report): ops, errors by kind, latency and the
	// per-second series, by completion time.
	Load loadgen.Result `json:"load"`
	// FaultAt is when the fault began, in seconds after the load started;
	// HoldSeconds how long it held.
	FaultAt     float64 `json:"fault_at_s"`
	HoldSeconds float64 `json:"hold_s"`
	// HealthyOpsPerSec is the mean of the whole seconds before the fault
	// (the first second left out); FaultOpsPerSec the mean of the whole
	// seconds inside the fault; Ratio the second over the first.
	HealthyOpsPerSec float64 `json:"healthy_ops_per_sec"`
	FaultOpsPerSec   float64 `json:"fault_ops_per_sec"`
	Ratio            float64 `json:"ratio"`
	// VictimGroups is how many groups the victim led at the fault;
	// FailoverMs the time from the fault until every one of them had a
	// leader on another node that a majority of the survivors agreed on
	// (-1: not within the fault).
	VictimGroups int     `json:"victim_groups"`
	FailoverMs   float64 `json:"failover_ms"`
	// OtherGroupsChanged counts the groups the victim did not lead whose
	// leader or term changed during the fault (as the survivors saw it);
	// Changed lists them.
	OtherGroupsChanged int      `json:"other_groups_changed"`
	Changed            []string `json:"changed,omitempty"`
	// LeaderChanges counts the groups' leader changes the survivors saw
	// from the fault to the end of the load (for a balancer round: its
	// transfers).
	LeaderChanges int `json:"leader_changes"`
	// Hedges is how many hedged attempts the client sent.
	Hedges uint64 `json:"hedges"`
}

// ClientErrorKind names a client error's kind for loadgen's
// errors_by_kind (the classification of `flotilla bench`).
func ClientErrorKind(err error) string {
	switch {
	case errors.Is(err, client.ErrAmbiguous):
		return "ambiguous"
	case errors.Is(err, client.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, client.ErrClosed):
		return "closed"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	}
	return "other"
}

// leaderView is one poll of the survivors' views: group → leader and term
// agreed by a majority of the polled nodes (leader 0 if none).
type leaderView struct {
	at     time.Time
	groups map[uint64][2]uint64
}

// RunFaultLoad runs a closed-loop put load through the Go client against
// c, applies cfg.Fault to the victim after cfg.Before, undoes it after
// cfg.Hold, and reports what the clients saw and what happened to the
// leaders. c must have every node running and every group led.
func RunFaultLoad(ctx context.Context, c *ProcCluster, cfg FaultLoadConfig) (*FaultReport, error) {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defd := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&cfg.Clients, 64)
	def(&cfg.ValueSize, 256)
	def(&cfg.Keys, 100000)
	defd(&cfg.Before, 6*time.Second)
	defd(&cfg.Hold, 8*time.Second)
	defd(&cfg.After, 6*time.Second)
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	switch cfg.Fault {
	case FaultSIGSTOP, FaultKill, FaultSIGTERM, FaultBalance:
	default:
		return nil, fmt.Errorf("%w: fault %q (want %s, %s, %s or %s)", ErrConfig, cfg.Fault, FaultSIGSTOP, FaultKill, FaultSIGTERM, FaultBalance)
	}
	lead := func(v View) uint64 {
		best, bestN := uint64(0), -1
		for id, n := range v.LeaderCounts() {
			if n > bestN || (n == bestN && id < best) {
				best, bestN = id, n
			}
		}
		return best
	}
	v, err := c.WaitLed(ctx, 30*time.Second)
	if err != nil {
		return nil, err
	}
	victim := cfg.Victim
	if victim == 0 {
		victim = lead(v)
	}
	if cfg.Fault == FaultBalance {
		fmt.Fprintf(cfg.Progress, "faultload: kill -9 node %d, let its groups fail over, restart it leading nothing\n", victim)
		if err := c.Kill(victim); err != nil {
			return nil, err
		}
		if _, err := c.WaitLed(ctx, 30*time.Second, survivors(c, victim)...); err != nil {
			return nil, err
		}
		if err := c.Start(victim); err != nil {
			return nil, err
		}
		if _, err := c.WaitLed(ctx, 30*time.Second); err != nil {
			return nil, err
		}
	}

	cfg.Client.Endpoints = strings.Split(c.Endpoints(), ",")
	cl, err := client.New(ctx, cfg.Client)
	if err != nil {
		return nil, err
	}
	defer cl.Close()

	// The poller: every 100ms, each survivor's own view.
	others := survivors(c, victim)
	var views []leaderView
	var vmu sync.Mutex
	pctx, stopPoll := context.WithCancel(ctx)
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() { // pollLoop
		defer pwg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for pctx.Err() == nil {
			if lv, ok := pollSurvivors(pctx, c, others); ok {
				vmu.Lock()
				views = append(views, lv)
				vmu.Unlock()
			}
			select {
			case <-pctx.Done():
			case <-t.C:
			}
		}
	}()

	value := make([]byte, cfg.ValueSize)
	for i := range value {
		value[i] = 'a' + byte(i%26)
	}
	keys := make([][]byte, cfg.Clients)
	total := cfg.Before + cfg.Hold + cfg.After
	start := time.Now()
	var res loadgen.Result
	done := make(chan struct{})
	go func() { // the load
		defer close(done)
		res = loadgen.Run(ctx, loadgen.Options{Clients: cfg.Clients, Duration: total, Label: "faultload " + cfg.Fault,
			Progress: cfg.Progress, Classify: ClientErrorKind},
			func(ctx context.Context, i int, rng *rand.Rand) error {
				keys[i] = loadgen.AppendKey(keys[i][:0], rng.IntN(cfg.Keys))
				_, err := cl.Put(ctx, keys[i], value)
				return err
			})
	}()

	sleepCtx(ctx, time.Until(start.Add(cfg.Before)))
	faultAt := time.Now()
	var faultErr error
	switch cfg.Fault {
	case FaultSIGSTOP:
		faultErr = c.Pause(victim)
	case FaultKill:
		faultErr = c.Kill(victim)
	case FaultSIGTERM:
		faultErr = c.Terminate(victim, 30*time.Second)
	}
	sleepCtx(ctx, time.Until(faultAt.Add(cfg.Hold)))
	holdEnd := time.Now()
	if faultErr == nil {
		switch cfg.Fault {
		case FaultSIGSTOP:
			faultErr = c.Resume(victim)
		case FaultKill, FaultSIGTERM:
			faultErr = c.Start(victim)
		}
	}
	<-done
	stopPoll()
	pwg.Wait()
	if faultErr != nil {
		return nil, faultErr
	}

	r := &FaultReport{Fault: cfg.Fault, Victim: victim, Load: res, Hedges: cl.Hedges(),
		FaultAt: faultAt.Sub(start).Seconds(), HoldSeconds: holdEnd.Sub(faultAt).Seconds(), FailoverMs: -1}
	r.HealthyOpsPerSec = meanOps(res.PerSecond, 1, int(r.FaultAt))
	r.FaultOpsPerSec = meanOps(res.PerSecond, int(r.FaultAt), int(r.FaultAt+r.HoldSeconds))
	if r.HealthyOpsPerSec > 0 {
		r.Ratio = r.FaultOpsPerSec / r.HealthyOpsPerSec
	}
	analyzeLeaders(r, views, victim, faultAt, holdEnd)
	return r, nil
}

// survivors returns the node IDs other than victim.
func survivors(c *ProcCluster, victim uint64) []uint64 {
	var out []uint64
	for _, id := range c.IDs() {
		if id != victim {
			out = append(out, id)
		}
	}
	return out
}

// pollSurvivors reads each node's own view (300ms each at most) and
// returns, per group, the leader and term a majority of them agree on.
func pollSurvivors(ctx context.Context, c *ProcCluster, nodes []uint64) (leaderView, bool) {
	lv := leaderView{at: time.Now(), groups: map[uint64][2]uint64{}}
	votes := map[uint64]map[[2]uint64]int{}
	answered := 0
	for _, id := range nodes {
		nctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		st, err := c.NodeStatus(nctx, id)
		cancel()
		if err != nil {
			continue
		}
		answered++
		for _, g := range st.Groups {
			if votes[g.ID] == nil {
				votes[g.ID] = map[[2]uint64]int{}
			}
			votes[g.ID][[2]uint64{g.Leader, g.Term}]++
		}
	}
	if answered == 0 {
		return lv, false
	}
	for g, vs := range votes {
		for lt, n := range vs {
			if n*2 > len(nodes) {
				lv.groups[g] = lt
			}
		}
		if _, ok := lv.groups[g]; !ok {
			lv.groups[g] = [2]uint64{0, 0}
		}
	}
	return lv, true
}

// analyzeLeaders fills the leader figures of r from the polled views.
func analyzeLeaders(r *FaultReport, views []leaderView, victim uint64, faultAt, holdEnd time.Time) {
	var base leaderView
	for _, v := range views {
		if v.at.After(faultAt) {
			break
		}
		base = v
	}
	if base.groups == nil {
		return
	}
	// A change is a new leader, seen after another one (a poll may catch
	// the group between them, with no leader).
	last := map[uint64]uint64{}
	for g, lt := range base.groups {
		last[g] = lt[0]
	}
	for _, v := range views {
		if v.at.Before(base.at) {
			continue
		}
		for g, lt := range v.groups {
			if lt[0] == 0 {
				continue
			}
			if l := last[g]; l != 0 && l != lt[0] {
				r.LeaderChanges++
			}
			last[g] = lt[0]
		}
	}
	victimGroups := map[uint64]bool{}
	for g, lt := range base.groups {
		if lt[0] == victim {
			victimGroups[g] = true
		}
	}
	r.VictimGroups = len(victimGroups)
	changed := map[uint64]string{}
	for _, v := range views {
		if v.at.Before(faultAt) || v.at.After(holdEnd) {
			continue
		}
		all := true
		for g := range victimGroups {
			if lt := v.groups[g]; lt[0] == 0 || lt[0] == victim {
				all = false
			}
		}
		if all && r.FailoverMs < 0 {
			r.FailoverMs = float64(v.at.Sub(faultAt).Milliseconds())
		}
		for g, b := range base.groups {
			if victimGroups[g] || b[0] == 0 {
				continue
			}
			if lt := v.groups[g]; lt != b {
				if _, seen := changed[g]; !seen {
					changed[g] = fmt.Sprintf("group %d: leader %d term %d -> leader %d term %d at +%v",
						g, b[0], b[1], lt[0], lt[1], v.at.Sub(faultAt).Round(time.Millisecond))
				}
			}
		}
	}
	r.OtherGroupsChanged = len(changed)
	for _, g := range slices.Sorted(maps.Keys(changed)) {
		r.Changed = append(r.Changed, changed[g])
	}
}

// meanOps is the mean ops of the seconds T with from < T <= to of a
// per-second series (second T covers [T-1s, T)), 0 if none.
func meanOps(ps []loadgen.Second, from, to int) float64 {
	var sum, n float64
	for _, s := range ps {
		if s.T > from && s.T <= to {
			sum += float64(s.Ops)
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / n
}

// sleepCtx sleeps d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
