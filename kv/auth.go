package kv

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// The auth table.
//
// The meta range (MetaRangeID) keeps a table of opaque records for the
// server, its users and roles: a record key (a short byte string, the
// server's own naming) and a record that kv stores and returns and never
// interprets:
//
//	'U' 1(8) key → record
//
// The records are range-local (keyed by the meta range's ID), like the
// meta index: a split leaves them in the meta range (the left half: the
// meta range starts the keyspace), a merge into the meta range keeps them
// (the meta range is never a merge's right half), a snapshot of the meta
// range carries them, and removing a replica of the meta range deletes
// them with it.
//
// OpAuthPut and OpAuthDelete write them, OpAuthPut with a compare-and-set
// condition; QueryAuth reads the whole table. Any other range refuses
// them: the commands apply nothing and answer KeyMismatch, the query fails
// with ErrBadCommand. Each write that applies takes a revision of the meta
// range, as a CAS does; one whose condition fails takes none.

// Limits of the auth table. An OpAuthPut that would exceed one is refused
// with ErrAuthFull; the commands that exceed MaxAuthRecord are refused
// before they are proposed (ErrInvalid).
const (
	// MaxAuthRecord is the largest auth record, in bytes (records are
	// never empty). Record keys are checked as keys are (CheckKey).
	MaxAuthRecord = 64 << 10
	// MaxAuthRecords is the most records the table holds.
	MaxAuthRecords = 100000
	// MaxAuthBytes bounds the sum of the lengths of the table's keys and
	// records, so that the whole table, which one QueryAuth returns,
	// fits one forwarded answer (64 MiB).
	MaxAuthBytes = 32 << 20
)

// AuthPut returns the command that sets the auth record key to value:
// with expectAbsent only if key has no record; else, with expected not
// empty, only if its record is expected; else unconditionally. Encode
// refuses it (ErrInvalid) unless key passes CheckKey, value is 1 to
// MaxAuthRecord bytes, expected at most MaxAuthRecord, and expected is
// empty if expectAbsent. The command aliases the slices.
//
// Its Result: OK if it applied; if not, Found and Current say whether key
// has a record and what it is. Revision is the meta range's revision after
// it (one more if it applied). A put that would take the table past
// MaxAuthRecords or MaxAuthBytes applies nothing and its result carries
// ErrAuthFull.
func AuthPut(key, value, expected []byte, expectAbsent bool) Command {
	return Command{Op: OpAuthPut, Key: key, Value: value, Expected: expected, ExpectAbsent: expectAbsent}
}

// AuthDelete returns the command that deletes the auth record key: with
// expected not empty, only if its record is expected. Encode refuses it
// (ErrInvalid) unless key passes CheckKey and expected is at most
// MaxAuthRecord bytes. The command aliases the slices.
//
// Its Result: OK if it deleted a record; if not, Found and Current say
// whether key has a record and what it is. Revision as for AuthPut.
func AuthDelete(key, expected []byte) Command {
	return Command{Op: OpAuthDelete, Key: key, Expected: expected}
}

// checkAuth is check of OpAuthPut and OpAuthDelete.
func (c *Command) checkAuth() error {
	if err := CheckKey(c.Key); err != nil {
		return err
	}
	if len(c.Expected) > MaxAuthRecord {
		return fmt.Errorf("%w: expected auth record of %d bytes exceeds the limit of %d", ErrInvalid, len(c.Expected), MaxAuthRecord)
	}
	if c.Op == OpAuthDelete {
		if len(c.Value) > 0 || c.ExpectAbsent {
			return fmt.Errorf("%w: an auth delete with a record or expecting none", ErrInvalid)
		}
		return nil
	}
	switch {
	case len(c.Value) == 0:
		return fmt.Errorf("%w: empty auth record", ErrInvalid)
	case len(c.Value) > MaxAuthRecord:
		return fmt.Errorf("%w: auth record of %d bytes exceeds the limit of %d", ErrInvalid, len(c.Value), MaxAuthRecord)
	case c.ExpectAbsent && len(c.Expected) > 0:
		return fmt.Errorf("%w: an auth put expecting both no record and a record", ErrInvalid)
	}
	return nil
}

// authSize is the size of the auth table: its records, and the sum of the
// lengths of their keys and values. The state machine keeps it (owned by
// the worker) to enforce the limits without reading the table.
type authSize struct {
	records, bytes int
}

// authKey is the key of auth record key (in the meta range).
func authKey(key []byte) []byte {
	return append(localKey(kindAuth, MetaRangeID, len(key)), key...)
}

// loadAuthSize measures range id's auth table in r, checking each record.
func loadAuthSize(r pebble.Reader, id uint64) (authSize, error) {
	var n authSize
	lo, hi := localBounds(kindAuth, id)
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return n, err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key()[localLen:], it.Value()
		if len(k) == 0 || len(k) > MaxKeySize || len(v) == 0 || len(v) > MaxAuthRecord {
			return n, fmt.Errorf("%w: auth record %x of %d bytes", ErrCorrupt, it.Key(), len(v))
		}
		n.records++
		n.bytes += len(k) + len(v)
	}
	return n, it.Error()
}

