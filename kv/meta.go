package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// The meta index.
//
// The meta range (range 1, MetaRangeID) holds one record per range, keyed
// by the end of the range's span, whose value is the range's descriptor:
//
//	'M' 1(8) MetaEnd(end) → descriptor
//
// so that the range holding key k is the first record whose end is above
// k: one seek. Whoever needs to find a key's range (a node forwarding a
// request, a client's range cache) reads it here.
//
// The records always tile the keyspace: every key is covered by exactly
// one record, from the bootstrap on. The index is a cache, written after
// the fact: a split or merge commits in the ranges it changes (their own
// descriptors are the truth, split.go), then OpMetaUpdate records the new
// descriptors here. OpMetaUpdate keeps the tiling whatever order updates
// arrive in, and however many are lost or repeated:
//
//   - A descriptor is recorded unless a record it overlaps has a
//     generation as high or higher: that record is as recent or more
//     (Descriptor.Generation), and the descriptor is dropped.
//   - Every record it overlaps is replaced: the descriptor covers its own
//     span, and the parts of each older record outside that span stay
//     covered by that record, clipped. A clipped record names a range that
//     no longer holds exactly that span; a request sent there is answered
//     with the range's actual descriptor, and the client looks again.
//
// A lost update is repaired: each range's leader checks that the index
// holds its descriptor and records it if not (package ranges).

// MetaRangeID is the ID of the meta range, which also serves the first
// span of user keys.
const MetaRangeID = 1

// MaxMetaUpdate bounds the descriptors of one OpMetaUpdate.
const MaxMetaUpdate = 1024

// metaEnd returns the meta record key of a span that ends at end.
func metaEnd(end []byte) []byte {
	k := localKey(kindMeta, MetaRangeID, 2+len(end))
	if len(end) == 0 {
		return append(k, 0x02) // the end of the keyspace: after every key
	}
	k = append(k, 0x01)
	return append(k, end...)
}

// metaSeek returns the lowest meta record key that can hold key: the
// records at or after it have ends above key.
func metaSeek(key []byte) []byte {
	k := append(metaEnd(key), 0x00) // the immediate successor of key
	if len(key) == 0 {
		k = localKey(kindMeta, MetaRangeID, 2)
		k = append(k, 0x01, 0x00)
	}
	return k
}

// EncodeDescriptors encodes a list of descriptors (a meta update, a meta
// answer).
func EncodeDescriptors(ds []Descriptor) []byte {
	b := binary.AppendUvarint(nil, uint64(len(ds)))
	for i := range ds {
		b = ds[i].appendTo(b)
	}
	return b
}

// minDescriptor is the size of the smallest encoded descriptor: a byte
// each for its ID, generation, the lengths of its bounds, its count of
// replicas, one replica and its flags.
const minDescriptor = 7

// DecodeDescriptors parses EncodeDescriptors' output.
func DecodeDescriptors(b []byte) ([]Descriptor, error) {
	r := reader{b: b}
	n := r.uvarint()
	// A descriptor takes at least minDescriptor bytes: a count the list
	// cannot hold is refused before anything is allocated for it.
	if r.err || n > MaxMetaUpdate*16 || n > uint64(len(r.b)/minDescriptor) {
		return nil, fmt.Errorf("%w: descriptor list", ErrCorrupt)
	}
	out := make([]Descriptor, 0, n)
	for range n {
		d := r.descriptor()
		if r.err {
			return nil, fmt.Errorf("%w: descriptor list", ErrCorrupt)
		}
		out = append(out, d)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: descriptor list trailing bytes", ErrCorrupt)
	}
	return out, nil
}

