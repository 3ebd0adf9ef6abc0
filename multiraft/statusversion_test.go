package multiraft_test

import (
	"fmt"
	"testing"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/multiraft"
)

// statusVersions returns every running host's StatusVersion, by node.
func statusVersions(c *mrtest.Cluster) map[uint64]uint64 {
	out := map[uint64]uint64{}
	for _, id := range c.Nodes() {
		if h := c.Hosts[id]; h != nil {
			out[id] = h.StatusVersion()
		}
	}
	return out
}

// requireMoved fails unless every node's version moved since before, and
// returns the new versions.
func requireMoved(t *testing.T, c *mrtest.Cluster, before map[uint64]uint64, what string) map[uint64]uint64 {
	t.Helper()
	now := statusVersions(c)
	for id, v := range before {
		if now[id] == v {
			t.Errorf("%s: node %d's status version stayed at %d", what, id, v)
		}
	}
	return now
}

func isDone(f multiraft.Future) bool {
	select {
	case <-f.Done():
		return true
	default:
		return false
	}
}

// settledCluster starts 6 groups on 3 nodes, each led by node
// ((g-1) mod 3)+1 with one write applied, and settles them: quiesced, or
// (without quiescence) ticked until their heartbeats carry nothing new.
func settledCluster(t *testing.T, quiesce bool) *mrtest.Cluster {
	t.Helper()
	const groups = 6
	if quiesce {
		c := quietCluster(t, mrtest.Options{Groups: groups})
		for range 3 {
			tickCount(t, c) // the quiescing round's last messages
		}
		return c
	}
	c, err := mrtest.NewCluster(mrtest.Options{Groups: groups})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	for g := uint64(1); g <= groups; g++ {
		if err := c.Campaign((g-1)%3+1, g); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Propose((g-1)%3+1, g, "set k v"); err != nil {
			t.Fatalf("group %d: %v", g, err)
		}
	}
	if err := c.TickStable(5); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestStatusVersion: once the groups settled, 50 hand-driven ticks leave
// every node's StatusVersion where it was (quiesced groups and ticking
// ones alike: heartbeats carry nothing new). A write, a leader change, a
// membership change, a group's start and its removal each move it on
// every node.
func TestStatusVersion(t *testing.T) {
	for _, quiesce := range []bool{true, false} {
		t.Run(fmt.Sprintf("quiesce=%v", quiesce), func(t *testing.T) {
			c := settledCluster(t, quiesce)
			before, status := statusVersions(c), c.Status()
			for range 50 {
				tickCount(t, c)
			}
			if after := statusVersions(c); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("idle ticks moved the status versions: %v, then %v\nbefore\n%s\nafter\n%s",
					before, after, status, c.Status())
			}

			if _, err := c.Propose(2, 2, "set a 1"); err != nil {
				t.Fatal(err)
			}
			if err := c.TickStable(2); err != nil {
				t.Fatal(err)
			}
			v := requireMoved(t, c, before, "a write to group 2")

			done := c.Hosts[1].TransferLeadershipAsync(1, 3)
			if err := c.TickStable(3); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("transfer group 1 to node 3: %v", err)
				}
			default:
				t.Fatal("the transfer of group 1 to node 3 did not complete in 3 ticks")
			}
			if l := c.Leader(1); l != 3 {
				t.Fatalf("group 1 led by %d after the transfer, want 3", l)
			}
			v = requireMoved(t, c, v, "a leader change in group 1")

			f := c.Hosts[3].ChangeMembershipAsync(3, multiraft.Change{Kind: multiraft.RemoveMember, Node: 2}, nil)
			for i := 0; i < 20 && !isDone(f); i++ {
				if err := c.TickStable(1); err != nil {
					t.Fatal(err)
				}
			}
			if !isDone(f) {
				t.Fatal("removing node 2 from group 3 did not complete in 20 ticks")
			}
			if _, err := f.Result(); err != nil {
				t.Fatalf("remove node 2 from group 3: %v", err)
			}
			// Node 2 may never apply its own removal: the others moved.
			delete(v, 2)
			requireMoved(t, c, v, "node 2 removed from group 3")

			v = statusVersions(c)
			for _, id := range c.Nodes() {
				if err := c.Hosts[id].StartGroup(100, c.Nodes(), mrtest.NewKV()); err != nil {
					t.Fatal(err)
				}
			}
			v = requireMoved(t, c, v, "group 100 started")

			for _, id := range c.Nodes() {
				if _, err := c.Hosts[id].RemoveGroupAsync(100); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.Stabilize(); err != nil {
				t.Fatal(err)
			}
			for _, id := range c.Nodes() {
				if _, err := c.Hosts[id].GroupStatus(100); err == nil {
					t.Fatalf("node %d still runs group 100", id)
				}
			}
			requireMoved(t, c, v, "group 100 removed")
		})
	}
}
