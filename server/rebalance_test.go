package server

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/flotilla/flotilla/kv"
)

// pickRebalance moves from the member holding the most to the one holding
// the fewest, only while they differ by 2 or more, and only a range
// that has a voter on the first and no replica on the second.
func TestPickRebalance(t *testing.T) {
	d := func(id uint64, replicas ...uint64) kv.Descriptor {
		return kv.Descriptor{ID: id, Replicas: replicas}
	}
	for _, tc := range []struct {
		name     string
		members  []uint64
		count    map[uint64]int
		ds       []kv.Descriptor
		from, to uint64
		rng      uint64 // 0: no move
	}{
		{"balanced", []uint64{1, 2, 3}, map[uint64]int{1: 2, 2: 1, 3: 2}, []kv.Descriptor{d(1, 1, 3), d(2, 1, 2, 3)}, 0, 0, 0},
		{"empty node", []uint64{1, 2, 3, 4}, map[uint64]int{1: 2, 2: 2, 3: 2}, []kv.Descriptor{d(1, 1, 2, 3), d(2, 1, 2, 3)}, 3, 4, 1},
		{"first range has both", []uint64{1, 2}, map[uint64]int{1: 3, 2: 1}, []kv.Descriptor{d(1, 1, 2), d(2, 1), d(3, 1)}, 1, 2, 2},
		{"next pair", []uint64{1, 2, 3}, map[uint64]int{1: 4, 2: 2, 3: 1}, []kv.Descriptor{d(1, 1, 3), d(2, 1, 3), d(3, 1, 3), d(4, 1, 2, 3)}, 1, 2, 1},
		{"nothing to move", []uint64{1, 2}, map[uint64]int{1: 2, 2: 0}, []kv.Descriptor{d(1, 1, 2)}, 0, 0, 0},
		{"the only candidate waits", []uint64{1, 2}, map[uint64]int{1: 3, 2: 1}, []kv.Descriptor{d(7, 1), d(2, 1, 2)}, 0, 0, 0},
		{"a waiting range is skipped", []uint64{1, 2}, map[uint64]int{1: 3, 2: 1}, []kv.Descriptor{d(7, 1), d(2, 1)}, 1, 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from, to, got := pickRebalance(tc.members, tc.count, tc.ds, func(id uint64) bool { return id == 7 })
			checkPick(t, from, to, got, tc.from, tc.to, tc.rng)
		})
	}
}

// pickRepair takes a voter off a range with more than the replication
// factor on members (the one on the member holding the most), adds one to
// a range with fewer (on the member holding the fewest without one), and
// skips voters on nodes that are not members, learners, and ranges not
// ready.
func TestPickRepair(t *testing.T) {
	members := []uint64{1, 2, 3, 4}
	count := map[uint64]int{1: 5, 2: 5, 3: 7, 4: 3}
	ready := func(id uint64) bool { return id != 3 }
	for _, tc := range []struct {
		name     string
		ds       []kv.Descriptor
		from, to uint64
		rng      uint64 // 0: none
	}{
		{"balanced", []kv.Descriptor{{ID: 1, Replicas: []uint64{1, 2, 3}}}, 0, 0, 0},
		{"a non-member's voter does not count", []kv.Descriptor{{ID: 2, Replicas: []uint64{1, 2, 3, 9}}}, 0, 0, 0},
		{"not ready", []kv.Descriptor{{ID: 3, Replicas: []uint64{1, 2, 3, 4}}}, 0, 0, 0},
		{"a learner is no voter", []kv.Descriptor{{ID: 4, Replicas: []uint64{1, 2, 3, 4}, Learners: []uint64{4}}}, 0, 0, 0},
		{"one too many", []kv.Descriptor{{ID: 5, Replicas: []uint64{1, 2, 3, 4}}}, 3, 0, 5},
		{"one too few", []kv.Descriptor{{ID: 6, Replicas: []uint64{2, 3}}}, 0, 4, 6},
		{"one too few, a learner there", []kv.Descriptor{{ID: 7, Replicas: []uint64{1, 2, 4}, Learners: []uint64{4}}}, 0, 3, 7},
		// Node 8 is drained: no member, but its voter counts (the drain
		// moves it; a repair would add a fourth).
		{"a drained node's voter counts", []kv.Descriptor{{ID: 8, Replicas: []uint64{1, 2, 8}}}, 0, 0, 0},
		{"too many with a drained node's voter: it goes", []kv.Descriptor{{ID: 9, Replicas: []uint64{1, 2, 4, 8}}}, 8, 0, 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			from, to, d := pickRepair(members, append(slices.Clone(members), 8), count, tc.ds, 3, ready)
			checkPick(t, from, to, d, tc.from, tc.to, tc.rng)
		})
	}
}