// metaRecords returns up to limit records from the one that covers key on,
// read through r.
func metaRecords(r pebble.Reader, key []byte, limit int) ([]Descriptor, error) {
	_, hi := localBounds(kindMeta, MetaRangeID)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: metaSeek(key), UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Descriptor
	for valid := it.First(); valid && len(out) < limit; valid = it.Next() {
		d, err := DecodeDescriptor(it.Value())
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, it.Error()
}

// applyMetaUpdate records ds in the meta index through b (see above). It
// returns how many descriptors it recorded.
func (s *StateMachine) applyMetaUpdate(b *pebble.Batch, ds []Descriptor) (uint64, error) {
	var n uint64
	for i := range ds {
		ok, err := metaRecord(b, &ds[i])
		if err != nil {
			return n, err
		}
		if ok {
			n++
		}
	}
	return n, nil
}

// metaRecord records d unless an overlapping record is as recent; true if
// it did.
func metaRecord(b *pebble.Batch, d *Descriptor) (bool, error) {
	var over []Descriptor
	_, hi := localBounds(kindMeta, MetaRangeID)
	it, err := b.NewIter(&pebble.IterOptions{LowerBound: metaSeek(d.Start), UpperBound: hi})
	if err != nil {
		return false, err
	}
	for valid := it.First(); valid; valid = it.Next() {
		e, err := DecodeDescriptor(it.Value())
		if err != nil {
			it.Close()
			return false, err
		}
		if !e.Overlaps(d.Start, d.End) {
			break
		}
		over = append(over, e)
	}
	err = it.Error()
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, err
	}
	for i := range over {
		if over[i].Generation >= d.Generation {
			return false, nil
		}
	}
	for i := range over {
		e := &over[i]
		if err := b.Delete(metaEnd(e.End), nil); err != nil {
			return false, err
		}
		if bytes.Compare(e.Start, d.Start) < 0 {
			left := e.Clone()
			left.End = bytes.Clone(d.Start)
			if err := b.Set(metaEnd(left.End), left.Encode(), nil); err != nil {
				return false, err
			}
		}
		if len(d.End) > 0 && (len(e.End) == 0 || bytes.Compare(d.End, e.End) < 0) {
			right := e.Clone()
			right.Start = bytes.Clone(d.End)
			if err := b.Set(metaEnd(right.End), right.Encode(), nil); err != nil {
				return false, err
			}
		}
	}
	return true, b.Set(metaEnd(d.End), d.Encode(), nil)
}

// allocRangeID allocates the next range ID through b.
func allocRangeID(b *pebble.Batch) (uint64, error) {
	k := localKey(kindRangeIDs, MetaRangeID, 0)
	v, ok, err := getRaw(b, k)
	if err != nil {
		return 0, err
	}
	next := uint64(MetaRangeID + 1)
	if ok {
		if len(v) != 8 {
			return 0, fmt.Errorf("%w: range ID counter", ErrCorrupt)
		}
		next = binary.BigEndian.Uint64(v)
	}
	return next, b.Set(k, binary.BigEndian.AppendUint64(nil, next+1), nil)
}

// Bootstrap writes the initial state of range d's replica into db: its
// descriptor and, for the meta range, the meta index of every initial
// range (all, which must tile the keyspace) and the next range ID. Every
// initial replica of a range must be bootstrapped with the same arguments:
// this state is the range's state before its first log entry. It does
// nothing if the replica already has a descriptor.
func Bootstrap(db *pebble.DB, d Descriptor, all []Descriptor) error {
	return BootstrapMany(db, []Descriptor{d}, all)
}

