package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla/flotilla/multiraft"
)

// applyResults applies cmds in one Apply, at the indexes after *index, and
// returns their results.
func applyResults(t *testing.T, sm *StateMachine, index *uint64, cmds ...Command) []Result {
	t.Helper()
	mcs := make([]multiraft.Command, len(cmds))
	for i, c := range cmds {
		b, err := c.Encode()
		if err != nil {
			t.Fatal(err)
		}
		*index++
		mcs[i] = multiraft.Command{Index: *index, Data: b}
	}
	if err := sm.Apply(mcs); err != nil {
		t.Fatal(err)
	}
	out := make([]Result, len(mcs))
	for i := range mcs {
		r, err := DecodeResult(mcs[i].Result)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = r
	}
	return out
}

// rawHas reports whether db itself (not a range's held writes) has key.
func rawHas(t *testing.T, db *pebble.DB, key []byte) bool {
	t.Helper()
	_, closer, err := db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	closer.Close()
	return true
}

// rawKeys returns the user keys of one global kind in db, in order.
func rawKeys(t *testing.T, db *pebble.DB, kind byte) []string {
	t.Helper()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{kind}, UpperBound: []byte{kind + 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out []string
	for it.First(); it.Valid(); it.Next() {
		out = append(out, string(it.Key()[1:]))
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	return out
}

// queryErr runs q on sm and returns its error (nil if it answered).
func queryErr(sm *StateMachine, q []byte, err error) error {
	if err != nil {
		return err
	}
	_, err = sm.Query(q)
	return err
}

// TestKeyMismatchWritesNothing: every command naming a key (or span) that
// the range does not hold is answered KeyMismatch and writes nothing, on
// the held path (plain puts and deletes) and on the batch path (CAS, puts
// with a lease, elections, range deletes, meta ops), alone or mixed with
// commands the range holds. The neighbouring ranges that do hold the keys
// see nothing.
func TestKeyMismatchWritesNothing(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	left := openRange(t, db, 7, "", "c")
	sm := openRange(t, db, 4, "c", "p")
	right := openRange(t, db, 6, "p", "")
	var index uint64
	put := func(k string) Command { return Command{Op: OpPut, Key: []byte(k), Value: []byte("wrong-" + k)} }
	if r := applyResults(t, sm, &index, put("d"))[0]; !r.OK || r.Revision != 1 || r.KeyMismatch {
		t.Fatalf("put d: %+v", r)
	}
	// Held path: a lone foreign put, then foreign puts and deletes among
	// ones the range holds.
	if r := applyResults(t, sm, &index, put("a"))[0]; !r.KeyMismatch || r.OK || r.Revision != 1 {
		t.Fatalf("put of a key below the span: %+v", r)
	}
	rs := applyResults(t, sm, &index, put("p"), put("e"), Command{Op: OpDelete, Key: []byte("z")}, put("b\xff"), Command{Op: OpDelete, Key: []byte("d")})
	for i, want := range []struct {
		mismatch bool
		rev      uint64
	}{{true, 1}, {false, 2}, {true, 2}, {true, 2}, {false, 3}} {
		if rs[i].KeyMismatch != want.mismatch || rs[i].OK == want.mismatch || rs[i].Revision != want.rev {
			t.Fatalf("held batch, command %d: %+v, want mismatch=%v at revision %d", i, rs[i], want.mismatch, want.rev)
		}
	}
	if sm.dirty.empty() {
		t.Fatal("the plain puts were not held: the test does not cover the held path")
	}
	if _, held := sm.dirty.get([]byte("a")); held {
		t.Fatal("a foreign put is held")
	}
	rev := sm.Revision()

	// Batch path.
	l := applyResults(t, sm, &index, Command{Op: OpLeaseGrant, TTL: time.Second})[0].Lease
	rev++
	for name, c := range map[string]Command{
		"CAS":                {Op: OpCAS, Key: []byte("a"), ExpectAbsent: true, Value: []byte("wrong")},
		"CAS at end":         {Op: OpCAS, Key: []byte("p"), ExpectAbsent: true, Value: []byte("wrong")},
		"put with lease":     {Op: OpPut, Key: []byte("q"), Value: []byte("wrong"), Lease: l},
		"campaign":           {Op: OpCampaign, Key: []byte("a"), Value: []byte("wrong"), Lease: l},
		"resign":             {Op: OpResign, Key: []byte("q"), Lease: l},
		"delete range below": {Op: OpDeleteRange, Key: []byte("a"), End: []byte("d")},
		"delete range to ∞":  {Op: OpDeleteRange, Key: []byte("d")},
		"delete range past":  {Op: OpDeleteRange, Key: []byte("o"), End: []byte("q")},
		"delete everything":  {Op: OpDeleteRange},
		"meta update":        {Op: OpMetaUpdate, Value: EncodeDescriptors([]Descriptor{rangeDesc(4, "c", "p")})},
		"alloc range ID":     {Op: OpAllocRangeID},
		"auth put":           AuthPut([]byte("u/alice"), []byte("wrong"), nil, false),
		"auth delete":        AuthDelete([]byte("u/alice"), nil),
	} {
		r := applyResults(t, sm, &index, c)[0]
		if !r.KeyMismatch || r.OK || r.Found || r.Count != 0 || r.Revision != rev || sm.Revision() != rev {
			t.Fatalf("%s: %+v, revision %d → %d", name, r, rev, sm.Revision())
		}
	}
	// Mixed with a CAS the range holds: that one applies.
	rs = applyResults(t, sm, &index,
		Command{Op: OpCAS, Key: []byte("e"), Expected: []byte("wrong-e"), Value: []byte("e2")},
		Command{Op: OpDelete, Key: []byte("a")},
		Command{Op: OpCAS, Key: []byte("zz"), ExpectAbsent: true, Value: []byte("wrong")})
	if !rs[0].OK || rs[0].Revision != rev+1 || !rs[1].KeyMismatch || !rs[2].KeyMismatch || rs[2].Revision != rev+1 {
		t.Fatalf("mixed batch: %+v", rs)
	}
	if lr, _, err := sm.loadLease(db, l); err != nil || len(lr.names) != 0 {
		t.Fatalf("the refused campaign named an election in the lease: %+v %v", lr, err)
	}

	// Nothing of it reached Pebble, and the ranges that hold the keys see
	// nothing.
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b\xff", "p", "q", "z", "zz"} {
		for _, raw := range [][]byte{dataKey([]byte(k)), attachedKey([]byte(k)), electionKey([]byte(k))} {
			if rawHas(t, db, raw) {
				t.Fatalf("a refused command wrote %q", raw)
			}
		}
	}
	mustMiss(t, left, "a")
	mustMiss(t, left, "b\xff")
	mustMiss(t, right, "p")
	mustMiss(t, right, "q")
	mustMiss(t, right, "z")
	if e := election(t, left, "a"); e.ModRevision != 0 {
		t.Fatalf("range 7 sees an election a: %+v", e)
	}
	if left.Revision() != 0 || right.Revision() != 0 {
		t.Fatalf("neighbours' revisions moved: %d %d", left.Revision(), right.Revision())
	}
	mustMiss(t, sm, "d")
	mustFind(t, sm, "e", "e2")
}

// TestQueryKeyMismatch: a query of a key (or a scan from a key) outside
// the span fails with ErrKeyMismatch; Start is in the span, End is not.
func TestQueryKeyMismatch(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 4, "c", "p")
	apply(t, sm, 1, Command{Op: OpPut, Key: []byte("c"), Value: []byte("first")})
	apply(t, sm, 2, Command{Op: OpPut, Key: []byte("o\xff"), Value: []byte("last")})
	mustFind(t, sm, "c", "first")
	mustFind(t, sm, "o\xff", "last")
	for _, k := range []string{"a", "b\xff", "p", "p\x00", "z"} {
		q, err := EncodeGet([]byte(k))
		if err := queryErr(sm, q, err); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("get %q: %v, want ErrKeyMismatch", k, err)
		}
		q, err = EncodeElectionQuery([]byte(k))
		if err := queryErr(sm, q, err); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("election %q: %v, want ErrKeyMismatch", k, err)
		}
		q, err = EncodeAttachedQuery([]byte(k))
		if err := queryErr(sm, q, err); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("attachment of %q: %v, want ErrKeyMismatch", k, err)
		}
		q, err = EncodeScan([]byte(k), nil, 10)
		if err := queryErr(sm, q, err); !errors.Is(err, ErrKeyMismatch) {
			t.Errorf("scan from %q: %v, want ErrKeyMismatch", k, err)
		}
	}
	q, _ := EncodeScan(nil, []byte("d"), 10)
	if err := queryErr(sm, q, nil); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("scan from the beginning of the keyspace: %v, want ErrKeyMismatch", err)
	}
	if err := queryErr(sm, EncodeMetaQuery(nil, 1), nil); !errors.Is(err, ErrBadCommand) {
		t.Errorf("meta query of range 4: %v, want ErrBadCommand", err)
	}
	if err := queryErr(sm, EncodeAuthQuery(), nil); !errors.Is(err, ErrBadCommand) {
		t.Errorf("auth query of range 4: %v, want ErrBadCommand", err)
	}
	out, err := sm.Query(EncodeDescriptorQuery())
	if err != nil {
		t.Fatal(err)
	}
	want := rangeDesc(4, "c", "p")
	if d, err := DecodeDescriptor(out); err != nil || !d.Equal(&want) {
		t.Fatalf("descriptor query: %v %v, want %v", &d, err, &want)
	}
}

