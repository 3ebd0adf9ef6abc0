package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/kv"
)

// Decommissioning node 4 of 4 (3 replicas per range, no dead-node moves)
// under writes: while it is decommissioning, node list says so and no
// replica may move onto it; its replicas all move to nodes 1-3 (node 4
// leads one of them, and hands its leadership away); it is then
// removed: it stops with ErrRemoved, holds no replica, every range has 3
// voters on nodes 1-3, no write failed and every acknowledged write reads
// back. Started again on its data, it is refused and stops again. A node
// outside the cluster, and a decommission that would leave fewer nodes
// than the replication factor, are refused.
func TestDecommission(t *testing.T) {
	// No leadership balancing: node 4 keeps the range it is given to lead,
	// so that its own move hands the leadership away.
	c := startClusterWith(t, 4, 4, func(cfg *Config) { cfg.Replicas = 3; cfg.DeadAfter = -1; cfg.BalanceInterval = time.Hour })
	cl := c.client()
	ctx := ctxT(t)
	for i := range 40 {
		if _, err := cl.Put(ctx, fmt.Appendf(nil, "%02x-before", i*6), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := cl.Decommission(ctx, 9); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("decommission of node 9: %v, want invalid argument", err)
	}
	// Node 4 leads at least one range, so its own moves hand off.
	waitFor(t, 10*time.Second, "node 4 leads a range", func() error {
		for _, r := range c.nodes[4].ranges.Replicas() {
			if l, _, err := c.nodes[4].Host().Leader(r.ID); err == nil && l == 4 {
				return nil
			}
		}
		// Hand node 4 the leadership of one of its ranges.
		for _, r := range c.nodes[4].ranges.Replicas() {
			for id, s := range c.nodes {
				if l, _, err := s.Host().Leader(r.ID); err == nil && l == id {
					tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					err := s.Host().TransferLeadership(tctx, r.ID, 4)
					cancel()
					return fmt.Errorf("node 4 leads none yet (transfer: %v)", err)
				}
			}
		}
		return errors.New("node 4 leads none, and no leader found to hand one over")
	})

	w := startWriter(cl, func(i int) string { return fmt.Sprintf("%02x-w%05d", (i*37)%256, i) })

	led := uint64(0)
	for _, r := range c.nodes[4].ranges.Replicas() {
		if l, _, err := c.nodes[4].Host().Leader(r.ID); err == nil && l == 4 {
			led = r.ID
		}
	}
	state, n, err := cl.Decommission(ctx, 4)
	if err != nil || state != api.NodeDecommissioning || n != 3 {
		t.Fatalf("decommission of node 4: %q %d %v, want decommissioning with 3 replicas", state, n, err)
	}
	// Node 4 hands the range it leads to another replica, which finishes
	// the move.
	waitFor(t, 30*time.Second, fmt.Sprintf("range %d led elsewhere", led), func() error {
		if l, _, err := c.nodes[1].Host().Leader(led); err != nil || l == 4 || l == 0 {
			return fmt.Errorf("led by %d (%v)", l, err)
		}
		return nil
	})
	nodeState := func(id uint64) string {
		st, err := cl.Status(ctx)
		if err != nil {
			return err.Error()
		}
		for _, n := range api.NodeListOf(st).Nodes {
			if n.ID == id {
				return n.State
			}
		}
		return "missing"
	}
	if st := nodeState(4); st != api.NodeDecommissioning {
		t.Fatalf("node 4 listed %q, want decommissioning", st)
	}
	// Nothing moves onto it: a range without a replica there stays so.
	for g := uint64(1); g <= 4; g++ {
		d, ok := c.nodes[1].descriptor(g)
		if ok && !d.HasReplica(4) {
			_, err := cl.Move(ctx, keyOfRange(&d), 0, 4)
			if !errors.Is(err, client.ErrInvalidArgument) {
				t.Fatalf("move of range %d onto decommissioning node 4: %v, want invalid argument", g, err)
			}
			break
		}
	}
	s4 := c.nodes[4]
	start := time.Now()
	waitFor(t, 60*time.Second, "node 4 removed", func() error {
		state, n, err := cl.Decommission(ctx, 4)
		if err != nil {
			return err
		}
		if state != api.NodeRemoved {
			return fmt.Errorf("%s, %d replicas left", state, n)
		}
		return nil
	})
	t.Logf("node 4 decommissioned in %v", time.Since(start).Round(time.Millisecond))
	select {
	case <-s4.Stopping():
	case <-time.After(10 * time.Second):
		t.Fatal("node 4 still runs after its removal")
	}
	if err := s4.Err(); !errors.Is(err, ErrRemoved) {
		t.Fatalf("node 4 stopped with %v, want ErrRemoved", err)
	}
	if rs := s4.ranges.Replicas(); len(rs) != 0 {
		t.Fatalf("node 4 still holds %d replicas", len(rs))
	}
	if err := s4.Stop(); err != nil {
		t.Fatal(err)
	}
	delete(c.nodes, 4)
	// Let the writes go on a little without node 4.
	w.waitMore(t, 20, "writes after the removal")
	acked := w.halt(t)
	for g := uint64(1); g <= 4; g++ {
		waitFor(t, 10*time.Second, "range on nodes 1-3", func() error {
			d, ok := c.nodes[1].descriptor(g)
			if !ok || d.HasReplica(4) || len(d.Replicas) != 3 || len(d.Learners) != 0 {
				return fmt.Errorf("range %d: %v", g, d)
			}
			return nil
		})
	}
	for k, v := range acked {
		if kv, err := cl.Get(ctx, []byte(k)); err != nil || string(kv.Value) != v {
			t.Fatalf("get %s: %q %v", k, kv.Value, err)
		}
	}
	if st := nodeState(4); st != api.NodeRemoved {
		t.Fatalf("node 4 listed %q, want removed", st)
	}

	// Node 4 comes back on its data: refused, it stops again.
	c.start(4, nil)
	s4 = c.nodes[4]
	select {
	case <-s4.Stopping():
	case <-time.After(10 * time.Second):
		t.Fatal("removed node 4 runs again")
	}
	if err := s4.Err(); !errors.Is(err, ErrRemoved) {
		t.Fatalf("node 4 back stopped with %v, want ErrRemoved", err)
	}
	if err := s4.Stop(); err != nil {
		t.Fatal(err)
	}
	delete(c.nodes, 4)

	// Three members left for 3 replicas: no more decommissioning.
	if _, _, err := cl.Decommission(ctx, 3); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("decommission of node 3 of 3: %v, want invalid argument", err)
	}
}

