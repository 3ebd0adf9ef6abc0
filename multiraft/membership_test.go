package multiraft_test

import (
	"fmt"
	"testing"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/transport"
)

// awaitChange drives c until f completes or ticks ticks pass, and returns
// its error and the ticks it took.
func awaitChange(t *testing.T, c *mrtest.Cluster, f multiraft.Future, ticks int) (int, error) {
	t.Helper()
	for i := 0; i <= ticks; i++ {
		must(t, c.Stabilize())
		select {
		case <-f.Done():
			_, err := f.Result()
			return i, err
		default:
		}
		c.Tick()
	}
	return ticks, fmt.Errorf("not done in %d ticks", ticks)
}

// A node added to a group that has never compacted its log gets the
// group's membership, not the log from its start: applying the first
// change of the log on an empty configuration made raft panic ("removed
// all voters"). The group then keeps committing with the new voter.
func TestJoinYoungGroup(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	if _, err := c.Propose(1, 1, "set young yes"); err != nil {
		t.Fatal(err)
	}
	must(t, c.AddNode(4))
	for _, step := range []struct {
		kind multiraft.ChangeKind
		node uint64
	}{{multiraft.AddLearner, 4}, {multiraft.PromoteLearner, 4}, {multiraft.RemoveMember, 3}} {
		if _, err := awaitChange(t, c, c.Hosts[1].ChangeMembershipAsync(1, step.kind, step.node), 50); err != nil {
			t.Fatalf("change %v node %d: %v\n%s", step.kind, step.node, err, c.Status())
		}
	}
	if v := c.SMs[4][1].Get("young"); v != "yes" {
		t.Fatalf("node 4 has young=%q\n%s", v, c.Status())
	}
	// Node 4's vote is needed: with node 2 cut off, 1 and 4 commit.
	c.Crash(3)
	c.Net.Isolate(2, transport.LinkBlackHole)
	if _, err := c.Propose(1, 1, "set with four"); err != nil {
		t.Fatal(err)
	}
	if v := c.SMs[4][1].Get("with"); v != "four" {
		t.Fatalf("node 4 has with=%q\n%s", v, c.Status())
	}
}

// A new leader whose log holds entries of the previous term it has not
// applied yet turns a membership change into an empty entry (raft allows
// one unapplied change, and counts that log as one). The engine sees that
// the change was not appended and proposes it again once the leader has
// applied that far: the change, and a write proposed after it, complete
// within a few ticks, not at the request timeout (100 ticks here).
func TestConfChangeRefusedByNewLeader(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	electAll(t, c)
	// Node 1 commits a write with node 3; node 2 gets the entry but not
	// the news that it committed.
	f := c.Hosts[1].ProposeAsync(1, []byte("set a 1"))
	c.Process() // 1 appends and sends
	c.Process() // 2 and 3 append and acknowledge
	c.Net.SetLink(1, 2, transport.LinkBlackHole)
	must(t, c.Stabilize()) // 1 commits with 3's acknowledgement
	select {
	case <-f.Done():
		if _, err := f.Result(); err != nil {
			t.Fatalf("write: %v", err)
		}
	default:
		t.Fatalf("node 1 did not commit the write\n%s", c.Status())
	}
	c.Crash(1)
	// Node 2 wins (its log is as long as 3's) and is asked for a change
	// before it has applied the entry.
	must(t, c.Hosts[2].ForgetLeader(1))
	must(t, c.Hosts[3].ForgetLeader(1))
	must(t, c.Hosts[2].Campaign(1))
	for i := 0; ; i++ {
		if l, _, _ := c.Hosts[2].Leader(1); l == 2 {
			break
		}
		if i == 100 || c.Process() == 0 {
			t.Fatalf("node 2 did not win\n%s", c.Status())
		}
	}
	if v := c.SMs[2][1].Get("a"); v != "" {
		t.Fatalf("node 2 applied a=%q already: the test needs an unapplied entry", v)
	}
	cc := c.Hosts[2].ChangeMembershipAsync(1, multiraft.AddLearner, 4)
	w := c.Hosts[2].ProposeAsync(1, []byte("set b 2"))
	ticks, err := awaitChange(t, c, cc, 20)
	if err != nil {
		t.Fatalf("membership change: %v (the change was held as pending)\n%s", err, c.Status())
	}
	if _, err := awaitChange(t, c, w, 5); err != nil {
		t.Fatalf("write after the change: %v", err)
	}
	st, _ := c.Hosts[2].GroupStatus(1)
	if fmt.Sprint(st.Learners) != "[4]" {
		t.Fatalf("learners %v, want [4]", st.Learners)
	}
	t.Logf("the change completed after %d ticks", ticks)
}
