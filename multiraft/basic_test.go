package multiraft_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/flotilla/flotilla/multiraft"

	"github.com/flotilla/flotilla/internal/mrtest"
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

// TestProposeFunc: the callback form reports each outcome exactly once:
// results of applied commands, and an immediate failure before
// ProposeFunc returns. Commands proposed in one step are packed into one
// entry and still applied one by one, in order.
func TestProposeFunc(t *testing.T) {
	c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1})
	must(t, c.Campaign(1, 1))
	must(t, c.TickStable(1))
	type outcome struct {
		res string
		err error
	}
	got := map[int][]outcome{}
	before, err := c.Hosts[1].GroupStatus(1)
	must(t, err)
	for i := range 20 {
		c.Hosts[1].ProposeFunc(1, fmt.Appendf(nil, "set k %d", i), func(res []byte, err error) {
			got[i] = append(got[i], outcome{string(res), err})
		})
	}
	must(t, c.Stabilize())
	// Proposed in one step, the 20 commands share one log entry.
	after, err := c.Hosts[1].GroupStatus(1)
	must(t, err)
	if after.Commit != before.Commit+1 {
		t.Fatalf("20 proposals took commit from %d to %d, want one entry", before.Commit, after.Commit)
	}
	for i := range 20 {
		// The test KV answers a set with the key's previous value.
		want := []outcome{{res: fmt.Sprint(i - 1)}}
		if i == 0 {
			want[0].res = ""
		}
		if !slices.Equal(got[i], want) {
			t.Fatalf("proposal %d: outcomes %v, want %v", i, got[i], want)
		}
	}
	var calls int
	var failure error
	c.Hosts[1].ProposeFunc(99, []byte("set k x"), func(_ []byte, err error) { calls, failure = calls+1, err })
	if calls != 1 || !errors.Is(failure, multiraft.ErrGroupNotFound) {
		t.Fatalf("unknown group: %d calls, error %v; want 1 call with ErrGroupNotFound", calls, failure)
	}
}

// TestDisableProposalForwarding: with forwarding off, a follower fails a
// proposal at once with ErrDropped (known not applied) instead of handing
// it to a leader that could drop it unseen; the leader still takes it.
// With forwarding on (the default), the same proposal is applied.
func TestDisableProposalForwarding(t *testing.T) {
	for _, off := range []bool{true, false} {
		c := newCluster(t, mrtest.Options{Nodes: 3, Groups: 1, DisableProposalForwarding: off})
		must(t, c.Campaign(1, 1))
		must(t, c.TickStable(1))
		var calls int
		var got error
		c.Hosts[3].ProposeFunc(1, []byte("set a 1"), func(_ []byte, err error) { calls, got = calls+1, err })
		must(t, c.TickStable(2))
		switch {
		case off && (calls != 1 || !errors.Is(got, multiraft.ErrNotLeader)):
			t.Fatalf("forwarding off: follower proposal: %d outcomes, error %v; want ErrNotLeader", calls, got)
		case !off && (calls != 1 || got != nil):
			t.Fatalf("forwarding on: follower proposal: %d outcomes, error %v; want applied", calls, got)
		}
		if _, err := c.Propose(1, 1, "set b 1"); err != nil {
			t.Fatalf("forwarding off=%v: leader proposal: %v", off, err)
		}
	}
}
