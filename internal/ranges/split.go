package ranges

import (
	"errors"
	"fmt"

	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
)

// Splitting (docs/design.md, "Splits"). The protocol, from the node that
// leads the range:
//
//  1. allocate the new range's ID from the meta range (OpAllocRangeID; an
//     ID lost to a failure later is never reused, and costs nothing);
//  2. propose the split to the range (kv.SplitCommand): the commit point.
//     Every replica applies it at the same log position, shrinks its span
//     and writes the new range's initial state in the same batch; its
//     split hook then starts the new range's replica on the node
//     (onSplit), and the node that leads the left half campaigns for the
//     right one;
//  3. record both descriptors in the meta index (OpMetaUpdate). If this
//     step is lost (a crash, a leader change), the meta index still tiles
//     the keyspace with the older descriptor, whose range answers for the
//     keys it gave away that it does not hold them; and the new ranges'
//     leaders record themselves (repairMeta).
//
// A crash between 1 and 2 leaves an unused ID; between 2 and 3, the repair.
// A split proposed twice applies once: it names the generation it expects.

// The Store's failure points (Config.FailPoint).
const (
	// FailSplitAllocated: the new range's ID is allocated, the split not
	// proposed.
	FailSplitAllocated = "split-allocated"
	// FailSplitApplied: the split applied, the meta index not updated.
	FailSplitApplied = "split-applied"
	// FailMergeFrozen: the right-hand range is frozen, not merged.
	FailMergeFrozen = "merge-frozen"
	// FailMergeApplied: the merge applied, the meta index not updated.
	FailMergeApplied = "merge-applied"
)

// failAt reports whether the failure point name fires.
func (s *Store) failAt(name string) bool {
	return s.cfg.FailPoint != nil && s.cfg.FailPoint(name) != nil
}

// ErrBusy: the range is already splitting or merging.
var ErrBusy = errors.New("ranges: range busy")

// ErrNotLocal: this node has no initialized replica of the range.
var ErrNotLocal = errors.New("ranges: no local replica")

// Split splits range id at key (nil: the key that halves its data), as an
// operator asks (the new boundary is sticky: the merge queue leaves it),
// and calls done (on the Store's loop) with the two halves, or an error.
func (s *Store) Split(id uint64, key []byte, done func(left, right kv.Descriptor, err error)) {
	s.enqueue(func() { s.split(id, key, "admin", done) })
}

// SplitUnsticky is Split, but the new boundary is not sticky, as those of
// the split queue's splits: the merge queue merges the two halves again
// once both are small and cold. The simulation splits with it (its
// workload is too small to split ranges by load often).
func (s *Store) SplitUnsticky(id uint64, key []byte, done func(left, right kv.Descriptor, err error)) {
	s.enqueue(func() { s.split(id, key, "unsticky", done) })
}

// split runs on the Store's loop.
func (s *Store) split(id uint64, key []byte, why string, done func(left, right kv.Descriptor, err error)) {
	fail := func(err error) { done(kv.Descriptor{}, kv.Descriptor{}, err) }
	r, ok := s.Get(id)
	if !ok {
		fail(fmt.Errorf("%w: range %d", ErrNotLocal, id))
		return
	}
	desc, ok := r.Descriptor()
	if !ok {
		fail(fmt.Errorf("%w: range %d is not initialized here", ErrNotLocal, id))
		return
	}
	if key == nil {
		k, ok, err := r.SM.SplitKey()
		if err != nil {
			fail(err)
			return
		}
		if !ok {
			fail(fmt.Errorf("%w: range %d has too few keys to split", kv.ErrInvalid, id))
			return
		}
		key = k
	}
	sticky := why == "admin"
	if _, err := kv.SplitCommand(desc, key, id+1, sticky); err != nil {
		fail(err)
		return
	}
	if !s.begin(id) {
		fail(fmt.Errorf("%w: range %d", ErrBusy, id))
		return
	}
	d := desc.Clone()
	finish := func(left, right kv.Descriptor, err error) {
		s.end(id)
		done(left, right, err)
	}
	s.propose(kv.MetaRangeID, kv.Command{Op: kv.OpAllocRangeID}, func(res kv.Result, err error) {
		if err != nil {
			finish(kv.Descriptor{}, kv.Descriptor{}, fmt.Errorf("ranges: allocate a range ID: %w", err))
			return
		}
		newID := res.Count
		if s.failAt(FailSplitAllocated) {
			finish(kv.Descriptor{}, kv.Descriptor{}, fmt.Errorf("ranges: split of range %d: failure point %s", id, FailSplitAllocated))
			return
		}
		cmd, err := kv.SplitCommand(&d, key, newID, sticky)
		if err != nil {
			finish(kv.Descriptor{}, kv.Descriptor{}, err)
			return
		}
		s.propose(id, cmd, func(res kv.Result, err error) {
			if err == nil && res.KeyMismatch {
				err = fmt.Errorf("%w: split key %q is not in range %d any more", ErrBusy, key, id)
			}
			if err != nil {
				finish(kv.Descriptor{}, kv.Descriptor{}, fmt.Errorf("ranges: split range %d: %w", id, err))
				return
			}
			left, right, ok, err := kv.SplitResult(res)
			if err != nil || !ok {
				if err == nil {
					err = fmt.Errorf("%w: range %d changed before the split applied (now %v)", ErrBusy, id, &left)
				}
				finish(kv.Descriptor{}, kv.Descriptor{}, err)
				return
			}
			s.log.Info("range split", "group", id, "new_group", right.ID, "key", fmt.Sprintf("%q", key), "why", why,
				"left", left.String(), "right", right.String())
			s.metrics.splits.Add(1)
			if s.failAt(FailSplitApplied) {
				finish(kv.Descriptor{}, kv.Descriptor{}, fmt.Errorf("ranges: split of range %d: failure point %s", id, FailSplitApplied))
				return
			}
			s.updateMeta([]kv.Descriptor{left, right})
			finish(left, right, nil)
		})
	})
}

