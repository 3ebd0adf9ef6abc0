package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla/flotilla/transport"
)

// Splits.
//
// A split is one command, OpSplit, applied by the range that splits (the
// left-hand side, LHS): it is the commit point. Applying it, every replica
// of the LHS, in the same Pebble batch:
//
//   - shrinks its own descriptor to [Start, key), generation + 1;
//   - creates the right-hand side (RHS), range NewID, [key, End) with the
//     same replicas and generation: its descriptor, its applied record at
//     RangeInitialIndex with the LHS's revision (so revisions stay
//     monotonic per key), a stub of every lease (keys on both sides stay
//     attached; the LHS keeps owning the lease: lease.go), a copy of every
//     client session (a retry of a write the LHS applied before the split
//     gets its first result from the RHS too), and the lease-keys index
//     entries of keys at or after key;
//   - moves no user data: data is keyed by user key, and the RHS owns
//     [key, End) from now on.
//
// Every replica does the same at the same log position, so every replica
// of the RHS starts from the same state at RangeInitialIndex, and its raft
// log starts there (multiraft.StartGroup). From the split's position on,
// the LHS refuses every command and query for keys at or after key
// (KeyMismatch), and only the RHS, once a quorum of its replicas exists,
// can serve them: no key is ever served by both, nor by neither once the
// RHS has a leader.
//
// The split names the LHS generation it expects: a split proposed against
// a descriptor that has changed since (another split, a retry of this one)
// applies nothing.

// RangeInitialIndex is the applied index of a range made by a split: its
// raft log starts after it.
const RangeInitialIndex = 10

// SplitCommand returns the command that splits range desc at key into desc
// and a new range newID. key must be inside desc's span and not its start.
// sticky marks the new boundary as an operator's (Descriptor.Sticky).
func SplitCommand(desc *Descriptor, key []byte, newID uint64, sticky bool) (Command, error) {
	if err := CheckKey(key); err != nil {
		return Command{}, err
	}
	if !desc.Contains(key) || bytes.Equal(key, desc.Start) {
		return Command{}, fmt.Errorf("%w: split key %q is not inside %v", ErrInvalid, key, desc)
	}
	if newID == 0 || newID == desc.ID {
		return Command{}, fmt.Errorf("%w: split of range %d into range %d", ErrInvalid, desc.ID, newID)
	}
	v := binary.BigEndian.AppendUint64(nil, newID)
	v = binary.AppendUvarint(v, desc.Generation)
	if sticky {
		v = append(v, 1)
	} else {
		v = append(v, 0)
	}
	return Command{Op: OpSplit, Key: key, Value: v}, nil
}

// decodeSplit parses a split command's parameters.
func decodeSplit(cmd *Command) (newID, gen uint64, sticky, ok bool) {
	r := reader{b: cmd.Value}
	newID = r.uint64()
	gen = r.uvarint()
	flag := r.byte()
	return newID, gen, flag == 1, !r.err && len(r.b) == 0 && newID != 0 && flag <= 1
}

// SplitResult parses the result of an applied split: the descriptors after
// it (left, right) if it applied; else ok false and the range's descriptor
// (it changed before the split was applied).
func SplitResult(res Result) (left, right Descriptor, ok bool, err error) {
	ds, err := DecodeDescriptors(res.Current)
	switch {
	case err != nil:
		return Descriptor{}, Descriptor{}, false, err
	case res.OK && len(ds) == 2:
		return ds[0], ds[1], true, nil
	case !res.OK && len(ds) == 1:
		return ds[0], Descriptor{}, false, nil
	}
	return Descriptor{}, Descriptor{}, false, fmt.Errorf("%w: split result", ErrCorrupt)
}

// WithSplitHook makes the state machine call fn with the two descriptors
// of each split it applies, twice: with committed false just before the
// split's batch commits (the right-hand range's state is about to exist:
// the Store counts its span as held from then on), and with committed true
// once it is durable (the Store starts the right-hand range's replica). fn
// runs on the worker that applies the range; it must not block and must
// not call the engine.
func WithSplitHook(fn func(left, right Descriptor, committed bool)) Option {
	return func(s *StateMachine) { s.own().Split = fn }
}

