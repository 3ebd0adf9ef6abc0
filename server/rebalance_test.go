package server

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/flotilla/flotilla/api"
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
			from, to, got := pickRebalance(tc.members, tc.count, nil, nil, tc.ds, func(id uint64) bool { return id == 7 })
			checkPick(t, from, to, got, tc.from, tc.to, tc.rng)
		})
	}
}

// A range with a voter too many (a move between its promotion and its
// removal) is not moved by count (pickMove, the rebalancer's choice): a
// second decider did, off node 1, which the first move was taking it off,
// and the range stayed at 4 voters. The naive skip (backed-off ranges
// only) picks it, in the same test.
func TestRebalanceLeavesMovesUnderWay(t *testing.T) {
	members := []uint64{1, 2, 3, 4, 5}
	ds := []kv.Descriptor{
		{ID: 16, Replicas: []uint64{1, 2, 3, 4}}, // 4 promoted, 1 not yet removed
		{ID: 17, Replicas: []uint64{1, 2, 3}},
		{ID: 18, Replicas: []uint64{1, 4, 5}},
	}
	count := map[uint64]int{}
	for _, d := range ds {
		for _, r := range d.Replicas {
			count[r]++
		}
	}
	never := func(uint64) bool { return false }
	off := offFactor(ds, members, 3)
	if !off[16] || len(off) != 1 {
		t.Fatalf("offFactor = %v, want range 16 only", off)
	}
	pick := func(skip func(uint64) bool) (uint64, uint64, *kv.Descriptor) {
		from, to, d, x := pickMove(members, members, count, nil, nil, ds, 3, never, skip, 1)
		if x != nil {
			t.Fatalf("an exchange of bytes with the counts %v", count)
		}
		return from, to, d
	}
	if from, _, d := pick(never); d == nil || d.ID != 16 || from != 1 {
		t.Fatalf("the naive skip picked %v from %d: the control does not reach the move under way", d, from)
	}
	from, to, d := pick(movesSkip(never, off))
	if d == nil || d.ID != 17 || from != 1 || to != 5 {
		t.Fatalf("picked %v from %d to %d, want range 17 from node 1 onto node 5", d, from, to)
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
// replicas are moved to nodes 1-3 (8, 8, 8, 0), the last 4 ranges in key
// order are filled with 1.5 MiB each (the first 4 hold a few keys), then
// every node is restarted with --rebalance-interval, and the rebalancer
// moves replicas back until every node holds 6, with every range at 3
// voters, no learner, every key reading back, the bytes each node holds
// (measured from its replicas' data) within 20% of the mean, and the
// leaderships spread (at most 2 of the 8 per node). Balancing counts only,
// node 4 took the first ranges in key order: 4 small and 2 big, half the
// mean's bytes (TestRebalanceEvensBytes runs that control).
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
	// The meta index takes a move's record after the move returned
	// (ranges.Store.updateMeta does not wait): under load it lagged (a
	// run with two CPU burners beside it read node 4 at 1 replica).
	waitFor(t, 30*time.Second, "the meta index shows node 4 empty", func() error {
		if count, _, err := counts(); err != nil || count[4] != 0 {
			return fmt.Errorf("after the moves node 4 holds %d replicas (%v)", count[4], err)
		}
		return nil
	})
	big := make([]byte, 64<<10)
	var bigKeys [][]byte
	for _, d := range ds[len(ds)-4:] {
		for i := range 24 {
			k := fmt.Appendf(slices.Clip(keyOfRange(&d)), "-big-%02d", i)
			if _, err := cl.Put(ctx, k, big); err != nil {
				t.Fatalf("put %q: %v", k, err)
			}
			bigKeys = append(bigKeys, k)
		}
	}

	c.stopAll()
	c.tweak = func(cfg *Config) {
		cfg.Replicas = 3
		cfg.DeadAfter = -1
		cfg.RebalanceInterval = 100 * time.Millisecond
		cfg.MoveCatchUp = 2 * time.Second // a range off its replication factor is repaired after 4 s
		cfg.RangeMaxBytes = 4 << 20       // a byte gap under 1 MiB is not worth a move (bytesSlack)
	}
	for id := uint64(1); id <= 4; id++ {
		c.start(id, nil)
	}
	c.waitLeaders()
	cl = c.client() // the client addresses are new
	start := time.Now()
	// settled returns the replica counts once every range has 3 voters
	// and no learner.
	settled := func() (map[uint64]int, error) {
		count, ds, err := counts()
		if err != nil {
			return nil, err
		}
		for _, d := range ds {
			if len(d.Replicas) != 3 || len(d.Learners) != 0 {
				return nil, fmt.Errorf("range %d on %v, learners %v", d.ID, d.Replicas, d.Learners)
			}
		}
		return count, nil
	}
	waitFor(t, 90*time.Second, "every node at 6 replicas", func() error {
		count, err := settled()
		if err != nil {
			return err
		}
		for id := uint64(1); id <= 4; id++ {
			if count[id] != 6 {
				return fmt.Errorf("replica counts %v", count)
			}
		}
		return nil
	})
	t.Logf("counts balanced %v after the restart", time.Since(start).Round(time.Millisecond))
	// The bytes each node holds, from its replicas' data (not from the
	// sizes the rebalancer weighs).
	held := func() (map[uint64]uint64, uint64, error) {
		out := map[uint64]uint64{}
		var total uint64
		for id, n := range c.nodes {
			for _, r := range n.ranges.Replicas() {
				b, err := r.SM.SpanBytes()
				if err != nil {
					return nil, 0, err
				}
				out[id] += b
				total += b
			}
		}
		return out, total / uint64(len(c.nodes)), nil
	}
	waitFor(t, 90*time.Second, "every node's bytes within 20% of the mean, at 6 replicas", func() error {
		count, err := settled()
		if err != nil {
			return err
		}
		bytes, mean, err := held()
		if err != nil {
			return err
		}
		for id := uint64(1); id <= 4; id++ {
			if count[id] != 6 || absDiff(bytes[id], mean) > mean/5 {
				return fmt.Errorf("replica counts %v, bytes %v (mean %d)", count, bytes, mean)
			}
		}
		return nil
	})
	bytes, mean, _ := held()
	t.Logf("bytes balanced %v after the restart: %v, mean %d", time.Since(start).Round(time.Millisecond), bytes, mean)
	// Every node lists every range's size (flotilla ranges), also of the
	// ranges it holds no replica of: their leaders' reports.
	waitFor(t, 30*time.Second, "every node lists every range's size", func() error {
		for id, n := range c.nodes {
			resp, err := (&clusterService{s: n}).Ranges(ctx, &api.RangesRequest{Stats: true})
			if err != nil {
				return err
			}
			for _, ri := range resp.Ranges {
				holder := c.nodes[ri.Replicas[0]]
				r, ok := holder.ranges.Get(ri.Id)
				if !ok {
					return fmt.Errorf("node %d holds no replica of range %d", ri.Replicas[0], ri.Id)
				}
				want, err := r.SM.SpanBytes()
				if err != nil {
					return err
				}
				if ri.Bytes != want {
					return fmt.Errorf("node %d lists range %d (held here: %v) at %d bytes, its data is %d", id, ri.Id, slices.Contains(ri.Replicas, id), ri.Bytes, want)
				}
			}
		}
		return nil
	})
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
	for _, k := range bigKeys {
		if kv, err := cl.Get(ctx, k); err != nil || len(kv.Value) != len(big) {
			t.Fatalf("get %s: %d bytes, %v", k, len(kv.Value), err)
		}
	}
}

// pickBytes: with the counts even, it evens out bytes, by one move where
// the fuller node holds more replicas, else by a swap, only past the gap
// allowed, and only by a move that is worth it.
func TestPickBytes(t *testing.T) {
	const mib = 1 << 20
	d := func(id uint64, replicas ...uint64) kv.Descriptor { return kv.Descriptor{ID: id, Replicas: replicas} }
	for _, tc := range []struct {
		name       string
		members    []uint64
		ds         []kv.Descriptor
		sizes      map[uint64]uint64
		give, back uint64 // ranges; 0: none
		from, to   uint64
	}{
		{"balanced", []uint64{1, 2}, []kv.Descriptor{d(1, 1), d(2, 2)}, map[uint64]uint64{1: 50 * mib, 2: 48 * mib}, 0, 0, 0, 0},
		// Node 1: 3 replicas (120 MiB), node 2: 2 (50 MiB): one move of
		// 40 MiB leaves them 10 MiB apart; a swap, 40 for 25, 40.
		{"single move", []uint64{1, 2}, []kv.Descriptor{d(1, 1), d(2, 1), d(3, 1), d(4, 2), d(5, 2)},
			map[uint64]uint64{1: 40 * mib, 2: 40 * mib, 3: 40 * mib, 4: 25 * mib, 5: 25 * mib}, 1, 0, 1, 2},
		// Even counts: a swap, 60 MiB for 8 (net 52, nearest half the
		// gap of 97).
		{"swap", []uint64{1, 2}, []kv.Descriptor{d(1, 1), d(2, 1), d(3, 2), d(4, 2)},
			map[uint64]uint64{1: 60 * mib, 2: 50 * mib, 3: 5 * mib, 4: 8 * mib}, 1, 4, 1, 2},
		// Counts two apart: pickRebalance's.
		{"counts first", []uint64{1, 2}, []kv.Descriptor{d(1, 1), d(2, 1), d(3, 1), d(4, 2)},
			map[uint64]uint64{1: 60 * mib, 2: 60 * mib, 3: 60 * mib}, 0, 0, 0, 0},
		// Only a move bigger than the gap: it would not shrink it.
		{"nothing shrinks the gap", []uint64{1, 2}, []kv.Descriptor{d(1, 1), d(2, 2)},
			map[uint64]uint64{1: 100 * mib, 2: 40 * mib}, 0, 0, 0, 0},
		// A range of unknown size is not moved for bytes, and its
		// members' bytes are a guess: no exchange between them.
		{"unknown size stays", []uint64{1, 2}, []kv.Descriptor{d(1, 1), d(2, 1), d(3, 2)},
			map[uint64]uint64{1: 100 * mib}, 0, 0, 0, 0},
		// Node 3 (the emptiest) holds range 9, of unknown size: nodes 1
		// (90 MiB, 2 replicas) and 2 (5 MiB, 1) exchange instead: range 2
		// moves (85 MiB apart, 25 after).
		{"a member with an unsized range is left out", []uint64{1, 2, 3}, []kv.Descriptor{d(1, 1), d(2, 1), d(3, 2), d(9, 3), d(4, 3)},
			map[uint64]uint64{1: 60 * mib, 2: 30 * mib, 3: 5 * mib, 4: 1}, 2, 0, 1, 2},
		// The gain must be worth it: half the slack (8 MiB) at least.
		{"gain too small", []uint64{1, 2}, []kv.Descriptor{d(1, 1), d(2, 1), d(3, 2)},
			map[uint64]uint64{1: 100 * mib, 2: 3 * mib}, 0, 0, 0, 0},
		// Node 1 (104 MiB) has nothing worth giving: to node 3, only
		// range 1 (4 MiB) for 1 or 3 (gains under 8 MiB); to node 2, only
		// range 7, which waits. The next pair: node 2 (36 MiB) and node 3
		// (4 MiB) swap 30 MiB for 3 (30 for 1 gains less).
		{"next pair", []uint64{1, 2, 3}, []kv.Descriptor{d(7, 1), d(1, 1, 2), d(2, 2), d(5, 2), d(3, 3), d(4, 3)},
			map[uint64]uint64{7: 100 * mib, 1: 4 * mib, 2: 30 * mib, 5: 2 * mib, 3: 1 * mib, 4: 3 * mib}, 2, 4, 2, 3},
		// Waiting ranges are not picked.
		{"waiting", []uint64{1, 2}, []kv.Descriptor{d(7, 1), d(2, 1), d(3, 2)},
			map[uint64]uint64{7: 60 * mib, 2: 1 * mib, 3: 1 * mib}, 0, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			count := map[uint64]int{}
			for _, d := range tc.ds {
				for _, r := range d.Replicas {
					count[r]++
				}
			}
			x := pickBytes(tc.members, count, nodeBytes(tc.ds, tc.sizes), tc.sizes, tc.ds, func(id uint64) bool { return id == 7 }, 16*mib)
			switch {
			case tc.give == 0 && x != nil:
				t.Fatalf("picked %d (back %v) from %d to %d, want none", x.give.ID, x.back, x.from, x.to)
			case tc.give == 0:
			case x == nil:
				t.Fatalf("picked none, want range %d (back %d) from %d to %d", tc.give, tc.back, tc.from, tc.to)
			case x.give.ID != tc.give || x.from != tc.from || x.to != tc.to || (x.back == nil) != (tc.back == 0) || (x.back != nil && x.back.ID != tc.back):
				t.Fatalf("picked %d (back %v) from %d to %d, want range %d (back %d) from %d to %d", x.give.ID, x.back, x.from, x.to, tc.give, tc.back, tc.from, tc.to)
			}
		})
	}
}

