package server

import (
	"maps"
	"slices"
	"testing"

	"github.com/flotilla/flotilla/kv"
)

// TestPlanLeaders pins the leadership balancer's choices (planLeaders): how
// many it gives away, to whom, and in what order of kinds. Each case also
// runs a naive planner (the groups in order, to the replica leading
// fewest) where the case says it must differ: the case would not catch
// the order it guards otherwise.
func TestPlanLeaders(t *testing.T) {
	right := func(replicas ...uint64) *kv.Descriptor { return &kv.Descriptor{Replicas: replicas} }
	all := map[uint64]bool{1: true, 2: true, 3: true, 4: true}
	cases := []struct {
		name    string
		cands   []leaderCandidate
		counts  map[uint64]int
		alive   map[uint64]bool
		target  int
		want    []move
		naiveOK bool // the naive planner happens to plan want too
	}{
		{
			name:    "at target: nothing",
			cands:   []leaderCandidate{{group: 1, replicas: []uint64{1, 2, 3}}},
			counts:  map[uint64]int{1: 2, 2: 0, 3: 0},
			alive:   all,
			target:  2,
			naiveOK: true,
		},
		{
			name: "two over: each to the replica leading fewest, the preferred leader on a tie",
			cands: []leaderCandidate{
				{group: 1, replicas: []uint64{1, 2, 3}},
				{group: 2, replicas: []uint64{3, 1, 2}},
				{group: 3, replicas: []uint64{1, 2, 3}},
			},
			counts:  map[uint64]int{1: 3, 2: 0, 3: 0},
			alive:   all,
			target:  1,
			want:    []move{{1, 2}, {2, 3}},
			naiveOK: true,
		},
		{
			name: "a bound range goes last",
			cands: []leaderCandidate{
				{group: 1, replicas: []uint64{1, 2, 3}, bound: true, right: right(1, 3)},
				{group: 2, replicas: []uint64{1, 2, 3}},
			},
			counts: map[uint64]int{1: 2, 2: 0, 3: 0},
			alive:  all,
			target: 1,
			want:   []move{{2, 2}},
		},
		{
			// TestMergeQueueAcrossNodes's livelock: range 1 given to node 2,
			// which holds no replica of range 3, came straight back.
			name: "a bound range goes to a replica holding its right neighbour",
			cands: []leaderCandidate{
				{group: 1, replicas: []uint64{1, 2, 3}, bound: true, right: right(1, 3, 4)},
			},
			counts: map[uint64]int{1: 2, 2: 0, 3: 0},
			alive:  all,
			target: 1,
			want:   []move{{1, 3}},
		},
		{
			name: "a bound range whose right neighbour no other live replica holds: to any",
			cands: []leaderCandidate{
				{group: 1, replicas: []uint64{1, 2, 3}, bound: true, right: right(1, 3)},
			},
			counts:  map[uint64]int{1: 2, 2: 0, 3: 0},
			alive:   map[uint64]bool{1: true, 2: true},
			target:  1,
			want:    []move{{1, 2}},
			naiveOK: true,
		},
		{
			name: "never to a replica down or at its share",
			cands: []leaderCandidate{
				{group: 1, replicas: []uint64{1, 2, 3}},
				{group: 2, replicas: []uint64{1, 2, 4}},
			},
			counts:  map[uint64]int{1: 3, 2: 1, 3: 0, 4: 1},
			alive:   map[uint64]bool{1: true, 2: true, 4: true},
			target:  1,
			naiveOK: false,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			counts := maps.Clone(c.counts)
			got := planLeaders(1, c.cands, counts, c.alive, c.target)
			if !slices.Equal(got, c.want) {
				t.Fatalf("planned %v, want %v", got, c.want)
			}
			after := maps.Clone(c.counts)
			for _, m := range got {
				after[1]--
				after[m.to]++
			}
			if !maps.Equal(counts, after) {
				t.Fatalf("counts after the plan %v, want %v", counts, after)
			}
			naive := naivePlanLeaders(1, c.cands, maps.Clone(c.counts), c.alive, c.target)
			if slices.Equal(naive, c.want) != c.naiveOK {
				t.Fatalf("the naive planner planned %v (want %v): naiveOK should be %v", naive, c.want, !c.naiveOK)
			}
		})
	}
}

// naivePlanLeaders is planLeaders without its care: every group in order,
// to the live replica leading fewest, with no regard for merges nor for
// the share of the node it goes to (TestPlanLeaders's control).
func naivePlanLeaders(me uint64, cands []leaderCandidate, counts map[uint64]int, alive map[uint64]bool, target int) []move {
	var plan []move
	for _, c := range cands {
		if counts[me] <= target {
			break
		}
		var dest uint64
		for _, r := range c.replicas {
			if r != me && alive[r] && (dest == 0 || counts[r] < counts[dest]) {
				dest = r
			}
		}
		if dest != 0 {
			counts[me]--
			counts[dest]++
			plan = append(plan, move{c.group, dest})
		}
	}
	return plan
}
