package kv

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla/flotilla/multiraft"
)

// sessionWrite returns cmd as a write of session id, number seq, with the
// client's floor acked, stamped at ms.
func sessionWrite(cmd Command, id, seq, acked uint64, register bool, ms int64) Command {
	cmd.Session, cmd.Seq, cmd.Acked, cmd.Register, cmd.Time = id, seq, acked, register, ms
	return cmd
}

// TestSessionDedupAcrossSnapshotAndRestart: the same write delivered twice
// is applied once — in one apply, in later applies, after a snapshot is
// restored elsewhere and after a restart — and the duplicate gets the first
// result. The same run with dedup off (WithoutDedup) applies the duplicate
// and brings back an overwritten value: the negative control.
func TestSessionDedupAcrossSnapshotAndRestart(t *testing.T) {
	for _, naive := range []bool{false, true} {
		name := "dedup"
		if naive {
			name = "naive"
		}
		t.Run(name, func(t *testing.T) {
			var opts []Option
			if naive {
				opts = append(opts, WithoutDedup())
			}
			fs := vfs.NewMem()
			db := openDB(t, fs)
			sm := openRange(t, db, 3, "", "", opts...)
			const ms = 1_700_000_000_000
			put := func(key, value string) Command { return Command{Op: OpPut, Key: []byte(key), Value: []byte(value)} }
			first := sessionWrite(put("k", "v1"), 42, 1, 1, true, ms)
			r1 := apply(t, sm, 1, first)
			// Another client writes k; then the first write arrives again (a
			// retry, a duplicated or delayed message).
			apply(t, sm, 2, sessionWrite(put("k", "v2"), 77, 1, 1, true, ms+1))
			dup := apply(t, sm, 3, first)
			violations := 0
			check := func(where string, r Result) {
				t.Helper()
				found, kv := get(t, sm, "k")
				if !found || string(kv.Value) != "v2" || !reflect.DeepEqual(r, r1) {
					violations++
					if !naive {
						t.Errorf("%s: k=%q (want v2), duplicate result %+v (want the first, %+v)", where, kv.Value, r, r1)
					}
				}
			}
			check("duplicate after a later put", dup)

			// Two copies in one Apply (the held path), then a CAS and its
			// copy (the Pebble path).
			second := sessionWrite(put("j", "w1"), 42, 2, 1, false, ms+2)
			b, _ := second.Encode()
			cmds := []multiraft.Command{{Index: 4, Data: b}, {Index: 5, Data: b}}
			if err := sm.Apply(cmds); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(cmds[0].Result, cmds[1].Result) {
				violations++
				if !naive {
					t.Errorf("two copies in one apply got %x and %x", cmds[0].Result, cmds[1].Result)
				}
			}
			cas := sessionWrite(Command{Op: OpCAS, Key: []byte("c"), ExpectAbsent: true, Value: []byte("x")}, 42, 3, 1, false, ms+3)
			rc := apply(t, sm, 6, cas)
			if rc2 := apply(t, sm, 7, cas); rc2.OK != rc.OK || !rc.OK {
				violations++
				if !naive {
					t.Errorf("CAS copy: first %+v, copy %+v", rc, rc2)
				}
			}

			// A snapshot restored into a fresh replica keeps the sessions.
			var snap bytes.Buffer
			if err := sm.Snapshot(&snap); err != nil {
				t.Fatal(err)
			}
			fs2 := vfs.NewMem()
			db2 := openDB(t, fs2)
			defer db2.Close()
			sm2, err := New(db2, 3, opts...)
			if err != nil {
				t.Fatal(err)
			}
			if err := sm2.Restore(bytes.NewReader(snap.Bytes()), 7); err != nil {
				t.Fatal(err)
			}
			orig := sm
			sm = sm2
			check("duplicate after restoring a snapshot", apply(t, sm2, 8, first))
			sm = orig

			// A restart reloads them from Pebble.
			if err := sm.Sync(); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			db = openDB(t, fs)
			defer db.Close()
			if sm, err = New(db, 3, opts...); err != nil {
				t.Fatal(err)
			}
			check("duplicate after a restart", apply(t, sm, 8, first))
			if naive && violations == 0 {
				t.Fatal("with dedup off the duplicates did no harm: the test cannot tell dedup from none")
			}
		})
	}
}

