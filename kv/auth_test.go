package kv

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla/flotilla/multiraft"
)

// authRecords reads sm's auth table.
func authRecords(t *testing.T, sm *StateMachine) []KeyValue {
	t.Helper()
	out, err := sm.Query(EncodeAuthQuery())
	if err != nil {
		t.Fatal(err)
	}
	kvs, err := DecodeAuthRecords(out)
	if err != nil {
		t.Fatal(err)
	}
	return kvs
}

// wantAuth fails t unless sm's auth table holds exactly the records
// pairs names (key, record, key, record...), read at revision rev.
func wantAuth(t *testing.T, sm *StateMachine, rev uint64, pairs ...string) {
	t.Helper()
	kvs := authRecords(t, sm)
	var got []string
	for _, kv := range kvs {
		got = append(got, string(kv.Key), string(kv.Value))
		if kv.Revision != rev {
			t.Errorf("record %q read at revision %d, want %d", kv.Key, kv.Revision, rev)
		}
	}
	if !slices.Equal(got, pairs) {
		t.Fatalf("auth table %q, want %q", got, pairs)
	}
}

// rawAuthKeys returns the record keys db holds under range id.
func rawAuthKeys(t *testing.T, db *pebble.DB, id uint64) []string {
	t.Helper()
	lo, hi := localBounds(kindAuth, id)
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out []string
	for it.First(); it.Valid(); it.Next() {
		out = append(out, string(it.Key()[localLen:]))
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	return out
}

// openMeta opens the meta range over the whole keyspace in a fresh
// in-memory database, closed when t ends.
func openMeta(t *testing.T) (*pebble.DB, *StateMachine) {
	t.Helper()
	db := openDB(t, vfs.NewMem())
	t.Cleanup(func() { db.Close() })
	return db, openRange(t, db, MetaRangeID, "", "")
}

// TestAuthPutDeleteCAS: the conditions of OpAuthPut and OpAuthDelete, the
// results and revisions they give, the table a query reads (in key order,
// at the revision of the read), and that the records are not user keys;
// after a restart, the same table.
func TestAuthPutDeleteCAS(t *testing.T) {
	fs := vfs.NewMem()
	db := openDB(t, fs)
	sm := openRange(t, db, MetaRangeID, "", "")
	var index uint64
	wantAuth(t, sm, 0)
	for i, step := range []struct {
		c     Command
		ok    bool
		rev   uint64
		found bool
		cur   string
	}{
		{AuthPut([]byte("u/bob"), []byte("b1"), nil, false), true, 1, false, ""},
		{AuthPut([]byte("u/bob"), []byte("b2"), nil, true), false, 1, true, "b1"},
		{AuthPut([]byte("u/bob"), []byte("b2"), []byte("wrong"), false), false, 1, true, "b1"},
		{AuthPut([]byte("u/bob"), []byte("b2"), []byte("b1"), false), true, 2, false, ""},
		{AuthPut([]byte("u/alice"), []byte("a1"), []byte("a0"), false), false, 2, false, ""},
		{AuthPut([]byte("u/alice"), []byte("a1"), nil, true), true, 3, false, ""},
		{AuthPut([]byte("r/admin"), []byte("r1"), nil, false), true, 4, false, ""},
		{AuthPut([]byte("r/admin"), []byte("r1"), nil, false), true, 5, false, ""}, // unconditional: applies again
		{AuthDelete([]byte("u/carol"), nil), false, 5, false, ""},
		{AuthDelete([]byte("u/carol"), []byte("c1")), false, 5, false, ""},
		{AuthDelete([]byte("u/bob"), []byte("b1")), false, 5, true, "b2"},
		{AuthDelete([]byte("u/bob"), []byte("b2")), true, 6, false, ""},
		{AuthPut([]byte("u/bob"), []byte("b3"), nil, true), true, 7, false, ""},
		{AuthDelete([]byte("u/bob"), nil), true, 8, false, ""},
	} {
		r := applyResults(t, sm, &index, step.c)[0]
		if r.OK != step.ok || r.Revision != step.rev || r.Found != step.found || string(r.Current) != step.cur || r.KeyMismatch || sm.Revision() != step.rev {
			t.Fatalf("step %d (%v %q): %+v, revision %d; want ok %v at revision %d, found %v %q",
				i, step.c.Op, step.c.Key, r, sm.Revision(), step.ok, step.rev, step.found, step.cur)
		}
	}
	wantAuth(t, sm, 8, "r/admin", "r1", "u/alice", "a1")
	// The records are no user keys: neither a get nor a scan sees them,
	// and user keys of the same names are another thing.
	mustMiss(t, sm, "u/alice")
	applyResults(t, sm, &index, Command{Op: OpPut, Key: []byte("u/alice"), Value: []byte("data")})
	if kvs, _ := scan(t, sm, "", "", 100); len(kvs) != 1 || string(kvs[0].Value) != "data" {
		t.Fatalf("scan: %v", kvs)
	}
	// The put is held: the table as read is the one of revision 8, which
	// the put did not change.
	if sm.dirty.empty() || sm.Revision() != 9 {
		t.Fatalf("the put was not held (revision %d)", sm.Revision())
	}
	wantAuth(t, sm, 8, "r/admin", "r1", "u/alice", "a1")
	applyResults(t, sm, &index, AuthPut([]byte("u/alice"), []byte("a2"), nil, false))
	wantAuth(t, sm, 10, "r/admin", "r1", "u/alice", "a2")
	mustFind(t, sm, "u/alice", "data")

	// After a restart: the same table, and its size.
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	size := sm.auth
	if size != (authSize{records: 2, bytes: len("r/admin") + 2 + len("u/alice") + 2}) {
		t.Fatalf("auth table size %+v", size)
	}
	db.Close()
	db = openDB(t, fs)
	defer db.Close()
	sm, err := New(db, MetaRangeID)
	if err != nil {
		t.Fatal(err)
	}
	if sm.auth != size {
		t.Fatalf("auth table size after a restart %+v, want %+v", sm.auth, size)
	}
	wantAuth(t, sm, 10, "r/admin", "r1", "u/alice", "a2")
}

// TestAuthOutsideMetaRange: any other range answers auth writes
// KeyMismatch and writes nothing (not even a revision), and refuses the
// auth query.
func TestAuthOutsideMetaRange(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 4, "", "")
	var index uint64
	applyResults(t, sm, &index, Command{Op: OpPut, Key: []byte("k"), Value: []byte("v")})
	for _, c := range []Command{
		AuthPut([]byte("u/alice"), []byte("a1"), nil, false),
		AuthPut([]byte("u/alice"), []byte("a1"), nil, true),
		AuthDelete([]byte("u/alice"), nil),
		sessionWrite(AuthPut([]byte("u/bob"), []byte("b1"), nil, true), 42, 1, 1, true, 1_700_000_000_000),
	} {
		r := applyResults(t, sm, &index, c)[0]
		if !r.KeyMismatch || r.OK || r.Err != "" || r.Revision != 1 || sm.Revision() != 1 {
			t.Fatalf("%v in range 4: %+v", c.Op, r)
		}
	}
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := rawAuthKeys(t, db, 4); len(got) != 0 {
		t.Fatalf("range 4 wrote auth records %q", got)
	}
	if _, err := sm.Query(EncodeAuthQuery()); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("auth query of range 4: %v, want ErrBadCommand", err)
	}
	meta := openRange(t, db, MetaRangeID, "", "")
	if _, err := meta.Query(append(EncodeAuthQuery(), 0)); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("auth query with trailing bytes: %v, want ErrBadCommand", err)
	}
	meta.Destroy()
	if _, err := meta.Query(EncodeAuthQuery()); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("auth query of a removed replica: %v, want ErrKeyMismatch", err)
	}
}