// checkPick fails t unless a pick chose range rng (0: none) from node
// wantFrom to node wantTo.
// TestFinishMove: a move left under way is finished by promoting its
// learner and removing the voter on the most loaded member, or, if the
// range lacks a voter, by the promotion alone.
func TestFinishMove(t *testing.T) {
	members := []uint64{1, 2, 3, 4, 5}
	count := map[uint64]int{1: 30, 2: 33, 3: 31, 4: 10, 5: 12}
	d := &kv.Descriptor{ID: 7, Replicas: []uint64{1, 2, 3, 5}, Learners: []uint64{5}}
	if from, to := finishMove(d, members, members, count, 3); from != 2 || to != 5 {
		t.Errorf("finish of %v: from %d to %d, want from 2 (the most replicas) to 5", d, from, to)
	}
	d = &kv.Descriptor{ID: 7, Replicas: []uint64{1, 3, 5}, Learners: []uint64{5}}
	if from, to := finishMove(d, members, members, count, 3); from != 0 || to != 5 {
		t.Errorf("finish of %v (2 voters): from %d to %d, want only the promotion of 5", d, from, to)
	}
	// A voter on a node that is no member (leaving) is not counted, nor
	// removed: evacuateLoop moves it.
	d = &kv.Descriptor{ID: 7, Replicas: []uint64{9, 1, 2, 4}, Learners: []uint64{4}}
	if from, to := finishMove(d, []uint64{1, 2, 3, 4}, []uint64{1, 2, 3, 4}, count, 3); from != 0 || to != 4 {
		t.Errorf("finish of %v: from %d to %d, want only the promotion of 4", d, from, to)
	}
	d = &kv.Descriptor{ID: 7, Replicas: []uint64{9, 1, 2, 3, 4}, Learners: []uint64{4}}
	if from, to := finishMove(d, []uint64{1, 2, 3, 4}, []uint64{1, 2, 3, 4}, count, 3); from != 2 || to != 4 {
		t.Errorf("finish of %v: from %d to %d, want from 2 to 4", d, from, to)
	}
	// A drain's move cut short: the drained node's voter goes.
	d = &kv.Descriptor{ID: 7, Replicas: []uint64{8, 1, 2, 4}, Learners: []uint64{4}}
	if from, to := finishMove(d, []uint64{1, 2, 3, 4}, []uint64{1, 2, 3, 4, 8}, count, 3); from != 8 || to != 4 {
		t.Errorf("finish of %v with node 8 drained: from %d to %d, want from 8 to 4", d, from, to)
	}
}

func checkPick(t *testing.T, from, to uint64, d *kv.Descriptor, wantFrom, wantTo, rng uint64) {
	t.Helper()
	if rng == 0 {
		if d != nil {
			t.Fatalf("picked range %d from %d to %d, want none", d.ID, from, to)
		}
		return
	}
	if d == nil || d.ID != rng || from != wantFrom || to != wantTo {
		t.Fatalf("got %v from %d to %d, want range %d from %d to %d", d, from, to, rng, wantFrom, wantTo)
	}
}

