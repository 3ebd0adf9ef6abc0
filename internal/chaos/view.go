package chaos

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Replica is one group as one node sees it.
type Replica struct {
	// Leader is the leader this node knows (0: none).
	Leader uint64
	// Term is this node's current term of the group.
	Term uint64
	// IsLeader says this node is the group's leader.
	IsLeader bool
	// Commit is this node's commit index.
	Commit uint64
}

// GroupView is one group as the cluster sees it: the leader at the highest
// term any node claims leadership at, or no leader and the highest term
// seen.
type GroupView struct {
	Leader uint64
	Term   uint64
}

// View is a snapshot of every group's leadership. Groups is always set;
// PerNode (node ID → group ID → Replica) only when the observer can see
// each node's replicas (the in-process Cluster; `flotilla status` merges
// them).
type View struct {
	Groups  map[uint64]GroupView
	PerNode map[uint64]map[uint64]Replica
}

// summarize fills Groups from PerNode: a group's term is the highest any
// node has, and its leader the node that leads at that term, if any.
func (v *View) summarize() {
	for id, reps := range v.PerNode {
		for g, r := range reps {
			cur := v.Groups[g]
			if r.Term > cur.Term {
				cur = GroupView{Term: r.Term}
			}
			if r.IsLeader && r.Term == cur.Term {
				cur.Leader = id
			}
			v.Groups[g] = cur
		}
	}
}

// agreed reports whether every node in among sees leader as the leader of
// group at the leader's term.
func (v View) agreed(group, leader uint64, among []uint64) bool {
	gv := v.Groups[group]
	if gv.Leader != leader {
		return false
	}
	for _, id := range among {
		r, ok := v.PerNode[id][group]
		if !ok || r.Leader != leader || r.Term != gv.Term {
			return false
		}
	}
	return true
}

// Unled returns the groups that have no leader a majority of among agrees
// on (at the leader's term), ascending. Without per-node detail, a group is
// led when the summary names a leader in among.
func (v View) Unled(among []uint64) []uint64 {
	var out []uint64
	for g, gv := range v.Groups {
		if gv.Leader == 0 || !slices.Contains(among, gv.Leader) {
			out = append(out, g)
			continue
		}
		if v.PerNode == nil {
			continue
		}
		n := 0
		for _, id := range among {
			if r, ok := v.PerNode[id][g]; ok && r.Leader == gv.Leader && r.Term == gv.Term {
				n++
			}
		}
		if n <= len(among)/2 {
			out = append(out, g)
		}
	}
	slices.Sort(out)
	return out
}

// LeaderCounts returns how many groups each node leads.
func (v View) LeaderCounts() map[uint64]int {
	m := make(map[uint64]int)
	for _, gv := range v.Groups {
		m[gv.Leader]++
	}
	return m
}

// Elections returns how many terms began between before and after, summed
// over the groups of before: an upper bound on the leader changes.
func Elections(before, after View) int {
	n := 0
	for g, b := range before.Groups {
		if a, ok := after.Groups[g]; ok && a.Term > b.Term {
			n += int(a.Term - b.Term)
		}
	}
	return n
}

// CheckUnchanged compares two views of the same groups. It fails (wrapping
// ErrTermChanged or ErrLeaderChanged, or both) if any group's leader or
// term differs in the summaries, or, when both views have per-node detail,
// if any node's term differs or any node's known leader differs. Nodes in
// exempt keep only the term check: a follower that hears nothing from its
// leader forgets it (raft's pre-candidate) without any election, so its
// leader field says nothing about the cluster's leadership.
func CheckUnchanged(before, after View, exempt ...uint64) error {
	var terms, leaders []string
	for g, b := range before.Groups {
		a, ok := after.Groups[g]
		if !ok {
			leaders = append(leaders, fmt.Sprintf("group %d missing", g))
			continue
		}
		if a.Term != b.Term {
			terms = append(terms, fmt.Sprintf("group %d term %d->%d", g, b.Term, a.Term))
		}
		if a.Leader != b.Leader {
			leaders = append(leaders, fmt.Sprintf("group %d leader %d->%d", g, b.Leader, a.Leader))
		}
	}
	if before.PerNode != nil && after.PerNode != nil {
		for id, breps := range before.PerNode {
			areps := after.PerNode[id]
			for g, b := range breps {
				a, ok := areps[g]
				if !ok {
					continue
				}
				if a.Term != b.Term {
					terms = append(terms, fmt.Sprintf("node %d group %d term %d->%d", id, g, b.Term, a.Term))
				}
				if a.Leader != b.Leader && !slices.Contains(exempt, id) {
					leaders = append(leaders, fmt.Sprintf("node %d group %d leader %d->%d", id, g, b.Leader, a.Leader))
				}
			}
		}
	}
	var errs []error
	if len(terms) > 0 {
		slices.Sort(terms)
		errs = append(errs, fmt.Errorf("%w: %d changes, first %v", ErrTermChanged, len(terms), head(terms, 4)))
	}
	if len(leaders) > 0 {
		slices.Sort(leaders)
		errs = append(errs, fmt.Errorf("%w: %d changes, first %v", ErrLeaderChanged, len(leaders), head(leaders, 4)))
	}
	return errors.Join(errs...)
}

// LedBy returns the groups whose leader is node, ascending.
func (v View) LedBy(node uint64) []uint64 {
	var out []uint64
	for g, gv := range v.Groups {
		if gv.Leader == node {
			out = append(out, g)
		}
	}
	slices.Sort(out)
	return out
}

// Only returns the part of v about groups keep and nodes (all nodes if
// nodes is empty).
func (v View) Only(keep []uint64, nodes ...uint64) View {
	out := View{Groups: make(map[uint64]GroupView)}
	for _, g := range keep {
		if gv, ok := v.Groups[g]; ok {
			out.Groups[g] = gv
		}
	}
	if v.PerNode != nil {
		out.PerNode = make(map[uint64]map[uint64]Replica)
		for id, reps := range v.PerNode {
			if len(nodes) > 0 && !slices.Contains(nodes, id) {
				continue
			}
			m := make(map[uint64]Replica)
			for _, g := range keep {
				if r, ok := reps[g]; ok {
					m[g] = r
				}
			}
			out.PerNode[id] = m
		}
	}
	return out
}

// Agreed reports whether every node of the view sees the same leader at
// the same term for every group, and every group has a leader.
func (v View) Agreed() bool {
	ids := make([]uint64, 0, len(v.PerNode))
	for id := range v.PerNode {
		ids = append(ids, id)
	}
	for g, gv := range v.Groups {
		if gv.Leader == 0 || !v.agreed(g, gv.Leader, ids) {
			return false
		}
	}
	return true
}

// Stable polls view until two views taken gap apart are Agreed and
// unchanged, and returns the second; ErrStuck after bound. Tests take it as
// the "before" of a fault, so that bootstrap elections still settling do
// not count against the fault.
func Stable(ctx context.Context, bound, gap time.Duration, view func(context.Context) (View, error)) (View, error) {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var prev View
	havePrev := false
	for {
		v, err := view(ctx)
		switch {
		case err != nil || !v.Agreed():
			havePrev = false
		case havePrev && CheckUnchanged(prev, v) == nil:
			return v, nil
		default:
			prev, havePrev = v, true
		}
		t := time.NewTimer(gap)
		select {
		case <-ctx.Done():
			t.Stop()
			return v, fmt.Errorf("%w: leadership not stable within %v (last error %v)", ErrStuck, bound, err)
		case <-t.C:
		}
	}
}