// TestUninitializedReplica: a replica with no descriptor refuses queries,
// commands and snapshots with ErrUninitialized, and writes nothing.
func TestUninitializedReplica(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm, err := New(db, 9)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := sm.Descriptor(); ok {
		t.Fatal("an unbootstrapped replica has a descriptor")
	}
	q, _ := EncodeGet([]byte("k"))
	for name, q := range map[string][]byte{"get": q, "descriptor": EncodeDescriptorQuery(), "lease": EncodeLeaseQuery(1)} {
		if _, err := sm.Query(q); !errors.Is(err, ErrUninitialized) {
			t.Errorf("%s query: %v, want ErrUninitialized", name, err)
		}
	}
	b, _ := Command{Op: OpPut, Key: []byte("k"), Value: []byte("v")}.Encode()
	if err := sm.Apply([]multiraft.Command{{Index: 1, Data: b}}); !errors.Is(err, ErrUninitialized) {
		t.Errorf("apply: %v, want ErrUninitialized", err)
	}
	if err := sm.Snapshot(io.Discard); !errors.Is(err, ErrUninitialized) {
		t.Errorf("snapshot: %v, want ErrUninitialized", err)
	}
	if sm.AppliedIndex() != 0 || sm.Revision() != 0 || rawHas(t, db, dataKey([]byte("k"))) || !sm.dirty.empty() {
		t.Fatal("an uninitialized replica applied a command")
	}
}

// TestBootstrap: Bootstrap writes a descriptor once, refuses descriptors
// no range can have and a meta index that does not tile the keyspace;
// LocalDescriptors lists what was bootstrapped.
func TestBootstrap(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	d := rangeDesc(5, "c", "p")
	if err := Bootstrap(db, d, nil); err != nil {
		t.Fatal(err)
	}
	// Again, with another span: a no-op.
	if err := Bootstrap(db, rangeDesc(5, "a", "z"), nil); err != nil {
		t.Fatal(err)
	}
	sm, err := New(db, 5)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := sm.Descriptor(); !ok || !got.Equal(&d) {
		t.Fatalf("descriptor %v after a second bootstrap, want %v", got, &d)
	}
	bad := []Descriptor{
		{ID: 0, Replicas: []uint64{1}},
		{ID: 6, Start: []byte("b"), End: []byte("b"), Replicas: []uint64{1}},
		{ID: 6, Start: []byte("c"), End: []byte("b"), Replicas: []uint64{1}},
		{ID: 6},
		{ID: 6, Replicas: make([]uint64, MaxReplicas+1)},
	}
	for _, b := range bad {
		if err := Bootstrap(db, b, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("bootstrap of %+v: %v, want ErrInvalid", b, err)
		}
	}
	meta := rangeDesc(1, "", "g")
	for name, all := range map[string][]Descriptor{
		"none":    nil,
		"gap":     {meta, rangeDesc(2, "h", "")},
		"overlap": {meta, rangeDesc(2, "f", "")},
		"short":   {meta, rangeDesc(2, "g", "z")},
		"late":    {rangeDesc(2, "a", "g"), meta},
		"twice ∞": {rangeDesc(1, "", ""), rangeDesc(2, "", "")},
	} {
		if err := Bootstrap(db, meta, all); !errors.Is(err, ErrInvalid) {
			t.Errorf("meta bootstrap with index %q: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := New(db, 1); err != nil {
		t.Fatal(err)
	}
	if err := Bootstrap(db, meta, []Descriptor{meta, rangeDesc(2, "g", "")}); err != nil {
		t.Fatal(err)
	}
	got, err := LocalDescriptors(db)
	if err != nil || len(got) != 2 || !got[0].Equal(&meta) || !got[1].Equal(&d) {
		t.Fatalf("local descriptors %v, %v", got, err)
	}
}

// TestDescriptorEncoding: descriptors round-trip, lists of them too, and
// garbage is refused.
func TestDescriptorEncoding(t *testing.T) {
	ds := []Descriptor{
		{ID: 1, End: []byte("g"), Replicas: []uint64{3, 1, 2}, Generation: 0},
		{ID: 1 << 40, Start: []byte("g"), Replicas: []uint64{7}, Generation: 1 << 50},
		{ID: 9, Start: []byte("a"), Replicas: []uint64{1, 2, 4}, Learners: []uint64{4}, Generation: 3, Sticky: true},
	}
	for i := range ds {
		got, err := DecodeDescriptor(ds[i].Encode())
		if err != nil || !got.Equal(&ds[i]) {
			t.Fatalf("round trip of %v: %v %v", &ds[i], &got, err)
		}
	}
	got, err := DecodeDescriptors(EncodeDescriptors(ds))
	if err != nil || len(got) != 3 || !got[0].Equal(&ds[0]) || !got[1].Equal(&ds[1]) || !got[2].Equal(&ds[2]) {
		t.Fatalf("list round trip: %v %v", got, err)
	}
	enc := ds[0].Encode()
	bad := [][]byte{nil, enc[:len(enc)-1], append(bytes.Clone(enc), 0)}
	// A learner that is no replica, and learners only.
	for _, d := range []Descriptor{
		{ID: 9, Replicas: []uint64{1, 2}, Learners: []uint64{3}},
		{ID: 9, Replicas: []uint64{1}, Learners: []uint64{1}},
	} {
		bad = append(bad, d.Encode())
	}
	for _, b := range bad {
		if _, err := DecodeDescriptor(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decoded %x: %v", b, err)
		}
	}
}

// TestSessionRetryAfterDescriptorChange: a session write applied by a
// range, retried there, gets its first result and applies nothing, on the
// held path and the batch path; so it does after the range's descriptor
// changed (a snapshot of a narrower span, of a newer generation, restored
// into the replica): for a write whose key the range still holds, and for
// one whose key it no longer holds (applied before the change; the check
// comes before the key's). A new write of a key no longer held is a
// mismatch.
func TestSessionRetryAfterDescriptorChange(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 5, "a", "z")
	const ms = 1_700_000_000_000
	w := func(c Command, seq uint64) Command { return sessionWrite(c, 42, seq, 1, seq == 1, ms) }
	writes := []Command{
		w(Command{Op: OpPut, Key: []byte("m"), Value: []byte("m1")}, 1),                     // held, stays
		w(Command{Op: OpPut, Key: []byte("x"), Value: []byte("x1")}, 2),                     // held, leaves
		w(Command{Op: OpCAS, Key: []byte("n"), ExpectAbsent: true, Value: []byte("n1")}, 3), // batch, stays
		w(Command{Op: OpCAS, Key: []byte("y"), ExpectAbsent: true, Value: []byte("y1")}, 4), // batch, leaves
	}
	var index uint64
	firsts := append(applyResults(t, sm, &index, writes[0], writes[1]), applyResults(t, sm, &index, writes[2], writes[3])...)
	for i, r := range firsts {
		if !r.OK || r.Revision != uint64(i+1) {
			t.Fatalf("write %d: %+v", i+1, r)
		}
	}
	// Another client overwrites m and n: a retry that applied again would
	// bring the old values back.
	applyResults(t, sm, &index, Command{Op: OpPut, Key: []byte("m"), Value: []byte("m2")}, Command{Op: OpPut, Key: []byte("n"), Value: []byte("n2")})
	retry := func(where string, want []int) {
		t.Helper()
		rev := sm.Revision()
		for _, i := range want {
			// Each alone on the held path (a plain put) or the batch path.
			r := applyResults(t, sm, &index, writes[i])[0]
			if !reflect.DeepEqual(r, firsts[i]) {
				t.Fatalf("%s: retry of write %d: %+v, want the first result %+v", where, i+1, r, firsts[i])
			}
		}
		if sm.Revision() != rev {
			t.Fatalf("%s: the retries moved the revision %d → %d", where, rev, sm.Revision())
		}
		mustFind(t, sm, "m", "m2")
		mustFind(t, sm, "n", "n2")
	}
	retry("same descriptor", []int{0, 1, 2, 3})

	// The range shrinks to [a, p) at generation 2.
	var snap bytes.Buffer
	if err := sm.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	narrow := rangeDesc(5, "a", "p")
	narrow.Generation = 2
	reshaped := reshapeSnapshot(t, snap.Bytes(), narrow)
	if err := sm.Restore(bytes.NewReader(reshaped), index); err != nil {
		t.Fatal(err)
	}
	if d, _ := sm.Descriptor(); !d.Equal(&narrow) {
		t.Fatalf("descriptor %v after the restore, want %v", d, &narrow)
	}
	retry("key still in the range", []int{0, 2})
	retry("key no longer in the range", []int{1, 3})
	mustMissRaw(t, db, "x", "y")
	if r := applyResults(t, sm, &index, w(Command{Op: OpPut, Key: []byte("x"), Value: []byte("x5")}, 5))[0]; !r.KeyMismatch {
		t.Fatalf("a new write of a key no longer held: %+v", r)
	}
}

// mustMissRaw fails unless db holds none of keys' data.
func mustMissRaw(t *testing.T, db *pebble.DB, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if rawHas(t, db, dataKey([]byte(k))) {
			t.Fatalf("the database still holds %q", k)
		}
	}
}

