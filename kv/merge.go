package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// Merges.
//
// A merge joins a range (the left-hand side, LHS) and the range that
// starts where it ends (RHS), with the same replicas, into the LHS. Since
// StateMachineVersion 1 the LHS's replicas may be a subset of the RHS's
// (Descriptor.VotersWithin): the RHS's replicas on other nodes are left
// out of the merged range, and their nodes remove them. (A frozen RHS
// cannot change its replicas, so one with a replica on a node gone for
// good merges once the LHS is off that node.) Two commands:
//
//  1. OpFreeze, applied by the RHS: from its log position on, the RHS
//     applies nothing more (every command and query is refused, as for a
//     key it does not hold), and the batch that freezes it is synced, so
//     each replica's state as of the freeze is durable once applied. The
//     freeze names the LHS and the RHS generation it expects.
//  2. OpMerge, applied by the LHS once every replica of the RHS on the
//     LHS's nodes applied the freeze (the coordinator asks each: package
//     ranges): every LHS
//     replica takes its own node's replica of the RHS, final and on disk,
//     into the LHS in one synced batch: its span, leases (a lease in both
//     is one lease, a split's stub of the other; the merged one owns it if
//     either did), its pending lease revocations, client sessions (merged: the union
//     of their results, the higher floor), the lease-key index, and the
//     higher revision. It marks the RHS replica merged; the node then
//     removes it (ranges.Store).
//
// A replica of the LHS whose node's RHS replica has not applied the freeze
// cannot apply the merge the same way as the others: it stops the node
// (the coordinator's wait makes this impossible, and the simulation plants
// a merge that does not wait to show that it is caught).
//
// StateMachineVersion is what this build's state machine accepts, for a
// proposer that must not propose what a replica of another build would
// refuse while this one applies it (the replicas would diverge). It rises
// with each such change: 1, a merge of an LHS whose replicas are a subset
// of the frozen RHS's (before, the same set only). A node gossips its own
// (server); a proposer makes such a change only once every replica's node
// has gossiped a version that accepts it.
const StateMachineVersion = 1

// A frozen RHS whose merge never happened (its coordinator died) is merged
// by its leader into whichever range ends where it starts (package
// ranges): a frozen range only ever merges, it never thaws.

// FreezeCommand returns the command that freezes range rhs for a merge
// into range into.
func FreezeCommand(rhs *Descriptor, into uint64) Command {
	v := binary.AppendUvarint(nil, rhs.Generation)
	v = binary.BigEndian.AppendUint64(v, into)
	return Command{Op: OpFreeze, Value: v}
}

// MergeCommand returns the command, for range lhs, that merges range rhs
// (frozen at freezeIndex) into it.
func MergeCommand(lhs, rhs *Descriptor, freezeIndex uint64) Command {
	v := binary.AppendUvarint(nil, lhs.Generation)
	v = binary.AppendUvarint(v, freezeIndex)
	v = rhs.appendTo(v)
	return Command{Op: OpMerge, Value: v}
}

// decodeFreeze parses the value of a freeze command (FreezeCommand): the
// generation it expects of the range, and the range it merges into.
func decodeFreeze(v []byte) (gen, into uint64, ok bool) {
	r := reader{b: v}
	gen, into = r.uvarint(), r.uint64()
	return gen, into, !r.err && len(r.b) == 0 && into != 0
}

// decodeMerge parses the value of a merge command (MergeCommand): the
// generation it expects of the LHS, the RHS's freeze index and its
// descriptor.
func decodeMerge(v []byte) (lgen, freeze uint64, rhs Descriptor, ok bool) {
	r := reader{b: v}
	lgen, freeze = r.uvarint(), r.uvarint()
	rhs = r.descriptor()
	return lgen, freeze, rhs, !r.err && len(r.b) == 0
}

// FreezeResult parses the result of a freeze: the index it applied at and
// the frozen range's descriptor; ok false if it did not apply (the range
// changed, or is frozen already: index then says where, 0 if not frozen).
func FreezeResult(res Result) (index uint64, desc Descriptor, ok bool, err error) {
	ds, err := DecodeDescriptors(res.Current)
	if err != nil || len(ds) != 1 {
		return 0, Descriptor{}, false, fmt.Errorf("%w: freeze result", ErrCorrupt)
	}
	return res.Count, ds[0], res.OK, nil
}

// MergeResult parses the result of a merge: the merged descriptor, or ok
// false and the LHS's descriptor if it did not apply.
func MergeResult(res Result) (Descriptor, bool, error) {
	ds, err := DecodeDescriptors(res.Current)
	if err != nil || len(ds) != 1 {
		return Descriptor{}, false, fmt.Errorf("%w: merge result", ErrCorrupt)
	}
	return ds[0], res.OK, nil
}

// frozenRec is a range's freeze record.
type frozenRec struct {
	into, index uint64
	merged      bool
}

func (f frozenRec) encode() []byte {
	b := binary.BigEndian.AppendUint64(nil, f.into)
	b = binary.BigEndian.AppendUint64(b, f.index)
	if f.merged {
		return append(b, 1)
	}
	return append(b, 0)
}

