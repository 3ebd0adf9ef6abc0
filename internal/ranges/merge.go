package ranges

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/flotilla/flotilla/kv"
)

// Merging (docs/design.md, "Merges"). From the node that leads the
// left-hand range (LHS), with its right neighbour (RHS) on the same nodes:
//
//  0. if they are not, move the LHS's replicas onto the RHS's nodes, one
//     move at a time (alignMerge), then look again. If this node holds no
//     replica of the RHS, its own moves last, handing the LHS's leadership
//     to a node that does, which the merge is then asked of again;
//  1. freeze the RHS (kv.FreezeCommand): from then on it applies nothing;
//  2. wait until every replica of the RHS on the LHS's nodes applied the
//     freeze (Env.ReplicaApplied): their states are then final, and on
//     disk;
//  3. merge (kv.MergeCommand): every replica of the LHS takes its node's
//     replica of the RHS in, and the node removes that replica (reconcile);
//  4. record the merged descriptor in the meta index.
//
// A frozen RHS never thaws: if the coordinator dies after 1, the leader of
// whichever range ends where the RHS starts finishes the merge (Tick). A
// frozen RHS cannot change its replicas: if one of them is on a node that
// takes none for long (dead, leaving, drained: unplaced), the finisher
// merges on the LHS's replicas alone, once they are among the RHS's
// (subsetMergeable; it removes the LHS's others first, or its replica on
// a dead or leaving node, alignForMerge), and that node's RHS replica is
// left out, to be removed (checkFrozenMergedAway, CheckSuperseded).

// MergeWaitFor bounds how long a merge waits for the RHS's replicas to
// apply the freeze before it gives up for now (the frozen RHS is merged
// later by Tick).
const mergeWaitFor = 30 * time.Second

// Merge merges range id with the range after it and calls done (on the
// Store's loop) with the merged range or an error. Neighbours on
// different nodes are first put on the same ones (step 0): ErrBusy while
// one of the right range's nodes is not placeable (Config.Placeable), or
// the error of a move that failed. ErrBusy, too, while a node holding a
// replica of either range is down, or one of the right range's does not
// answer (downReplica, replicasAnswer): the freeze would hold the right
// range until it is back.
func (s *Store) Merge(id uint64, done func(kv.Descriptor, error)) {
	s.enqueue(func() { s.merge(id, "admin", done) })
}

// merge runs on the Store's loop.
func (s *Store) merge(id uint64, why string, done func(kv.Descriptor, error)) {
	s.mergeAfter(id, why, 0, done)
}

// mergeAfter is merge after aligns moves of its alignment. Loop only.
func (s *Store) mergeAfter(id uint64, why string, aligns int, done func(kv.Descriptor, error)) {
	fail := func(err error) { done(kv.Descriptor{}, err) }
	l, ok := s.Get(id)
	if !ok {
		fail(fmt.Errorf("%w: range %d", ErrNotLocal, id))
		return
	}
	ld, ok := l.Descriptor()
	if !ok {
		fail(fmt.Errorf("%w: range %d is not initialized here", ErrNotLocal, id))
		return
	}
	if _, _, frozen := l.SM.Frozen(); frozen {
		fail(fmt.Errorf("%w: range %d is frozen for a merge of its own", ErrBusy, id))
		return
	}
	if len(ld.End) == 0 {
		fail(fmt.Errorf("%w: range %d is the last range: nothing to merge it with", kv.ErrInvalid, id))
		return
	}
	r := s.startingAt(ld.End)
	if r == nil {
		s.mergeFromAfar(ld, why, aligns, fail, func() { s.mergeAfter(id, why, aligns+1, done) })
		return
	}
	rd, _ := r.Descriptor()
	if err := mergeable(ld, rd, aligns); err != nil {
		fail(err)
		return
	}
	if err := s.downReplica(ld, rd); err != nil {
		fail(err) // before the alignment too: it would move replicas for nothing
		return
	}
	if !ld.SameReplicas(rd) {
		s.alignMerge(ld, rd, why, func(err error) {
			if err != nil {
				fail(err)
				return
			}
			s.mergeAfter(id, why, aligns+1, done)
		})
		return
	}
	// Every replica of the RHS must apply the freeze before the merge:
	// one whose node does not answer now (down, but not found so by
	// PeerDown: not heard from since this node started) would hold the
	// frozen range.
	s.replicasAnswer(rd, func(silent uint64) {
		if silent != 0 {
			fail(fmt.Errorf("%w: node %d did not answer for its replica of range %d: a merge now would freeze the range until it does", ErrBusy, silent, rd.ID))
			return
		}
		// The answers took a round trip: freeze only if both ranges are
		// as they were (the freeze checks the RHS's generation itself,
		// but a left range that changed meanwhile would leave the RHS
		// frozen until finishMerges takes it up).
		if !s.asWas(ld, true) || !s.asWas(rd, false) {
			fail(fmt.Errorf("%w: range %d or %d changed while their replicas were asked", ErrBusy, ld.ID, rd.ID))
			return
		}
		s.freezeAndMerge(ld, rd, why, done)
	})
}

