package ranges

import (
	"bytes"
	"fmt"
	"time"

	"github.com/flotilla/flotilla/kv"
)

// Merging (docs/design.md, "Merges"). From the node that leads the
// left-hand range (LHS), with its right neighbour (RHS) on the same nodes:
//
//  1. freeze the RHS (kv.FreezeCommand): from then on it applies nothing;
//  2. wait until every replica of the RHS applied the freeze (Env.
//     ReplicaApplied): their states are then final, and on disk;
//  3. merge (kv.MergeCommand): every replica of the LHS takes its node's
//     replica of the RHS in, and the node removes that replica (reconcile);
//  4. record the merged descriptor in the meta index.
//
// A frozen RHS never thaws: if the coordinator dies after 1, the leader of
// whichever range ends where the RHS starts finishes the merge (Tick).

// MergeWaitFor bounds how long a merge waits for the RHS's replicas to
// apply the freeze before it gives up for now (the frozen RHS is merged
// later by Tick).
const mergeWaitFor = 30 * time.Second

// Merge merges range id with the range after it and calls done (on the
// Store's loop) with the merged range or an error.
func (s *Store) Merge(id uint64, done func(kv.Descriptor, error)) {
	s.enqueue(func() { s.merge(id, "admin", done) })
}

// merge runs on the Store's loop.
func (s *Store) merge(id uint64, why string, done func(kv.Descriptor, error)) {
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
		fail(fmt.Errorf("%w: the range after range %d (from %q) has no replica here", ErrNotLocal, id, ld.End))
		return
	}
	rd, _ := r.Descriptor()
	if !ld.SameReplicas(rd) {
		fail(fmt.Errorf("%w: ranges %d and %d have different replicas (%v, %v); a merge needs them on the same nodes",
			kv.ErrInvalid, id, rd.ID, ld.Replicas, rd.Replicas))
		return
	}
	if n := len(ld.Learners) + len(rd.Learners); n > 0 {
		// A replica being added (a move) must catch up first: every
		// replica of the RHS applies the freeze before the merge, and a
		// learner that never does (its node died) would hold the frozen
		// RHS, which never thaws, until it came back.
		fail(fmt.Errorf("%w: ranges %d and %d have %d learners; a merge waits until they are voters or gone", ErrBusy, id, rd.ID, n))
		return
	}
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

// mergeFrozen waits until every replica of rhs applied its freeze at
// index (or until deadline), then merges it into lhs. It gives up at once
// if rhs is no longer here or lhs changed (another node merged them).
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
	pending := len(rhs.Replicas)
	caught := true
	for _, node := range rhs.Replicas {
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
		if !ld.SameReplicas(rd) {
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