// reshapeSnapshot returns snap with descriptor d instead of its own, and
// without the records of user keys outside d's span: what a snapshot of
// the range would be had it that descriptor.
func reshapeSnapshot(t *testing.T, snap []byte, d Descriptor) []byte {
	t.Helper()
	hdr := snapHeaderLen
	out := append([]byte(nil), snap[:hdr]...)
	r := reader{b: snap[hdr:]}
	r.bytes() // the old descriptor
	out = appendBytes(out, d.Encode())
	for !r.err && len(r.b) > 0 {
		kind := r.byte()
		k, v := r.bytes(), r.bytes()
		if slices.Contains(globalKinds, kind) && !d.Contains(k) {
			continue
		}
		if uk, _, ok := parseHistKey(append([]byte{kind}, k...)); ok && kind == kindHistory && !d.Contains(uk) {
			continue
		}
		out = append(out, kind)
		out = appendBytes(out, k)
		out = appendBytes(out, v)
	}
	if r.err {
		t.Fatal("snapshot does not parse")
	}
	return out
}

// TestScanResume: a scan stops at the range's end (resume there), at the
// span's end (no resume), or at the limit (resume right after the last
// key); following resume keys visits every key once, across ranges, with
// keys both held and in Pebble.
func TestScanResume(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	r2 := openRange(t, db, 2, "", "b")
	r3 := openRange(t, db, 3, "b", "m")
	r4 := openRange(t, db, 4, "m", "")
	owner := func(k string) *StateMachine {
		switch {
		case k < "b":
			return r2
		case k < "m":
			return r3
		}
		return r4
	}
	indexes := map[*StateMachine]*uint64{r2: new(uint64), r3: new(uint64), r4: new(uint64)}
	put := func(k, v string) {
		sm := owner(k)
		applyResults(t, sm, indexes[sm], Command{Op: OpPut, Key: []byte(k), Value: []byte(v)})
	}
	for c := 'a'; c <= 'z'; c++ {
		put(string(c), "v"+string(c))
	}
	for _, sm := range []*StateMachine{r2, r3, r4} {
		if err := sm.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	// Held on top of Pebble's: a delete, a new key, an overwrite.
	applyResults(t, r3, indexes[r3], Command{Op: OpDelete, Key: []byte("c")})
	put("cc", "vcc")
	put("f", "vf2")
	if r3.dirty.empty() {
		t.Fatal("nothing held: the test does not cover merging")
	}
	want := []string{"b", "cc", "d", "e", "f", "g", "h", "i", "j", "k", "l"}

	kvs, resume := scan(t, r3, "b", "", 100)
	if !slices.Equal(keysOf(kvs), want) || string(resume) != "m" {
		t.Fatalf("scan [b, ∞) of [b, m): %q resume %q, want %q resume m", keysOf(kvs), resume, want)
	}
	if string(kvs[5-1].Value) != "vf2" {
		t.Fatalf("f = %q, want the held vf2", kvs[4].Value)
	}
	for _, c := range []struct {
		start, end string
		limit      int
		keys       []string
		resume     string
	}{
		{"b", "z", 100, want, "m"},
		{"b", "m", 100, want, ""}, // the span ends with the range: done
		{"b", "h", 100, want[:6], ""},
		{"b", "h", 2, want[:2], "cc\x00"},
		{"c", "", 3, []string{"cc", "d", "e"}, "e\x00"},
		{"j", "", 3, []string{"j", "k", "l"}, "m"}, // the limit reached, but nothing left
		{"l\x00", "", 3, nil, "m"},
		{"k", "l", 1, []string{"k"}, ""},
	} {
		kvs, resume := scan(t, r3, c.start, c.end, c.limit)
		if !slices.Equal(keysOf(kvs), c.keys) && !(len(kvs) == 0 && len(c.keys) == 0) || string(resume) != c.resume {
			t.Errorf("scan [%q, %q) limit %d: %q resume %q, want %q resume %q", c.start, c.end, c.limit, keysOf(kvs), resume, c.keys, c.resume)
		}
	}
	// Page through [b, m) by 4.
	var got []string
	at := "b"
	for page := 0; ; page++ {
		if page > len(want) {
			t.Fatalf("paging does not end: %q so far", got)
		}
		kvs, resume := scan(t, r3, at, "", 4)
		got = append(got, keysOf(kvs)...)
		if string(resume) == "m" {
			break
		}
		if len(kvs) != 4 {
			t.Fatalf("page from %q: %q resume %q, want 4 keys", at, keysOf(kvs), resume)
		}
		if want := append([]byte(kvs[3].Key), 0); !bytes.Equal(resume, want) {
			t.Fatalf("page from %q: %q resume %q, want resume %q", at, keysOf(kvs), resume, want)
		}
		at = string(resume)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged %q, want %q", got, want)
	}
	// A client's scan of the whole keyspace, by 5, range after range.
	got = got[:0]
	at = ""
	for steps := 0; ; steps++ {
		if steps > 20 {
			t.Fatalf("the scan does not end: %q so far", got)
		}
		kvs, resume := scan(t, owner(at), at, "", 5)
		got = append(got, keysOf(kvs)...)
		if len(resume) == 0 {
			break
		}
		at = string(resume)
	}
	var all []string
	for c := 'a'; c <= 'z'; c++ {
		if c != 'c' {
			all = append(all, string(c))
		}
		if c == 'c' {
			all = append(all, "cc")
		}
	}
	if !slices.Equal(got, all) {
		t.Fatalf("scanned the keyspace as %q, want %q", got, all)
	}
}

// TestDeleteRange: OpDeleteRange deletes exactly the keys of its span, at
// one revision, says how many, detaches the keys it deletes from their
// leases, and sees (and is seen by) the writes around it in one Apply.
func TestDeleteRange(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	left := openRange(t, db, 7, "", "b")
	sm := openRange(t, db, 5, "b", "x")
	right := openRange(t, db, 6, "x", "")
	var li, si, ri uint64
	applyResults(t, left, &li, Command{Op: OpPut, Key: []byte("a"), Value: []byte("left")})
	applyResults(t, right, &ri, Command{Op: OpPut, Key: []byte("x"), Value: []byte("right")})
	for _, k := range []string{"b", "c", "ca", "cz", "d", "e"} {
		applyResults(t, sm, &si, Command{Op: OpPut, Key: []byte(k), Value: []byte("v" + k)})
	}
	// Held puts (the range has no leased key yet), then a delete of their
	// span.
	applyResults(t, sm, &si, Command{Op: OpPut, Key: []byte("q1"), Value: []byte("1")}, Command{Op: OpPut, Key: []byte("q2"), Value: []byte("2")})
	if sm.dirty.empty() {
		t.Fatal("the puts were not held")
	}
	if r := applyResults(t, sm, &si, Command{Op: OpDeleteRange, Key: []byte("q"), End: []byte("r")})[0]; r.Count != 2 || !r.OK {
		t.Fatalf("delete of held keys: %+v", r)
	}
	mustMiss(t, sm, "q1")
	mustMiss(t, sm, "q2")
	mustFind(t, sm, "ca", "vca")

	l := applyResults(t, sm, &si, Command{Op: OpLeaseGrant, TTL: time.Second})[0].Lease
	applyResults(t, sm, &si,
		Command{Op: OpPut, Key: []byte("cb"), Value: []byte("leased"), Lease: l},
		Command{Op: OpPut, Key: []byte("e2"), Value: []byte("leased"), Lease: l})
	rev := sm.Revision()
	r := applyResults(t, sm, &si, Command{Op: OpDeleteRange, Key: []byte("c"), End: []byte("d")})[0]
	if !r.OK || r.Count != 4 || r.Revision != rev+1 || sm.Revision() != rev+1 {
		t.Fatalf("delete [c, d): %+v, revision before %d", r, rev)
	}
	for _, k := range []string{"c", "ca", "cb", "cz"} {
		mustMiss(t, sm, k)
	}
	mustFind(t, sm, "b", "vb")
	mustFind(t, sm, "d", "vd")
	mustFind(t, sm, "e2", "leased")
	if attached(t, sm, "cb") != 0 || attached(t, sm, "e2") != l {
		t.Fatalf("attachments after the delete: cb %#x e2 %#x", attached(t, sm, "cb"), attached(t, sm, "e2"))
	}
	// cb again, without a lease: the lease's revoke must leave it.
	applyResults(t, sm, &si, Command{Op: OpPut, Key: []byte("cb"), Value: []byte("plain")})
	applyResults(t, sm, &si, Command{Op: OpLeaseRevoke, Lease: l})
	mustFind(t, sm, "cb", "plain")
	mustMiss(t, sm, "e2")

	// Nothing to delete: no revision.
	rev = sm.Revision()
	if r := applyResults(t, sm, &si, Command{Op: OpDeleteRange, Key: []byte("c"), End: []byte("cb")})[0]; r.OK || r.Count != 0 || r.Revision != rev || sm.Revision() != rev {
		t.Fatalf("delete of an empty span: %+v, revision %d", r, rev)
	}

	// In one Apply: a put, a delete of its span, a CAS that needs it absent.
	rs := applyResults(t, sm, &si,
		Command{Op: OpPut, Key: []byte("p"), Value: []byte("old")},
		Command{Op: OpDeleteRange, Key: []byte("p"), End: []byte("q")},
		Command{Op: OpCAS, Key: []byte("p"), ExpectAbsent: true, Value: []byte("new")})
	if !rs[0].OK || rs[1].Count != 1 || rs[1].Revision != rev+2 || !rs[2].OK || rs[2].Revision != rev+3 {
		t.Fatalf("put, delete range, CAS in one apply: %+v", rs)
	}
	if found, kv := get(t, sm, "p"); !found || string(kv.Value) != "new" || kv.Revision != rev+3 {
		t.Fatalf("p after the apply: %v %+v", found, kv)
	}
	// A retried delete gets its first result.
	const ms = 1_700_000_000_000
	del := sessionWrite(Command{Op: OpDeleteRange, Key: []byte("d"), End: []byte("e")}, 9, 1, 1, true, ms)
	first := applyResults(t, sm, &si, del)[0]
	rev = sm.Revision()
	if again := applyResults(t, sm, &si, del)[0]; !reflect.DeepEqual(again, first) || first.Count != 1 || sm.Revision() != rev {
		t.Fatalf("retried delete: %+v, first %+v", again, first)
	}

	// The whole span, to the range's end.
	r = applyResults(t, sm, &si, Command{Op: OpDeleteRange, Key: []byte("b"), End: []byte("x")})[0]
	if kvs, _ := scan(t, sm, "b", "", 100); len(kvs) != 0 || r.Count != 4 { // b, cb, e, p
		t.Fatalf("delete of the whole span: %+v, left %q", r, keysOf(kvs))
	}
	mustFind(t, left, "a", "left")
	mustFind(t, right, "x", "right")
	for _, r := range []*StateMachine{left, sm, right} {
		if err := r.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if got := rawKeys(t, db, kindData); !slices.Equal(got, []string{"a", "x"}) {
		t.Fatalf("data keys left in the database: %q", got)
	}
	if got := rawKeys(t, db, kindAttached); len(got) != 0 {
		t.Fatalf("attachments left in the database: %q", got)
	}
}

// metaQuery reads up to limit meta records from the one that covers key.
func metaQuery(t *testing.T, sm *StateMachine, key string, limit int) []Descriptor {
	t.Helper()
	out, err := sm.Query(EncodeMetaQuery(bs(key), limit))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := DecodeDescriptors(out)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// checkMeta checks that the meta index is want, that it tiles the keyspace
// and that a lookup of any key finds the one record that covers it.
func checkMeta(t *testing.T, sm *StateMachine, want []Descriptor) {
	t.Helper()
	all := metaQuery(t, sm, "", MaxMetaUpdate)
	var at []byte
	for i := range all {
		if !bytes.Equal(all[i].Start, at) || (i < len(all)-1 && len(all[i].End) == 0) {
			t.Fatalf("the meta index does not tile the keyspace at record %d: %v", i, all)
		}
		at = all[i].End
	}
	if len(all) == 0 || len(at) != 0 {
		t.Fatalf("the meta index does not reach the end of the keyspace: %v", all)
	}
	if len(all) != len(want) {
		t.Fatalf("meta index %v, want %v", all, want)
	}
	for i := range all {
		if !all[i].Equal(&want[i]) {
			t.Fatalf("meta index %v, want %v", all, want)
		}
	}
	probes := []string{"", "\x00", "a", "f", "f\xff", "g", "g\x00", "h", "i", "j", "j\x00", "k", "o", "p", "s", "t", "t\x00", "u", "v", "w", "z", "\xff\xff\xff"}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		probes = append(probes, string(fmt.Appendf(nil, "%c%x", 'a'+rng.IntN(26), rng.Uint32())))
	}
	for _, k := range probes {
		found := metaQuery(t, sm, k, 1)
		n := 0
		var holder *Descriptor
		for i := range all {
			if all[i].Contains([]byte(k)) {
				n++
				holder = &all[i]
			}
		}
		if n != 1 || len(found) != 1 || !found[0].Equal(holder) {
			t.Fatalf("key %q: %d records cover it; lookup found %v", k, n, found)
		}
	}
}

func descAt(id uint64, start, end string, gen uint64) Descriptor {
	d := rangeDesc(id, start, end)
	d.Generation = gen
	return d
}

// TestMetaIndex: the meta index tiles the keyspace from the bootstrap on,
// whatever updates arrive: newer descriptors replace (and clip) what they
// overlap, older or repeated ones are ignored.
func TestMetaIndex(t *testing.T) {
	fs := vfs.NewMem()
	db := openDB(t, fs)
	r1, r2, r3 := descAt(1, "", "g", 1), descAt(2, "g", "p", 1), descAt(3, "p", "", 1)
	if err := Bootstrap(db, r1, []Descriptor{r1, r2, r3}); err != nil {
		t.Fatal(err)
	}
	sm, err := New(db, 1)
	if err != nil {
		t.Fatal(err)
	}
	checkMeta(t, sm, []Descriptor{r1, r2, r3})
	var index uint64
	update := func(ds ...Descriptor) Result {
		t.Helper()
		return applyResults(t, sm, &index, Command{Op: OpMetaUpdate, Value: EncodeDescriptors(ds)})[0]
	}
	clip := func(d Descriptor, start, end string) Descriptor {
		d = d.Clone()
		d.Start, d.End = bs(start), bs(end)
		return d
	}
	// r4 covers the end of r2 and the start of r3.
	r4 := descAt(4, "j", "t", 2)
	if r := update(r4); r.Count != 1 || !r.OK {
		t.Fatalf("update with r4: %+v", r)
	}
	state := []Descriptor{r1, clip(r2, "g", "j"), r4, clip(r3, "t", "")}
	checkMeta(t, sm, state)
	// Older, or as old as what it overlaps: ignored.
	for _, d := range []Descriptor{descAt(5, "a", "z", 1), descAt(6, "k", "l", 2), descAt(7, "", "", 1)} {
		if r := update(d); r.Count != 0 || r.OK {
			t.Fatalf("update with %v: %+v", &d, r)
		}
		checkMeta(t, sm, state)
	}
	// Repeated: a no-op.
	if r := update(r4); r.Count != 0 {
		t.Fatalf("repeated update: %+v", r)
	}
	checkMeta(t, sm, state)
	// A split of r1 in one update, the halves in reverse order.
	r1a, r1b := descAt(1, "", "c", 2), descAt(8, "c", "g", 2)
	if r := update(r1b, r1a); r.Count != 2 {
		t.Fatalf("split update: %+v", r)
	}
	state = []Descriptor{r1a, r1b, clip(r2, "g", "j"), r4, clip(r3, "t", "")}
	checkMeta(t, sm, state)
	// A merge of r2's rest and r4.
	r2m := descAt(2, "g", "t", 3)
	if r := update(r2m); r.Count != 1 {
		t.Fatalf("merge update: %+v", r)
	}
	state = []Descriptor{r1a, r1b, r2m, clip(r3, "t", "")}
	checkMeta(t, sm, state)
	// A descriptor inside one record cuts it in two.
	r9 := descAt(9, "u", "w", 2)
	if r := update(r9); r.Count != 1 {
		t.Fatalf("inner update: %+v", r)
	}
	state = []Descriptor{r1a, r1b, r2m, clip(r3, "t", "u"), r9, clip(r3, "w", "")}
	checkMeta(t, sm, state)
	// Out of order: generation 5, then the generation 4 it replaced.
	r9b := descAt(9, "u", "w", 5)
	if r := update(r9b, descAt(9, "u", "v", 4)); r.Count != 1 {
		t.Fatalf("out-of-order update: %+v", r)
	}
	state[4] = r9b
	checkMeta(t, sm, state)
	// Pages of the index.
	if page := metaQuery(t, sm, "h", 2); len(page) != 2 || !page[0].Equal(&r2m) || !page[1].Equal(&state[3]) {
		t.Fatalf("two records from h: %v", page)
	}
	// The index survives a restart.
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db = openDB(t, fs)
	defer db.Close()
	if sm, err = New(db, 1); err != nil {
		t.Fatal(err)
	}
	checkMeta(t, sm, state)
}

// TestAllocRangeID: range IDs are allocated after the largest one
// bootstrapped, increasing, across applies, restarts and snapshots.
func TestAllocRangeID(t *testing.T) {
	fs := vfs.NewMem()
	db := openDB(t, fs)
	all := []Descriptor{rangeDesc(1, "", "g"), rangeDesc(3, "g", "p"), rangeDesc(2, "p", "")}
	if err := Bootstrap(db, all[0], all); err != nil {
		t.Fatal(err)
	}
	sm, err := New(db, 1)
	if err != nil {
		t.Fatal(err)
	}
	var index uint64
	alloc := func(sm *StateMachine, n int) []uint64 {
		cmds := make([]Command, n)
		for i := range cmds {
			cmds[i] = Command{Op: OpAllocRangeID}
		}
		var out []uint64
		for _, r := range applyResults(t, sm, &index, cmds...) {
			if !r.OK || r.KeyMismatch {
				t.Fatalf("alloc: %+v", r)
			}
			out = append(out, r.Count)
		}
		return out
	}
	if got := alloc(sm, 1); !slices.Equal(got, []uint64{4}) {
		t.Fatalf("first ID %v, want 4", got)
	}
	if got := alloc(sm, 3); !slices.Equal(got, []uint64{5, 6, 7}) {
		t.Fatalf("three in one apply: %v, want 5 6 7", got)
	}
	var snap bytes.Buffer
	if err := sm.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db = openDB(t, fs)
	defer db.Close()
	if sm, err = New(db, 1); err != nil {
		t.Fatal(err)
	}
	if got := alloc(sm, 1); !slices.Equal(got, []uint64{8}) {
		t.Fatalf("after a restart: %v, want 8", got)
	}
	db2 := openDB(t, vfs.NewMem())
	defer db2.Close()
	fresh, err := New(db2, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.Restore(bytes.NewReader(snap.Bytes()), index); err != nil {
		t.Fatal(err)
	}
	if got := alloc(fresh, 1); !slices.Equal(got, []uint64{8}) {
		t.Fatalf("after a restore: %v, want 8", got)
	}
	checkMeta(t, fresh, all)
}

// TestSnapshotRestoreRange: a range's snapshot holds its own state only,
// and restores it whole into a fresh database (descriptor, data, leases,
// attachments, elections, sessions, counters); restored into a replica of
// a larger span, it also removes what that span held outside its own.
func TestSnapshotRestoreRange(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	left := openRange(t, db, 7, "", "c")
	sm := openRange(t, db, 5, "c", "p")
	right := openRange(t, db, 6, "p", "")
	const ms = 1_700_000_000_000
	var li, si, ri uint64
	applyResults(t, left, &li, Command{Op: OpPut, Key: []byte("a"), Value: []byte("outside-left")})
	lr := applyResults(t, right, &ri, Command{Op: OpLeaseGrant, TTL: time.Second})[0].Lease
	applyResults(t, right, &ri,
		Command{Op: OpPut, Key: []byte("q"), Value: []byte("outside-right"), Lease: lr},
		Command{Op: OpCampaign, Key: []byte("r-elect"), Value: []byte("outside-right"), Lease: lr},
		sessionWrite(Command{Op: OpPut, Key: []byte("s"), Value: []byte("outside-right")}, 77, 1, 1, true, ms))

	l := applyResults(t, sm, &si, Command{Op: OpLeaseGrant, TTL: time.Second})[0].Lease
	gone := applyResults(t, sm, &si, Command{Op: OpLeaseGrant, TTL: 3 * time.Second})[0].Lease
	applyResults(t, sm, &si, Command{Op: OpLeaseRevoke, Lease: gone})
	put := sessionWrite(Command{Op: OpPut, Key: []byte("g"), Value: []byte("vg")}, 42, 1, 1, true, ms)
	rs := applyResults(t, sm, &si,
		Command{Op: OpPut, Key: []byte("d"), Value: []byte("vd"), Lease: l},
		Command{Op: OpPut, Key: []byte("e"), Value: []byte("ve")},
		Command{Op: OpCampaign, Key: []byte("f-elect"), Value: []byte("vf"), Lease: l},
		put)
	first := rs[3]
	applyResults(t, sm, &si, Command{Op: OpPut, Key: []byte("g"), Value: []byte("vg2")})

	var snap bytes.Buffer
	if err := sm.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(snap.Bytes(), []byte("outside")) {
		t.Fatal("the snapshot holds another range's state")
	}
	wantDesc, _ := sm.Descriptor()
	wantRev := sm.Revision()
	wantLeases, _ := sm.Leases(0)
	wantElection := election(t, sm, "f-elect")

	// Into a fresh database.
	db2 := openDB(t, vfs.NewMem())
	defer db2.Close()
	hooked := 0
	dst, err := New(db2, 5, WithDescriptorHook(func(id uint64) {
		if id != 5 {
			t.Errorf("hook for range %d", id)
		}
		hooked++
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Restore(bytes.NewReader(snap.Bytes()), si); err != nil {
		t.Fatal(err)
	}
	if hooked != 1 {
		t.Fatalf("descriptor hook ran %d times, want 1", hooked)
	}
	check := func(where string, dst *StateMachine, dstDB *pebble.DB, otherData ...string) {
		t.Helper()
		if d, ok := dst.Descriptor(); !ok || !d.Equal(wantDesc) {
			t.Fatalf("%s: descriptor %v, want %v", where, d, wantDesc)
		}
		if dst.AppliedIndex() != si || dst.Revision() != wantRev {
			t.Fatalf("%s: applied %d revision %d, want %d and %d", where, dst.AppliedIndex(), dst.Revision(), si, wantRev)
		}
		mustFind(t, dst, "d", "vd")
		mustFind(t, dst, "e", "ve")
		mustFind(t, dst, "g", "vg2")
		if attached(t, dst, "d") != l {
			t.Fatalf("%s: d is attached to %#x, want %#x", where, attached(t, dst, "d"), l)
		}
		if leases, _ := dst.Leases(0); !reflect.DeepEqual(leases, wantLeases) {
			t.Fatalf("%s: leases %v, want %v", where, leases, wantLeases)
		}
		if e := election(t, dst, "f-elect"); !reflect.DeepEqual(e, wantElection) {
			t.Fatalf("%s: election %+v, want %+v", where, e, wantElection)
		}
		if dst.Sessions() != 1 {
			t.Fatalf("%s: %d sessions, want 1", where, dst.Sessions())
		}
		if err := dst.Sync(); err != nil {
			t.Fatal(err)
		}
		if got, want := rawKeys(t, dstDB, kindData), slices.Sorted(slices.Values(append([]string{"d", "e", "g"}, otherData...))); !slices.Equal(got, want) {
			t.Fatalf("%s: data keys of the range in the database: %q", where, got)
		}
		if got := rawKeys(t, dstDB, kindElection); !slices.Equal(got, []string{"f-elect"}) {
			t.Fatalf("%s: election keys of the range in the database: %q", where, got)
		}
	}
	check("fresh", dst, db2)
	// What the restored replica does next is what the source does.
	for _, r := range []*StateMachine{sm, dst} {
		idx := si
		if again := applyResults(t, r, &idx, put)[0]; !reflect.DeepEqual(again, first) {
			t.Fatalf("range %d: retried session write %+v, want the first result %+v", r.RangeID(), again, first)
		}
		if g := applyResults(t, r, &idx, Command{Op: OpLeaseGrant, TTL: time.Second})[0].Lease; g != LeaseID(5, 3) {
			t.Fatalf("next lease %#x, want %#x", g, LeaseID(5, 3))
		}
	}
	idx := si + 2
	applyResults(t, dst, &idx, Command{Op: OpLeaseRevoke, Lease: l})
	mustMiss(t, dst, "d")
	if e := election(t, dst, "f-elect"); len(e.Candidates) != 0 {
		t.Fatalf("election after the revoke: %+v", e)
	}

	// Into a replica of range 5 that served [a, z): what it held outside
	// [c, p) goes, and so does what it held inside that the snapshot lacks.
	db3 := openDB(t, vfs.NewMem())
	defer db3.Close()
	wide := openRange(t, db3, 5, "a", "z")
	beyond := openRange(t, db3, 8, "z", "")
	var wi, bi uint64
	// The same lease IDs as the snapshot's, with other TTLs.
	wl := applyResults(t, wide, &wi, Command{Op: OpLeaseGrant, TTL: 7 * time.Second})[0].Lease
	wl2 := applyResults(t, wide, &wi, Command{Op: OpLeaseGrant, TTL: 7 * time.Second})[0].Lease
	applyResults(t, wide, &wi,
		Command{Op: OpPut, Key: []byte("b"), Value: []byte("old"), Lease: wl},
		Command{Op: OpCampaign, Key: []byte("b-elect"), Value: []byte("old"), Lease: wl},
		Command{Op: OpCampaign, Key: []byte("y-elect"), Value: []byte("old"), Lease: wl2},
		Command{Op: OpPut, Key: []byte("d"), Value: []byte("old")},
		Command{Op: OpPut, Key: []byte("m"), Value: []byte("old"), Lease: wl2},
		Command{Op: OpPut, Key: []byte("y"), Value: []byte("old"), Lease: wl2},
		sessionWrite(Command{Op: OpPut, Key: []byte("x"), Value: []byte("old")}, 99, 1, 1, true, ms))
	applyResults(t, beyond, &bi, Command{Op: OpPut, Key: []byte("zz"), Value: []byte("beyond")})
	if err := beyond.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := wide.Restore(bytes.NewReader(snap.Bytes()), si); err != nil {
		t.Fatal(err)
	}
	check("wide", wide, db3, "zz")
	if got := rawKeys(t, db3, kindAttached); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("attachments in the database after the restore: %q", got)
	}
	mustFind(t, beyond, "zz", "beyond")
	if beyond.Revision() != 1 {
		t.Fatalf("range 8 revision %d", beyond.Revision())
	}
	q, _ := EncodeGet([]byte("b"))
	if _, err := wide.Query(q); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("get b after the span shrank: %v, want ErrKeyMismatch", err)
	}
	// Range 5's local state is the snapshot's, nothing of its own before.
	lo, hi := localBounds(kindSession, 5)
	it, err := db3.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		t.Fatal(err)
	}
	for it.First(); it.Valid(); it.Next() {
		if id := binary.BigEndian.Uint64(it.Key()[localLen:]); id == 99 {
			t.Fatal("the old session survived the restore")
		}
	}
	it.Close()
	// Revoking the restored lease deletes d, not what the old lease of the
	// same ID had attached.
	applyResults(t, wide, &wi, Command{Op: OpLeaseRevoke, Lease: l})
	mustMiss(t, wide, "d")
	mustFind(t, wide, "e", "ve")

	// Writes held in memory of the old span go too.
	db4 := openDB(t, vfs.NewMem())
	defer db4.Close()
	held := openRange(t, db4, 5, "a", "z")
	var hi4 uint64
	applyResults(t, held, &hi4, Command{Op: OpPut, Key: []byte("b"), Value: []byte("held")}, Command{Op: OpPut, Key: []byte("e"), Value: []byte("held")}, Command{Op: OpPut, Key: []byte("y"), Value: []byte("held")})
	if held.dirty.empty() {
		t.Fatal("the puts were not held")
	}
	if err := held.Restore(bytes.NewReader(snap.Bytes()), si); err != nil {
		t.Fatal(err)
	}
	check("held", held, db4)

	// Into an uninitialized replica, in a database that holds stale data
	// in the snapshot's span (left by a replica of another range, removed
	// without cleanup): the span's data is the snapshot's alone.
	db5 := openDB(t, vfs.NewMem())
	defer db5.Close()
	stale := openRange(t, db5, 9, "a", "z")
	var st uint64
	applyResults(t, stale, &st, Command{Op: OpPut, Key: []byte("b"), Value: []byte("stale")}, Command{Op: OpPut, Key: []byte("d"), Value: []byte("stale")},
		Command{Op: OpPut, Key: []byte("m"), Value: []byte("stale")}, Command{Op: OpPut, Key: []byte("y"), Value: []byte("stale")})
	if err := stale.Sync(); err != nil {
		t.Fatal(err)
	}
	blank, err := New(db5, 5)
	if err != nil {
		t.Fatal(err)
	}
	if err := blank.Restore(bytes.NewReader(snap.Bytes()), si); err != nil {
		t.Fatal(err)
	}
	check("uninitialized", blank, db5, "b", "y")
}

// TestRangeCache: the cache keeps disjoint descriptors; a newer one evicts
// the older ones it overlaps, an older one is ignored; lookups honour the
// span's bounds.
func TestRangeCache(t *testing.T) {
	var c RangeCache
	if _, ok := c.Lookup([]byte("a")); ok {
		t.Fatal("an empty cache found a range")
	}
	a, b, cc := descAt(1, "", "g", 1), descAt(2, "g", "p", 1), descAt(3, "p", "", 1)
	c.Insert(cc, a, b)
	lookup := func(key string) uint64 {
		t.Helper()
		d, ok := c.Lookup([]byte(key))
		if !ok {
			return 0
		}
		if !d.Contains([]byte(key)) {
			t.Fatalf("lookup %q found %v", key, &d)
		}
		return d.ID
	}
	for key, want := range map[string]uint64{"": 1, "\x00": 1, "f\xff": 1, "g": 2, "g\x00": 2, "o\xff": 2, "p": 3, "\xff\xff\xff\xff": 3} {
		if got := lookup(key); got != want {
			t.Fatalf("lookup %q: range %d, want %d", key, got, want)
		}
	}
	if all := c.All(); len(all) != 3 || all[0].ID != 1 || all[1].ID != 2 || all[2].ID != 3 {
		t.Fatalf("cache %v", all)
	}
	// Newer, over the end of b and the start of cc: both go whole.
	d := descAt(4, "j", "t", 2)
	c.Insert(d)
	for key, want := range map[string]uint64{"f": 1, "g": 0, "i\xff": 0, "j": 4, "s\xff": 4, "t": 0, "z": 0} {
		if got := lookup(key); got != want {
			t.Fatalf("after the newer r4, lookup %q: range %d, want %d", key, got, want)
		}
	}
	if c.Len() != 2 {
		t.Fatalf("cache %v", c.All())
	}
	// Older and overlapping: ignored, even where it would fill a gap.
	c.Insert(descAt(5, "h", "k", 1), descAt(6, "s", "", 1), descAt(7, "k", "l", 1))
	if c.Len() != 2 || lookup("h") != 0 || lookup("z") != 0 || lookup("k") != 4 {
		t.Fatalf("older descriptors changed the cache: %v", c.All())
	}
	// Older but in a gap: cached.
	c.Insert(descAt(2, "g", "j", 1))
	if lookup("g") != 2 || lookup("i") != 2 || lookup("j") != 4 {
		t.Fatalf("cache %v", c.All())
	}
	// The cache keeps its own copy.
	e := descAt(8, "t", "", 3)
	c.Insert(e)
	e.Start[0] = 'a'
	if lookup("t") != 8 || lookup("a") != 1 {
		t.Fatalf("changing an inserted descriptor changed the cache: %v", c.All())
	}
	if got, ok := c.Get(8); !ok || string(got.Start) != "t" {
		t.Fatalf("get 8: %v %v", &got, ok)
	}
	// Evict only what is as old as said.
	c.Evict(8, 2)
	if lookup("t") != 8 {
		t.Fatal("evicted a newer generation")
	}
	c.Evict(8, 3)
	if lookup("t") != 0 {
		t.Fatal("evict kept the range")
	}
	// The whole keyspace, newer: everything else goes.
	c.Insert(descAt(9, "", "", 4))
	if c.Len() != 1 || lookup("") != 9 || lookup("\xff") != 9 {
		t.Fatalf("cache %v", c.All())
	}
	all := c.All()
	for i := 1; i < len(all); i++ {
		if bytes.Compare(all[i-1].Start, all[i].Start) >= 0 {
			t.Fatalf("cache out of order: %v", all)
		}
	}
}

// TestScanResumeAfterLargestKey: when the limit cuts a scan short right
// after a key of MaxKeySize bytes, the resume key (that key and a zero
// byte) is one byte longer than any key; the scan must still go on from
// it, as server.Scan does with every resume key.
func TestScanResumeAfterLargestKey(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 3, "", "")
	big := bytes.Repeat([]byte("b"), MaxKeySize)
	apply(t, sm, 1, Command{Op: OpPut, Key: big, Value: []byte("big")})
	apply(t, sm, 2, Command{Op: OpPut, Key: []byte("c"), Value: []byte("after")})
	kvs, resume := scan(t, sm, "a", "", 1)
	if len(kvs) != 1 || !bytes.Equal(kvs[0].Key, big) || !bytes.Equal(resume, append(bytes.Clone(big), 0)) {
		t.Fatalf("first page: %d keys, resume of %d bytes", len(kvs), len(resume))
	}
	q, err := EncodeScan(resume, nil, 1)
	if err != nil {
		t.Fatalf("BUG (kv/query.go EncodeScan): the resume key after a key of MaxKeySize bytes cannot start the next scan: %v", err)
	}
	out, err := sm.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	if kvs, resume, err := DecodeScan(out); err != nil || len(kvs) != 1 || string(kvs[0].Key) != "c" || len(resume) != 0 {
		t.Fatalf("second page: %q resume %q %v, want c and done", keysOf(kvs), resume, err)
	}
}

// split applies a split of sm at key into range newID and opens the
// right-hand range's replica from the same database.
func split(t *testing.T, sm *StateMachine, index *uint64, key string, newID uint64) (left, right Descriptor, rhs *StateMachine) {
	t.Helper()
	d, _ := sm.Descriptor()
	c, err := SplitCommand(d, []byte(key), newID, false)
	if err != nil {
		t.Fatal(err)
	}
	res := applyResults(t, sm, index, c)[0]
	left, right, ok, err := SplitResult(res)
	if err != nil || !ok {
		t.Fatalf("split at %q: %+v ok=%v %v", key, res, ok, err)
	}
	if got, _ := sm.Descriptor(); !got.Equal(&left) {
		t.Fatalf("descriptor %v after the split, want %v", got, &left)
	}
	if rhs, err = New(sm.db, newID); err != nil {
		t.Fatal(err)
	}
	if got, ok := rhs.Descriptor(); !ok || !got.Equal(&right) {
		t.Fatalf("right-hand descriptor %v, want %v", got, &right)
	}
	return left, right, rhs
}

// TestSplitSessionRetry: a session write applied before a split gets its
// first result when retried, from the left-hand range (whether it still
// holds the key or not) and from the right-hand one (which got a copy of
// the sessions); a new write goes only where the key is now.
func TestSplitSessionRetry(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 2, "", "")
	const ms = 1_700_000_000_000
	w := func(c Command, seq uint64) Command { return sessionWrite(c, 42, seq, 1, seq == 1, ms) }
	writes := []Command{
		w(Command{Op: OpPut, Key: []byte("b"), Value: []byte("b1")}, 1),
		w(Command{Op: OpPut, Key: []byte("x"), Value: []byte("x1")}, 2),
		w(Command{Op: OpCAS, Key: []byte("y"), ExpectAbsent: true, Value: []byte("y1")}, 3),
	}
	var index uint64
	firsts := append(applyResults(t, sm, &index, writes[0], writes[1]), applyResults(t, sm, &index, writes[2])...)
	_, _, rhs := split(t, sm, &index, "m", 5)
	if rhs.AppliedIndex() != RangeInitialIndex || rhs.Revision() != sm.Revision() {
		t.Fatalf("right-hand range at applied %d revision %d, want %d and %d", rhs.AppliedIndex(), rhs.Revision(), RangeInitialIndex, sm.Revision())
	}
	rindex := uint64(RangeInitialIndex)
	for _, c := range []struct {
		sm    *StateMachine
		index *uint64
		write int
	}{{sm, &index, 0}, {sm, &index, 1}, {sm, &index, 2}, {rhs, &rindex, 1}, {rhs, &rindex, 2}} {
		rev := c.sm.Revision()
		if r := applyResults(t, c.sm, c.index, writes[c.write])[0]; !reflect.DeepEqual(r, firsts[c.write]) || c.sm.Revision() != rev {
			t.Fatalf("range %d: retry of write %d: %+v, want the first result %+v", c.sm.RangeID(), c.write+1, r, firsts[c.write])
		}
	}
	if r := applyResults(t, sm, &index, w(Command{Op: OpPut, Key: []byte("x"), Value: []byte("x4")}, 4))[0]; !r.KeyMismatch {
		t.Fatalf("new write of x to the left-hand range: %+v", r)
	}
	if r := applyResults(t, rhs, &rindex, w(Command{Op: OpPut, Key: []byte("x"), Value: []byte("x4")}, 4))[0]; !r.OK {
		t.Fatalf("new write of x to the right-hand range: %+v", r)
	}
	mustFind(t, rhs, "x", "x4")
	mustFind(t, rhs, "y", "y1")
	mustFind(t, sm, "b", "b1")
	if kvs, resume := scan(t, sm, "", "", 10); !slices.Equal(keysOf(kvs), []string{"b"}) || string(resume) != "m" {
		t.Fatalf("left-hand scan %q resume %q", keysOf(kvs), resume)
	}
	// The same split again: m is not in the range any more.
	old := rangeDesc(2, "", "")
	c, _ := SplitCommand(&old, []byte("m"), 5, false)
	if r := applyResults(t, sm, &index, c)[0]; !r.KeyMismatch || r.OK {
		t.Fatalf("a repeated split: %+v", r)
	}
	// A split proposed against the old descriptor: nothing applies, and
	// the result says what the descriptor is now.
	c, _ = SplitCommand(&old, []byte("f"), 6, false)
	cur, _ := sm.Descriptor()
	if now, _, ok, err := SplitResult(applyResults(t, sm, &index, c)[0]); ok || err != nil || !now.Equal(cur) {
		t.Fatalf("a stale split: ok=%v %v, descriptor %v, want %v", ok, err, &now, cur)
	}
	if ds, err := LocalDescriptors(db); err != nil || len(ds) != 2 {
		t.Fatalf("a stale split created a range: %v %v", ds, err)
	}
}

// TestSplitLeaseHalves: after a split the left half owns the lease and the
// right half holds a stub of it (its keys stay attached, its candidacies
// stand, but it never expires it there); revoking the stub deletes that
// half's attached keys and withdraws it from that half's elections only;
// the owner's revoke leaves a revocation record (its stubs elsewhere must
// go too) until OpRevoked.
func TestSplitLeaseHalves(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 2, "", "")
	var index uint64
	grant := applyResults(t, sm, &index, Command{Op: OpLeaseGrant, TTL: time.Second})[0]
	l := grant.Lease
	if !grant.Found || len(grant.Current) != 0 {
		t.Fatalf("grant's home key %q (found %v), want the range's start", grant.Current, grant.Found)
	}
	applyResults(t, sm, &index,
		Command{Op: OpPut, Key: []byte("a"), Value: []byte("left"), Lease: l},
		Command{Op: OpPut, Key: []byte("z"), Value: []byte("right"), Lease: l},
		Command{Op: OpCampaign, Key: []byte("a-elect"), Value: []byte("left"), Lease: l},
		Command{Op: OpCampaign, Key: []byte("z-elect"), Value: []byte("right"), Lease: l})
	_, _, rhs := split(t, sm, &index, "m", 5)
	if leases, _ := sm.Leases(0); leases[l] != time.Second {
		t.Fatalf("the owner lost the lease: %v", leases)
	}
	if leases, _ := rhs.Leases(0); len(leases) != 0 {
		t.Fatalf("the right half owns leases (it would expire them): %v", leases)
	}
	out, err := rhs.Query(EncodeLeaseQuery(l))
	if found, ttl, err2 := DecodeLeaseQuery(out); err != nil || err2 != nil || !found || ttl != time.Second {
		t.Fatalf("the right half has no stub of the lease: %v %v %v", found, err, err2)
	}
	if attached(t, sm, "a") != l || attached(t, rhs, "z") != l {
		t.Fatal("attachments lost in the split")
	}
	before := election(t, sm, "a-elect")
	rindex := uint64(RangeInitialIndex)
	// The right half never expires its stub.
	applyResults(t, rhs, &rindex, Command{Op: OpLeaseExpire, Lease: l})
	mustFind(t, rhs, "z", "right")
	// The owner's revocation reaches it (package ranges proposes it).
	applyResults(t, rhs, &rindex, Command{Op: OpLeaseRevoke, Lease: l})
	mustMiss(t, rhs, "z")
	mustFind(t, sm, "a", "left")
	if e := election(t, rhs, "z-elect"); len(e.Candidates) != 0 {
		t.Fatalf("right-hand election after the revoke there: %+v", e)
	}
	if e := election(t, sm, "a-elect"); !reflect.DeepEqual(e, before) {
		t.Fatalf("revoking the stub in the right-hand range rewrote the left-hand range's election a-elect: %+v, was %+v", e, before)
	}
	if revs, err := rhs.Revocations(); err != nil || len(revs) != 0 {
		t.Fatalf("a stub's revoke left revocations: %v %v", revs, err)
	}
	applyResults(t, sm, &index, Command{Op: OpLeaseExpire, Lease: l})
	mustMiss(t, sm, "a")
	if e := election(t, sm, "a-elect"); len(e.Candidates) != 0 {
		t.Fatalf("left-hand election after the expiry there: %+v", e)
	}
	revs, err := sm.Revocations()
	if err != nil || len(revs) != 1 || revs[0].Lease != l || len(revs[0].Start) != 0 || len(revs[0].End) != 0 {
		t.Fatalf("the owner's revocation record: %+v %v", revs, err)
	}
	applyResults(t, sm, &index, Command{Op: OpRevoked, Lease: l})
	if revs, err := sm.Revocations(); err != nil || len(revs) != 0 {
		t.Fatalf("after OpRevoked: %+v %v", revs, err)
	}
}