// BootstrapMany is Bootstrap for each of ds, in batches of at most
// bootstrapChunk records with a sync each (a node bootstrapping 10,000
// ranges synced 10,000 times). A descriptor already written is skipped.
// An invalid descriptor fails before anything is written; a failed write
// may leave some ranges written, and a retry writes the others: each
// range's descriptor is one record, and the meta range's descriptor is
// written after its index, so that a meta range found written has all of
// it.
func BootstrapMany(db *pebble.DB, ds []Descriptor, all []Descriptor) error {
	for i := range ds {
		if err := ds[i].check(); err != nil {
			return err
		}
		if ds[i].ID == MetaRangeID {
			if err := checkTiling(all); err != nil {
				return err
			}
		}
	}
	b := db.NewIndexedBatch()
	defer func() { b.Close() }()
	staged := 0
	set := func(key, value []byte) error {
		if err := b.Set(key, value, nil); err != nil {
			return err
		}
		if staged++; staged < bootstrapChunk {
			return nil
		}
		staged = 0
		if err := b.Commit(pebble.Sync); err != nil {
			return err
		}
		b.Close()
		b = db.NewIndexedBatch()
		return nil
	}
	for i := range ds {
		d := &ds[i]
		if _, ok, err := loadDescriptor(b, d.ID); err != nil || ok {
			if err != nil {
				return err
			}
			continue
		}
		if d.ID == MetaRangeID {
			var maxID uint64
			for i := range all {
				maxID = max(maxID, all[i].ID)
				if err := set(metaEnd(all[i].End), all[i].Encode()); err != nil {
					return err
				}
			}
			if err := set(localKey(kindRangeIDs, MetaRangeID, 0), binary.BigEndian.AppendUint64(nil, maxID+1)); err != nil {
				return err
			}
		}
		if err := set(localKey(kindDescriptor, d.ID, 0), d.Encode()); err != nil {
			return err
		}
	}
	if b.Empty() {
		return nil
	}
	return b.Commit(pebble.Sync)
}

// bootstrapChunk is the most records BootstrapMany writes in one batch. A
// batch past half of Pebble's memtable goes in as a "flushable batch",
// which Pebble kept in memory after it was flushed (the bootstrap of 10,000
// ranges in one batch held 1.3 MB of heap for good; BENCHMARKS.md,
// "Quiescence: the idle floor and memory, later"). A record is about 0.1
// KiB.
const bootstrapChunk = 4096

// checkTiling checks that ds, in order, tile the keyspace.
func checkTiling(ds []Descriptor) error {
	var at []byte
	for i := range ds {
		if err := ds[i].check(); err != nil {
			return err
		}
		if !bytes.Equal(ds[i].Start, at) || (i < len(ds)-1 && len(ds[i].End) == 0) {
			return fmt.Errorf("%w: descriptors do not tile the keyspace at %v", ErrInvalid, &ds[i])
		}
		at = ds[i].End
	}
	if len(ds) == 0 || len(at) != 0 {
		return fmt.Errorf("%w: descriptors do not reach the end of the keyspace", ErrInvalid)
	}
	return nil
}

// loadDescriptor reads range id's descriptor from r.
func loadDescriptor(r pebble.Reader, id uint64) (Descriptor, bool, error) {
	v, closer, err := r.Get(localKey(kindDescriptor, id, 0))
	if errors.Is(err, pebble.ErrNotFound) {
		return Descriptor{}, false, nil
	}
	if err != nil {
		return Descriptor{}, false, err
	}
	defer closer.Close()
	d, err := DecodeDescriptor(v)
	return d, err == nil, err
}

// LocalDescriptor returns the descriptor of range id's replica in db,
// and false if db holds none.
func LocalDescriptor(db *pebble.DB, id uint64) (Descriptor, bool, error) {
	return loadDescriptor(db, id)
}

// LocalDescriptors returns the descriptor of every range with a replica
// in db, by ascending ID: the ranges a node restarts.
func LocalDescriptors(db *pebble.DB) ([]Descriptor, error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{kindDescriptor}, UpperBound: []byte{kindDescriptor + 1}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Descriptor
	for it.First(); it.Valid(); it.Next() {
		d, err := DecodeDescriptor(it.Value())
		if err != nil {
			return nil, err
		}
		if len(it.Key()) != localLen || binary.BigEndian.Uint64(it.Key()[1:]) != d.ID {
			return nil, fmt.Errorf("%w: descriptor key %x holds range %d", ErrCorrupt, it.Key(), d.ID)
		}
		out = append(out, d)
	}
	return out, it.Error()
}
