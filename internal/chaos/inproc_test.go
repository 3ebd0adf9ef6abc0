package chaos

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testutil"
)

// The in-process cluster tests: real gRPC over loopback, Pebble stores,
// faults through the transport's hooks. Each TestSeed... test runs its
// scenario against Flotilla (which must pass) and against the naive build
// (NaiveTransport, the serial blocking sender), which must fail the same
// assertions.

// newTestCluster starts a cluster of n nodes closed at cleanup.
func newTestCluster(t *testing.T, n int, naive bool) *Cluster {
	t.Helper()
	c, err := NewCluster(Config{Nodes: n, Dir: t.TempDir(), DisableSync: true, Naive: naive})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// placeLeaders makes node lead every group and returns the settled view.
func placeLeaders(t *testing.T, c *Cluster, node uint64) View {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.PlaceLeaders(ctx, node); err != nil {
		t.Fatal(err)
	}
	return c.View()
}

// hold lets a fault last d: the scenario's duration, not a wait for an
// outcome.
func hold(d time.Duration) {
	t := time.NewTimer(d)
	<-t.C
}

// waitAcks waits (bounded) until the load has n more acknowledged writes.
func waitAcks(t *testing.T, l *Load, n int, bound time.Duration) {
	t.Helper()
	want := l.Count() + n
	deadline := time.NewTimer(bound)
	defer deadline.Stop()
	tk := time.NewTicker(5 * time.Millisecond)
	defer tk.Stop()
	for l.Count() < want {
		select {
		case <-deadline.C:
			t.Fatalf("writes stalled: %d acknowledged, want %d within %v (%d errors)", l.Count(), want, bound, l.Errors())
		case <-tk.C:
		}
	}
}

// faultRun is the outcome of one run of a fault scenario.
type faultRun struct {
	before, during View
	// check is CheckUnchanged(before, during, exempt...) at the end of the
	// fault.
	check error
	// elections counts terms begun during the fault, over all groups.
	elections int
	// acked counts writes acknowledged during the fault; lastPart those in
	// its last third.
	acked, lastPart int
	// healthyRate and faultRate are acknowledged writes per second before
	// (when measured) and during the fault.
	healthyRate, faultRate float64
	window                 time.Duration
}

// err is the run's verdict on "terms and leaders unchanged, writes go on".
func (r faultRun) err() error {
	if r.check != nil {
		return r.check
	}
	if r.lastPart == 0 {
		return errors.New("chaos test: no write acknowledged in the last third of the fault")
	}
	return nil
}

// runFault places every leader on node 1, starts a write load, optionally
// measures the healthy write rate over window, applies the fault, holds it
// for window, takes the view, and lifts the fault. The load is left
// running; the caller stops it.
func runFault(t *testing.T, c *Cluster, window time.Duration, baseline bool, exempt []uint64, apply, lift func()) (faultRun, *Load) {
	t.Helper()
	var r faultRun
	r.window = window
	r.before = placeLeaders(t, c, 1)
	load, err := StartLoad(c, LoadConfig{Groups: c.LoadGroups(), Workers: 16, OpTimeout: 2 * c.MaxElectionTimeout()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(load.Stop)
	waitAcks(t, load, 50, 30*time.Second)
	if c.cfg.Quiesce && c.cfg.IdleGroups > 0 {
		// The idle groups quiesce on every node before the fault.
		testutil.WaitFor(t, 30*time.Second, "idle groups quiesced", func() error {
			for _, n := range c.Nodes() {
				if q := n.Host.Quiesced(); q < c.cfg.IdleGroups {
					return fmt.Errorf("node %d: %d quiesced, want %d", n.ID, q, c.cfg.IdleGroups)
				}
			}
			return nil
		})
	}
	if baseline {
		start := time.Now()
		hold(window)
		r.healthyRate = float64(load.CountBetween(start, time.Now())) / time.Since(start).Seconds()
	}
	if v := c.View(); CheckUnchanged(r.before, v) != nil {
		if !baseline {
			t.Fatalf("leadership moved before the fault: %v", CheckUnchanged(r.before, v))
		}
		// A measurement run: the fault's changes count from here.
		t.Logf("leadership moved during the healthy measurement: %v", CheckUnchanged(r.before, v))
		r.before = v
	}
	start := time.Now()
	apply()
	hold(window)
	end := time.Now()
	r.during = c.View()
	lift()
	r.check = CheckUnchanged(r.before, r.during, exempt...)
	r.elections = Elections(r.before, r.during)
	r.acked = load.CountBetween(start, end)
	r.lastPart = load.CountBetween(end.Add(-window/3), end)
	r.faultRate = float64(r.acked) / end.Sub(start).Seconds()
	return r, load
}

// settle waits until every group is led again after a fault and checks
// that no acknowledged write was lost.
func settle(t *testing.T, c *Cluster, load *Load) View {
	t.Helper()
	load.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := c.WaitLed(ctx, 10*c.MaxElectionTimeout())
	if err != nil {
		t.Fatal(err)
	}
	ws := load.Acked()
	if err := c.CheckAcked(ctx, ws); err != nil {
		t.Fatal(err)
	}
	t.Logf("all %d acknowledged writes present on every node", len(ws))
	return v
}

func TestHealthyClusterKeepsLeaders(t *testing.T) {
	for _, n := range []int{3, 5} {
		t.Run(map[int]string{3: "3nodes", 5: "5nodes"}[n], func(t *testing.T) {
			c := newTestCluster(t, n, false)
			window := 3 * c.MaxElectionTimeout()
			r, load := runFault(t, c, window, false, nil, func() {}, func() {})
			if err := r.err(); err != nil {
				t.Fatalf("healthy cluster: %v", err)
			}
			settle(t, c, load)
			t.Logf("%d nodes, %d groups, %v without faults: 0 term changes, %d writes (%.0f/s)",
				n, len(c.Groups()), window, r.acked, r.faultRate)
		})
	}
}

func TestLeaderCutOffFromMajorityStepsDown(t *testing.T) {
	for _, tc := range []struct {
		name     string
		nodes    int
		minority []uint64
		majority []uint64
	}{
		{"3nodes", 3, []uint64{1}, []uint64{2, 3}},
		{"5nodes", 5, []uint64{1, 2}, []uint64{3, 4, 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCluster(t, tc.nodes, false)
			before := placeLeaders(t, c, 1)
			load, err := StartLoad(c, LoadConfig{Groups: c.Groups(), Workers: 16, OpTimeout: 2 * c.MaxElectionTimeout()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(load.Stop)
			waitAcks(t, load, 50, 30*time.Second)
			for _, n := range c.Nodes() {
				n.Faults().Partition(tc.minority, tc.majority)
			}
			start := time.Now()
			// The majority elects new leaders for every group...
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			v, err := c.WaitLed(ctx, 10*c.MaxElectionTimeout(), tc.majority...)
			if err != nil {
				t.Fatal(err)
			}
			elected := time.Since(start)
			// ...and the old leader steps down in every group (CheckQuorum).
			stepped := pollCond(t, 10*c.MaxElectionTimeout(), func() bool {
				for _, st := range c.Node(1).Host.Status() {
					if st.Role == "StateLeader" {
						return false
					}
				}
				return true
			})
			if !stepped {
				t.Fatal("the cut-off leader still leads some group")
			}
			for g, gv := range v.Groups {
				if gv.Term <= before.Groups[g].Term {
					t.Fatalf("group %d: new leader %d at term %d, not above %d", g, gv.Leader, gv.Term, before.Groups[g].Term)
				}
			}
			waitAcks(t, load, 50, 30*time.Second) // the majority takes writes
			for _, n := range c.Nodes() {
				n.Faults().Heal()
			}
			after := settle(t, c, load)
			t.Logf("%d groups: the majority %v led all within %v; node 1 stepped down everywhere; leaders after heal %v",
				len(c.Groups()), tc.majority, elected.Round(time.Millisecond), after.LeaderCounts())
		})
	}
}

// pollCond polls cond every millisecond-ish until it holds or bound passes.
func pollCond(t *testing.T, bound time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.NewTimer(bound)
	defer deadline.Stop()
	tk := time.NewTicker(5 * time.Millisecond)
	defer tk.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			return cond()
		case <-tk.C:
		}
	}
	return true
}

// TestSeed002LeaderSurvivesAsymmetricSilentDrop: node 1 leads every group;
// node 2 silently black-holes everything node 1 sends it (ingress blocked:
// no RST, no error, the streams just hang) for three of the longest
// randomized election timeouts. No group may change term or leader, and
// writes go on through node 1 and node 3. The naive serial sender blocks on
// node 2, starves node 3 of heartbeats, and loses leadership.
func TestSeed002LeaderSurvivesAsymmetricSilentDrop(t *testing.T) {
	scenario := func(t *testing.T, naive bool) (faultRun, *Cluster, *Load) {
		c := newTestCluster(t, 3, naive)
		window := 3 * c.MaxElectionTimeout()
		r, load := runFault(t, c, window, false, []uint64{2},
			func() { c.Node(2).Faults().SetIngressBlocked(1, true) },
			func() { c.Node(2).Faults().SetIngressBlocked(1, false) })
		return r, c, load
	}
	t.Run("flotilla", func(t *testing.T) {
		r, c, load := scenario(t, false)
		if err := r.err(); err != nil {
			t.Fatal(err)
		}
		settle(t, c, load)
		t.Logf("black hole 1->2 for %v: 0 term changes, %d writes acknowledged (%.0f/s), %d in the last third",
			r.window, r.acked, r.faultRate, r.lastPart)
	})
	t.Run("naive", func(t *testing.T) {
		r, _, load := scenario(t, true)
		load.Stop()
		if r.err() == nil {
			t.Fatal("the naive serial sender kept every leader: this test cannot tell a good sender from a bad one")
		}
		t.Logf("naive sender fails as it should: %d elections, %d writes in the last third: %v", r.elections, r.lastPart, r.err())
	})
}

// TestSeed000ReportUnreachableHeartbeatsKeepLeader: node 1 leads every
// group; its circuit to node 2 opens (every dial refused, so its transport
// reports node 2 unreachable to every active group) for two of the longest
// randomized election timeouts. Node 1 must stay leader of every group at
// the same term: heartbeats to node 3 go on. Half the groups are idle and
// quiesced (the Flotilla run): they too keep their leader and term. The
// naive serial sender waits on node 2 and starves node 3.
func TestSeed000ReportUnreachableHeartbeatsKeepLeader(t *testing.T) {
	scenario := func(t *testing.T, naive bool) (faultRun, *Cluster, *Load, uint64) {
		var c *Cluster
		if naive {
			c = newTestCluster(t, 3, true)
		} else {
			var err error
			c, err = NewCluster(Config{Nodes: 3, Dir: t.TempDir(), DisableSync: true, Quiesce: true, IdleGroups: DefaultGroups / 2})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
		}
		window := 2 * c.MaxElectionTimeout()
		var reports uint64
		r, load := runFault(t, c, window, false, []uint64{2},
			func() {
				reports = c.Node(1).Host.UnreachableReportsApplied()
				if err := c.BreakLink(1, 2); err != nil {
					t.Fatal(err)
				}
			},
			func() {
				reports = c.Node(1).Host.UnreachableReportsApplied() - reports
				c.RestoreLink(1, 2)
			})
		return r, c, load, reports
	}
	t.Run("flotilla", func(t *testing.T) {
		r, c, load, reports := scenario(t, false)
		if err := r.err(); err != nil {
			t.Fatal(err)
		}
		if reports == 0 {
			t.Fatal("node 2 was never reported unreachable: the scenario did not open the circuit")
		}
		settle(t, c, load)
		t.Logf("circuit 1->2 open for %v: %d unreachable reports applied, 0 term changes, %d writes (%.0f/s)",
			r.window, reports, r.acked, r.faultRate)
	})
	t.Run("naive", func(t *testing.T) {
		r, _, load, _ := scenario(t, true)
		load.Stop()
		if r.err() == nil {
			t.Fatal("the naive serial sender kept every leader: this test cannot tell a good sender from a bad one")
		}
		t.Logf("naive sender fails as it should: %d elections: %v", r.elections, r.err())
	})
}

// TestSlowFollower: every frame from node 1 (the leader of every group) to
// node 2 waits three ticks before it is written, for three election
// timeouts. Leaders and terms hold and writes go on.
func TestSlowFollower(t *testing.T) {
	c := newTestCluster(t, 3, false)
	delay := 3 * c.Config().TickInterval
	window := 3 * c.MaxElectionTimeout()
	r, load := runFault(t, c, window, false, nil,
		func() { c.Node(1).Faults().SetEgressDelay(2, delay) },
		func() { c.Node(1).Faults().SetEgressDelay(2, 0) })
	if err := r.err(); err != nil {
		t.Fatal(err)
	}
	settle(t, c, load)
	t.Logf("link 1->2 delayed %v per frame for %v: 0 term changes, %d writes (%.0f/s)", delay, window, r.acked, r.faultRate)
}

// TestPausedFollower: node 2 goes silent both ways (it takes nothing from
// anyone and nobody takes anything from it, no RST) for three election
// timeouts, then comes back. Its pre-votes never disturb the others
// (PreVote and CheckQuorum): no term moves, writes go on, and node 2
// catches up.
func TestPausedFollower(t *testing.T) {
	c := newTestCluster(t, 3, false)
	window := 3 * c.MaxElectionTimeout()
	set := func(on bool) {
		for _, n := range c.Nodes() {
			if n.ID == 2 {
				n.Faults().SetIngressBlocked(1, on)
				n.Faults().SetIngressBlocked(3, on)
			} else {
				n.Faults().SetIngressBlocked(2, on)
			}
		}
	}
	r, load := runFault(t, c, window, false, []uint64{2}, func() { set(true) }, func() { set(false) })
	if err := r.err(); err != nil {
		t.Fatal(err)
	}
	settle(t, c, load)
	t.Logf("node 2 paused for %v: 0 term changes, %d writes (%.0f/s)", window, r.acked, r.faultRate)
}
