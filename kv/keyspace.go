package kv

import (
	"encoding/binary"

	"github.com/flotilla/flotilla/internal/keys"
)

// Key construction. Two shapes (internal/keys): range-local keys are the
// kind, the range ID (8 bytes) and a suffix; global keys are the kind and
// a user key.

const (
	kindData       = byte(keys.Data)
	kindAttached   = byte(keys.Attached)
	kindHistory    = byte(keys.History)
	kindElection   = byte(keys.Election)
	kindApplied    = byte(keys.Applied)
	kindDescriptor = byte(keys.Descriptor)
	kindLease      = byte(keys.Lease)
	kindLeaseKeys  = byte(keys.LeaseKeys)
	kindSession    = byte(keys.Session)
	kindMeta       = byte(keys.Meta)
	kindRangeIDs   = byte(keys.RangeIDs)
	kindFrozen     = byte(keys.Frozen)
	kindRevoked    = byte(keys.Revoked)
	kindAuth       = byte(keys.Auth)
	kindTombstone  = byte(keys.Tombstone)

	// localLen is the length of a range-local key's prefix: kind, range.
	localLen = 9
)

// localKinds are the range-local kinds a range's snapshot carries (the
// applied record and the descriptor travel in its header); globalKinds the
// global ones, within the range's span. allLocalKinds is every range-local
// kind of package kv: what removing a replica deletes.
var (
	localKinds    = []byte{kindLease, kindLeaseKeys, kindSession, kindMeta, kindRangeIDs, kindFrozen, kindRevoked, kindAuth}
	globalKinds   = []byte{kindData, kindAttached, kindElection}
	allLocalKinds = append([]byte{kindApplied, kindDescriptor}, localKinds...)
)

// localKey returns kind, range, then room for extra more bytes.
func localKey(kind byte, rangeID uint64, extra int) []byte {
	k := make([]byte, localLen, localLen+extra)
	k[0] = kind
	binary.BigEndian.PutUint64(k[1:], rangeID)
	return k
}

// localBounds returns the key range of one range-local kind of a range.
func localBounds(kind byte, rangeID uint64) (lower, upper []byte) {
	lower = localKey(kind, rangeID, 0)
	// The bound is where the next range's keys of this kind begin, never
	// the next kind: that would take in every later range (a restore's
	// range delete would wipe them, as the simulation once found).
	if upper = prefixEnd(lower); len(upper) != localLen {
		upper = []byte{kind + 1} // the largest range ID: nothing follows it
	}
	return lower, upper
}

// globalKey returns kind then key.
func globalKey(kind byte, key []byte) []byte {
	k := make([]byte, 1+len(key))
	k[0] = kind
	copy(k[1:], key)
	return k
}

// globalBounds returns the keys of one global kind whose user keys are in
// [start, end) (end empty: to the end of the keyspace).
func globalBounds(kind byte, start, end []byte) (lower, upper []byte) {
	lower = globalKey(kind, start)
	if len(end) == 0 {
		return lower, []byte{kind + 1}
	}
	return lower, globalKey(kind, end)
}

// dataKey is the key of user key key's value.
func dataKey(key []byte) []byte { return globalKey(kindData, key) }

// prefixEnd returns the smallest key greater than every key with prefix p,
// or nil when there is none (p empty or all 0xff).
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// PrefixEnd returns the end of the span of keys that start with prefix:
// the smallest key above all of them; nil (the end of the keyspace) if
// there is none.
func PrefixEnd(prefix []byte) []byte { return prefixEnd(prefix) }