func loadFrozen(r pebble.Reader, id uint64) (frozenRec, bool, error) {
	v, ok, err := getRaw(r, localKey(kindFrozen, id, 0))
	if err != nil || !ok {
		return frozenRec{}, false, err
	}
	if len(v) != 17 || v[16] > 1 {
		return frozenRec{}, false, fmt.Errorf("%w: freeze record of range %d", ErrCorrupt, id)
	}
	return frozenRec{into: binary.BigEndian.Uint64(v), index: binary.BigEndian.Uint64(v[8:]), merged: v[16] == 1}, true, nil
}

// Frozen reports whether the range is frozen for a merge, into which range,
// and at which index.
func (s *StateMachine) Frozen() (into, index uint64, frozen bool) {
	f := s.frozen.Load()
	if f == nil {
		return 0, 0, false
	}
	return f.into, f.index, true
}

// applyFreeze applies OpFreeze at index through b.
func (s *StateMachine) applyFreeze(b *pebble.Batch, desc *Descriptor, cmd *Command, index uint64, fx *effects) (Result, error) {
	gen, into, ok := decodeFreeze(cmd.Value)
	if !ok || into == s.id {
		return Result{Err: "malformed freeze"}, nil
	}
	cur := EncodeDescriptors([]Descriptor{*desc})
	if f := s.frozen.Load(); f != nil {
		return Result{Count: f.index, Current: cur}, nil
	}
	if gen != desc.Generation || len(desc.Learners) > 0 {
		// Changed since the merge was planned, or being added to: a
		// learner might never apply the freeze (replicas.go).
		return Result{Current: cur}, nil
	}
	f := frozenRec{into: into, index: index}
	if err := b.Set(localKey(kindFrozen, s.id, 0), f.encode(), nil); err != nil {
		return Result{}, err
	}
	fx.frozen = &f
	return Result{OK: true, Count: index, Current: cur}, nil
}

// applyMerge applies OpMerge through b: it takes this node's replica of the
// RHS into the LHS (see the comment at the top). It returns the merged
// descriptor, or nil if the merge does not apply.
func (s *StateMachine) applyMerge(b *pebble.Batch, desc *Descriptor, cmd *Command, rev *uint64, fx *effects) (Result, *Descriptor, error) {
	lgen, freeze, rhs, ok := decodeMerge(cmd.Value)
	if !ok {
		return Result{Err: "malformed merge"}, nil, nil
	}
	refuse := Result{Current: EncodeDescriptors([]Descriptor{*desc})}
	if lgen != desc.Generation || len(desc.End) == 0 || !bytes.Equal(desc.End, rhs.Start) || rhs.ID == s.id || !desc.VotersWithin(&rhs) {
		return refuse, nil, nil
	}
	// This node's replica of the RHS, as of its freeze: on disk (the
	// freeze synced it).
	local, ok, err := loadDescriptor(b, rhs.ID)
	if err != nil {
		return Result{}, nil, err
	}
	f, frozen, err := loadFrozen(b, rhs.ID)
	if err != nil {
		return Result{}, nil, err
	}
	applied, rrev, rfloor, err := loadApplied(b, rhs.ID)
	if err != nil {
		return Result{}, nil, err
	}
	// (The freeze names the range it was meant for, but a frozen range may
	// merge into whichever range ends where it starts: the one it was
	// frozen for may have split since.)
	if !ok || !local.Equal(&rhs) || !frozen || f.merged || f.index != freeze || applied < freeze {
		// Every replica of the RHS on the LHS's nodes had applied the
		// freeze before the merge was proposed; this one has not (or has
		// another state):
		// merging here would diverge from the other replicas.
		return Result{}, nil, fmt.Errorf("%w: range %d cannot merge range %d at freeze index %d: the replica here has descriptor %v (%v), freeze %+v (%v), applied %d",
			ErrCorrupt, s.id, rhs.ID, freeze, &local, ok, f, frozen, applied)
	}
	merged := desc.Clone()
	merged.End = bytes.Clone(rhs.End)
	merged.Generation = max(desc.Generation, rhs.Generation) + 1
	if err := b.Set(localKey(kindDescriptor, s.id, 0), merged.Encode(), nil); err != nil {
		return Result{}, nil, err
	}
	if err := s.mergeLeases(b, rhs.ID, fx); err != nil {
		return Result{}, nil, err
	}
	if err := s.mergeSessions(b, rhs.ID); err != nil {
		return Result{}, nil, err
	}
	if err := copyLocal(b, kindLeaseKeys, rhs.ID, s.id, nil); err != nil {
		return Result{}, nil, err
	}
	if err := copyLocal(b, kindRevoked, rhs.ID, s.id, nil); err != nil {
		return Result{}, nil, err
	}
	if _, err := s.anyAttached(b); err == nil {
		s.mayAttach = true // the RHS may have had some: look them up from now on
	}
	*rev = max(*rev, rrev)
	// The merged range keeps the history both halves kept: from the
	// higher floor on.
	s.floor.Store(max(s.floor.Load(), rfloor))
	// The RHS replica here is merged: the node removes it, and does not
	// start it again after a restart.
	f.merged = true
	if err := b.Set(localKey(kindFrozen, rhs.ID, 0), f.encode(), nil); err != nil {
		return Result{}, nil, err
	}
	if err := b.Delete(localKey(kindDescriptor, rhs.ID, 0), nil); err != nil {
		return Result{}, nil, err
	}
	fx.merged = &merged
	return Result{OK: true, Current: EncodeDescriptors([]Descriptor{merged})}, &merged, nil
}