// TestVotersWithin: a merge may take place on the left range's replicas
// when they are among the frozen right range's, and neither has learners.
func TestVotersWithin(t *testing.T) {
	d := func(replicas, learners []uint64) *Descriptor {
		return &Descriptor{Replicas: replicas, Learners: learners}
	}
	for _, tc := range []struct {
		name   string
		l, r   *Descriptor
		within bool
	}{
		{"same", d([]uint64{1, 2, 3}, nil), d([]uint64{3, 2, 1}, nil), true},
		{"subset", d([]uint64{1, 2}, nil), d([]uint64{1, 2, 3}, nil), true},
		{"one outside", d([]uint64{1, 2, 4}, nil), d([]uint64{1, 2, 3}, nil), false},
		{"superset", d([]uint64{1, 2, 3}, nil), d([]uint64{1, 2}, nil), false},
		{"left learner", d([]uint64{1, 2, 3}, []uint64{3}), d([]uint64{1, 2, 3}, nil), false},
		{"right learner", d([]uint64{1, 2}, nil), d([]uint64{1, 2, 3}, []uint64{3}), false},
		{"none", d(nil, nil), d([]uint64{1}, nil), false},
	} {
		if got := tc.l.VotersWithin(tc.r); got != tc.within {
			t.Errorf("%s: VotersWithin(%v, %v) = %v", tc.name, tc.l.Replicas, tc.r.Replicas, got)
		}
	}
}