// The rebalancer's picks, applied until they stop, to 3 nodes holding 24
// ranges of 3 replicas, the first 12 in key order small (2 MiB) and the
// others big (60 MiB), and 2 new empty nodes: they end with the replica
// counts within 1 and every node's bytes within 20% of the mean (the
// issue's bound for replicas and leaders; a range here is an eighth of a
// node's share, and the picks stop short of a move not worth making):
// pickRebalance weighing bytes alone gets there; so does pickBytes after a
// count-only pickRebalance, by exchanges. And the naive control, counts
// only with the first range in key order (the rebalancer before it
// weighed bytes), ends with the counts even but the new nodes holding a
// third of the mean: it fails the same check.
func TestRebalanceEvensBytes(t *testing.T) {
	const mib = 1 << 20
	type result struct {
		count     map[uint64]int
		bytes     map[uint64]uint64
		moves     int
		exchanges int
	}
	run := func(weigh, exchange bool) result {
		members := []uint64{1, 2, 3, 4, 5}
		var ds []kv.Descriptor
		sizes := map[uint64]uint64{}
		for i := uint64(1); i <= 24; i++ {
			ds = append(ds, kv.Descriptor{ID: i, Replicas: []uint64{1, 2, 3}})
			sizes[i] = 2 * mib
			if i > 12 {
				sizes[i] = 60 * mib
			}
		}
		never := func(uint64) bool { return false }
		var res result
		for res.moves = 0; res.moves < 1000; res.moves++ {
			res.count = map[uint64]int{}
			for _, d := range ds {
				for _, r := range d.Replicas {
					res.count[r]++
				}
			}
			s := sizes
			if !weigh {
				s = nil
			}
			res.bytes = nodeBytes(ds, sizes)
			from, to, d := pickRebalance(members, res.count, nodeBytes(ds, s), s, ds, never)
			if d != nil {
				d.Replicas = append(slices.DeleteFunc(d.Replicas, func(r uint64) bool { return r == from }), to)
				continue
			}
			if !exchange {
				return res
			}
			x := pickBytes(members, res.count, res.bytes, sizes, ds, never, 16*mib)
			if x == nil {
				return res
			}
			res.exchanges++
			x.give.Replicas = append(slices.DeleteFunc(x.give.Replicas, func(r uint64) bool { return r == x.from }), x.to)
			if x.back != nil {
				x.back.Replicas = append(slices.DeleteFunc(x.back.Replicas, func(r uint64) bool { return r == x.to }), x.from)
			}
		}
		t.Fatalf("the picks did not stop after %d moves", res.moves)
		return res
	}
	check := func(r result) error {
		var total uint64
		lo, hi := r.count[1], r.count[1]
		for n := uint64(1); n <= 5; n++ {
			total += r.bytes[n]
			lo, hi = min(lo, r.count[n]), max(hi, r.count[n])
		}
		if hi-lo > 1 {
			return fmt.Errorf("replica counts %v differ by %d", r.count, hi-lo)
		}
		mean := total / 5
		for n := uint64(1); n <= 5; n++ {
			if absDiff(r.bytes[n], mean) > mean/5 {
				return fmt.Errorf("node %d holds %d MiB, the mean is %d MiB (all: %v)", n, r.bytes[n]>>20, mean>>20, r.bytes)
			}
		}
		return nil
	}
	for _, tc := range []struct {
		name            string
		weigh, exchange bool
	}{{"weighing bytes", true, true}, {"counting, then exchanging bytes", false, true}} {
		r := run(tc.weigh, tc.exchange)
		if err := check(r); err != nil {
			t.Fatalf("%s, after %d moves and %d exchanges: %v", tc.name, r.moves, r.exchanges, err)
		}
		if !tc.weigh && r.exchanges == 0 {
			t.Fatalf("%s: no exchange; the test does not test pickBytes", tc.name)
		}
		t.Logf("%s: %d moves, %d exchanges; counts %v; MiB %d %d %d %d %d", tc.name, r.moves, r.exchanges, r.count,
			r.bytes[1]>>20, r.bytes[2]>>20, r.bytes[3]>>20, r.bytes[4]>>20, r.bytes[5]>>20)
	}
	r := run(false, false)
	if err := check(r); err == nil {
		t.Fatalf("the naive control (counts only, %d moves) passed the check: it proves nothing", r.moves)
	} else {
		t.Logf("naive control fails as it must: %v", err)
	}
}
