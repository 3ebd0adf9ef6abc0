package kv

import (
	"bytes"
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
	// QueryDescriptor reads the range's descriptor (EncodeDescriptorQuery).
	QueryDescriptor QueryKind = 'd'
	// QueryMeta reads the meta index, in the meta range
	// (EncodeMetaQuery).
	QueryMeta QueryKind = 'm'
	// QueryAuth reads the whole auth table, in the meta range
	// (EncodeAuthQuery, auth.go).
	QueryAuth QueryKind = 'u'
	// QueryGetAt reads one key as of a past revision (EncodeGetAt).
	QueryGetAt QueryKind = 'G'
	// QueryScanAt lists keys as of a past revision (EncodeScanAt).
	QueryScanAt QueryKind = 'S'
)

// KeyValue is one key as a query returns it. The caller owns the slices.
type KeyValue struct {
	Key   []byte
	Value []byte
	// Revision is the range revision of the write that set Value (its mod
	// revision); CreateRevision, that of the put that created the key;
	// Version, the puts since (1 for the creating put). See stored.go.
	Revision       uint64
	CreateRevision uint64
	Version        uint64
}

// EncodeGet returns the query that reads key.
func EncodeGet(key []byte) ([]byte, error) {
	if err := CheckKey(key); err != nil {
		return nil, err
	}
	return append([]byte{byte(QueryGet)}, key...), nil
}

// EncodeGetAt returns the query that reads key as of revision rev (at least
// 1) of the range that holds it; the answer decodes with DecodeGet. It fails
// with a *CompactedError below the range's history floor, and with
// ErrFutureRevision above its revision.
func EncodeGetAt(key []byte, rev uint64) ([]byte, error) {
	if err := CheckKey(key); err != nil {
		return nil, err
	}
	if rev == 0 {
		return nil, fmt.Errorf("%w: revision 0", ErrInvalid)
	}
	q := binary.BigEndian.AppendUint64([]byte{byte(QueryGetAt)}, rev)
	return append(q, key...), nil
}

// EncodeScanAt is EncodeScan as of revision rev (at least 1); see
// EncodeGetAt for its errors.
func EncodeScanAt(start, end []byte, limit int, rev uint64) ([]byte, error) {
	if rev == 0 {
		return nil, fmt.Errorf("%w: revision 0", ErrInvalid)
	}
	q, err := EncodeScan(start, end, limit)
	if err != nil {
		return nil, err
	}
	q[0] = byte(QueryScanAt)
	return binary.BigEndian.AppendUint64(q, rev), nil
}

// encodeGetAnswer returns the answer to a get query: found(1), then if
// found the mod revision(8), create revision and version (uvarints), and
// the value.
func encodeGetAnswer(found bool, m storedMeta, val []byte) []byte {
	if !found {
		return []byte{0}
	}
	out := make([]byte, 0, 9+2*binary.MaxVarintLen64+len(val))
	out = append(out, 1)
	out = appendMeta(out, m)
	return append(out, val...)
}

// appendMeta appends m as a get or scan answer carries it.
func appendMeta(b []byte, m storedMeta) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Mod)
	b = binary.AppendUvarint(b, m.Create)
	return binary.AppendUvarint(b, m.Version)
}

// readMeta reads what appendMeta appended into kv.
func (r *reader) readMeta(kv *KeyValue) {
	kv.Revision = r.uint64()
	kv.CreateRevision = r.uvarint()
	kv.Version = r.uvarint()
}

// DecodeGet parses the answer to a get query. The value aliases b.
func DecodeGet(b []byte) (found bool, kv KeyValue, err error) {
	if len(b) == 1 && b[0] == 0 {
		return false, KeyValue{}, nil
	}
	if len(b) < 1 || b[0] != 1 {
		return false, KeyValue{}, fmt.Errorf("%w: get answer", ErrCorrupt)
	}
	r := reader{b: b[1:]}
	r.readMeta(&kv)
	if r.err {
		return false, KeyValue{}, fmt.Errorf("%w: get answer", ErrCorrupt)
	}
	kv.Value = r.b
	return true, kv, nil
}

