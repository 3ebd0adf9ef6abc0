package kv

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func election(t *testing.T, sm *StateMachine, name string) Election {
	t.Helper()
	q, err := EncodeElectionQuery([]byte(name))
	if err != nil {
		t.Fatal(err)
	}
	out, err := sm.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	e, err := DecodeElection(out)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestLeaseElectionQueueTokensAndExpiry(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	sm := openRange(t, db, 2, "", "")
	w := sm.WatchElection([]byte("e"))
	defer w.Close()
	a := apply(t, sm, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	b := apply(t, sm, 2, Command{Op: OpLeaseGrant, TTL: 2 * time.Second}).Lease
	if a != LeaseID(2, 1) || b != LeaseID(2, 2) {
		t.Fatalf("lease IDs %#x %#x, want %#x %#x", a, b, LeaseID(2, 1), LeaseID(2, 2))
	}
	if leases, _ := sm.Leases(0); leases[a] != time.Second || leases[b] != 2*time.Second {
		t.Fatalf("lease table %v", leases)
	}
	r := apply(t, sm, 3, Command{Op: OpCampaign, Key: []byte("e"), Value: []byte("A"), Lease: a})
	if !r.OK || !r.Found || r.Token != r.Revision {
		t.Fatalf("first campaign: %+v", r)
	}
	tokA := r.Token
	r = apply(t, sm, 4, Command{Op: OpCampaign, Key: []byte("e"), Value: []byte("B"), Lease: b})
	if !r.OK || r.Found || r.Lease != a || string(r.Current) != "A" {
		t.Fatalf("second campaign: %+v", r)
	}
	// Campaigning again keeps the place and changes nothing.
	rev := sm.Revision()
	if r = apply(t, sm, 5, Command{Op: OpCampaign, Key: []byte("e"), Value: []byte("B"), Lease: b}); r.Found || sm.Revision() != rev {
		t.Fatalf("repeated campaign: %+v, revision %d → %d", r, rev, sm.Revision())
	}
	// Expiring A elects B with a greater token.
	if r = apply(t, sm, 6, Command{Op: OpLeaseExpire, Lease: a}); !r.OK {
		t.Fatalf("expire: %+v", r)
	}
	e := election(t, sm, "e")
	if l, ok := e.Leader(); !ok || l.Lease != b || e.Token <= tokA {
		t.Fatalf("after expiry: %+v", e)
	}
	if r = apply(t, sm, 7, Command{Op: OpCampaign, Key: []byte("e"), Value: []byte("A"), Lease: a}); r.OK {
		t.Fatalf("campaign with an expired lease: %+v", r)
	}
	// Snapshot and restore keep leases and elections.
	var snap bytes.Buffer
	if err := sm.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	db2 := openDB(t, vfs.NewMem())
	defer db2.Close()
	dst, err := New(db2, 2) // uninitialized: it waits for a snapshot
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Restore(bytes.NewReader(snap.Bytes()), 7); err != nil {
		t.Fatal(err)
	}
	if got := election(t, dst, "e"); got.Token != e.Token || len(got.Candidates) != 1 || got.Candidates[0].Lease != b {
		t.Fatalf("restored election %+v, want %+v", got, e)
	}
	if leases, _ := dst.Leases(0); len(leases) != 1 || leases[b] != 2*time.Second {
		t.Fatalf("restored leases %v", leases)
	}
	// Resign is idempotent; the last resign leaves no leader.
	if r = apply(t, sm, 8, Command{Op: OpResign, Key: []byte("e"), Lease: b}); !r.OK || r.Lease != 0 {
		t.Fatalf("resign: %+v", r)
	}
	if r = apply(t, sm, 9, Command{Op: OpResign, Key: []byte("e"), Lease: b}); r.OK {
		t.Fatalf("second resign: %+v", r)
	}
	// The watcher saw every change in order.
	evs, skipped, ok := w.Next(nil)
	if !ok || skipped {
		t.Fatalf("watch: ok=%v skipped=%v", ok, skipped)
	}
	var holders []uint64
	var last uint64
	for _, ev := range evs {
		if ev.Election.ModRevision <= last {
			t.Fatalf("watch revisions out of order: %+v", evs)
		}
		last = ev.Election.ModRevision
		l, _ := ev.Election.Leader()
		holders = append(holders, l.Lease)
	}
	if want := []uint64{a, a, b, 0}; len(holders) != len(want) || holders[0] != a || holders[2] != b || holders[3] != 0 {
		t.Fatalf("watched holders %v, want %v", holders, want)
	}
}

// Leases and elections of one range survive another range's restore (two
// ranges of disjoint spans in one database).
func TestLeaseRangesDoNotOverlap(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	g1 := openRange(t, db, 1, "", "b")
	g2 := openRange(t, db, 2, "b", "")
	l1 := apply(t, g1, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	apply(t, g1, 2, Command{Op: OpCampaign, Key: []byte("a-election"), Value: []byte("one"), Lease: l1})
	l2 := apply(t, g2, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	apply(t, g2, 2, Command{Op: OpCampaign, Key: []byte("e"), Value: []byte("two"), Lease: l2})
	if l1 != LeaseID(1, 1) || l2 != LeaseID(2, 1) {
		t.Fatalf("lease IDs %#x %#x, want %#x %#x", l1, l2, LeaseID(1, 1), LeaseID(2, 1))
	}
	var snap bytes.Buffer
	if err := g1.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(snap.Bytes(), []byte("two")) {
		t.Fatal("range 1's snapshot holds range 2's election")
	}
	if err := g1.Restore(bytes.NewReader(snap.Bytes()), 2); err != nil {
		t.Fatal(err)
	}
	if leases, _ := g1.Leases(0); len(leases) != 1 || leases[l1] != time.Second {
		t.Fatalf("range 1 leases %v", leases)
	}
	if e := election(t, g1, "a-election"); len(e.Candidates) != 1 || e.Candidates[0].Lease != l1 {
		t.Fatalf("range 1 election after its restore: %+v", e)
	}
	g2b, err := New(db, 2)
	if err != nil {
		t.Fatal(err)
	}
	if leases, _ := g2b.Leases(0); len(leases) != 1 || leases[l2] != time.Second {
		t.Fatalf("range 2 leases after range 1's restore: %v", leases)
	}
	if e := election(t, g2, "e"); len(e.Candidates) != 1 || e.Candidates[0].Lease != l2 {
		t.Fatalf("range 2 election after range 1's restore: %+v", e)
	}
	// An election is in the range that holds its name.
	if q, _ := EncodeElectionQuery([]byte("e")); true {
		if _, err := g1.Query(q); !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("range 1 read election e of range 2: %v, want ErrKeyMismatch", err)
		}
	}
	// Revoking range 2's lease leaves range 1's election alone.
	apply(t, g2, 3, Command{Op: OpLeaseRevoke, Lease: l2})
	if e := election(t, g2, "e"); len(e.Candidates) != 0 {
		t.Fatalf("range 2 election after revoke: %+v", e)
	}
	if e := election(t, g1, "a-election"); len(e.Candidates) != 1 {
		t.Fatalf("range 1 election after range 2's revoke: %+v", e)
	}
}

// The lease hook runs after each applied change of the lease table and
// after a restore, never for other commands or for the table New loads,
// and without the table's lock held (it reads the table itself).
func TestLeaseHook(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	var calls []uint64
	var seen uint64 // the table's version the last call saw
	var sm *StateMachine
	hook := WithLeaseHook(func(id uint64) {
		calls = append(calls, id)
		_, seen = sm.Leases(0)
	})
	sm = openRange(t, db, 3, "", "", hook)
	if len(calls) != 0 {
		t.Fatalf("hook ran %v on New", calls)
	}
	check := func(what string, want int) {
		t.Helper()
		if len(calls) != want {
			t.Fatalf("%s: hook ran %d times, want %d", what, len(calls), want)
		}
		if want > 0 {
			if _, v := sm.Leases(0); calls[want-1] != 3 || seen != v {
				t.Fatalf("%s: hook for range %d saw version %d, table is at %d", what, calls[want-1], seen, v)
			}
		}
	}
	a := apply(t, sm, 1, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	check("grant", 1)
	apply(t, sm, 2, Command{Op: OpPut, Key: []byte("k"), Value: []byte("v")})
	apply(t, sm, 3, Command{Op: OpCampaign, Key: []byte("e"), Value: []byte("A"), Lease: a})
	check("put and campaign", 1)
	b := apply(t, sm, 4, Command{Op: OpLeaseGrant, TTL: time.Second}).Lease
	apply(t, sm, 5, Command{Op: OpLeaseRevoke, Lease: b})
	check("grant and revoke", 3)
	apply(t, sm, 6, Command{Op: OpLeaseExpire, Lease: a})
	check("expire", 4)
	if leases, _ := sm.Leases(0); len(leases) != 0 {
		t.Fatalf("leases left: %v", leases)
	}

	var snap bytes.Buffer
	if err := sm.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	calls = calls[:0]
	if err := sm.Restore(bytes.NewReader(snap.Bytes()), 6); err != nil {
		t.Fatal(err)
	}
	check("restore", 1)
}
