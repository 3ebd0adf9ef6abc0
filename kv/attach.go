package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Keys attached to leases.
//
// A put or CAS that carries a lease attaches its key to that lease, which
// must exist in the key's range (a range holds the leases it granted and
// copies of those of the range it split from). Revoking or expiring the
// lease deletes every key of the range attached to it, in the same apply
// and at the revision of the revoke. A put or CAS without a lease, or a
// delete, detaches the key.
//
// Two indexes, written together in the apply's batch, hold it:
//
//	'A' key                   → lease(8)   what a put or delete detaches
//	'K' range(8) lease(8) key → (empty)    what a revoke deletes
//
// Both are part of the range's snapshot. An attachment exists only while
// its key does.

func attachedKey(key []byte) []byte { return globalKey(kindAttached, key) }

// leaseKeysPrefix returns the prefix of the keys attached to lease.
func (s *StateMachine) leaseKeysPrefix(lease uint64) []byte {
	return binary.BigEndian.AppendUint64(localKey(kindLeaseKeys, s.id, 8+64), lease)
}

func (s *StateMachine) leaseKeysKey(lease uint64, key []byte) []byte {
	return append(s.leaseKeysPrefix(lease), key...)
}

// attachment returns the lease key is attached to (0: none).
func (s *StateMachine) attachment(r pebble.Reader, key []byte) (uint64, error) {
	v, ok, err := getRaw(r, attachedKey(key))
	if err != nil || !ok {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("%w: attachment of key %x", ErrCorrupt, key)
	}
	return binary.BigEndian.Uint64(v), nil
}

// anyAttached reports whether r holds any key of the range attached to a
// lease.
func (s *StateMachine) anyAttached(r pebble.Reader) (bool, error) {
	lo, hi := localBounds(kindLeaseKeys, s.id)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return false, err
	}
	found := it.First()
	if err := it.Close(); err != nil {
		return false, err
	}
	return found, nil
}

// setAttachment attaches key to lease (0: detaches it) through b.
func (s *StateMachine) setAttachment(b *pebble.Batch, key []byte, lease uint64) error {
	var old uint64
	if s.mayAttach {
		var err error
		if old, err = s.attachment(b, key); err != nil {
			return err
		}
	}
	if old == lease {
		return nil
	}
	s.mayAttach = true
	if old != 0 {
		if err := b.Delete(s.leaseKeysKey(old, key), nil); err != nil {
			return err
		}
	}
	if lease == 0 {
		return b.Delete(attachedKey(key), nil)
	}
	if err := b.Set(attachedKey(key), binary.BigEndian.AppendUint64(nil, lease), nil); err != nil {
		return err
	}
	return b.Set(s.leaseKeysKey(lease, key), nil, nil)
}

// deleteAttached deletes, through b, every key attached to lease and the
// attachments. It returns how many keys it deleted.
func (s *StateMachine) deleteAttached(b *pebble.Batch, lease, rev uint64) (int, error) {
	lo := s.leaseKeysPrefix(lease)
	it, err := b.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(lo)})
	if err != nil {
		return 0, err
	}
	// Collect first: the batch is written below.
	var keys [][]byte
	for it.First(); it.Valid(); it.Next() {
		keys = append(keys, bytes.Clone(it.Key()[len(lo):]))
	}
	err = it.Error()
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	for _, key := range keys {
		if err := b.Delete(dataKey(key), nil); err != nil {
			return 0, err
		}
		if err := s.recordWrite(b, key, rev, nil); err != nil {
			return 0, err
		}
		if err := b.Delete(attachedKey(key), nil); err != nil {
			return 0, err
		}
		if err := b.Delete(s.leaseKeysKey(lease, key), nil); err != nil {
			return 0, err
		}
	}
	return len(keys), nil
}

// detachSpan detaches every key of [start, end) attached to a lease,
// through b.
func (s *StateMachine) detachSpan(b *pebble.Batch, start, end []byte) error {
	lo, hi := globalBounds(kindAttached, start, end)
	it, err := b.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	type att struct {
		key   []byte
		lease uint64
	}
	var atts []att
	for it.First(); it.Valid(); it.Next() {
		if len(it.Value()) != 8 {
			it.Close()
			return fmt.Errorf("%w: attachment of key %x", ErrCorrupt, it.Key())
		}
		atts = append(atts, att{bytes.Clone(it.Key()[1:]), binary.BigEndian.Uint64(it.Value())})
	}
	err = it.Error()
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	for _, a := range atts {
		if err := b.Delete(s.leaseKeysKey(a.lease, a.key), nil); err != nil {
			return err
		}
	}
	return b.DeleteRange(lo, hi, nil)
}

// leaseExists reports whether lease exists, through r.
func (s *StateMachine) leaseExists(r pebble.Reader, lease uint64) (bool, error) {
	_, ok, err := getRaw(r, s.leaseKey(lease))
	return ok, err
}

// EncodeAttachedQuery returns the query that reads which lease key is
// attached to; decode the answer with DecodeAttachedQuery.
func EncodeAttachedQuery(key []byte) ([]byte, error) {
	if err := CheckKey(key); err != nil {
		return nil, err
	}
	return append([]byte{byte(QueryAttached)}, key...), nil
}

// DecodeAttachedQuery parses the answer to an attachment query: the lease
// (0: none).
func DecodeAttachedQuery(b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("%w: attachment answer", ErrCorrupt)
	}
	return binary.BigEndian.Uint64(b), nil
}

func (s *StateMachine) queryAttached(key []byte) ([]byte, error) {
	l, err := s.attachment(s.db, key)
	if err != nil {
		return nil, err
	}
	return binary.BigEndian.AppendUint64(nil, l), nil
}