// asWas reports whether this node's replica of d's range still has d's
// generation, and, with thawed, is not frozen (a left range frozen for a
// merge of its own; a right range frozen by a merge that did not finish
// is merged now). Loop only.
func (s *Store) asWas(d *kv.Descriptor, thawed bool) bool {
	r, ok := s.Get(d.ID)
	if !ok {
		return false
	}
	cur, ok := r.Descriptor()
	_, _, frozen := r.SM.Frozen()
	return ok && cur.Generation == d.Generation && !(thawed && frozen)
}

// freezeAndMerge is steps 1-3 of the merge of ranges ld and rd, which are
// on the same nodes: it freezes rd, waits for its replicas to apply the
// freeze, and merges it into ld (mergeFrozen). Loop only.
func (s *Store) freezeAndMerge(ld, rd *kv.Descriptor, why string, done func(kv.Descriptor, error)) {
	fail := func(err error) { done(kv.Descriptor{}, err) }
	id := ld.ID
	if !s.begin(id) {
		fail(fmt.Errorf("%w: range %d", ErrBusy, id))
		return
	}
	if !s.begin(rd.ID) {
		s.end(id)
		fail(fmt.Errorf("%w: range %d", ErrBusy, rd.ID))
		return
	}
	lhs, rhs := ld.Clone(), rd.Clone()
	finish := func(d kv.Descriptor, err error) {
		s.end(lhs.ID)
		s.end(rhs.ID)
		done(d, err)
	}
	s.propose(rhs.ID, kv.FreezeCommand(&rhs, lhs.ID), func(res kv.Result, err error) {
		if err != nil {
			finish(kv.Descriptor{}, fmt.Errorf("ranges: freeze range %d: %w", rhs.ID, err))
			return
		}
		index, cur, ok, err := kv.FreezeResult(res)
		switch {
		case err != nil:
			finish(kv.Descriptor{}, err)
			return
		case !ok && index == 0:
			finish(kv.Descriptor{}, fmt.Errorf("%w: range %d changed before the freeze applied (now %v)", ErrBusy, rhs.ID, &cur))
			return
		}
		// Frozen (now, or before: a merge that did not finish).
		if s.failAt(FailMergeFrozen) {
			finish(kv.Descriptor{}, fmt.Errorf("ranges: merge of range %d: failure point %s", rhs.ID, FailMergeFrozen))
			return
		}
		s.log.Info("range frozen for a merge", "group", rhs.ID, "into", lhs.ID, "index", index, "why", why)
		s.mergeFrozen(&lhs, &rhs, index, s.env.Now().Add(mergeWaitFor), finish)
	})
}

// downReplica returns ErrBusy if a node other than this one that holds a
// replica of ds is down (multiraft.Host.PeerDown), else nil. A merge does
// not freeze a range with such a replica: every replica of the frozen
// range must apply the freeze before the merge, and a frozen range
// applies no command meanwhile, so its keys took no write until the node
// came back, and none ever if it was gone for good (its replica cannot be
// replaced on a frozen range). PeerDown knows only nodes heard from since
// this node started: replicasAnswer asks the others just before the
// freeze. A node that goes down after the freeze holds the range frozen
// until it is back, or dead (a subset merge, subsetMergeable). Loop only.
func (s *Store) downReplica(ds ...*kv.Descriptor) error {
	for _, d := range ds {
		for _, n := range d.Replicas {
			if s.down(n) {
				return fmt.Errorf("%w: node %d, which holds a replica of range %d, is down (or dead, or leaving): a merge now would freeze the range until the node is back", ErrBusy, n, d.ID)
			}
		}
	}
	return nil
}

// down reports whether node n, not this one, is down: found so by the
// Host (PeerDown), or dead (Config.Dead). Loop only.
func (s *Store) down(n uint64) bool {
	return n != s.cfg.NodeID && (s.cfg.Host.PeerDown(n) || (s.cfg.Dead != nil && s.cfg.Dead(n)))
}