// applySplit applies OpSplit through b; on success it returns the new LHS
// descriptor (the caller makes it current after the commit) and records
// the split in fx.
func (s *StateMachine) applySplit(b *pebble.Batch, desc *Descriptor, cmd *Command, rev uint64, fx *effects) (Result, *Descriptor, error) {
	newID, gen, sticky, ok := decodeSplit(cmd)
	if !ok {
		return Result{Err: "malformed split"}, nil, nil
	}
	// A range with learners does not split: the new range's group would
	// start with them as voters (its members are the descriptor's).
	if gen != desc.Generation || !desc.Contains(cmd.Key) || bytes.Equal(cmd.Key, desc.Start) || newID == s.id || len(desc.Learners) > 0 {
		return Result{Current: EncodeDescriptors([]Descriptor{*desc})}, nil, nil
	}
	left := desc.Clone()
	left.End = bytes.Clone(cmd.Key)
	left.Generation++
	right := Descriptor{ID: newID, Start: bytes.Clone(cmd.Key), End: bytes.Clone(desc.End),
		Replicas: append([]uint64(nil), desc.Replicas...), Generation: desc.Generation + 1, Sticky: sticky}
	if err := b.Set(localKey(kindDescriptor, s.id, 0), left.Encode(), nil); err != nil {
		return Result{}, nil, err
	}
	if _, exists, err := loadDescriptor(b, newID); err != nil {
		return Result{}, nil, err
	} else if exists {
		// A replica of the RHS here already has state: it cannot have
		// come from anything but this split (ranges.Store makes no
		// replica of a span another replica here holds), so it is this
		// split's, replayed. Leave it.
		fx.splits = append(fx.splits, [2]Descriptor{left, right})
		return Result{OK: true, Current: EncodeDescriptors([]Descriptor{left, right})}, &left, nil
	}
	if err := s.writeRHS(b, &right, cmd.Key, rev); err != nil {
		return Result{}, nil, err
	}
	fx.splits = append(fx.splits, [2]Descriptor{left, right})
	return Result{OK: true, Current: EncodeDescriptors([]Descriptor{left, right})}, &left, nil
}

// writeRHS writes the initial state of a split's right-hand range through
// b (see the comment at the top).
func (s *StateMachine) writeRHS(b *pebble.Batch, right *Descriptor, key []byte, rev uint64) error {
	id := right.ID
	if err := b.Set(localKey(kindDescriptor, id, 0), right.Encode(), nil); err != nil {
		return err
	}
	// The right half keeps the left's history floor: the history of its
	// keys is the same records.
	applied := encodeApplied(RangeInitialIndex, rev, 0, s.floorWord())
	if err := b.Set(localKey(kindApplied, id, 0), applied, nil); err != nil {
		return err
	}
	// Leases: a stub of each (lease.go).
	if err := s.stubLeases(b, id); err != nil {
		return err
	}
	// Sessions: the in-memory table is the truth (the batch may not have
	// its latest changes yet).
	if err := b.Set(sessionKey(id, 0), encodeClock(s.sessions.clock, s.sessions.lastSweep), nil); err != nil {
		return err
	}
	for sid, rec := range s.sessions.m {
		if err := b.Set(sessionKey(id, sid), rec.encode(), nil); err != nil {
			return err
		}
	}
	// The lease-keys index: the entries of keys at or after key move.
	return copyLocal(b, kindLeaseKeys, s.id, id, func(suffix []byte) (keep, move bool) {
		if len(suffix) < 8 {
			return true, false
		}
		if bytes.Compare(suffix[8:], key) >= 0 {
			return false, true
		}
		return true, false
	})
}

