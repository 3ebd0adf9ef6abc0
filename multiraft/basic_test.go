package multiraft_test

import (
	"testing"

	"github.com/flotilla/flotilla/multiraft/mrtest"
)

func newCluster(t *testing.T, o mrtest.Options) *mrtest.Cluster {
	t.Helper()
	c, err := mrtest.NewCluster(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestElectionAndReplication(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 2})
	must(t, c.Campaign(1, 1))
	must(t, c.Campaign(2, 2))
	must(t, c.TickStable(1))
	if l := c.Leader(1); l != 1 {
		t.Fatalf("group 1 leader %d, want 1\n%s", l, c.Status())
	}
	if l := c.Leader(2); l != 2 {
		t.Fatalf("group 2 leader %d, want 2\n%s", l, c.Status())
	}
	// Propose on a follower: forwarded to the leader, result on the proposer.
	if _, err := c.Propose(3, 1, "set a 1"); err != nil {
		t.Fatal(err)
	}
	prev, err := c.Propose(1, 1, "set a 2")
	must(t, err)
	if prev != "1" {
		t.Fatalf("previous value %q, want 1", prev)
	}
	v, err := c.Read(3, 1, "a")
	must(t, err)
	if v != "2" {
		t.Fatalf("read %q, want 2", v)
	}
	must(t, c.TickStable(2))
	for _, n := range c.Nodes() {
		if got := c.SMs[n][1].Get("a"); got != "2" {
			t.Fatalf("node %d has a=%q\n%s", n, got, c.Status())
		}
		if got := c.SMs[n][2].Len(); got != 0 {
			t.Fatalf("node %d group 2 has %d keys, want 0", n, got)
		}
	}
	t.Log("\n" + c.Status())
}
