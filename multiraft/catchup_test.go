package multiraft_test

import (
	"fmt"
	"testing"

	"github.com/flotilla/flotilla/internal/mrtest"
	"go.etcd.io/raft/v3"
)

// TestCatchUpPaced: node 3 of 30 quiesced groups crashes; node 1 takes
// writes in 6 of the 10 groups it led from the start, which quiesce again
// with node 3 behind. When node 3 is back, node 1 wakes the groups it
// leads a few at a time to catch node 3 up: of those 10, never more than
// MaxCatchUps (2) are awake at once, and none of the 4 node 3 lacks
// nothing of wakes before each of the 6 has; node 3 catches up on all 6,
// and every replica quiesces again. (Node 3's restart wakes no group of
// those 10: its replicas restart quiesced and say hello, restart.go.)
// The control, unpaced, has all 10 awake at once.
func TestCatchUpPaced(t *testing.T) {
	const groups = 30
	written := []uint64{13, 16, 19, 22, 25, 28}
	untouched := []uint64{1, 4, 7, 10}
	for _, bound := range []int{2, 1 << 20} {
		t.Run(fmt.Sprintf("max=%d", bound), func(t *testing.T) {
			c := quietCluster(t, mrtest.Options{Groups: groups, MaxCatchUps: bound})
			c.Crash(3)
			if ticksUntilLed(t, c, groups, 3, 40) < 0 {
				t.Fatalf("node 3's groups not led again:\n%s", c.Status())
			}
			for _, g := range written {
				if _, err := c.Propose(1, g, "set late 1"); err != nil {
					t.Fatalf("group %d: %v", g, err)
				}
			}
			for i := 0; i < 40 && c.Hosts[1].Quiesced() != groups; i++ {
				if err := c.TickStable(1); err != nil {
					t.Fatal(err)
				}
			}
			if c.Hosts[1].Quiesced() != groups {
				t.Fatalf("node 1 did not quiesce with node 3 down:\n%s", c.Status())
			}
			if err := c.Restart(3); err != nil {
				t.Fatal(err)
			}
			awake := func(gs []uint64) (n int, which []uint64) {
				for _, g := range gs {
					if st, _ := c.Hosts[1].GroupStatus(g); !st.Quiesced {
						n++
						which = append(which, g)
					}
				}
				return n, which
			}
			most, caughtUp := 0, -1
			seen := map[uint64]bool{}
			for i := 1; i <= 100 && caughtUp < 0; i++ {
				if err := c.TickStable(1); err != nil {
					t.Fatal(err)
				}
				n, which := awake(append(append([]uint64(nil), written...), untouched...))
				most = max(most, n)
				for _, g := range which {
					seen[g] = true
				}
				if bound == 2 {
					for _, g := range untouched {
						if seen[g] && len(seen) < len(written)+1 {
							t.Fatalf("tick %d: group %d, which node 3 lacks nothing of, woke before every group it lags on did (awake so far: %v)", i, g, seen)
						}
					}
				}
				done := allQuiesced(c, groups) && c.Hosts[1].CatchUpsWaiting() == 0
				for _, g := range written {
					a, _ := c.Hosts[1].GroupStatus(g)
					b, _ := c.Hosts[3].GroupStatus(g)
					done = done && a.Applied == b.Applied
				}
				if done {
					caughtUp = i
				}
			}
			switch {
			case caughtUp < 0:
				t.Fatalf("node 3 did not catch up within 100 ticks:\n%s", c.Status())
			case bound == 2 && most > 2:
				t.Fatalf("%d of node 1's 10 groups awake at once, bound 2", most)
			case bound > 2 && most != 10:
				t.Fatalf("control: unpaced, %d of node 1's 10 groups awake at once, want 10: the bound is not what the test measures", most)
			}
			t.Logf("caught up, every replica quiesced, %d ticks after the restart; at most %d of the 10 awake at once", caughtUp, most)
		})
	}
}