// TestAuthSession: an auth write in a session applies once; its retry
// gets the first result even after the record changed, and changes
// nothing.
func TestAuthSession(t *testing.T) {
	_, sm := openMeta(t)
	var index uint64
	const ms = 1_700_000_000_000
	create := sessionWrite(AuthPut([]byte("u/alice"), []byte("a1"), nil, true), 42, 1, 1, true, ms)
	drop := sessionWrite(AuthDelete([]byte("u/alice"), []byte("a1")), 42, 2, 1, false, ms)
	rs := applyResults(t, sm, &index, create, create)
	if !rs[0].OK || rs[0].Revision != 1 || !reflect.DeepEqual(rs[1], rs[0]) {
		t.Fatalf("a put and its duplicate in one apply: %+v", rs)
	}
	first := applyResults(t, sm, &index, drop)[0]
	if !first.OK || first.Revision != 2 {
		t.Fatalf("delete: %+v", first)
	}
	if r := applyResults(t, sm, &index, create)[0]; !reflect.DeepEqual(r, rs[0]) {
		t.Fatalf("retried put after the delete: %+v, want the first result %+v", r, rs[0])
	}
	if r := applyResults(t, sm, &index, drop)[0]; !reflect.DeepEqual(r, first) {
		t.Fatalf("retried delete: %+v, want the first result %+v", r, first)
	}
	if sm.Revision() != 2 {
		t.Fatalf("revision %d after the retries, want 2", sm.Revision())
	}
	wantAuth(t, sm, 2)
	// A new write of the session applies.
	if r := applyResults(t, sm, &index, sessionWrite(AuthPut([]byte("u/alice"), []byte("a2"), nil, true), 42, 3, 3, false, ms))[0]; !r.OK || r.Revision != 3 {
		t.Fatalf("next write of the session: %+v", r)
	}
	wantAuth(t, sm, 3, "u/alice", "a2")
}