// replicasAnswer asks each other node holding a replica of rd for its
// applied index (Env.ReplicaApplied), and calls next on the loop with the
// lowest such node that did not answer, or 0 once all did. Loop only.
func (s *Store) replicasAnswer(rd *kv.Descriptor, next func(silent uint64)) {
	var others []uint64
	for _, n := range rd.Replicas {
		if n != s.cfg.NodeID {
			others = append(others, n)
		}
	}
	if len(others) == 0 {
		next(0)
		return
	}
	left, silent := len(others), uint64(0)
	for _, n := range others {
		s.env.ReplicaApplied(n, rd.ID, callback2(s, func(_ uint64, ok bool) {
			if !ok && (silent == 0 || n < silent) {
				silent = n
			}
			if left--; left == 0 {
				next(silent)
			}
		}))
	}
}

// mergeable returns ErrBusy if ranges ld and rd may not merge, or move a
// replica toward that, now: one has learners, or they are still apart
// after aligns moves of the alignment.
func mergeable(ld, rd *kv.Descriptor, aligns int) error {
	if n := len(ld.Learners) + len(rd.Learners); n > 0 {
		// A replica being added (a move) must catch up first: every
		// replica of the RHS applies the freeze before the merge, and a
		// learner that never does (its node died) would hold the frozen
		// RHS, which never thaws, until it came back.
		return fmt.Errorf("%w: ranges %d and %d have %d learners; a merge waits until they are voters or gone", ErrBusy, ld.ID, rd.ID, n)
	}
	// Each move of the alignment shrinks the set of nodes holding one
	// range and not the other by 1 or 2: more moves than that set's first
	// size means the ranges change under it.
	if !ld.SameReplicas(rd) && aligns >= len(ld.Replicas)+len(rd.Replicas) {
		return fmt.Errorf("%w: ranges %d and %d still on different nodes (%v, %v) after %d moves", ErrBusy, ld.ID, rd.ID, ld.Replicas, rd.Replicas, aligns)
	}
	return nil
}

// mergeFromAfar is step 0 when this node, which leads the LHS ld, holds
// no replica of the RHS: it reads the RHS's descriptor from the meta index
// and moves one of ld's replicas onto the RHS's nodes, then calls next.
// The last such move is of this node's own replica: the move hands ld's
// leadership to the new replica and fails with ErrHandedOff, and the
// merge is to be asked of the new leader. fail gets ErrNotLocal if the
// meta index does not know the RHS. Loop only.
func (s *Store) mergeFromAfar(ld *kv.Descriptor, why string, aligns int, fail func(error), next func()) {
	s.env.Meta(ld.End, 1, callback2(s, func(ds []kv.Descriptor, err error) {
		if err != nil || len(ds) == 0 || !bytes.Equal(ds[0].Start, ld.End) {
			fail(fmt.Errorf("%w: the range after range %d (from %q) has no replica here, and the meta index did not give it (%v)", ErrNotLocal, ld.ID, ld.End, err))
			return
		}
		rd := ds[0]
		if err := mergeable(ld, &rd, aligns); err != nil {
			fail(err)
			return
		}
		if err := s.downReplica(ld, &rd); err != nil {
			fail(err)
			return
		}
		s.alignMerge(ld, &rd, why, func(err error) {
			if err != nil {
				fail(err)
				return
			}
			next()
		})
	}))
}

// alignMerge makes one move of range ld, which this node leads, toward
// the nodes of its right neighbour rd (step 0), not frozen: a replica off
// a node rd lacks, onto a node of rd that ld lacks (either may be none,
// for ranges of different sizes). This node's replica moves last (a move
// of it hands ld's leadership away: ErrHandedOff), and only if this node
// holds no replica of rd. It calls done with nil once the move is
// made, ErrBusy at once if the node to move onto is not placeable (a
// drained or leaving node: the allocator moves rd's replica off it, and
// the merge may then go), or the move's error. Loop only.
func (s *Store) alignMerge(ld, rd *kv.Descriptor, why string, done func(error)) {
	var extra, missing uint64
	for _, n := range ld.Replicas {
		if !rd.HasReplica(n) && (extra == 0 || extra == s.cfg.NodeID) {
			extra = n
		}
	}
	for _, n := range rd.Replicas {
		if !ld.HasReplica(n) {
			missing = n
			break
		}
	}
	if extra == 0 && missing == 0 {
		done(fmt.Errorf("%w: ranges %d and %d differ in their learners only (%v, %v)", ErrBusy, ld.ID, rd.ID, ld.Learners, rd.Learners))
		return
	}
	if missing == 0 && s.cfg.Replicas > 0 && len(ld.Replicas)-1 < s.cfg.Replicas {
		// The right range is short of replicas: a removal from the left
		// one would make it short too. The repair tops the right up.
		done(fmt.Errorf("%w: range %d has %d replicas, fewer than %d; ranges %d and %d merge once it is repaired",
			ErrBusy, rd.ID, len(rd.Replicas), s.cfg.Replicas, ld.ID, rd.ID))
		return
	}
	if missing != 0 && s.cfg.Placeable != nil && !s.cfg.Placeable(missing) {
		done(fmt.Errorf("%w: range %d has a replica on node %d, which takes no replicas now; ranges %d and %d merge once it moves off",
			ErrBusy, rd.ID, missing, ld.ID, rd.ID))
		return
	}
	id := ld.ID
	s.log.Info("moving a replica so that neighbours can merge", "group", id, "right_group", rd.ID, "from", extra, "to", missing, "why", why)
	s.startMove(id, extra, missing, "align for a merge", false, time.Time{}, func(_ kv.Descriptor, err error) {
		if err == nil || errors.Is(err, ErrHandedOff) {
			s.metrics.mergeAligns.Add(1) // handed off: made but for the removal, which the new leader makes
		}
		if err != nil {
			err = fmt.Errorf("ranges: moving range %d's replica from node %d to node %d to merge it with range %d: %w", id, extra, missing, rd.ID, err)
		}
		done(err)
	})
}