// TestSessionUnknownStaleAndExpiry: a write of a session the group does
// not have is refused unless it registers; a write below the session's
// floor is refused as stale; a session idle for SessionTTL by the group's
// clock expires. Nothing refused is written.
func TestSessionUnknownStaleAndExpiry(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 1, "", "")
	const ms = 1_700_000_000_000
	put := func(v string) Command { return Command{Op: OpPut, Key: []byte("k"), Value: []byte(v)} }
	if r := apply(t, sm, 1, sessionWrite(put("a"), 9, 1, 1, false, ms)); !r.SessionUnknown || r.OK {
		t.Fatalf("unregistered session: %+v", r)
	}
	if found, _ := get(t, sm, "k"); found {
		t.Fatal("a refused write was applied")
	}
	if r := apply(t, sm, 2, sessionWrite(put("b"), 9, 2, 2, true, ms)); !r.OK || r.Revision != 1 {
		t.Fatalf("registering write: %+v", r)
	}
	// Number 3 applies; number 4 says everything below 4 was answered, so
	// a late copy of 3 is stale.
	three := sessionWrite(put("c"), 9, 3, 2, false, ms)
	if r := apply(t, sm, 3, three); !r.OK {
		t.Fatalf("write 3: %+v", r)
	}
	if r := apply(t, sm, 4, sessionWrite(put("b"), 9, 4, 4, false, ms)); !r.OK {
		t.Fatalf("write 4: %+v", r)
	}
	if r := apply(t, sm, 5, three); !r.SessionStale || r.OK {
		t.Fatalf("late copy of an answered write: %+v", r)
	}
	if _, kv := get(t, sm, "k"); string(kv.Value) != "b" {
		t.Fatalf("k=%q after stale writes, want b", kv.Value)
	}
	if sm.Sessions() != 1 {
		t.Fatalf("%d sessions, want 1", sm.Sessions())
	}
	// Another session's write moves the clock past the TTL: session 9
	// expires, and its next write is refused until it registers again.
	late := ms + SessionTTL.Milliseconds() + time.Second.Milliseconds()
	apply(t, sm, 6, sessionWrite(Command{Op: OpPut, Key: []byte("x"), Value: []byte("1")}, 10, 1, 1, true, late))
	if sm.Sessions() != 1 {
		t.Fatalf("%d sessions after the TTL, want 1 (session 9 expired)", sm.Sessions())
	}
	if r := apply(t, sm, 7, sessionWrite(put("d"), 9, 6, 6, false, late)); !r.SessionUnknown {
		t.Fatalf("write of an expired session: %+v", r)
	}
	// The clock never goes back: an earlier stamp does not revive anything.
	if r := apply(t, sm, 8, sessionWrite(put("e"), 9, 6, 6, false, ms)); !r.SessionUnknown {
		t.Fatalf("write of an expired session with an old stamp: %+v", r)
	}
}

// TestSessionCommandEncoding: session fields survive encoding, and
// malformed ones are refused.
func TestSessionCommandEncoding(t *testing.T) {
	c := Command{Op: OpCAS, Key: []byte("k"), Value: []byte("v"), Expected: []byte("e"), Lease: 5,
		Session: 1 << 60, Seq: 300, Acked: 299, Register: true, Time: 1_700_000_000_123}
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := decodeCommand(b)
	if err != nil {
		t.Fatal(err)
	}
	if d.Session != c.Session || d.Seq != c.Seq || d.Acked != c.Acked || !d.Register || d.Time != c.Time || d.Lease != 5 || string(d.Expected) != "e" {
		t.Fatalf("decoded %+v from %+v", d, c)
	}
	for _, bad := range []Command{
		{Op: OpPut, Key: []byte("k"), Seq: 1},
		{Op: OpPut, Key: []byte("k"), Register: true},
		{Op: OpPut, Key: []byte("k"), Time: -1},
	} {
		if _, err := bad.Encode(); err == nil {
			t.Errorf("%+v encoded", bad)
		}
	}
	// Unknown flag bits are refused.
	plain, _ := Command{Op: OpPut, Key: []byte("k")}.Encode()
	plain[1+1+1+1] |= 0x80 // op, key len, key, value len: the flag byte
	if _, err := decodeCommand(plain); err == nil {
		t.Error("a command with an unknown flag decoded")
	}
}

// TestSessionBoundsAndBigResults: results as large as a value (a CAS
// answers with the key's value) stay restorable from a snapshot, and a
// session over MaxSessionBytes drops its oldest results: their retries are
// then refused as stale (the client reports them ambiguous), never applied
// twice.
func TestSessionBoundsAndBigResults(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	src := openRange(t, db, 2, "", "")
	const ms = 1_700_000_000_000
	big := bytes.Repeat([]byte("x"), 600<<10)
	// Write 1 stays unanswered (the floor stays 1); writes 2.. are CAS that
	// apply and answer with their 600 KiB values.
	cas := func(i int, seq uint64) Command {
		return sessionWrite(Command{Op: OpCAS, Key: fmt.Appendf(nil, "k%d", i), ExpectAbsent: true, Value: big}, 42, seq, 1, seq == 2, ms)
	}
	n := MaxSessionBytes/len(big) + 3
	for i := range n {
		if r := apply(t, src, uint64(i+1), cas(i, uint64(i+2))); !r.OK {
			t.Fatalf("CAS %d: %+v", i, r)
		}
	}
	var snap bytes.Buffer
	if err := src.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	db2 := openDB(t, vfs.NewMem())
	defer db2.Close()
	dst, err := New(db2, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Restore(bytes.NewReader(snap.Bytes()), uint64(n)); err != nil {
		t.Fatalf("a follower cannot restore a snapshot with big session results: %v", err)
	}
	for name, sm := range map[string]*StateMachine{"leader": src, "restored": dst} {
		// The first CAS's result was dropped to stay under the bound: its
		// retry is stale. The last one's is kept: its retry is answered.
		if r := apply(t, sm, uint64(n+1), cas(0, 2)); !r.SessionStale {
			t.Errorf("%s: retry of the oldest CAS: %+v, want stale", name, r)
		}
		if r := apply(t, sm, uint64(n+2), cas(n-1, uint64(n+1))); !r.OK || r.SessionStale || len(r.Current) != len(big) {
			t.Errorf("%s: retry of the newest CAS: OK=%v stale=%v, want its first answer", name, r.OK, r.SessionStale)
		}
	}
}