// begin marks range id busy (splitting or merging); false if it was.
func (s *Store) begin(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.busy[id] {
		return false
	}
	s.mu.busy[id] = true
	return true
}

func (s *Store) end(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.mu.busy, id)
}

// propose encodes cmd and proposes it through the Env; done runs on the
// Store's loop with the decoded result.
func (s *Store) propose(id uint64, cmd kv.Command, done func(kv.Result, error)) {
	cmd.Time = s.env.Now().UnixMilli()
	b, err := cmd.Encode()
	if err != nil {
		done(kv.Result{}, err)
		return
	}
	s.env.Propose(id, b, callback2(s, func(out []byte, err error) {
		if err != nil {
			done(kv.Result{}, err)
			return
		}
		res, err := kv.DecodeResult(out)
		done(res, err)
	}))
}

// updateMeta records ds in the meta index. A failure is logged: the ranges'
// leaders repair the index (repairMeta).
func (s *Store) updateMeta(ds []kv.Descriptor) {
	if s.cfg.LoseMetaUpdates {
		return
	}
	s.propose(kv.MetaRangeID, kv.Command{Op: kv.OpMetaUpdate, Value: kv.EncodeDescriptors(ds)}, func(_ kv.Result, err error) {
		if err != nil {
			s.log.Info("meta index update failed; the ranges' leaders will repair it", "err", err)
		}
	})
}

// onSplit runs on every replica's node after its replica of left applied a
// split (kv.WithSplitHook, via the loop): it starts the replica of right,
// and the node that leads left campaigns for right, so that the new range
// has a leader at once instead of after an election timeout.
func (s *Store) onSplit(left, right kv.Descriptor) {
	s.load.forget(left.ID)
	s.queueState(left.ID).born = s.ticks
	s.queueState(right.ID).born = s.ticks
	if _, ok := s.Get(right.ID); !ok {
		if _, err := s.start(right.ID, right.Replicas); err != nil {
			if errors.Is(err, multiraft.ErrStopped) {
				return // the node is stopping; it starts the range when it restarts
			}
			s.fatal(fmt.Errorf("ranges: start range %d made by a split of range %d: %w", right.ID, left.ID, err))
			return
		}
	}
	s.mu.Lock()
	delete(s.mu.announced, right.ID)
	s.mu.Unlock()
	if l, _, err := s.cfg.Host.Leader(left.ID); err == nil && l == s.cfg.NodeID {
		s.campaign(right.ID, left.ID, 0)
	}
}

// maxCampaigns bounds how often a node campaigns for a new range.
const maxCampaigns = 10

// campaign makes this node's replica of a new range campaign, and again
// every CampaignRetry while the range has no leader and this node still
// leads the range it split from: the first campaign often reaches the
// other replicas before they applied the split (their replica of the new
// range does not exist yet, and the vote requests are dropped), and raft
// alone would retry only after an election timeout, with the new range's
// keys waiting.
func (s *Store) campaign(id, parent uint64, n int) {
	if l, _, err := s.cfg.Host.Leader(id); err != nil || l != 0 || n >= maxCampaigns || !s.leads(parent) {
		return
	}
	_ = s.cfg.Host.Campaign(id)
	s.env.After(s.cfg.CampaignRetry, func() { s.enqueue(func() { s.campaign(id, parent, n+1) }) })
}
