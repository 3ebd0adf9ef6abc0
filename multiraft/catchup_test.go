package multiraft_test

import (
	"fmt"
	"testing"

	"github.com/flotilla/flotilla/internal/mrtest"
	"go.etcd.io/raft/v3"
)

// TestCatchUpPaced: node 3 of 30 quiesced groups crashes; node 1 takes
// writes in 6 of the 10 groups it leads, which quiesce again with node 3
// behind. When node 3 is back, node 1 queues the groups it leads (its 10,
// and those of node 3 it took over) for a catch-up and wakes at most
// MaxCatchUps (2) of them at once, those node 3 lacks entries of first;
// node 3 catches up on all 6, and every replica quiesces again. The
// control, unpaced, wakes them all at once.
func TestCatchUpPaced(t *testing.T) {
	const groups = 30
	written := []uint64{13, 16, 19, 22, 25, 28} // led by node 1, as are 1..10
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
			led := len(leadersOn(c, groups, 1)) // its 10, and some of node 3's
			if err := c.Restart(3); err != nil {
				t.Fatal(err)
			}
			// Node 1 hears node 3 on its first tick, and sees it back on
			// the next.
			for range 2 {
				if err := c.TickStable(1); err != nil {
					t.Fatal(err)
				}
			}
			want := led - min(bound, led)
			if n := c.Hosts[1].CatchUpsWaiting(); n != want {
				t.Fatalf("node 3 back: %d of node 1's groups wait for their catch-up, want %d", n, want)
			}
			// Node 3 holds every entry of 1, 4, 7 and 10: by ID alone they
			// would wake first; it lacks entries of the 6 written and of
			// those node 1 took over from it (their new term's first).
			for _, g := range []uint64{1, 4, 7, 10} {
				if st, _ := c.Hosts[1].GroupStatus(g); !st.Quiesced && bound == 2 {
					t.Fatalf("group %d, which node 3 lacks nothing of, woke before those it lags on", g)
				}
			}
			caughtUp := -1
			for i := 1; i <= 100 && caughtUp < 0; i++ {
				if err := c.TickStable(1); err != nil {
					t.Fatal(err)
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
			if caughtUp < 0 {
				t.Fatalf("node 3 did not catch up within 100 ticks:\n%s", c.Status())
			}
			t.Logf("caught up, every replica quiesced, %d ticks after node 1 saw node 3 back", caughtUp)
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
// announced, each pings every peer on every tick.
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
	if n := tick(); n != 2 {
		t.Fatalf("node 2 announced: %d batches in a tick, want its 2 pings", n)
	}
	c.Hosts[1].Announce()
	c.Hosts[3].Announce()
	if n := tick(); n != 6 {
		t.Fatalf("all announced: %d batches in a tick, want 6 pings", n)
	}
}