// A node emptied by moves gets its share back once the nodes run with a
// rebalance interval: 4 nodes, 8 ranges of 3 replicas; node 4's 6
// replicas are moved to nodes 1-3 (8, 8, 8, 0), then every node is
// restarted with --rebalance-interval, and the rebalancer moves replicas
// back until every node holds 6, with every range at 3 voters, no
// learner, every key reading back, and the leaderships spread (at most 2
// of the 8 per node).
func TestRebalance(t *testing.T) {
	c := startClusterWith(t, 4, 8, func(cfg *Config) { cfg.Replicas = 3; cfg.DeadAfter = -1 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := c.client()
	for i := range 64 {
		if _, err := cl.Put(ctx, fmt.Appendf(nil, "%02x-k", i*4), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	counts := func() (map[uint64]int, []kv.Descriptor, error) {
		var s *Server
		for _, n := range c.nodes {
			s = n
			break
		}
		ds, err := s.allDescriptors(ctx)
		if err != nil {
			return nil, nil, err
		}
		count := map[uint64]int{}
		for _, d := range ds {
			for _, r := range d.Replicas {
				count[r]++
			}
		}
		return count, ds, nil
	}
	_, ds, err := counts()
	if err != nil {
		t.Fatal(err)
	}
	for i := range ds {
		if !ds[i].HasReplica(4) {
			continue
		}
		to := uint64(1)
		for to <= 3 && ds[i].HasReplica(to) {
			to++
		}
		if _, err := cl.Move(ctx, keyOfRange(&ds[i]), 4, to); err != nil {
			t.Fatalf("move of range %d off node 4: %v", ds[i].ID, err)
		}
	}
	if count, _, err := counts(); err != nil || count[4] != 0 {
		t.Fatalf("after the moves node 4 holds %d replicas (%v)", count[4], err)
	}

	c.stopAll()
	c.tweak = func(cfg *Config) {
		cfg.Replicas = 3
		cfg.DeadAfter = -1
		cfg.RebalanceInterval = 100 * time.Millisecond
		cfg.MoveCatchUp = 2 * time.Second // a range off its replication factor is repaired after 4 s
	}
	for id := uint64(1); id <= 4; id++ {
		c.start(id, nil)
	}
	c.waitLeaders()
	cl = c.client() // the client addresses are new
	start := time.Now()
	waitFor(t, 90*time.Second, "every node at 6 replicas", func() error {
		count, ds, err := counts()
		if err != nil {
			return err
		}
		for _, d := range ds {
			if len(d.Replicas) != 3 || len(d.Learners) != 0 {
				return fmt.Errorf("range %d on %v, learners %v", d.ID, d.Replicas, d.Learners)
			}
		}
		for id := uint64(1); id <= 4; id++ {
			if count[id] != 6 {
				return fmt.Errorf("replica counts %v", count)
			}
		}
		return nil
	})
	t.Logf("balanced %v after the restart", time.Since(start).Round(time.Millisecond))
	waitFor(t, 30*time.Second, "leaderships spread", func() error {
		leads := map[uint64]int{}
		_, ds, err := counts()
		if err != nil {
			return err
		}
		for _, d := range ds {
			l, _, err := c.nodes[d.Replicas[0]].Host().Leader(d.ID)
			if err != nil || l == 0 || !slices.Contains(d.Replicas, l) {
				return fmt.Errorf("range %d: leader %d (%v)", d.ID, l, err)
			}
			leads[l]++
		}
		for id, n := range leads {
			if n > 2 {
				return fmt.Errorf("node %d leads %d ranges (%v)", id, n, leads)
			}
		}
		return nil
	})
	for i := range 64 {
		k := fmt.Appendf(nil, "%02x-k", i*4)
		if kv, err := cl.Get(ctx, k); err != nil || string(kv.Value) != "v" {
			t.Fatalf("get %s: %q %v", k, kv.Value, err)
		}
	}
}
