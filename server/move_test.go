package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
)

// A replica moves between nodes with the range serving: on a 4-node
// cluster with 3 replicas per range, a follower's replica moves to the
// node without one, then the leader's replica moves (it hands the
// leadership over first). After each move the range's descriptor lists
// the new nodes, the node that left holds neither the replica nor the
// span's data, the node that came serves it, and every write acknowledged
// during the moves reads back, with none refused.
func TestMoveReplica(t *testing.T) {
	c := startClusterWith(t, 4, 4, func(cfg *Config) { cfg.Replicas = 3 })
	cl := c.client()
	ctx := ctxT(t)
	key := []byte("c0")
	g := initialRange(4, key)
	d, ok := c.nodes[1].descriptor(g)
	if !ok {
		t.Fatalf("no descriptor of range %d", g)
	}
	for i := range 50 {
		if _, err := cl.Put(ctx, []byte(fmt.Sprintf("%s%03d", key, i)), []byte("before")); err != nil {
			t.Fatal(err)
		}
	}

	// Writes go on through both moves.
	w := startWriter(cl, func(i int) string { return fmt.Sprintf("%sw%05d", key, i) })

	// holders are the range's replicas now; the leader as they see it.
	holders := slices.Clone(d.Replicas)
	leader := func() uint64 {
		for _, n := range holders {
			if l, _, err := c.nodes[n].Host().Leader(g); err == nil && l != 0 {
				return l
			}
		}
		return 0
	}
	waitFor(t, 10*time.Second, "range led", func() error {
		if leader() == 0 {
			return errors.New("no leader")
		}
		return nil
	})
	spare := uint64(0)
	for id := uint64(1); id <= 4; id++ {
		if !d.HasReplica(id) {
			spare = id
		}
	}
	move := func(from, to uint64) {
		t.Helper()
		mctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		r, err := cl.Move(mctx, key, from, to)
		if err != nil {
			t.Fatalf("move %d → %d: %v", from, to, err)
		}
		if slices.Contains(r.Replicas, from) || !slices.Contains(r.Replicas, to) || len(r.Replicas) != 3 || len(r.Learners) != 0 {
			t.Fatalf("move %d → %d: range now on %v (learners %v)", from, to, r.Replicas, r.Learners)
		}
		// The node that left lets go of the replica and the span's data.
		waitFor(t, 10*time.Second, "the old replica gone", func() error {
			if _, ok := c.nodes[from].ranges.Get(g); ok {
				return fmt.Errorf("node %d still has range %d", from, g)
			}
			if n, err := kv.SpanKeys(c.nodes[from].store.DB(), d.Start, d.End); err != nil || n != 0 {
				return fmt.Errorf("node %d still has %d records of the span (%v)", from, n, err)
			}
			return nil
		})
		if r, ok := c.nodes[to].ranges.Get(g); !ok {
			t.Fatalf("node %d has no replica of range %d", to, g)
		} else if rd, ok := r.Descriptor(); !ok || !rd.HasReplica(to) {
			t.Fatalf("node %d's replica of range %d: %v", to, g, rd)
		}
		// The node that came holds the span's data (its snapshot).
		if n, err := kv.SpanKeys(c.nodes[to].store.DB(), d.Start, d.End); err != nil || n < 50 {
			t.Fatalf("node %d holds %d records of the span (%v), want the 50 written before", to, n, err)
		}
		holders = r.Replicas
	}
	follower := uint64(0)
	for _, n := range d.Replicas {
		if n != leader() {
			follower = n
			break
		}
	}
	move(follower, spare)
	w.waitMore(t, 20, "writes between the moves")
	l := leader()
	move(l, follower)
	waitFor(t, 10*time.Second, "a new leader", func() error {
		if nl := leader(); nl == 0 || nl == l {
			return fmt.Errorf("range %d led by %d after node %d left it", g, nl, l)
		}
		return nil
	})
	acked := w.halt(t)
	for k, v := range acked {
		got, err := cl.Get(ctx, []byte(k))
		if err != nil || string(got.Value) != v {
			t.Fatalf("get %s: %q %v, want %q", k, got.Value, err, v)
		}
	}
	for i := range 50 {
		k := fmt.Sprintf("%s%03d", key, i)
		got, err := cl.Get(ctx, []byte(k))
		if err != nil || string(got.Value) != "before" {
			t.Fatalf("get %s: %v %v", k, got, err)
		}
	}
	t.Logf("%d writes acknowledged during two moves", len(acked))
}

