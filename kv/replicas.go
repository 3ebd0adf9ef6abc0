package kv

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
	"github.com/flotilla/flotilla/multiraft"
)

// A range's descriptor lists its replicas (voters and learners), and its
// raft group's configuration says the same: a membership change changes
// both in one apply (ApplyMembership), on every replica, or neither. A
// node that applies a change adding it finds itself in the descriptor a
// peer sends (ranges.Store.UnknownGroup starts its replica), and one that
// applies its removal no longer does (the store removes the replica).
//
// A change may carry a plan (EncodeChangePlan): the generation of the
// descriptor it was planned on. Like a split's, it is refused if the
// range changed since, so that of two movers racing one loses, and a
// change never lands on a span other than the one it was planned for.

var _ multiraft.MembershipApplier = (*StateMachine)(nil)

// EncodeChangePlan returns the data of a membership change planned on a
// descriptor of generation gen (multiraft.Host.ChangeMembershipWith).
func EncodeChangePlan(gen uint64) []byte { return binary.AppendUvarint([]byte{1}, gen) }

// decodeChangePlan parses EncodeChangePlan's data; ok false for data that
// is not a plan (none: a change made without one, as tests do).
func decodeChangePlan(data []byte) (gen uint64, ok bool) {
	if len(data) < 2 || data[0] != 1 {
		return 0, false
	}
	gen, n := binary.Uvarint(data[1:])
	return gen, n > 0 && n == len(data)-1
}

// ApplyMembership implements multiraft.MembershipApplier. It refuses a
// change planned on another generation than the descriptor's, and one
// that adds or removes a replica while the range is frozen for a merge
// (the merge takes in the replicas the freeze saw). Otherwise it writes
// the descriptor with the replica added (to Learners too, for a learner),
// promoted (out of Learners) or removed, at the next generation (the meta
// index keeps the newer record of a range by its generation), synced with
// the applied index (also written for a refused change). It refuses a
// voter added as a learner (raft would demote it). A change replayed
// after a crash (at an index applied here: the last one, the engine
// persists the configuration right after) is answered from the
// descriptor: it took effect if the descriptor shows it (a learner added
// is in Learners, a voter added or promoted is in Replicas and not in
// Learners, a node removed is in neither); for a change that changed
// nothing either answer has the same outcome.
func (s *StateMachine) ApplyMembership(index uint64, ch multiraft.Change, data []byte) (bool, error) {
	desc := s.desc.Load()
	if desc == nil || s.noMembership {
		// No state to keep in step: an empty replica is restored from a
		// snapshot that holds the descriptor.
		return true, nil
	}
	if index <= s.applied.Load() {
		learner := slices.Contains(desc.Learners, ch.Node)
		switch ch.Kind {
		case multiraft.AddLearner:
			// Not HasReplica: a refused demotion of a voter would replay
			// as taken, and demote it on this replica alone.
			return learner, nil
		case multiraft.AddVoter, multiraft.PromoteLearner:
			return desc.HasReplica(ch.Node) && !learner, nil
		case multiraft.RemoveMember:
			return !desc.HasReplica(ch.Node), nil
		}
		return true, nil
	}
	next := desc.Clone()
	drop := func(l []uint64) []uint64 { return slices.DeleteFunc(l, func(n uint64) bool { return n == ch.Node }) }
	switch ch.Kind {
	case multiraft.AddLearner:
		if !next.HasReplica(ch.Node) && len(next.Replicas) < MaxReplicas {
			next.Replicas = append(next.Replicas, ch.Node)
			next.Learners = append(next.Learners, ch.Node)
		}
	case multiraft.AddVoter, multiraft.PromoteLearner:
		if !next.HasReplica(ch.Node) && len(next.Replicas) < MaxReplicas {
			next.Replicas = append(next.Replicas, ch.Node)
		}
		next.Learners = drop(next.Learners)
	case multiraft.RemoveMember:
		next.Replicas = drop(next.Replicas)
		next.Learners = drop(next.Learners)
	}
	if len(next.Learners) == 0 {
		next.Learners = nil
	}
	changed := !slices.Equal(next.Replicas, desc.Replicas) || !slices.Equal(next.Learners, desc.Learners)
	take := true
	if gen, ok := decodeChangePlan(data); ok && gen != desc.Generation {
		take = false
	}
	if changed && s.frozen.Load() != nil {
		take = false
	}
	if ch.Kind != multiraft.RemoveMember && !next.HasReplica(ch.Node) {
		take = false // MaxReplicas
	}
	if ch.Kind == multiraft.AddLearner && desc.HasReplica(ch.Node) && !slices.Contains(desc.Learners, ch.Node) {
		take = false // a demotion: raft would make the voter a learner
	}
	changed = changed && take
	if s.destroyed.Load() {
		// Being removed from this node: the answer stands, the record
		// goes with the replica.
		return take, nil
	}
	if changed {
		next.Generation++
	}
	// The held writes go first: the applied record below covers them.
	if err := s.flush(); err != nil {
		return false, err
	}
	b := s.db.NewBatch()
	defer b.Close()
	if changed {
		if err := b.Set(localKey(kindDescriptor, s.id, 0), next.Encode(), nil); err != nil {
			return false, err
		}
	}
	rev := s.revision.Load()
	if err := b.Set(s.appliedKey(), s.appliedValue(index, rev), nil); err != nil {
		return false, err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return false, fmt.Errorf("kv: range %d: commit membership change at %d: %w", s.id, index, err)
	}
	s.persisted = index
	s.applied.Store(index)
	if changed {
		s.desc.Store(&next)
		s.descriptorChanged()
	}
	return take, nil
}

