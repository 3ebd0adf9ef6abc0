package kv

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/multiraft"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openDB(t *testing.T, fs vfs.FS) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("db", &pebble.Options{FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func apply(t *testing.T, sm *StateMachine, index uint64, c Command) Result {
	t.Helper()
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	cmds := []multiraft.Command{{Index: index, Data: b}}
	if err := sm.Apply(cmds); err != nil {
		t.Fatal(err)
	}
	res, err := DecodeResult(cmds[0].Result)
	if err != nil {
		t.Fatal(err)
	}
	return res
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
	sm, err := New(db, 7)
	if err != nil {
		t.Fatal(err)
	}
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
	// A group's keys are invisible to another group.
	other, err := New(db, 8)
	if err != nil {
		t.Fatal(err)
	}
	if found, _ := get(t, other, "b"); found {
		t.Fatal("group 8 sees group 7's key")
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
	sm, _ := New(db, 1)
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
		"unknown op":  {Op: 9, Key: []byte("k")},
		"cas expects": {Op: OpCAS, Key: []byte("k"), Expected: make([]byte, MaxValueSize+1)},
	} {
		if _, err := c.Encode(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	if _, err := (Command{Op: OpPut, Key: big[:MaxKeySize], Value: make([]byte, MaxValueSize)}).Encode(); err != nil {
		t.Errorf("largest key and value refused: %v", err)
	}
	if _, err := EncodeScan(nil, MaxScanLimit+1); !errors.Is(err, ErrInvalid) {
		t.Errorf("scan limit: got %v", err)
	}
}

func TestScanSnapshotRestore(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm, _ := New(db, 3)
	for i := range 20 {
		apply(t, sm, uint64(i+1), Command{Op: OpPut, Key: fmt.Appendf(nil, "p/%02d", i), Value: fmt.Appendf(nil, "v%d", i)})
	}
	apply(t, sm, 21, Command{Op: OpPut, Key: []byte("q"), Value: []byte("other")})
	q, _ := EncodeScan([]byte("p/"), 5)
	out, err := sm.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	kvs, more, err := DecodeScan(out)
	if err != nil || !more || len(kvs) != 5 || string(kvs[0].Key) != "p/00" || string(kvs[4].Value) != "v4" {
		t.Fatalf("scan: %v more=%v %+v", err, more, kvs)
	}

	var snap bytes.Buffer
	if err := sm.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	db2 := openDB(t, vfs.NewMem())
	defer db2.Close()
	dst, _ := New(db2, 3)
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
}

func TestGroupOf(t *testing.T) {
	seen := map[uint64]int{}
	for i := range 1000 {
		g := GroupOf(fmt.Appendf(nil, "key-%d", i), 8)
		if g < 1 || g > 8 {
			t.Fatalf("group %d outside 1..8", g)
		}
		seen[g]++
	}
	if len(seen) != 8 {
		t.Fatalf("keys reached %d of 8 groups", len(seen))
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
