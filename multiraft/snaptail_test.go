package multiraft_test

import (
	"fmt"
	"testing"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/transport"
)

// TestSnapshotRestoreDropsStaleTail: a follower that restores a snapshot
// over a conflicting log must not keep, on disk, its old entries past the
// snapshot. When SetSnapshot deleted only up to the snapshot's index (the
// Ready that carries a snapshot has no entries whose prevLast would delete
// them), the entries appended next overwrote the first of them, the rest
// stayed, and the next Load returned them as the log's tail, with terms
// lower than the entries before them.
func TestSnapshotRestoreDropsStaleTail(t *testing.T) {
	c, err := mrtest.NewCluster(mrtest.Options{Groups: 1, SnapshotEntries: 10, CompactionOverhead: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Campaign(1, 1); err != nil {
		t.Fatal(err)
	}
	// Node 1 leads, cut off, and appends 100 entries nobody else gets.
	c.Net.Isolate(1, transport.LinkBlackHole)
	for i := 0; i < 100; i++ {
		c.Hosts[1].ProposeAsync(1, []byte(fmt.Sprintf("set a%d x", i)))
		c.Hosts[1].Process()
	}
	// Nodes 2 and 3 elect one of them, which commits 40 entries,
	// snapshots and compacts past what node 1 shares with it.
	if err := c.TickStable(40); err != nil {
		t.Fatal(err)
	}
	l := c.Leader(1)
	if l != 2 && l != 3 {
		t.Fatalf("leader %d, want 2 or 3:\n%s", l, c.Status())
	}
	for i := 0; i < 40; i++ {
		if _, err := c.Propose(l, 1, fmt.Sprintf("set b%d y", i)); err != nil {
			t.Fatal(err)
		}
	}
	c.Net.HealAll()
	if err := c.TickStable(30); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Propose(l, 1, "set c z"); err != nil {
		t.Fatal(err)
	}
	if err := c.TickStable(5); err != nil {
		t.Fatal(err)
	}
	if c.Hosts[1].SnapshotsRestored() == 0 {
		t.Fatalf("node 1 restored no snapshot; the scenario did not happen:\n%s", c.Status())
	}
	leader, err := c.Stores[l].Load(1)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Stores[1].Load(1)
	if err != nil {
		t.Fatal(err)
	}
	last := leader.Entries[len(leader.Entries)-1].Index
	prev := st.Snapshot.Metadata.Term
	for _, e := range st.Entries {
		if e.Index > last || e.Term < prev {
			t.Fatalf("node 1's stored log has entry %d/%d after term %d (the leader's log ends at %d): a stale tail a restart loads", e.Index, e.Term, prev, last)
		}
		prev = e.Term
	}
}
