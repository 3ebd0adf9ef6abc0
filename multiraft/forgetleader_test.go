package multiraft_test

import (
	"testing"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/transport"
)

// TestFollowerForgetsLeaderThatPreVotes: a pre-vote from a follower's
// leader for a term past the one it leads says that leader stepped down
// (forgetsLeader): the follower forgets it, so it grants the pre-vote at
// once instead of refusing it for the rest of its lease. A pre-vote from
// another node, or from the leader for the term it leads (sent before it
// led, delivered late), changes nothing: the follower keeps its leader
// (and, in its lease, refuses the first).
func TestFollowerForgetsLeaderThatPreVotes(t *testing.T) {
	c, err := mrtest.NewCluster(mrtest.Options{Groups: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Campaign(1, 1); err != nil {
		t.Fatal(err)
	}
	if l, term, _ := c.Hosts[2].Leader(1); l != 1 || term != 2 {
		t.Fatalf("node 2 sees leader %d at term %d, want 1 at 2", l, term)
	}
	preVote := func(from, term uint64) (lead uint64) {
		t.Helper()
		c.Net.Transport(from).Send([]transport.Envelope{{Group: 1, Msg: raftpb.Message{
			Type: raftpb.MsgPreVote, From: from, To: 2, Term: term, LogTerm: 2, Index: 2}}})
		c.Net.Deliver()
		c.Hosts[2].Process()
		l, _, _ := c.Hosts[2].Leader(1)
		return l
	}
	if l := preVote(3, 3); l != 1 {
		t.Fatalf("after a pre-vote from node 3, node 2 sees leader %d, want 1", l)
	}
	if l := preVote(1, 2); l != 1 {
		t.Fatalf("after a late pre-vote of node 1 for the term it leads, node 2 sees leader %d, want 1", l)
	}
	if l := preVote(1, 3); l != 0 {
		t.Fatalf("after a pre-vote of its leader for term 3, node 2 sees leader %d, want none", l)
	}
}