// stubLeases writes into range id a stub of every lease of this range.
func (s *StateMachine) stubLeases(b *pebble.Batch, id uint64) error {
	lo, hi := localBounds(kindLease, s.id)
	it, err := b.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	type stub struct {
		key []byte
		rec leaseRec
	}
	var stubs []stub
	for it.First(); it.Valid(); it.Next() {
		rec, err := decodeLease(it.Value())
		if err != nil {
			it.Close()
			return err
		}
		rec.stub = true
		stubs = append(stubs, stub{append(localKey(kindLease, id, 8), it.Key()[localLen:]...), rec})
	}
	err = it.Error()
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	for _, st := range stubs {
		if err := b.Set(st.key, st.rec.encode(), nil); err != nil {
			return err
		}
	}
	return nil
}

// copyLocal copies the range-local keys of one kind from range from to
// range to through b. With filter, only the keys it says to move are
// written, and those it does not keep are deleted from from.
func copyLocal(b *pebble.Batch, kind byte, from, to uint64, filter func(suffix []byte) (keep, move bool)) error {
	lo, hi := localBounds(kind, from)
	it, err := b.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	type kvp struct{ suffix, value []byte }
	var moves []kvp
	var drops [][]byte
	for it.First(); it.Valid(); it.Next() {
		suffix := bytes.Clone(it.Key()[localLen:])
		keep, move := true, true
		if filter != nil {
			keep, move = filter(suffix)
		}
		if move {
			moves = append(moves, kvp{suffix, bytes.Clone(it.Value())})
		}
		if !keep {
			drops = append(drops, bytes.Clone(it.Key()))
		}
	}
	err = it.Error()
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	for _, m := range moves {
		if err := b.Set(append(localKey(kind, to, len(m.suffix)), m.suffix...), m.value, nil); err != nil {
			return err
		}
	}
	for _, k := range drops {
		if err := b.Delete(k, nil); err != nil {
			return err
		}
	}
	return nil
}

// WithSnapshotGate makes the state machine ask accept before it takes a
// snapshot (multiraft.SnapshotGate), with the snapshot's descriptor: the
// Store refuses one whose span another local replica still holds. accept
// runs on the worker that holds the range; it must not block.
func WithSnapshotGate(accept func(d *Descriptor) bool) Option {
	return func(s *StateMachine) { s.own().SnapshotGate = func(_ uint64, d *Descriptor) bool { return accept(d) } }
}

// AcceptSnapshot implements multiraft.SnapshotGate.
func (s *StateMachine) AcceptSnapshot(data []byte) bool {
	if s.hooks == nil || s.hooks.SnapshotGate == nil {
		return true
	}
	d, err := SnapshotDescriptor(data)
	if err != nil {
		return true // Restore reports it, loudly
	}
	return s.hooks.SnapshotGate(s.id, &d)
}

// SnapshotDescriptor returns the descriptor a snapshot's data carries: the
// data itself, or the file a transport received it into
// (transport.FileMarker).
func SnapshotDescriptor(data []byte) (Descriptor, error) {
	if path, ok := transport.SnapshotFile(data); ok {
		f, err := os.Open(path)
		if err != nil {
			return Descriptor{}, err
		}
		defer f.Close()
		head := make([]byte, snapHeaderLen+binary.MaxVarintLen64+2*MaxKeySize+64+2*MaxReplicas*binary.MaxVarintLen64) // learners too
		n, err := io.ReadFull(f, head)
		if err != nil && err != io.ErrUnexpectedEOF {
			return Descriptor{}, err
		}
		data = head[:n]
	}
	if len(data) < snapHeaderLen || string(data[:len(snapMagic)]) != snapMagic {
		return Descriptor{}, fmt.Errorf("%w: snapshot header", ErrCorrupt)
	}
	r := reader{b: data[snapHeaderLen:]}
	n := r.uvarint()
	if r.err || n > uint64(len(r.b)) {
		return Descriptor{}, fmt.Errorf("%w: snapshot descriptor", ErrCorrupt)
	}
	db := r.b[:n]
	if r.err {
		return Descriptor{}, fmt.Errorf("%w: snapshot descriptor", ErrCorrupt)
	}
	return DecodeDescriptor(db)
}
