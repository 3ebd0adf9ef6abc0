package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func attached(t *testing.T, sm *StateMachine, key string) uint64 {
	t.Helper()
	q, err := EncodeAttachedQuery([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	out, err := sm.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	l, err := DecodeAttachedQuery(out)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustFind(t *testing.T, sm *StateMachine, key, value string) {
	t.Helper()
	if found, kv := get(t, sm, key); !found || string(kv.Value) != value {
		t.Fatalf("%s: found=%v %q, want %q", key, found, kv.Value, value)
	}
}

func mustMiss(t *testing.T, sm *StateMachine, key string) {
	t.Helper()
	if found, kv := get(t, sm, key); found {
		t.Fatalf("%s still holds %q", key, kv.Value)
	}
}

func TestPutWithLeaseRevokeDeletesKeys(t *testing.T) {
	for _, op := range []Op{OpLeaseRevoke, OpLeaseExpire} {
		db := openDB(t, vfs.NewMem())
		sm := openRange(t, db, 1, "", "")
		l := apply(t, sm, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
		other := apply(t, sm, 2, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
		if r := apply(t, sm, 3, Command{Op: OpPut, Key: []byte("a"), Value: []byte("1"), Lease: l}); !r.OK || r.LeaseMissing {
			t.Fatalf("put with lease: %+v", r)
		}
		apply(t, sm, 4, Command{Op: OpCAS, Key: []byte("b"), ExpectAbsent: true, Value: []byte("2"), Lease: l})
		apply(t, sm, 5, Command{Op: OpPut, Key: []byte("c"), Value: []byte("3"), Lease: other})
		apply(t, sm, 6, Command{Op: OpPut, Key: []byte("d"), Value: []byte("4")})
		if attached(t, sm, "a") != l || attached(t, sm, "b") != l || attached(t, sm, "c") != other || attached(t, sm, "d") != 0 {
			t.Fatal("attachments not recorded")
		}
		rev := sm.Revision()
		r := apply(t, sm, 7, Command{Op: op, Lease: l})
		if !r.OK || r.Revision != rev+1 {
			t.Fatalf("%d: %+v, revision before %d", op, r, rev)
		}
		mustMiss(t, sm, "a")
		mustMiss(t, sm, "b")
		mustFind(t, sm, "c", "3")
		mustFind(t, sm, "d", "4")
		if attached(t, sm, "a") != 0 || attached(t, sm, "b") != 0 {
			t.Fatal("attachments of deleted keys remain")
		}
		// Putting the key again without a lease is an ordinary key.
		apply(t, sm, 8, Command{Op: OpPut, Key: []byte("a"), Value: []byte("again")})
		apply(t, sm, 9, Command{Op: OpLeaseRevoke, Lease: other})
		mustFind(t, sm, "a", "again")
		mustMiss(t, sm, "c")
		db.Close()
	}
}

func TestPutWithUnknownLeaseWritesNothing(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 1, "", "")
	apply(t, sm, 1, Command{Op: OpPut, Key: []byte("a"), Value: []byte("old")})
	rev := sm.Revision()
	r := apply(t, sm, 2, Command{Op: OpPut, Key: []byte("a"), Value: []byte("new"), Lease: 99})
	if !r.LeaseMissing || r.OK || r.Revision != rev || sm.Revision() != rev {
		t.Fatalf("put with unknown lease: %+v, revision %d → %d", r, rev, sm.Revision())
	}
	r = apply(t, sm, 3, Command{Op: OpCAS, Key: []byte("a"), Expected: []byte("old"), Value: []byte("new"), Lease: 99})
	if !r.LeaseMissing || r.OK || sm.Revision() != rev {
		t.Fatalf("CAS with unknown lease: %+v", r)
	}
	mustFind(t, sm, "a", "old")
	// A revoked lease is unknown too.
	l := apply(t, sm, 4, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	apply(t, sm, 5, Command{Op: OpLeaseRevoke, Lease: l})
	if r = apply(t, sm, 6, Command{Op: OpPut, Key: []byte("b"), Value: []byte("x"), Lease: l}); !r.LeaseMissing {
		t.Fatalf("put with a revoked lease: %+v", r)
	}
	mustMiss(t, sm, "b")
}

func TestPutWithoutLeaseOrDeleteDetaches(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 1, "", "")
	l := apply(t, sm, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	l2 := apply(t, sm, 2, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	apply(t, sm, 3, Command{Op: OpPut, Key: []byte("a"), Value: []byte("1"), Lease: l})
	apply(t, sm, 4, Command{Op: OpPut, Key: []byte("a"), Value: []byte("2")}) // detaches
	apply(t, sm, 5, Command{Op: OpPut, Key: []byte("b"), Value: []byte("1"), Lease: l})
	apply(t, sm, 6, Command{Op: OpDelete, Key: []byte("b")})
	apply(t, sm, 7, Command{Op: OpPut, Key: []byte("b"), Value: []byte("back")}) // a new key, never attached
	apply(t, sm, 8, Command{Op: OpPut, Key: []byte("c"), Value: []byte("1"), Lease: l})
	apply(t, sm, 9, Command{Op: OpPut, Key: []byte("c"), Value: []byte("2"), Lease: l2}) // moves to l2
	// A CAS that does not swap leaves the attachment alone.
	apply(t, sm, 10, Command{Op: OpCAS, Key: []byte("c"), Expected: []byte("nope"), Value: []byte("3")})
	if attached(t, sm, "a") != 0 || attached(t, sm, "b") != 0 || attached(t, sm, "c") != l2 {
		t.Fatalf("attachments a=%d b=%d c=%d", attached(t, sm, "a"), attached(t, sm, "b"), attached(t, sm, "c"))
	}
	apply(t, sm, 11, Command{Op: OpLeaseRevoke, Lease: l})
	mustFind(t, sm, "a", "2")
	mustFind(t, sm, "b", "back")
	mustFind(t, sm, "c", "2")
	apply(t, sm, 12, Command{Op: OpLeaseExpire, Lease: l2})
	mustMiss(t, sm, "c")
}

func TestAttachmentsSurviveSnapshotAndRestart(t *testing.T) {
	fs := vfs.NewMem()
	db := openDB(t, fs)
	src := openRange(t, db, 2, "", "")
	l := apply(t, src, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	apply(t, src, 2, Command{Op: OpPut, Key: []byte("a"), Value: []byte("1"), Lease: l})
	apply(t, src, 3, Command{Op: OpPut, Key: []byte("b"), Value: []byte("2")})
	var snap bytes.Buffer
	if err := src.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}

	db2 := openDB(t, vfs.NewMem())
	defer db2.Close()
	dst := openRange(t, db2, 2, "", "")
	// State the snapshot replaces: an attachment of a lease it lacks.
	stale := apply(t, dst, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	apply(t, dst, 2, Command{Op: OpPut, Key: []byte("z"), Value: []byte("stale"), Lease: stale})
	if attached(t, dst, "z") != stale {
		t.Fatal("stale attachment not recorded")
	}
	if err := dst.Restore(bytes.NewReader(snap.Bytes()), 3); err != nil {
		t.Fatal(err)
	}
	if attached(t, dst, "a") != l || attached(t, dst, "b") != 0 {
		t.Fatal("restore lost the attachment")
	}
	if attached(t, dst, "z") != 0 {
		t.Fatal("restore kept an attachment the snapshot does not have")
	}
	apply(t, dst, 4, Command{Op: OpLeaseRevoke, Lease: l})
	mustMiss(t, dst, "a")
	mustFind(t, dst, "b", "2")

	// Restart: a new state machine on the same database.
	db.Close()
	db = openDB(t, fs)
	defer db.Close()
	again, err := New(db, 2)
	if err != nil {
		t.Fatal(err)
	}
	if attached(t, again, "a") != l {
		t.Fatal("restart lost the attachment")
	}
	apply(t, again, 4, Command{Op: OpLeaseExpire, Lease: l})
	mustMiss(t, again, "a")
}

// A snapshot built by hand in the documented format (snapshot.go) with
// data and a lease but no attachment records restores, and its header's
// lease count sets the ID of the next grant. A snapshot of the format
// before ranges (FKV2) is refused.
func TestRestoreHandBuiltSnapshot(t *testing.T) {
	lease := LeaseID(1, 6)
	desc := rangeDesc(1, "", "")
	var snap []byte
	snap = append(snap, snapMagic...)
	snap = binary.BigEndian.AppendUint64(snap, 7) // revision
	snap = binary.BigEndian.AppendUint64(snap, 6) // leases granted
	snap = binary.BigEndian.AppendUint64(snap, 0) // history floor
	snap = appendBytes(snap, desc.Encode())
	snap = append(snap, kindData)
	snap = appendBytes(snap, []byte("k"))
	v := stored(5, []byte("v"), false, storedMeta{})
	snap = appendBytes(snap, v)
	snap = append(snap, kindLease)
	snap = appendBytes(snap, binary.BigEndian.AppendUint64(nil, lease))
	snap = appendBytes(snap, leaseRec{ttl: time.Second}.encode())
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm, err := New(db, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := sm.Restore(bytes.NewReader(snap), 7); err != nil {
		t.Fatal(err)
	}
	if d, ok := sm.Descriptor(); !ok || !d.Equal(&desc) {
		t.Fatalf("restored descriptor %v, want %v", d, &desc)
	}
	mustFind(t, sm, "k", "v")
	if r := apply(t, sm, 8, Command{Op: OpPut, Key: []byte("k2"), Value: []byte("x"), Lease: lease}); !r.OK {
		t.Fatalf("put with the restored lease: %+v", r)
	}
	if r := apply(t, sm, 9, Command{Op: OpLeaseGrant, TTL: time.Second}); r.Lease != LeaseID(1, 7) {
		t.Fatalf("grant after a snapshot of 6 grants: lease %#x, want %#x", r.Lease, LeaseID(1, 7))
	}
	apply(t, sm, 10, Command{Op: OpLeaseRevoke, Lease: lease})
	mustMiss(t, sm, "k2")
	mustFind(t, sm, "k", "v")

	old := append([]byte("FKV2"), snap[len(snapMagic):]...)
	if err := sm.Restore(bytes.NewReader(old), 11); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("FKV2 snapshot: %v, want ErrCorrupt", err)
	}
	// A snapshot whose data lies outside its descriptor's span is corrupt.
	narrow := rangeDesc(1, "m", "")
	bad := append([]byte(snapMagic), make([]byte, 24)...)
	bad = appendBytes(bad, narrow.Encode())
	bad = append(bad, kindData)
	bad = appendBytes(bad, []byte("k"))
	bad = appendBytes(bad, v)
	if err := sm.Restore(bytes.NewReader(bad), 11); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("snapshot of [m, ∞) holding k: %v, want ErrCorrupt", err)
	}
	mustFind(t, sm, "k", "v")
}

// Puts written to the log before leases on keys existed decode as puts
// without a lease; a lease of 0 is never encoded.
func TestPutEncodingCompatible(t *testing.T) {
	plain, _ := Command{Op: OpPut, Key: []byte("k"), Value: []byte("v")}.Encode()
	withLease, _ := Command{Op: OpPut, Key: []byte("k"), Value: []byte("v"), Lease: 5}.Encode()
	if !bytes.Equal(withLease[:len(plain)], plain) || len(withLease) != len(plain)+8 {
		t.Fatalf("encodings %x %x", plain, withLease)
	}
	c, err := decodeCommand(withLease)
	if err != nil || c.Lease != 5 {
		t.Fatalf("decoded %+v %v", c, err)
	}
	if c, err = decodeCommand(plain); err != nil || c.Lease != 0 {
		t.Fatalf("decoded %+v %v", c, err)
	}
	bad := binary.BigEndian.AppendUint64(bytes.Clone(plain), 0)
	if _, err := decodeCommand(bad); err == nil {
		t.Fatal("decoded an explicit lease 0")
	}
}

// One range's restore leaves another range's attachments alone (two
// ranges of disjoint spans in one database).
func TestAttachmentRangesDoNotOverlap(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	g1 := openRange(t, db, 1, "", "b")
	g2 := openRange(t, db, 2, "b", "")
	l1 := apply(t, g1, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	apply(t, g1, 2, Command{Op: OpPut, Key: []byte("a"), Value: []byte("one"), Lease: l1})
	l2 := apply(t, g2, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	apply(t, g2, 2, Command{Op: OpPut, Key: []byte("b"), Value: []byte("two"), Lease: l2})
	if l1 == l2 {
		t.Fatalf("ranges 1 and 2 granted the same lease ID %#x", l1)
	}
	var snap bytes.Buffer
	if err := g1.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	if err := g1.Restore(bytes.NewReader(snap.Bytes()), 2); err != nil {
		t.Fatal(err)
	}
	if attached(t, g2, "b") != l2 {
		t.Fatal("range 2 lost its attachment to range 1's restore")
	}
	if attached(t, g1, "a") != l1 {
		t.Fatal("range 1 lost its attachment to its own restore")
	}
	// Range 2's lease does not exist in range 1.
	if r := apply(t, g1, 3, Command{Op: OpPut, Key: []byte("a"), Value: []byte("x"), Lease: l2}); !r.LeaseMissing {
		t.Fatalf("range 1 accepted range 2's lease: %+v", r)
	}
	apply(t, g2, 3, Command{Op: OpLeaseRevoke, Lease: l2})
	mustMiss(t, g2, "b")
	mustFind(t, g1, "a", "one")
	apply(t, g1, 4, Command{Op: OpLeaseRevoke, Lease: l1})
	mustMiss(t, g1, "a")
}

// A state machine that skips attachment lookups while its group has no
// attached key must still see the attachments it starts with, after a
// restart or a restore: a put without a lease detaches the key there too,
// so revoking the lease leaves it alone.
func TestDetachAfterRestartAndRestore(t *testing.T) {
	fs := vfs.NewMem()
	db := openDB(t, fs)
	sm := openRange(t, db, 3, "", "")
	l := apply(t, sm, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	apply(t, sm, 2, Command{Op: OpPut, Key: []byte("a"), Value: []byte("1"), Lease: l})
	var snap bytes.Buffer
	if err := sm.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	db.Close()

	db = openDB(t, fs)
	defer db.Close()
	again, err := New(db, 3)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, again, 3, Command{Op: OpPut, Key: []byte("a"), Value: []byte("2")})
	apply(t, again, 4, Command{Op: OpLeaseRevoke, Lease: l})
	mustFind(t, again, "a", "2")

	db2 := openDB(t, vfs.NewMem())
	defer db2.Close()
	fresh, err := New(db2, 3) // uninitialized: it waits for a snapshot
	if err != nil {
		t.Fatal(err)
	}
	if fresh.mayAttach {
		t.Fatal("an empty range claims attached keys")
	}
	if err := fresh.Restore(bytes.NewReader(snap.Bytes()), 2); err != nil {
		t.Fatal(err)
	}
	apply(t, fresh, 3, Command{Op: OpPut, Key: []byte("a"), Value: []byte("2")})
	apply(t, fresh, 4, Command{Op: OpLeaseRevoke, Lease: l})
	mustFind(t, fresh, "a", "2")
}