// startingAt returns the local replica whose span starts at key.
func (s *Store) startingAt(key []byte) *Replica {
	r := s.Lookup(key)
	if r == nil {
		return nil
	}
	if d, ok := r.Descriptor(); !ok || !bytes.Equal(d.Start, key) {
		return nil
	}
	return r
}

// mergeFrozen waits until every replica of rhs on lhs's nodes (all of
// rhs's but for a merge on a subset, subsetMergeable) applied its freeze
// at index (or until deadline), then merges it into lhs. It gives up at
// once if rhs is no longer here or lhs changed (another node merged them).
func (s *Store) mergeFrozen(lhs, rhs *kv.Descriptor, index uint64, deadline time.Time, finish func(kv.Descriptor, error)) {
	if s.cfg.SkipMergeWait {
		s.proposeMerge(lhs, rhs, index, finish)
		return
	}
	// Another node may have finished this merge meanwhile (this one is
	// finishing a merge whose coordinator it thought dead), or the range
	// changed: the wait would hold both ranges busy until the deadline.
	if _, ok := s.Get(rhs.ID); !ok {
		finish(kv.Descriptor{}, fmt.Errorf("%w: range %d is gone from this node (merged, or moved away)", ErrBusy, rhs.ID))
		return
	}
	if l, ok := s.Get(lhs.ID); ok {
		if d, ok := l.Descriptor(); ok && d.Generation != lhs.Generation {
			finish(kv.Descriptor{}, fmt.Errorf("%w: range %d changed while waiting to merge (now %v)", ErrBusy, lhs.ID, d))
			return
		}
	}
	if err := s.downReplica(lhs); err != nil {
		// Its replica would not answer: the finisher takes the left
		// range off that node instead (alignForMerge).
		finish(kv.Descriptor{}, err)
		return
	}
	pending := len(lhs.Replicas)
	caught := true
	for _, node := range lhs.Replicas { // each applies the merge with its node's rhs replica
		s.env.ReplicaApplied(node, rhs.ID, callback2(s, func(applied uint64, ok bool) {
			caught = caught && ok && applied >= index
			if pending--; pending > 0 {
				return
			}
			switch {
			case caught:
				s.proposeMerge(lhs, rhs, index, finish)
			case !s.env.Now().Before(deadline):
				finish(kv.Descriptor{}, fmt.Errorf("%w: replicas of range %d did not apply its freeze in time", ErrBusy, rhs.ID))
			default:
				s.env.After(s.cfg.CampaignRetry, func() {
					s.enqueue(func() { s.mergeFrozen(lhs, rhs, index, deadline, finish) })
				})
			}
		}))
	}
}

