package kv

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/multiraft"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openDB(t testing.TB, fs vfs.FS) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("db", &pebble.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// bs returns s as a key bound: nil for "" (the beginning or the end of the
// keyspace).
func bs(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

// rangeDesc returns the descriptor of range id over [start, end) ("" end:
// to the end of the keyspace), generation 1, on node 1.
func rangeDesc(id uint64, start, end string) Descriptor {
	return Descriptor{ID: id, Start: bs(start), End: bs(end), Replicas: []uint64{1}, Generation: 1}
}

// Filler ranges the meta range's index names around its own span when a
// test bootstraps it over part of the keyspace.
const fillerLeft, fillerRight = 1_000_001, 1_000_002

// openRange bootstraps range id's replica over [start, end) in db and
// opens its state machine. The meta range (1) gets an index that tiles the
// keyspace: its own span, and filler ranges before and after it.
func openRange(t testing.TB, db *pebble.DB, id uint64, start, end string, opts ...Option) *StateMachine {
	t.Helper()
	d := rangeDesc(id, start, end)
	var all []Descriptor
	if id == MetaRangeID {
		if start != "" {
			all = append(all, rangeDesc(fillerLeft, "", start))
		}
		all = append(all, d)
		if end != "" {
			all = append(all, rangeDesc(fillerRight, end, ""))
		}
	}
	if err := Bootstrap(db, d, all); err != nil {
		t.Fatal(err)
	}
	sm, err := New(db, id, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := sm.Descriptor(); !ok || !got.Equal(&d) {
		t.Fatalf("range %d opened with descriptor %v (initialized %v), want %v", id, got, ok, &d)
	}
	return sm
}

func apply(t testing.TB, sm *StateMachine, index uint64, c Command) Result {
	t.Helper()
	res, err := applyRaw(t, sm, index, c)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// applyRaw applies c at index and returns its result and the error
// DecodeResult gives it (an error result's).
func applyRaw(t testing.TB, sm *StateMachine, index uint64, c Command) (Result, error) {
	t.Helper()
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	cmds := []multiraft.Command{{Index: index, Data: b}}
	if err := sm.Apply(cmds); err != nil {
		t.Fatal(err)
	}
	return DecodeResult(cmds[0].Result)
}

func get(t *testing.T, sm *StateMachine, key string) (bool, KeyValue) {
	t.Helper()
	q, err := EncodeGet([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	out, err := sm.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	found, kv, err := DecodeGet(out)
	if err != nil {
		t.Fatal(err)
	}
	return found, kv
}

func TestPutGetDeleteCAS(t *testing.T) {
	fs := vfs.NewMem()
	db := openDB(t, fs)
	defer db.Close()
	sm := openRange(t, db, 7, "", "m")
	if r := apply(t, sm, 1, Command{Op: OpPut, Key: []byte("a"), Value: []byte("1")}); r.Revision != 1 || !r.OK {
		t.Fatalf("put: %+v", r)
	}
	if found, kv := get(t, sm, "a"); !found || string(kv.Value) != "1" || kv.Revision != 1 {
		t.Fatalf("get a: %v %+v", found, kv)
	}
	if r := apply(t, sm, 2, Command{Op: OpCAS, Key: []byte("a"), Expected: []byte("x"), Value: []byte("2")}); r.OK || string(r.Current) != "1" {
		t.Fatalf("cas with wrong expectation swapped: %+v", r)
	}
	if r := apply(t, sm, 3, Command{Op: OpCAS, Key: []byte("a"), Expected: []byte("1"), Value: []byte("2")}); !r.OK || r.Revision != 2 {
		t.Fatalf("cas: %+v", r)
	}
	if r := apply(t, sm, 4, Command{Op: OpCAS, Key: []byte("b"), ExpectAbsent: true, Value: []byte("new")}); !r.OK {
		t.Fatalf("cas absent: %+v", r)
	}
	if r := apply(t, sm, 5, Command{Op: OpDelete, Key: []byte("a")}); !r.OK || r.Revision != 4 {
		t.Fatalf("delete: %+v", r)
	}
	if r := apply(t, sm, 6, Command{Op: OpDelete, Key: []byte("a")}); r.OK || r.Revision != 4 {
		t.Fatalf("second delete: %+v", r)
	}
	if found, _ := get(t, sm, "a"); found {
		t.Fatal("a still found after delete")
	}
	// A range's keys are not another range's: range 8 serves the span
	// after range 7's, refuses to read range 7's key, and its own keys do
	// not show in range 7's scans.
	other := openRange(t, db, 8, "m", "")
	if q, _ := EncodeGet([]byte("b")); true {
		if _, err := other.Query(q); !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("range 8 read range 7's key: %v, want ErrKeyMismatch", err)
		}
	}
	apply(t, other, 1, Command{Op: OpPut, Key: []byte("n"), Value: []byte("eight")})
	if kvs, resume := scan(t, sm, "", "", 10); len(kvs) != 1 || string(kvs[0].Key) != "b" || string(resume) != "m" {
		t.Fatalf("range 7 scans %v, resume %q: want b alone, resume at m", keysOf(kvs), resume)
	}
	// Applied index and revision survive a reopen once synced; before, the
	// reopened group is as of its last write to Pebble (the CAS at 4,
	// which wrote the held put), and the log replays the rest.
	if early, err := New(db, 7); err != nil || early.AppliedIndex() != 4 || early.Revision() != 3 {
		t.Fatalf("reopened unsynced: applied %d revision %d err %v, want 4 and 3", early.AppliedIndex(), early.Revision(), err)
	}
	if err := sm.Sync(); err != nil {
		t.Fatal(err)
	}
	again, err := New(db, 7)
	if err != nil {
		t.Fatal(err)
	}
	if again.AppliedIndex() != 6 || again.Revision() != 4 {
		t.Fatalf("reloaded applied %d revision %d, want 6 and 4", again.AppliedIndex(), again.Revision())
	}
}

func TestBadCommandIsAnsweredNotFatal(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 1, "", "")
	cmds := []multiraft.Command{{Index: 1, Data: []byte{0xff, 1, 2}}}
	if err := sm.Apply(cmds); err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeResult(cmds[0].Result); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("got %v, want ErrBadCommand", err)
	}
	if sm.AppliedIndex() != 1 {
		t.Fatalf("applied %d, want 1", sm.AppliedIndex())
	}
}

func TestLimits(t *testing.T) {
	big := bytes.Repeat([]byte("k"), MaxKeySize+1)
	for name, c := range map[string]Command{
		"empty key":   {Op: OpPut, Value: []byte("v")},
		"key":         {Op: OpPut, Key: big},
		"value":       {Op: OpPut, Key: []byte("k"), Value: make([]byte, MaxValueSize+1)},
		"unknown op":  {Op: opLast + 1, Key: []byte("k")},
		"op 0":        {Key: []byte("k")},
		"cas expects": {Op: OpCAS, Key: []byte("k"), Expected: make([]byte, MaxValueSize+1)},
		"end":         {Op: OpDeleteRange, Key: []byte("a"), End: big},
		"empty span":  {Op: OpDeleteRange, Key: []byte("b"), End: []byte("b")},
		"inverted":    {Op: OpDeleteRange, Key: []byte("c"), End: []byte("b")},
		"meta update": {Op: OpMetaUpdate, Value: []byte{1, 2, 3}},
	} {
		if _, err := c.Encode(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	if _, err := (Command{Op: OpPut, Key: big[:MaxKeySize], Value: make([]byte, MaxValueSize)}).Encode(); err != nil {
		t.Errorf("largest key and value refused: %v", err)
	}
	if _, err := EncodeScan(nil, nil, MaxScanLimit+1); !errors.Is(err, ErrInvalid) {
		t.Errorf("scan limit: got %v", err)
	}
	if _, err := EncodeScan([]byte("b"), []byte("a"), 10); !errors.Is(err, ErrInvalid) {
		t.Errorf("inverted scan span: got %v", err)
	}
	// The whole keyspace, and a span from its beginning, encode.
	if _, err := (Command{Op: OpDeleteRange}).Encode(); err != nil {
		t.Errorf("delete of the whole keyspace refused: %v", err)
	}
	if _, err := (Command{Op: OpDeleteRange, End: []byte("m")}).Encode(); err != nil {
		t.Errorf("delete of [\"\", m) refused: %v", err)
	}
}

func TestScanSnapshotRestore(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 3, "", "")
	for i := range 20 {
		apply(t, sm, uint64(i+1), Command{Op: OpPut, Key: fmt.Appendf(nil, "p/%02d", i), Value: fmt.Appendf(nil, "v%d", i)})
	}
	apply(t, sm, 21, Command{Op: OpPut, Key: []byte("q"), Value: []byte("other")})
	kvs, resume := scan(t, sm, "p/", string(PrefixEnd([]byte("p/"))), 5)
	if len(kvs) != 5 || string(kvs[0].Key) != "p/00" || string(kvs[4].Value) != "v4" || string(resume) != "p/04\x00" {
		t.Fatalf("scan: resume=%q %+v", resume, kvs)
	}
	// The prefix's last page ends the span: no resume, and q is not in it.
	if kvs, resume = scan(t, sm, "p/15", string(PrefixEnd([]byte("p/"))), 5); len(kvs) != 5 || string(kvs[4].Key) != "p/19" || len(resume) != 0 {
		t.Fatalf("last page: %v resume=%q", keysOf(kvs), resume)
	}

	var snap bytes.Buffer
	if err := sm.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	db2 := openDB(t, vfs.NewMem())
	defer db2.Close()
	dst := openRange(t, db2, 3, "", "")
	apply(t, dst, 1, Command{Op: OpPut, Key: []byte("stale"), Value: []byte("x")})
	if err := dst.Restore(bytes.NewReader(snap.Bytes()), 21); err != nil {
		t.Fatal(err)
	}
	if found, _ := get(t, dst, "stale"); found {
		t.Fatal("restore kept a key the snapshot does not have")
	}
	if found, kv := get(t, dst, "p/07"); !found || string(kv.Value) != "v7" || kv.Revision != 8 {
		t.Fatalf("restored p/07: %v %+v", found, kv)
	}
	if dst.AppliedIndex() != 21 || dst.Revision() != 21 {
		t.Fatalf("restored applied %d revision %d", dst.AppliedIndex(), dst.Revision())
	}
	if err := dst.Restore(bytes.NewReader([]byte("garbage!!!!!!")), 30); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("garbage snapshot: %v", err)
	}
	// A snapshot of another range is refused, and changes nothing.
	other := openRange(t, db, 4, "zz", "")
	var osnap bytes.Buffer
	if err := other.Snapshot(&osnap); err != nil {
		t.Fatal(err)
	}
	if err := dst.Restore(bytes.NewReader(osnap.Bytes()), 30); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("snapshot of range 4 restored into range 3: %v", err)
	}
	mustFind(t, dst, "p/07", "v7")
}

// TestInitialSplits: n initial ranges cut the keyspace of hex keys into n
// parts of nearly equal size, ordered, each key in exactly one part.
func TestInitialSplits(t *testing.T) {
	if s := InitialSplits(1); len(s) != 0 {
		t.Fatalf("one range split at %q", s)
	}
	if s := InitialSplits(0); len(s) != 0 {
		t.Fatalf("no range split at %q", s)
	}
	rng := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{2, 3, 5, 7, 8, 15, 16, 17, 100, 255, 256, 257, 1000, 4096, 5000} {
		splits := InitialSplits(n)
		if len(splits) != n-1 {
			t.Fatalf("n=%d: %d split keys, want %d", n, len(splits), n-1)
		}
		d := len(splits[0])
		space := uint64(1) << (4 * d)
		// Part i is [bounds[i], bounds[i+1]) as a d-digit number.
		bounds := []uint64{0}
		for i, s := range splits {
			if len(s) != d {
				t.Fatalf("n=%d: split keys %q and %q differ in length", n, splits[0], s)
			}
			v, err := strconv.ParseUint(string(s), 16, 64)
			if err != nil || strings.ToLower(string(s)) != string(s) {
				t.Fatalf("n=%d: split key %q is not lowercase hex: %v", n, s, err)
			}
			if i > 0 && bytes.Compare(splits[i-1], s) >= 0 {
				t.Fatalf("n=%d: split keys out of order: %q then %q", n, splits[i-1], s)
			}
			bounds = append(bounds, v)
		}
		bounds = append(bounds, space)
		lo, hi := space, uint64(0)
		for i := range n {
			size := bounds[i+1] - bounds[i]
			lo, hi = min(lo, size), max(hi, size)
		}
		// Sizes differ by under 1/16 of an even part (space/n).
		if lo == 0 || 16*uint64(n)*(hi-lo) >= space {
			t.Fatalf("n=%d: parts of %d to %d of %d: differ by 1/16 of a part or more", n, lo, hi, space)
		}
		hits := make([]int, n)
		for range min(2000, max(50, 200000/n)) {
			key := fmt.Appendf(nil, "%016x", rng.Uint64())
			in := -1
			for i := range n {
				part := Descriptor{ID: uint64(i + 1), Replicas: []uint64{1}}
				if i > 0 {
					part.Start = splits[i-1]
				}
				if i < n-1 {
					part.End = splits[i]
				}
				if part.Contains(key) {
					if in >= 0 {
						t.Fatalf("n=%d: key %s is in parts %d and %d", n, key, in, i)
					}
					in = i
				}
			}
			if in < 0 {
				t.Fatalf("n=%d: key %s is in no part", n, key)
			}
			hits[in]++
		}
		if n <= 16 {
			for i, h := range hits {
				if h == 0 {
					t.Fatalf("n=%d: no random key fell in part %d (%v)", n, i, hits)
				}
			}
		}
	}
}

// TestResultSize: size is exact (encode allocates once, and applyHeld
// slices one buffer by it), and results round-trip.
func TestResultSize(t *testing.T) {
	for _, r := range []Result{
		{},
		{Revision: 1 << 60, OK: true},
		{Found: true, Current: bytes.Repeat([]byte{'c'}, 200), CurrentRevision: 9},
		{Err: string(bytes.Repeat([]byte{'e'}, 20000)), Lease: 3, Token: 4},
	} {
		b := r.encode()
		if len(b) != r.size() || cap(b) != r.size() {
			t.Fatalf("size %d, encoded %d bytes (cap %d)", r.size(), len(b), cap(b))
		}
		if r.Err != "" {
			continue // decodes to an error
		}
		got, err := DecodeResult(b)
		if err != nil || got.Revision != r.Revision || got.OK != r.OK || !bytes.Equal(got.Current, r.Current) || got.Token != r.Token {
			t.Fatalf("round trip of %+v: %+v, %v", r, got, err)
		}
	}
}