// TestTicksCoalesce: node 1's worker falls behind: three election
// timeouts of ticks reach its Host while it runs nothing. They coalesce
// into one, so when it runs again its leader steps its followers'
// answers before CheckQuorum looks again, and keeps its leadership.
// Counted one by one (before), the ticks ran CheckQuorum twice before the
// answers, and the leader stepped down.
func TestTicksCoalesce(t *testing.T) {
	c, err := mrtest.NewCluster(mrtest.Options{Groups: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Campaign(1, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.TickStable(3); err != nil {
		t.Fatal(err)
	}
	h := c.Hosts[1]
	before := h.TicksCoalesced()
	for range 30 {
		h.Tick()
	}
	if n := h.TicksCoalesced() - before; n != 29 {
		t.Fatalf("%d ticks coalesced, want 29", n)
	}
	if err := c.Stabilize(); err != nil {
		t.Fatal(err)
	}
	st, err := h.GroupStatus(1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != raft.StateLeader.String() || st.Leader != 1 {
		t.Fatalf("node 1 lost its leadership after its worker fell behind: %+v", st)
	}
	if l := c.Leader(1); l != 1 {
		t.Fatalf("leader %d after node 1's worker fell behind, want 1", l)
	}
}

// TestUnannounced: nodes started Unannounced send their peers nothing
// while their groups have nothing to say, whatever the ticks; once
// announced, each pings every peer every PingTicks (2 here).
func TestUnannounced(t *testing.T) {
	c, err := mrtest.NewCluster(mrtest.Options{Groups: 1, Unannounced: true, Quiesce: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	tick := func() int { // what a tick queued: a ping counts one
		c.Tick()
		n := c.Net.Deliver()
		c.Process()
		return n
	}
	for i := range 3 {
		if n := tick(); n != 0 {
			t.Fatalf("tick %d: unannounced nodes sent %d batches", i, n)
		}
	}
	c.Hosts[2].Announce()
	if n := tick() + tick(); n != 2 {
		t.Fatalf("node 2 announced: %d batches in two ticks, want its 2 pings", n)
	}
	c.Hosts[1].Announce()
	c.Hosts[3].Announce()
	if n := tick() + tick(); n != 6 {
		t.Fatalf("all announced: %d batches in two ticks, want 6 pings", n)
	}
	// Two pings per liveness timeout keep idle peers live.
	for range 50 { // ten liveness timeouts
		tick()
	}
	for id, h := range c.Hosts {
		for p := range c.Hosts {
			if p != id && h.PeerDown(p) {
				t.Fatalf("node %d counts its idle peer %d down", id, p)
			}
		}
	}
}

// TestRestartStartsQuiet: a node of 30 quiesced groups restarts. Its
// replicas start quiesced: under the voter they last voted for (the 20
// it follows), or waiting their turn to campaign (the 10 it led); none
// runs an election timer. With at most 4 hellos and campaigns at once,
// each of the 20 learns its leader from the leader's answer to its hello,
// which wakes no group on the leaders' nodes (they hold every entry of
// it). Every replica then knows its leader, no term moved in the 20, and
// every replica is quiesced again.
func TestRestartStartsQuiet(t *testing.T) {
	const groups = 30
	c := quietCluster(t, mrtest.Options{Groups: groups, MaxStartCampaigns: 4})
	before := map[uint64]uint64{}
	for g := uint64(1); g <= groups; g++ {
		st, _ := c.Hosts[1].GroupStatus(g)
		before[g] = st.Term
	}
	c.Crash(2)
	if err := c.Restart(2); err != nil {
		t.Fatal(err)
	}
	if n := c.Hosts[2].Quiesced(); n != groups {
		t.Fatalf("restarted, node 2 has %d of %d replicas quiesced", n, groups)
	}
	w1, w3 := c.Hosts[1].Wakes(), c.Hosts[3].Wakes()
	learned := func() int {
		n := 0
		for g := uint64(1); g <= groups; g++ {
			if st, _ := c.Hosts[2].GroupStatus(g); st.Leader != 0 {
				n++
			}
		}
		return n
	}
	for i := 0; i < 3 && learned() < 20; i++ {
		if err := c.TickStable(1); err != nil {
			t.Fatal(err)
		}
	}
	// The 20 node 2 follows learn their leader in 20/4 = 5 ticks at most;
	// node 2's own 10 campaigns wake their leaders (up to 4 a tick).
	for i := 0; i < 60 && !(allQuiesced(c, groups) && learned() == groups); i++ {
		if err := c.TickStable(1); err != nil {
			t.Fatal(err)
		}
	}
	if !allQuiesced(c, groups) || learned() != groups {
		t.Fatalf("%d of node 2's replicas know their leader, want all; all quiesced: %v\n%s", learned(), allQuiesced(c, groups), c.Status())
	}
	for g := uint64(1); g <= groups; g++ {
		if (g-1)%3+1 == 2 {
			continue // node 2 led it: its campaign may move the term
		}
		st, _ := c.Hosts[2].GroupStatus(g)
		if l := c.Leader(g); l != (g-1)%3+1 || st.Term != before[g] {
			t.Errorf("group %d: leader %d term %d after the restart, want %d term %d", g, l, st.Term, (g-1)%3+1, before[g])
		}
	}
	// Only the 10 groups node 2 led woke (its campaigns' pre-votes), once
	// on each node: not one of the 20 it follows.
	if n1, n3 := c.Hosts[1].Wakes()-w1, c.Hosts[3].Wakes()-w3; n1 > 10 || n3 > 10 {
		t.Fatalf("node 2's restart woke %d groups on node 1 and %d on node 3, want at most the 10 it led", n1, n3)
	}
}