// A learner that no move owns (here added straight through the engine,
// as a move cut short by its node's death leaves one) on a node that is
// down would keep its range from splitting for ever (kv refuses:
// TestLearnerBlocksSplitAndFreeze); the range's leader removes it again
// once it has waited MoveCatchUp, and the range splits.
func TestLeftoverLearnerFinished(t *testing.T) {
	c := startClusterWith(t, 4, 4, func(cfg *Config) { cfg.Replicas = 3; cfg.MoveCatchUp = time.Second })
	cl := c.client()
	ctx := ctxT(t)
	key := []byte("c0")
	g := initialRange(4, key)
	d, _ := c.nodes[1].descriptor(g)
	spare := uint64(0)
	for id := uint64(1); id <= 4; id++ {
		if !d.HasReplica(id) {
			spare = id
		}
	}
	if err := c.nodes[spare].Stop(); err != nil {
		t.Fatal(err)
	}
	delete(c.nodes, spare)
	var l uint64
	waitFor(t, 10*time.Second, "range led", func() error {
		if l, _ = c.nodes[d.Replicas[0]].leaderTerm(g); l == 0 || c.nodes[l] == nil {
			return errors.New("no leader")
		}
		return nil
	})
	if err := c.nodes[l].Host().ChangeMembership(ctx, g, multiraft.AddLearner, spare); err != nil {
		t.Fatal(err)
	}
	learners := func() []uint64 {
		r, ok := c.nodes[l].ranges.Get(g)
		if !ok {
			return nil
		}
		rd, _ := r.Descriptor()
		return rd.Learners
	}
	if got := learners(); !slices.Equal(got, []uint64{spare}) {
		t.Fatalf("learners %v after adding node %d", got, spare)
	}
	waitFor(t, 20*time.Second, "the learner removed", func() error {
		if got := learners(); len(got) > 0 {
			return fmt.Errorf("learners %v", got)
		}
		return nil
	})
	if _, _, err := cl.Split(ctx, []byte("c8")); err != nil {
		t.Fatalf("split once the learner is gone: %v", err)
	}
}

// TestMoveOntoVoterKeepsFactor: a move whose new node votes in the range
// already (as when a second decider finishes, from an older descriptor,
// a move its first asker finished) is refused rather than leave the range
// under its replication factor; before the guard it removed the old
// replica, and the range was left with 2 voters. And a move from a node
// with no replica is refused rather than add one.
func TestMoveOntoVoterKeepsFactor(t *testing.T) {
	c := startClusterWith(t, 5, 5, func(cfg *Config) { cfg.Replicas = 3 })
	cl := c.client()
	ctx := ctxT(t)
	key := []byte("c0")
	g := initialRange(5, key)
	d, ok := c.nodes[1].descriptor(g)
	if !ok || len(d.Replicas) != 3 {
		t.Fatalf("range %d: %v", g, d)
	}
	if _, err := cl.Move(ctx, key, d.Replicas[1], d.Replicas[2]); err == nil {
		t.Fatalf("a move from node %d onto node %d, a voter of %v already, was made", d.Replicas[1], d.Replicas[2], d.Replicas)
	}
	// Nor is a move from a node that holds no replica onto another
	// (decided on an older descriptor): it only added one, a voter too
	// many (a growth run, two rebalancers at once on a stale meta index).
	var spare []uint64
	for id := uint64(1); id <= 5; id++ {
		if !d.HasReplica(id) {
			spare = append(spare, id)
		}
	}
	if _, err := cl.Move(ctx, key, spare[0], spare[1]); err == nil {
		t.Fatalf("a move from node %d, which holds no replica of %v, to node %d was made", spare[0], d.Replicas, spare[1])
	}
	waitFor(t, 10*time.Second, "the descriptor as it was", func() error {
		for id, s := range c.nodes {
			nd, ok := s.descriptor(g)
			if ok && !slices.Equal(nd.Replicas, d.Replicas) {
				return fmt.Errorf("node %d sees range %d on %v, was %v", id, g, nd.Replicas, d.Replicas)
			}
		}
		return nil
	})
}