// DestroyMovedReplica deletes range d.ID's replica state from db, and the
// data of its span d (its values and their history): the replica was
// removed from this node by the range's descriptor of generation
// removedBy, and no other range here holds that span (the caller checks),
// so nothing else owns that data (a merged replica's data stays:
// DestroyReplica). keepData keeps the span's data all the same (a range
// here holds part of it by now). In the same batch it leaves a tombstone
// (Tombstone): the replica's raft state, which acknowledged entries of
// the range's log, is gone, and a replica started again empty from a
// descriptor no newer than removedBy could vote in a configuration that
// still counted it, as if its acknowledgements had never been.
func DestroyMovedReplica(db *pebble.DB, d *Descriptor, removedBy uint64, keepData bool) error {
	b := db.NewBatch()
	defer b.Close()
	for _, kind := range allLocalKinds {
		lo, hi := localBounds(kind, d.ID)
		if err := b.DeleteRange(lo, hi, nil); err != nil {
			return err
		}
	}
	if !keepData {
		if err := deleteSpanData(b, d.Start, d.End); err != nil {
			return err
		}
	}
	if err := b.Set(localKey(kindTombstone, d.ID, 0), binary.BigEndian.AppendUint64(nil, removedBy), nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// WriteTombstone records, synced, that range id's replica here was
// removed by the descriptor of generation removedBy, before anything of
// it is deleted: a node that stops half way through the removal finds the
// tombstone newer than the replica's descriptor at its next start, and
// finishes the removal instead of starting the replica (whose raft state
// may be gone, and would be made up again from its state machine's).
func WriteTombstone(db *pebble.DB, id, removedBy uint64) error {
	return db.Set(localKey(kindTombstone, id, 0), binary.BigEndian.AppendUint64(nil, removedBy), pebble.Sync)
}

// deleteSpanData deletes through b the data of the span [start, end):
// every global kind's records and the history.
func deleteSpanData(b *pebble.Batch, start, end []byte) error {
	for _, kind := range globalKinds {
		lo, hi := globalBounds(kind, start, end)
		if err := b.DeleteRange(lo, hi, nil); err != nil {
			return err
		}
	}
	lo, hi := histBounds(start, end)
	return b.DeleteRange(lo, hi, nil)
}

// Tombstone returns the generation of the descriptor that removed range
// id's replica from this node (DestroyMovedReplica); ok false if none did.
// A replica of the range may start here again only from a descriptor of a
// higher generation (a later move back: as a learner, which votes only
// once it caught up).
func Tombstone(db *pebble.DB, id uint64) (gen uint64, ok bool, err error) {
	v, closer, err := db.Get(localKey(kindTombstone, id, 0))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer closer.Close()
	if len(v) != 8 {
		return 0, false, fmt.Errorf("%w: tombstone of range %d", ErrCorrupt, id)
	}
	return binary.BigEndian.Uint64(v), true, nil
}

// SpanKeys counts the records db holds in the span [start, end) (end
// empty: to the end of the keyspace): values, attachments, elections and
// history. For tests and tools that check that a replica's data left a
// node.
func SpanKeys(db *pebble.DB, start, end []byte) (int, error) {
	n := 0
	count := func(lo, hi []byte) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return err
		}
		for valid := it.First(); valid; valid = it.Next() {
			n++
		}
		err = it.Error()
		if cerr := it.Close(); err == nil {
			err = cerr
		}
		return err
	}
	for _, kind := range globalKinds {
		if err := count(globalBounds(kind, start, end)); err != nil {
			return 0, err
		}
	}
	if err := count(histBounds(start, end)); err != nil {
		return 0, err
	}
	return n, nil
}
