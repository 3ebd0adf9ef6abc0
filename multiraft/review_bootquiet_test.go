package multiraft_test

import (
	"testing"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/multiraft"
)

// TestBootQuietLeaderAlreadyDown (review): a new group whose expected
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
