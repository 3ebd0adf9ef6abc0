package kv

import (
	"bytes"
	"reflect"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Ranges share one Pebble database: a snapshot, restore or scan of one
// range must never reach another range's keys, whether range-local (keyed
// by range ID: a range end that bumped the kind byte instead of the range
// ID once made Restore of group 1 wipe group 2; the simulation found it) or
// global (keyed by user key: the other range's span). Ranges 1 and 2 serve
// ["", "m") and ["m", ∞) and each holds data, a lease with an attached key,
// an election and a session.
func TestRangesDoNotOverlap(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	g1 := openRange(t, db, 1, "", "m")
	g2 := openRange(t, db, 2, "m", "")
	const ms = 1_700_000_000_000
	fill := func(sm *StateMachine, key, value, name string) (lease uint64, put Command, first Result) {
		lease = apply(t, sm, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
		apply(t, sm, 2, Command{Op: OpPut, Key: []byte(key + "-leased"), Value: []byte(value), Lease: lease})
		apply(t, sm, 3, Command{Op: OpCampaign, Key: []byte(name), Value: []byte(value), Lease: lease})
		put = sessionWrite(Command{Op: OpPut, Key: []byte(key), Value: []byte(value)}, 42, 1, 1, true, ms)
		first = apply(t, sm, 4, put)
		return lease, put, first
	}
	l1, put1, first1 := fill(g1, "a", "one", "a-e1")
	l2, put2, first2 := fill(g2, "z", "two", "z-e2")
	check := func(where string) {
		t.Helper()
		mustFind(t, g1, "a", "one")
		mustFind(t, g1, "a-leased", "one")
		mustFind(t, g2, "z", "two")
		mustFind(t, g2, "z-leased", "two")
		if attached(t, g1, "a-leased") != l1 || attached(t, g2, "z-leased") != l2 {
			t.Fatalf("%s: attachments lost", where)
		}
		if e := election(t, g1, "a-e1"); len(e.Candidates) != 1 || e.Candidates[0].Lease != l1 {
			t.Fatalf("%s: range 1's election %+v", where, e)
		}
		if e := election(t, g2, "z-e2"); len(e.Candidates) != 1 || e.Candidates[0].Lease != l2 {
			t.Fatalf("%s: range 2's election %+v", where, e)
		}
		if kvs, resume := scan(t, g1, "", "", 100); len(kvs) != 2 || string(resume) != "m" {
			t.Fatalf("%s: range 1 scans %q, resume %q", where, keysOf(kvs), resume)
		}
		if kvs, resume := scan(t, g2, "m", "", 100); len(kvs) != 2 || len(resume) != 0 {
			t.Fatalf("%s: range 2 scans %q, resume %q", where, keysOf(kvs), resume)
		}
		for _, g := range []struct {
			sm    *StateMachine
			lease uint64
		}{{g1, l1}, {g2, l2}} {
			leases, _ := g.sm.Leases(0)
			if len(leases) != 1 || leases[g.lease] != time.Second {
				t.Fatalf("%s: range %d leases %v", where, g.sm.RangeID(), leases)
			}
			if g.sm.Sessions() != 1 {
				t.Fatalf("%s: range %d holds %d sessions, want 1", where, g.sm.RangeID(), g.sm.Sessions())
			}
		}
	}
	check("before any restore")

	var snap1, snap2 bytes.Buffer
	if err := g1.Snapshot(&snap1); err != nil {
		t.Fatal(err)
	}
	if err := g2.Snapshot(&snap2); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(snap1.Bytes(), []byte("two")) || bytes.Contains(snap1.Bytes(), []byte("z-e2")) {
		t.Fatal("range 1's snapshot holds range 2's data")
	}
	if bytes.Contains(snap2.Bytes(), []byte("one")) || bytes.Contains(snap2.Bytes(), []byte("a-e1")) {
		t.Fatal("range 2's snapshot holds range 1's data")
	}
	if err := g1.Restore(bytes.NewReader(snap1.Bytes()), 4); err != nil {
		t.Fatal(err)
	}
	check("after range 1's restore")
	if err := g2.Restore(bytes.NewReader(snap2.Bytes()), 4); err != nil {
		t.Fatal(err)
	}
	check("after range 2's restore")

	// Sessions are per range: the same session's write 1 is a duplicate in
	// each range, answered with that range's first result.
	for _, g := range []struct {
		sm    *StateMachine
		put   Command
		first Result
	}{{g1, put1, first1}, {g2, put2, first2}} {
		rev := g.sm.Revision()
		if r := apply(t, g.sm, 5, g.put); !reflect.DeepEqual(r, g.first) || g.sm.Revision() != rev {
			t.Fatalf("range %d retry: %+v, want the first result %+v; revision %d → %d", g.sm.RangeID(), r, g.first, rev, g.sm.Revision())
		}
	}
	// A revoke in one range deletes none of the other's keys.
	apply(t, g1, 6, Command{Op: OpLeaseRevoke, Lease: l1})
	mustMiss(t, g1, "a-leased")
	mustFind(t, g2, "z-leased", "two")
	if e := election(t, g2, "z-e2"); len(e.Candidates) != 1 {
		t.Fatalf("range 2's election after range 1's revoke: %+v", e)
	}
}