// loadApplied reads range id's applied index, revision and history floor.
func loadApplied(r pebble.Reader, id uint64) (applied, rev, floor uint64, err error) {
	v, ok, err := getRaw(r, localKey(kindApplied, id, 0))
	if err != nil || !ok {
		return 0, 0, 0, err
	}
	if len(v) != 24 && len(v) != 32 {
		return 0, 0, 0, fmt.Errorf("%w: applied record of range %d", ErrCorrupt, id)
	}
	floor, _ = appliedFloor(v)
	return binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:]), floor, nil
}

// mergeLeases takes the leases of range from into this range: a lease both
// have (a split copied it) keeps the union of the elections it campaigns
// in.
func (s *StateMachine) mergeLeases(b *pebble.Batch, from uint64, fx *effects) error {
	lo, hi := localBounds(kindLease, from)
	it, err := b.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	type lease struct {
		id  uint64
		rec leaseRec
	}
	var ls []lease
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		rec, err := decodeLease(it.Value())
		if err != nil || len(k) != localLen+8 {
			it.Close()
			return fmt.Errorf("%w: lease key %x", ErrCorrupt, k)
		}
		ls = append(ls, lease{binary.BigEndian.Uint64(k[localLen:]), rec})
	}
	err = it.Error()
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	for _, l := range ls {
		mine, found, err := s.loadLease(b, l.id)
		if err != nil {
			return err
		}
		if found {
			for _, n := range l.rec.names {
				if !slices.ContainsFunc(mine.names, func(m []byte) bool { return bytes.Equal(m, n) }) {
					mine.names = append(mine.names, n)
				}
			}
			mine.stub = mine.stub && l.rec.stub // one of them may own it
			l.rec = mine
		}
		if err := b.Set(s.leaseKey(l.id), l.rec.encode(), nil); err != nil {
			return err
		}
		if !l.rec.stub {
			fx.lease(l.id, l.rec.ttl)
		}
	}
	return nil
}

// mergeSessions takes the client sessions of range from into this range's
// table: a session both have keeps the higher floor and the union of the
// results above it (a write applies in one range only, but a split copies
// a session's results to both halves); the clock is the later one.
func (s *StateMachine) mergeSessions(b *pebble.Batch, from uint64) error {
	var other sessionTable
	other.init()
	if err := other.load(b, from); err != nil {
		return err
	}
	t := &s.sessions
	if other.clock > t.clock {
		t.clock, t.lastSweep = other.clock, max(t.lastSweep, other.lastSweep)
		t.touch(0)
	}
	for id, rec := range other.m {
		mine := t.m[id]
		if mine == nil {
			t.put(id, rec)
			t.touch(id)
			continue
		}
		floor := max(mine.floor, rec.floor)
		merged := &sessionRec{floor: floor, touched: max(mine.touched, rec.touched)}
		for _, rs := range [][]seqResult{mine.results, rec.results} {
			for _, e := range rs {
				if e.seq < floor {
					continue
				}
				if _, ok := merged.find(e.seq); !ok {
					merged.add(e.seq, e.res)
				}
			}
		}
		t.put(id, merged)
		t.touch(id)
	}
	return nil
}

// DestroyReplica deletes the state of range id's replica in db that package
// kv keeps under the range's ID (not the data of its span, which belongs to
// whichever range holds it now). The caller has stopped the replica
// (StateMachine.Destroy) and removes its raft state.
func DestroyReplica(db *pebble.DB, id uint64) error {
	b := db.NewBatch()
	defer b.Close()
	for _, kind := range allLocalKinds {
		lo, hi := localBounds(kind, id)
		if err := b.DeleteRange(lo, hi, nil); err != nil {
			return err
		}
	}
	return b.Commit(pebble.Sync)
}

// MergedReplicas returns the ranges whose replicas in db were merged into
// another range and still await their removal (a node stopped between the
// merge and the removal).
func MergedReplicas(db *pebble.DB) ([]uint64, error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{kindFrozen}, UpperBound: []byte{kindFrozen + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []uint64
	for it.First(); it.Valid(); it.Next() {
		v := it.Value()
		if len(it.Key()) == localLen && len(v) == 17 && v[16] == 1 {
			out = append(out, binary.BigEndian.Uint64(it.Key()[1:]))
		}
	}
	return out, it.Error()
}

// Destroy stops the state machine for good: from now on it applies
// nothing and writes nothing (its replica is being removed), and answers
// every query as a range that holds no key. Called by the node removing
// the replica, from any goroutine.
func (s *StateMachine) Destroy() { s.destroyed.Store(true) }