// EncodeScan returns the query that lists up to limit keys of [start, end)
// (end empty: to the end of the keyspace) in key order, from the range
// that holds start. limit 0 means DefaultScanLimit; at most MaxScanLimit.
func EncodeScan(start, end []byte, limit int) ([]byte, error) {
	if limit == 0 {
		limit = DefaultScanLimit
	}
	if limit < 0 || limit > MaxScanLimit {
		return nil, fmt.Errorf("%w: scan limit %d outside 1..%d", ErrInvalid, limit, MaxScanLimit)
	}
	// A resume key is the last key read and a zero byte: one longer than
	// the longest key.
	if len(start) > MaxKeySize+1 || len(end) > MaxKeySize+1 {
		return nil, fmt.Errorf("%w: scan bound exceeds %d bytes", ErrInvalid, MaxKeySize)
	}
	if len(end) > 0 && bytes.Compare(start, end) >= 0 {
		return nil, fmt.Errorf("%w: scan span %s is empty", ErrInvalid, SpanString(start, end))
	}
	q := []byte{byte(QueryScan)}
	q = binary.AppendUvarint(q, uint64(limit))
	q = appendBytes(q, start)
	return appendBytes(q, end), nil
}

// appendScanEntry appends one key of a scan answer to body.
func appendScanEntry(body, key []byte, m storedMeta, value []byte) []byte {
	body = appendBytes(body, key)
	body = appendMeta(body, m)
	return appendBytes(body, value)
}

// minScanEntry is the size of the smallest key of a scan answer: the
// lengths of its key and value (a byte each), its revision, create
// revision and version (a byte each at least).
const minScanEntry = 1 + 8 + 1 + 1 + 1

// encodeScanAnswer returns the answer to a scan query: the count of keys,
// their entries (appendScanEntry) and the resume key.
func encodeScanAnswer(n int, body, resume []byte) []byte {
	out := make([]byte, 0, 1+2*binary.MaxVarintLen64+len(body)+len(resume))
	out = binary.AppendUvarint(out, uint64(n))
	out = append(out, body...)
	return appendBytes(out, resume)
}

// DecodeScan parses the answer to a scan query: the keys, in order, and
// where to go on from: the key after the last one when the limit cut the
// list short, the range's end when the range ends before the span does,
// empty when the span is done.
func DecodeScan(b []byte) (kvs []KeyValue, resume []byte, err error) {
	r := reader{b: b}
	n := r.uvarint()
	// Each key takes at least minScanEntry bytes: a count the answer
	// cannot hold is refused before anything is allocated for it.
	if r.err || n > MaxScanLimit || n > uint64(len(r.b)/minScanEntry) {
		return nil, nil, fmt.Errorf("%w: scan answer", ErrCorrupt)
	}
	kvs = make([]KeyValue, 0, n)
	for i := uint64(0); i < n; i++ {
		kv := KeyValue{Key: r.bytes()}
		r.readMeta(&kv)
		kv.Value = r.bytes()
		if r.err {
			return nil, nil, fmt.Errorf("%w: scan answer", ErrCorrupt)
		}
		kvs = append(kvs, kv)
	}
	resume = r.bytes()
	if r.err || len(r.b) != 0 {
		return nil, nil, fmt.Errorf("%w: scan answer trailing bytes", ErrCorrupt)
	}
	return kvs, resume, nil
}

// EncodeDescriptorQuery returns the query that reads the range's
// descriptor; decode the answer with DecodeDescriptor.
func EncodeDescriptorQuery() []byte { return []byte{byte(QueryDescriptor)} }

// EncodeMetaQuery returns the query, for the meta range, that reads up to
// limit (1..MaxMetaUpdate) descriptors of the meta index in key order,
// from the one whose span holds key; decode the answer with
// DecodeDescriptors.
func EncodeMetaQuery(key []byte, limit int) []byte {
	q := []byte{byte(QueryMeta)}
	q = binary.AppendUvarint(q, uint64(min(max(limit, 1), MaxMetaUpdate)))
	return appendBytes(q, key)
}