// putRawAuth writes auth records straight into db, as range 1's: for
// tables too large to build through commands in a test.
func putRawAuth(t *testing.T, db *pebble.DB, n int, key func(i int) string, record []byte) {
	t.Helper()
	b := db.NewBatch()
	defer b.Close()
	for i := range n {
		if err := b.Set(authKey([]byte(key(i))), record, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
}

// TestAuthLimits: a put that would take the table past MaxAuthRecords or
// MaxAuthBytes is refused with ErrAuthFull and writes nothing; puts that
// do not grow the table past them, and deletes, apply. The size is
// counted when the range opens and kept as writes apply.
func TestAuthLimits(t *testing.T) {
	full := func(t *testing.T, sm *StateMachine, index uint64, c Command) {
		t.Helper()
		rev := sm.Revision()
		r, err := applyRaw(t, sm, index, c)
		if !errors.Is(err, ErrAuthFull) || !errors.Is(err, ErrBadCommand) || r.OK || r.Revision != rev || sm.Revision() != rev {
			t.Fatalf("put of %q into a full table: %+v, %v", c.Key, r, err)
		}
	}
	applied := func(t *testing.T, sm *StateMachine, index uint64, c Command) {
		t.Helper()
		if r, err := applyRaw(t, sm, index, c); err != nil || !r.OK {
			t.Fatalf("%v %q: %+v, %v", c.Op, c.Key, r, err)
		}
	}
	t.Run("records", func(t *testing.T) {
		db, _ := openMeta(t)
		key := func(i int) string { return fmt.Sprintf("u/%06d", i) }
		putRawAuth(t, db, MaxAuthRecords, key, []byte("r"))
		sm, err := New(db, MetaRangeID)
		if err != nil {
			t.Fatal(err)
		}
		if sm.auth.records != MaxAuthRecords {
			t.Fatalf("%d records counted, want %d", sm.auth.records, MaxAuthRecords)
		}
		full(t, sm, 1, AuthPut([]byte("u/new"), []byte("r"), nil, false))
		full(t, sm, 2, AuthPut([]byte("u/new"), []byte("r"), nil, true))
		applied(t, sm, 3, AuthPut([]byte(key(7)), []byte("r2"), nil, false))
		applied(t, sm, 4, AuthDelete([]byte(key(8)), nil))
		applied(t, sm, 5, AuthPut([]byte("u/new"), []byte("r"), nil, true))
		full(t, sm, 6, AuthPut([]byte("u/newer"), []byte("r"), nil, true))
		// Two puts in one apply: the first takes the last place.
		applied(t, sm, 7, AuthDelete([]byte(key(9)), nil))
		b1, _ := AuthPut([]byte("u/a"), []byte("r"), nil, true).Encode()
		b2, _ := AuthPut([]byte("u/b"), []byte("r"), nil, true).Encode()
		cmds := []multiraft.Command{{Index: 8, Data: b1}, {Index: 9, Data: b2}}
		if err := sm.Apply(cmds); err != nil {
			t.Fatal(err)
		}
		if r, err := DecodeResult(cmds[0].Result); err != nil || !r.OK {
			t.Fatalf("first put of the apply: %+v, %v", r, err)
		}
		if _, err := DecodeResult(cmds[1].Result); !errors.Is(err, ErrAuthFull) {
			t.Fatalf("second put of the apply: %v, want ErrAuthFull", err)
		}
		if err := sm.Sync(); err != nil {
			t.Fatal(err)
		}
		if got := rawAuthKeys(t, db, MetaRangeID); len(got) != MaxAuthRecords || slices.Contains(got, "u/newer") || slices.Contains(got, "u/b") {
			t.Fatalf("%d records in the database", len(got))
		}
		if sm.auth.records != MaxAuthRecords {
			t.Fatalf("%d records counted after the writes, want %d", sm.auth.records, MaxAuthRecords)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		db, _ := openMeta(t)
		key := func(i int) string { return fmt.Sprintf("r/%04d", i) }
		big := bytes.Repeat([]byte{'x'}, MaxAuthRecord)
		n := MaxAuthBytes / (6 + MaxAuthRecord)
		putRawAuth(t, db, n, key, big)
		sm, err := New(db, MetaRangeID)
		if err != nil {
			t.Fatal(err)
		}
		used := n * (6 + MaxAuthRecord)
		if sm.auth != (authSize{records: n, bytes: used}) {
			t.Fatalf("size %+v, want %d records of %d bytes", sm.auth, n, used)
		}
		room := MaxAuthBytes - used
		full(t, sm, 1, AuthPut([]byte("r/new"), big[:room-len("r/new")+1], nil, true))
		applied(t, sm, 2, AuthPut([]byte("r/new"), big[:room-len("r/new")], nil, true))
		full(t, sm, 3, AuthPut([]byte("r/new"), big[:room-len("r/new")+1], nil, false))
		// Shrinking a record makes room for another.
		applied(t, sm, 4, AuthPut([]byte(key(0)), []byte("small"), nil, false))
		applied(t, sm, 5, AuthPut([]byte("r/other"), big[:MaxAuthRecord-len("r/other")-len("small")], nil, true))
		if sm.auth.bytes != MaxAuthBytes {
			t.Fatalf("bytes %d", sm.auth.bytes)
		}
	})
}

// TestAuthSnapshotRestore: a snapshot of the meta range carries its auth
// table; restored, it replaces the table the replica had, and the
// restored replica's size counts it.
func TestAuthSnapshotRestore(t *testing.T) {
	_, sm := openMeta(t)
	var index uint64
	applyResults(t, sm, &index,
		AuthPut([]byte("u/alice"), []byte("a1"), nil, true),
		AuthPut([]byte("r/admin"), []byte("r1"), nil, true),
		Command{Op: OpPut, Key: []byte("k"), Value: []byte("v")})
	snap := snapshotOf(t, sm)
	rev := sm.Revision()

	fresh := openDB(t, vfs.NewMem())
	defer fresh.Close()
	dst, err := New(fresh, MetaRangeID)
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Restore(bytes.NewReader(snap), index); err != nil {
		t.Fatal(err)
	}
	wantAuth(t, dst, rev, "r/admin", "r1", "u/alice", "a1")
	if dst.auth != sm.auth {
		t.Fatalf("restored size %+v, want %+v", dst.auth, sm.auth)
	}

	// Into a replica with a table of its own: the snapshot's replaces it.
	other, old := openMeta(t)
	var oi uint64
	applyResults(t, old, &oi, AuthPut([]byte("u/mallory"), []byte("m1"), nil, true), AuthPut([]byte("u/alice"), []byte("old"), nil, false))
	if err := old.Restore(bytes.NewReader(snap), index); err != nil {
		t.Fatal(err)
	}
	wantAuth(t, old, rev, "r/admin", "r1", "u/alice", "a1")
	if got := rawAuthKeys(t, other, MetaRangeID); !slices.Equal(got, []string{"r/admin", "u/alice"}) {
		t.Fatalf("records in the database after the restore: %q", got)
	}
	if old.auth != sm.auth {
		t.Fatalf("restored size %+v, want %+v", old.auth, sm.auth)
	}
	// The restored replica applies as the source does.
	for _, r := range []*StateMachine{sm, dst} {
		idx := index
		if res := applyResults(t, r, &idx, AuthDelete([]byte("u/alice"), []byte("a1")))[0]; !res.OK || res.Revision != rev+1 {
			t.Fatalf("range on %p: delete after the snapshot: %+v", r, res)
		}
		wantAuth(t, r, rev+1, "r/admin", "r1")
	}
}

// TestAuthSplitMerge: a split of the meta range leaves its auth table
// with it (the left half), the right half has none and refuses auth
// writes; merged back, the meta range keeps the table and writes it.
func TestAuthSplitMerge(t *testing.T) {
	db, sm := openMeta(t)
	var index uint64
	applyResults(t, sm, &index,
		AuthPut([]byte("u/alice"), []byte("a1"), nil, true),
		AuthPut([]byte("u/zed"), []byte("z1"), nil, true),
		Command{Op: OpPut, Key: []byte("a"), Value: []byte("left")},
		Command{Op: OpPut, Key: []byte("z"), Value: []byte("right")})
	left, right, rhs := split(t, sm, &index, "m", 2)
	rev := sm.Revision()
	wantAuth(t, sm, rev, "u/alice", "a1", "u/zed", "z1")
	if sm.auth.records != 2 {
		t.Fatalf("left half counts %d records", sm.auth.records)
	}
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := rawAuthKeys(t, db, 2); len(got) != 0 {
		t.Fatalf("the right half holds auth records %q", got)
	}
	if rhs.auth != (authSize{}) {
		t.Fatalf("the right half counts %+v", rhs.auth)
	}
	if _, err := rhs.Query(EncodeAuthQuery()); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("auth query of the right half: %v, want ErrBadCommand", err)
	}
	if bytes.Contains(snapshotOf(t, rhs), []byte("u/alice")) {
		t.Fatal("the right half's snapshot holds an auth record")
	}
	rindex := uint64(RangeInitialIndex)
	if r := applyResults(t, rhs, &rindex, AuthPut([]byte("u/bob"), []byte("b1"), nil, true))[0]; !r.KeyMismatch || r.OK {
		t.Fatalf("auth put in the right half: %+v", r)
	}
	if r := applyResults(t, sm, &index, AuthPut([]byte("u/bob"), []byte("b1"), nil, true))[0]; !r.OK || r.Revision != rev+1 {
		t.Fatalf("auth put in the left half: %+v", r)
	}
	wantAuth(t, sm, rev+1, "u/alice", "a1", "u/bob", "b1", "u/zed", "z1")

	// Merge the right half back: freeze it, then merge it into range 1.
	fr := applyResults(t, rhs, &rindex, FreezeCommand(&right, MetaRangeID))[0]
	freezeIndex, frozen, ok, err := FreezeResult(fr)
	if err != nil || !ok {
		t.Fatalf("freeze: %+v %v %v", fr, ok, err)
	}
	mr := applyResults(t, sm, &index, MergeCommand(&left, &frozen, freezeIndex))[0]
	merged, ok, err := MergeResult(mr)
	if err != nil || !ok || len(merged.End) != 0 || merged.ID != MetaRangeID {
		t.Fatalf("merge: %v %v %v", &merged, ok, err)
	}
	mustFind(t, sm, "z", "right")
	wantAuth(t, sm, sm.Revision(), "u/alice", "a1", "u/bob", "b1", "u/zed", "z1")
	if sm.auth.records != 3 {
		t.Fatalf("merged range counts %d records", sm.auth.records)
	}
	if r := applyResults(t, sm, &index, AuthDelete([]byte("u/zed"), nil))[0]; !r.OK {
		t.Fatalf("auth delete after the merge: %+v", r)
	}
	wantAuth(t, sm, sm.Revision(), "u/alice", "a1", "u/bob", "b1")
	// Its snapshot carries the table.
	db2 := openDB(t, vfs.NewMem())
	defer db2.Close()
	dst, err := New(db2, MetaRangeID)
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Restore(bytes.NewReader(snapshotOf(t, sm)), index); err != nil {
		t.Fatal(err)
	}
	wantAuth(t, dst, sm.Revision(), "u/alice", "a1", "u/bob", "b1")
}

// TestAuthEncoding: the commands no proposer may send are refused, by
// Encode and by the decoding of a committed entry; well-formed ones round
// trip.
func TestAuthEncoding(t *testing.T) {
	big := bytes.Repeat([]byte{'r'}, MaxAuthRecord+1)
	for name, c := range map[string]Command{
		"empty key":               AuthPut(nil, []byte("r"), nil, false),
		"long key":                AuthPut(bytes.Repeat([]byte{'k'}, MaxKeySize+1), []byte("r"), nil, false),
		"empty record":            AuthPut([]byte("k"), nil, nil, false),
		"long record":             AuthPut([]byte("k"), big, nil, false),
		"long expected":           AuthPut([]byte("k"), []byte("r"), big, false),
		"absent and expected":     AuthPut([]byte("k"), []byte("r"), []byte("e"), true),
		"delete: empty key":       AuthDelete(nil, nil),
		"delete: long expected":   AuthDelete([]byte("k"), big),
		"delete with a record":    {Op: OpAuthDelete, Key: []byte("k"), Value: []byte("r")},
		"delete expecting absent": {Op: OpAuthDelete, Key: []byte("k"), ExpectAbsent: true},
	} {
		if _, err := c.Encode(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Encode: %v, want ErrInvalid", name, err)
		}
		// As a committed entry, written by a proposer that skips the
		// checks: refused, so that it is answered with an error.
		if _, err := decodeCommand(c.encode()); !errors.Is(err, ErrBadCommand) {
			t.Errorf("%s: decode: %v, want ErrBadCommand", name, err)
		}
	}
	for _, c := range []Command{
		AuthPut([]byte("u/alice"), bytes.Repeat([]byte{'r'}, MaxAuthRecord), bytes.Repeat([]byte{'e'}, MaxAuthRecord), false),
		AuthPut([]byte("u/alice"), []byte("r"), nil, true),
		AuthPut(bytes.Repeat([]byte{'k'}, MaxKeySize), []byte("r"), nil, false),
		AuthDelete([]byte("u/alice"), []byte("e")),
		AuthDelete([]byte("u/alice"), nil),
	} {
		b, err := c.Encode()
		if err != nil {
			t.Fatalf("%v %q: %v", c.Op, c.Key, err)
		}
		checkCommand(t, b, c)
	}
	if OpAuthPut != 16 || OpAuthDelete != 17 {
		t.Fatalf("op codes %d %d: the ops before them keep their values, these come after", OpAuthPut, OpAuthDelete)
	}
}

// TestAuthAnswerRejects: DecodeAuthRecords refuses what no meta range
// answers.
func TestAuthAnswerRejects(t *testing.T) {
	rec := func(k, v string) []byte { return appendBytes(appendBytes(nil, []byte(k)), []byte(v)) }
	answer := func(n int, recs ...[]byte) []byte { return encodeAuthAnswer(7, n, bytes.Join(recs, nil)) }
	good := answer(2, rec("a", "1"), rec("b", "2"))
	kvs, err := DecodeAuthRecords(good)
	if err != nil || len(kvs) != 2 || string(kvs[1].Key) != "b" || string(kvs[1].Value) != "2" || kvs[0].Revision != 7 {
		t.Fatalf("good answer: %v, %v", kvs, err)
	}
	if kvs, err := DecodeAuthRecords(answer(0)); err != nil || len(kvs) != 0 {
		t.Fatalf("empty table: %v, %v", kvs, err)
	}
	for name, b := range map[string][]byte{
		"nothing":        nil,
		"no count":       good[:8],
		"cut short":      good[:len(good)-1],
		"trailing byte":  append(slices.Clone(good), 0),
		"count too high": answer(3, rec("a", "1"), rec("b", "2")),
		"count huge":     answer(MaxAuthRecords+1, bytes.Repeat(rec("a", "1"), 2)),
		"out of order":   answer(2, rec("b", "1"), rec("a", "2")),
		"duplicate":      answer(2, rec("a", "1"), rec("a", "2")),
		"empty key":      answer(2, rec("", "1"), rec("a", "2")),
		"empty record":   answer(2, rec("a", ""), rec("b", "2")),
		"long record":    answer(1, rec("a", string(bytes.Repeat([]byte{'r'}, MaxAuthRecord+1)))),
		"long key":       answer(1, rec(string(bytes.Repeat([]byte{'k'}, MaxKeySize+1)), "1")),
	} {
		if kvs, err := DecodeAuthRecords(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v, %v; want ErrCorrupt", name, kvs, err)
		}
	}
}