// applyAuth applies OpAuthPut or OpAuthDelete, in the meta range, through
// b; the change of the table's size goes into fx.
func (s *StateMachine) applyAuth(b *pebble.Batch, cmd *Command, rev *uint64, fx *effects) (Result, error) {
	k := authKey(cmd.Key)
	cur, found, err := getRaw(b, k)
	if err != nil {
		return Result{}, err
	}
	var holds bool
	switch {
	case cmd.ExpectAbsent:
		holds = !found
	case len(cmd.Expected) > 0:
		holds = found && bytes.Equal(cur, cmd.Expected)
	default:
		holds = cmd.Op == OpAuthPut || found // a delete of nothing applies nothing
	}
	if !holds {
		return Result{Found: found, Current: cur}, nil
	}
	// The table's size before and after: a put of a new key, or of a
	// longer record, may not take it past a limit (a put that does not
	// grow it may, if a limit was lowered since the table grew).
	was := authSize{records: s.auth.records + fx.auth.records, bytes: s.auth.bytes + fx.auth.bytes}
	now := was
	if found {
		now.records--
		now.bytes -= len(cmd.Key) + len(cur)
	}
	if cmd.Op == OpAuthPut {
		now.records++
		now.bytes += len(cmd.Key) + len(cmd.Value)
		if (now.records > MaxAuthRecords && now.records > was.records) || (now.bytes > MaxAuthBytes && now.bytes > was.bytes) {
			return Result{Err: fmt.Sprintf("%v: %d records of %d bytes, the limits are %d and %d",
				ErrAuthFull, now.records, now.bytes, MaxAuthRecords, MaxAuthBytes)}, nil
		}
		err = b.Set(k, cmd.Value, nil)
	} else {
		err = b.Delete(k, nil)
	}
	if err != nil {
		return Result{}, err
	}
	*rev++
	fx.auth.records += now.records - was.records
	fx.auth.bytes += now.bytes - was.bytes
	return Result{OK: true}, nil
}

// EncodeAuthQuery returns the query, for the meta range, that reads the
// whole auth table; decode the answer with DecodeAuthRecords. Any other
// range refuses it with ErrBadCommand.
func EncodeAuthQuery() []byte { return []byte{byte(QueryAuth)} }

// queryAuth answers QueryAuth: the revision of the range as of the read,
// the count of records, then each record's key and value, in key order.
// The records and the revision are read from one Pebble snapshot, in which
// every auth write committed with the applied record at its revision: the
// table is the one of that revision.
func (s *StateMachine) queryAuth() ([]byte, error) {
	snap := s.db.NewSnapshot()
	defer snap.Close()
	_, rev, _, err := loadApplied(snap, s.id)
	if err != nil {
		return nil, err
	}
	lo, hi := localBounds(kindAuth, s.id)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var body []byte
	n := 0
	for it.First(); it.Valid(); it.Next() {
		body = appendBytes(body, it.Key()[localLen:])
		body = appendBytes(body, it.Value())
		n++
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	return encodeAuthAnswer(rev, n, body), nil
}

// encodeAuthAnswer returns the answer to an auth query: the revision, the
// count of records and their entries (key, then value).
func encodeAuthAnswer(rev uint64, n int, body []byte) []byte {
	out := make([]byte, 0, 8+binary.MaxVarintLen64+len(body))
	out = binary.BigEndian.AppendUint64(out, rev)
	out = binary.AppendUvarint(out, uint64(n))
	return append(out, body...)
}

// minAuthEntry is the size of the smallest record of an auth answer: a
// byte each for the lengths of its key and value, a byte of each.
const minAuthEntry = 4

// DecodeAuthRecords parses the answer to an auth query (EncodeAuthQuery):
// every record of the table, in key order. The Revision of each is the
// meta range's revision as of the read (the same for all): the table is
// the one that revision left, every auth write whose Result.Revision is
// at most it is in, none after. Key and Value alias b (the caller owns
// them with b; they are capped, so an append copies). A malformed answer
// (records out of order, empty or over the limits, trailing bytes) is
// refused with an error wrapping ErrCorrupt.
func DecodeAuthRecords(b []byte) ([]KeyValue, error) {
	r := reader{b: b}
	rev := r.uint64()
	n := r.uvarint()
	// A count the answer cannot hold is refused before anything is
	// allocated for it.
	if r.err || n > MaxAuthRecords || n > uint64(len(r.b)/minAuthEntry) {
		return nil, fmt.Errorf("%w: auth answer", ErrCorrupt)
	}
	kvs := make([]KeyValue, 0, n)
	for range n {
		k, v := r.bytes(), r.bytes()
		if r.err || CheckKey(k) != nil || len(v) == 0 || len(v) > MaxAuthRecord ||
			(len(kvs) > 0 && bytes.Compare(kvs[len(kvs)-1].Key, k) >= 0) {
			return nil, fmt.Errorf("%w: auth answer", ErrCorrupt)
		}
		kvs = append(kvs, KeyValue{Key: k, Value: v, Revision: rev})
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: auth answer trailing bytes", ErrCorrupt)
	}
	return kvs, nil
}