// proposeMerge proposes the merge of rhs, frozen at index, into lhs.
func (s *Store) proposeMerge(lhs, rhs *kv.Descriptor, index uint64, finish func(kv.Descriptor, error)) {
	s.propose(lhs.ID, kv.MergeCommand(lhs, rhs, index), func(res kv.Result, err error) {
		if err == nil && res.KeyMismatch {
			err = fmt.Errorf("%w: range %d is frozen itself", ErrBusy, lhs.ID)
		}
		if err != nil {
			finish(kv.Descriptor{}, fmt.Errorf("ranges: merge range %d into range %d: %w", rhs.ID, lhs.ID, err))
			return
		}
		merged, ok, err := kv.MergeResult(res)
		if err == nil && !ok {
			err = fmt.Errorf("%w: range %d changed before the merge applied (now %v)", ErrBusy, lhs.ID, &merged)
		}
		if err != nil {
			finish(kv.Descriptor{}, err)
			return
		}
		s.log.Info("ranges merged", "group", lhs.ID, "merged_group", rhs.ID, "desc", merged.String())
		s.metrics.merges.Add(1)
		if !lhs.SameReplicas(rhs) {
			s.metrics.subsetMerges.Add(1)
		}
		if s.failAt(FailMergeApplied) {
			finish(kv.Descriptor{}, fmt.Errorf("ranges: merge of range %d: failure point %s", rhs.ID, FailMergeApplied))
			return
		}
		s.updateMeta([]kv.Descriptor{merged})
		finish(merged, nil)
	})
}

// neighbours is a range this node leads and is not frozen (l), and the
// range here that starts where it ends (r), with their descriptors: a
// pair that may merge.
type neighbours struct {
	l, r   *Replica
	ld, rd *kv.Descriptor
}

// ledNeighbours returns the pairs of neighbours whose left range, one of
// win, this node leads and has not frozen.
func (s *Store) ledNeighbours(win []*Replica) []neighbours {
	var out []neighbours
	for _, l := range win {
		ld, ok := l.Descriptor()
		if !ok || len(ld.End) == 0 || !s.leads(l.ID) {
			continue
		}
		if _, _, frozen := l.SM.Frozen(); frozen {
			continue
		}
		if r := s.startingAt(ld.End); r != nil {
			rd, _ := r.Descriptor()
			out = append(out, neighbours{l: l, r: r, ld: ld, rd: rd})
		}
	}
	return out
}

// finishMerges merges the frozen right neighbour of a range of win this
// node leads whose merge did not finish (its coordinator died). Called by
// Tick.
func (s *Store) finishMerges(win []*Replica) {
	for _, p := range s.ledNeighbours(win) {
		l, r, ld, rd := p.l, p.r, p.ld, p.rd
		_, index, frozen := r.SM.Frozen()
		if !frozen {
			continue
		}
		if s.downReplica(ld) != nil || (!ld.SameReplicas(rd) && !s.subsetMergeable(ld, rd)) {
			// Apart, or one of them on a node down, whose replica would
			// not answer the wait (which would hold both ranges busy for
			// mergeWaitFor, again and again): the merge waits until the
			// node is back, or until the left range is off it.
			s.alignForMerge(ld, rd)
			continue
		}
		if !s.begin(l.ID) {
			continue
		}
		if !s.begin(rd.ID) {
			s.end(l.ID)
			continue
		}
		lhs, rhs := ld.Clone(), rd.Clone()
		s.log.Info("finishing a merge", "group", lhs.ID, "frozen_group", rhs.ID, "index", index)
		s.mergeFrozen(&lhs, &rhs, index, s.env.Now().Add(mergeWaitFor), func(_ kv.Descriptor, err error) {
			s.end(lhs.ID)
			s.end(rhs.ID)
			if err != nil {
				s.log.Debug("finishing a merge did not succeed yet", "group", lhs.ID, "frozen_group", rhs.ID, "err", err)
			}
		})
	}
}

// subsetMergeable reports whether frozen rd may merge into ld on ld's
// replicas alone (kv.Descriptor.VotersWithin): each is one of rd's, on a
// node not down (finishMerges checked), that runs a build that accepts
// such a merge, they are a majority of rd's (subsetAllowed), and rd's
// others are on nodes that take no replica for good or for long
// (unplaced: else alignForMerge gives l a replica there). Those are then
// left out of the merged range. Loop only.
func (s *Store) subsetMergeable(ld, rd *kv.Descriptor) bool {
	if !ld.VotersWithin(rd) {
		return false
	}
	for _, n := range rd.Replicas {
		if !ld.HasReplica(n) && !s.unplaced(n) {
			return false
		}
	}
	return s.subsetAllowed(ld.Replicas, rd)
}

// subsetAllowed reports whether a merge of frozen rd may take place on
// nodes, among rd's replicas, alone: they are a majority of rd's, and
// every one runs a build that accepts it (Config.SubsetMerge). Loop only.
func (s *Store) subsetAllowed(nodes []uint64, rd *kv.Descriptor) bool {
	return 2*len(nodes) > len(rd.Replicas) && s.cfg.SubsetMerge != nil && s.cfg.SubsetMerge(nodes)
}
