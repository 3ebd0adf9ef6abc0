package multiraft_test

import (
	"testing"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/multiraft"
)

// bootLeader spreads the expected leaders of new groups over three nodes.
func bootLeader(g uint64) uint64 { return (g-1)%3 + 1 }

// startQuiet starts 30 new groups with quiescence on; with expected
// leaders (bootLeader) if boot, and runs the start's cycles.
func startQuiet(t *testing.T, boot bool) *mrtest.Cluster {
	t.Helper()
	o := mrtest.Options{Groups: 30, Quiesce: true}
	if boot {
		o.BootLeader = bootLeader
	}
	return startStable(t, o)
}

// startStable starts a cluster of o, closed when the test ends, and runs
// its start's cycles.
func startStable(t *testing.T, o mrtest.Options) *mrtest.Cluster {
	t.Helper()
	c, err := mrtest.NewCluster(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Stabilize(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestBootQuietStart: every replica of new groups with expected leaders
// starts quiesced: the expected leaders' wait for their turn to campaign
// (startcampaign.go), the others wait for them. So before the first tick
// no replica runs an election timer, and a tick processes none of them
// (the control without expected leaders processes all 90). At the first
// tick each expected leader campaigns, and every group is led by it after
// a single election (term 2), its followers woken by the campaign.
func TestBootQuietStart(t *testing.T) {
	c := startQuiet(t, true)
	for _, id := range c.Nodes() {
		if q, w := c.Hosts[id].Quiesced(), c.Hosts[id].StartCampaignsWaiting(); q != 30 || w != 10 {
			t.Fatalf("node %d at start: %d replicas quiesced, %d waiting to campaign; want 30 and its 10", id, q, w)
		}
	}
	ctl := startQuiet(t, false)
	if n := tickCount(t, ctl); n != 90 {
		t.Fatalf("control: a tick processed %d replicas, want all 90", n)
	}

	if err := c.TickStable(1); err != nil {
		t.Fatal(err)
	}
	for g := uint64(1); g <= 30; g++ {
		if l := c.Leader(g); l != bootLeader(g) {
			t.Fatalf("group %d led by %d, want %d:\n%s", g, l, bootLeader(g), c.Status())
		}
		for _, id := range c.Nodes() {
			if _, term, err := c.Hosts[id].Leader(g); err != nil || term != 2 {
				t.Fatalf("group %d on node %d: term %d (%v), want 2: one election", g, id, term, err)
			}
		}
	}
	for _, id := range c.Nodes() {
		if w := c.Hosts[id].StartCampaignsWaiting(); w != 0 {
			t.Fatalf("node %d: %d groups still waiting to campaign", id, w)
		}
	}
}

// TestBootQuietLeaderNeverComes: node 1, expected to lead a third of the
// new groups, never runs. Its groups stay quiesced on nodes 2 and 3 through
// the grace (the liveness timeout plus an election timeout from the first
// peer heard), then wake, and 2 and 3 elect leaders for them (within ten
// election timeouts: two candidates of a new group may split their votes).
func TestBootQuietLeaderNeverComes(t *testing.T) {
	c := startQuiet(t, true)
	c.Crash(1)
	mine := func() int { // node 1's groups led by 2 or 3
		n := 0
		for g := uint64(1); g <= 30; g += 3 {
			if l := c.Leader(g); l == 2 || l == 3 {
				n++
			}
		}
		return n
	}
	// The defaults of mrtest: ElectionTicks 10, LivenessTicks
	// max(10/2, 3*1) = 5, PingTicks 2; nodes 2 and 3 ping each other at
	// the first tick.
	const grace = 5 + 10
	for i := 1; i < grace; i++ {
		if err := c.TickStable(1); err != nil {
			t.Fatal(err)
		}
		for _, id := range []uint64{2, 3} {
			if q := c.Hosts[id].Quiesced(); q < 10 {
				t.Fatalf("tick %d: node %d has %d replicas quiesced, want node 1's 10 still waiting", i, id, q)
			}
		}
	}
	for i := grace; i <= grace+10*10; i++ {
		if err := c.TickStable(1); err != nil {
			t.Fatal(err)
		}
		if mine() == 10 {
			t.Logf("node 1's groups led by 2 and 3 after %d ticks", i)
			return
		}
	}
	t.Fatalf("only %d of node 1's 10 groups led after %d ticks:\n%s", mine(), grace+10*10, c.Status())
}

// TestBootQuietLeaderAlreadyDown: a new group whose expected
// leader was heard from and then found down before the group started
// (StartGroups with GroupStart.Leader) must still elect a leader among the
// survivors. The down transition was handled before the group existed, and
// the boot grace only covers leaders never heard from, so nothing wakes it.
func TestBootQuietLeaderAlreadyDown(t *testing.T) {
	c, err := mrtest.NewCluster(mrtest.Options{Groups: 1, Quiesce: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Every node hears every other (the tick's pings).
	if err := c.TickStable(3); err != nil {
		t.Fatal(err)
	}
	c.Crash(1)
	// Past the liveness timeout (5 ticks): 2 and 3 count node 1 down.
	if err := c.TickStable(20); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint64{2, 3} {
		if !c.Hosts[id].PeerDown(1) {
			t.Fatalf("node %d does not count node 1 down", id)
		}
	}
	const g = 7
	for _, id := range []uint64{2, 3} {
		err := c.Hosts[id].StartGroups([]multiraft.GroupStart{{ID: g, Members: []uint64{1, 2, 3}, SM: mrtest.NewKV(), Leader: 1}})
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 200; i++ {
		if err := c.TickStable(1); err != nil {
			t.Fatal(err)
		}
		if l := c.Leader(g); l == 2 || l == 3 {
			return
		}
	}
	t.Fatalf("group %d has no leader after 200 ticks (quiesced: node 2 %d, node 3 %d):\n%s", g,
		c.Hosts[2].Quiesced(), c.Hosts[3].Quiesced(), c.Status())
}