// Two decommissions at once, through two nodes, of 4 nodes with 3
// replicas per range: only one passes (the other would leave 2 nodes for
// 3 replicas), as the membership of every node is one record, written
// compare-and-set.
func TestDecommissionConcurrent(t *testing.T) {
	c := startClusterWith(t, 4, 4, func(cfg *Config) { cfg.Replicas = 3; cfg.DeadAfter = -1 })
	ctx := ctxT(t)
	errs := make(chan error, 2)
	for _, n := range []uint64{3, 4} {
		cl, err := client.New(ctx, client.Config{Endpoints: []string{c.nodes[n-2].ClientAddr()}})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		go func() {
			_, _, err := cl.Decommission(ctx, n)
			errs <- err
		}()
	}
	var refused, passed int
	for range 2 {
		switch err := <-errs; {
		case err == nil:
			passed++
		case errors.Is(err, client.ErrInvalidArgument):
			refused++
		default:
			t.Fatal(err)
		}
	}
	if passed != 1 || refused != 1 {
		t.Fatalf("%d decommissions passed, %d refused; want one each", passed, refused)
	}
}

// replicasOn counts a range on a node by the newest descriptor any of its
// sources holds. A peer's report from before a move off the node (a
// discovery answer a second old) does not count it; a report newer than
// the meta index (a move onto the node that the index has not caught up
// with) does. Counting every source, as it did, the stale report counted
// a replica already moved off (e2e.TestDrainAndMoveCLI's flake).
func TestReplicasOnNewestDescriptor(t *testing.T) {
	c := startClusterWith(t, 4, 4, func(cfg *Config) {
		cfg.Replicas = 3
		cfg.DeadAfter = -1
		cfg.BalanceInterval = time.Hour
		cfg.DiscoveryInterval = time.Minute // node 2's views are the test's: discoverOnce, then its own
	})
	// Node 2 counts its own replicas: it moves one off, and then its
	// views of that range (it holds none) are kept.
	s := c.nodes[2]
	ctx := ctxT(t)
	var d kv.Descriptor
	waitFor(t, 10*time.Second, "a range on node 2", func() error {
		ds, err := s.allDescriptors(ctx)
		if err != nil {
			return err
		}
		for _, x := range ds {
			if x.HasReplica(2) && len(x.Replicas) == 3 {
				d = x
				return nil
			}
		}
		return fmt.Errorf("none in %v", ds)
	})
	to := uint64(0)
	for n := uint64(1); n <= 4; n++ {
		if !d.HasReplica(n) {
			to = n
		}
	}
	count := func(node uint64) int {
		t.Helper()
		n, err := s.replicasOn(ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := count(2)
	cl := c.client()
	if _, err := cl.Move(ctx, keyOfRange(&d), 2, to); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the meta index and node 2 without the range", func() error {
		if n := count(2); n != before-1 {
			return fmt.Errorf("node 2 counted with %d replicas, want %d", n, before-1)
		}
		return nil
	})
	// A report from before the move, listing node 2, next to fresh ones.
	s.discoverOnce()
	s.peers.Lock()
	v := s.peers.views[to]
	if v == nil || !v.ok {
		s.peers.Unlock()
		t.Fatalf("node 2 has no view of node %d", to)
	}
	v.groups = append(v.groups, &api.GroupInfo{Id: d.ID, Replicas: d.Replicas, Generation: d.Generation, Start: d.Start, End: d.End})
	s.peers.Unlock()
	if n := count(2); n != before-1 {
		t.Fatalf("with a report from before the move, node 2 counted with %d replicas, want %d", n, before-1)
	}
	// A report newer than anything else node 1 knows, listing node 2
	// again: a move back that the meta index has not caught up with.
	s.peers.Lock()
	v.groups = append(v.groups, &api.GroupInfo{Id: d.ID, Replicas: append(slices.Clone(d.Replicas), 2, to), Generation: d.Generation + 5, Start: d.Start, End: d.End})
	s.peers.Unlock()
	if n := count(2); n != before {
		t.Fatalf("with a report newer than the meta index, node 2 counted with %d replicas, want %d", n, before)
	}
}
