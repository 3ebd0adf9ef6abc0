package kv

import (
	"encoding/binary"
	"fmt"
)

// QueryKind is the first byte of a query: what it asks. The Encode
// functions write it; StateMachine.Query dispatches on it.
type QueryKind byte

// Query kinds.
const (
	// QueryGet reads one key (EncodeGet).
	QueryGet QueryKind = 'g'
	// QueryScan lists keys by prefix (EncodeScan).
	QueryScan QueryKind = 's'
	// QueryLease reads a lease's TTL (EncodeLeaseQuery).
	QueryLease QueryKind = 'l'
	// QueryElection reads an election (EncodeElectionQuery).
	QueryElection QueryKind = 'e'
	// QueryAttached reads the lease a key is attached to
	// (EncodeAttachedQuery).
	QueryAttached QueryKind = 'A'
)

// KeyValue is one key as a query returns it. The caller owns the slices.
type KeyValue struct {
	Key      []byte
	Value    []byte
	Revision uint64
}

// EncodeGet returns the query that reads key.
func EncodeGet(key []byte) ([]byte, error) {
	if err := CheckKey(key); err != nil {
		return nil, err
	}
	return append([]byte{byte(QueryGet)}, key...), nil
}

// DecodeGet parses the answer to a get query.
func DecodeGet(b []byte) (found bool, kv KeyValue, err error) {
	if len(b) < 9 || b[0] > 1 {
		return false, KeyValue{}, fmt.Errorf("%w: get answer", ErrCorrupt)
	}
	if b[0] == 0 {
		return false, KeyValue{}, nil
	}
	return true, KeyValue{Revision: binary.BigEndian.Uint64(b[1:]), Value: b[9:]}, nil
}

// EncodeScan returns the query that lists up to limit keys starting with
// prefix (every key if prefix is empty), in key order. limit 0 means
// DefaultScanLimit; at most MaxScanLimit.
func EncodeScan(prefix []byte, limit int) ([]byte, error) {
	if limit == 0 {
		limit = DefaultScanLimit
	}
	if limit < 0 || limit > MaxScanLimit {
		return nil, fmt.Errorf("%w: scan limit %d outside 1..%d", ErrInvalid, limit, MaxScanLimit)
	}
	if len(prefix) > MaxKeySize {
		return nil, fmt.Errorf("%w: prefix of %d bytes exceeds the limit of %d", ErrInvalid, len(prefix), MaxKeySize)
	}
	q := []byte{byte(QueryScan)}
	q = binary.AppendUvarint(q, uint64(limit))
	return append(q, prefix...), nil
}

// DecodeScan parses the answer to a scan query; more says the limit cut it
// short.
func DecodeScan(b []byte) (kvs []KeyValue, more bool, err error) {
	r := reader{b: b}
	flag := r.byte()
	n := r.uvarint()
	if r.err || flag > 1 || n > MaxScanLimit {
		return nil, false, fmt.Errorf("%w: scan answer", ErrCorrupt)
	}
	kvs = make([]KeyValue, 0, n)
	for i := uint64(0); i < n; i++ {
		k := r.bytes()
		rev := r.uint64()
		v := r.bytes()
		if r.err {
			return nil, false, fmt.Errorf("%w: scan answer", ErrCorrupt)
		}
		kvs = append(kvs, KeyValue{Key: k, Value: v, Revision: rev})
	}
	if len(r.b) != 0 {
		return nil, false, fmt.Errorf("%w: scan answer trailing bytes", ErrCorrupt)
	}
	return kvs, flag == 1, nil
}
