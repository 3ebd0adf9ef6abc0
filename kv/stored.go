package kv

import (
	"encoding/binary"
	"fmt"
)

// The stored form of a data key's value.
//
// A value is stored with the revisions a transaction compares on (txn.go):
//
//	[8: mod revision | storedExt][uvarint: create revision][uvarint: version][value]
//
// mod revision is the range revision of the write that set the value;
// create revision, that of the write that created the key (the first put
// after it was absent); version, the count of puts since then (1 for the
// creating put). The top bit of the first word (storedExt) marks this
// form. Values written before it existed are the mod revision then the
// value: they decode with create revision = mod revision and version 1 (their
// history is not known; a key written once reads right).
//
// Revisions stay below 2^63 (a range would need 2^63 writes), so the bit is
// free.

// storedExt marks a stored value that carries its create revision and
// version.
const storedExt = uint64(1) << 63

// storedMeta is what a stored value carries besides the value.
type storedMeta struct {
	Mod, Create, Version uint64
}

// stored returns the stored form of value written at revision rev over a
// key that held a value with revisions prev (found) or none.
func stored(rev uint64, value []byte, found bool, prev storedMeta) []byte {
	m := storedMeta{Mod: rev, Create: rev, Version: 1}
	if found {
		m.Create, m.Version = prev.Create, prev.Version+1
	}
	v := make([]byte, 0, 8+2*binary.MaxVarintLen64+len(value))
	v = binary.BigEndian.AppendUint64(v, m.Mod|storedExt)
	v = binary.AppendUvarint(v, m.Create)
	v = binary.AppendUvarint(v, m.Version)
	return append(v, value...)
}

// metaOfStored returns the revisions of stored value v (nil: absent,
// found false).
func metaOfStored(v []byte) (found bool, m storedMeta, err error) {
	if v == nil {
		return false, storedMeta{}, nil
	}
	m, _, err = decodeStored(v)
	return err == nil, m, err
}

// valueLen returns the length of the value in stored value v (without its
// revisions); all of v past the first word if it does not decode.
func valueLen(v []byte) int {
	if _, val, err := decodeStored(v); err == nil {
		return len(val)
	}
	return max(len(v)-8, 0)
}

// decodeStored parses a stored value; the value aliases v.
func decodeStored(v []byte) (storedMeta, []byte, error) {
	if len(v) < 8 {
		return storedMeta{}, nil, fmt.Errorf("%w: stored value of %d bytes", ErrCorrupt, len(v))
	}
	w := binary.BigEndian.Uint64(v)
	if w&storedExt == 0 {
		return storedMeta{Mod: w, Create: w, Version: 1}, v[8:], nil
	}
	r := reader{b: v[8:]}
	m := storedMeta{Mod: w &^ storedExt, Create: r.uvarint(), Version: r.uvarint()}
	if r.err || m.Version == 0 || m.Create > m.Mod {
		return storedMeta{}, nil, fmt.Errorf("%w: stored value header", ErrCorrupt)
	}
	return m, r.b, nil
}
