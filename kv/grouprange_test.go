package kv

import (
	"bytes"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Groups share one Pebble database: a snapshot, restore or scan of one group
// must never reach another group's keys. (A range end that bumped the kind
// byte instead of the group number once made Restore of group 1 wipe group
// 2; the simulation found it.)
func TestGroupsDoNotOverlap(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	g1, err := New(db, 1)
	if err != nil {
		t.Fatal(err)
	}
	g2, err := New(db, 2)
	if err != nil {
		t.Fatal(err)
	}
	apply(t, g1, 1, Command{Op: OpPut, Key: []byte("a"), Value: []byte("one")})
	apply(t, g2, 1, Command{Op: OpPut, Key: []byte("b"), Value: []byte("two")})

	var snap bytes.Buffer
	if err := g1.Snapshot(&snap); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(snap.Bytes(), []byte("two")) {
		t.Fatal("group 1's snapshot holds group 2's data")
	}
	if err := g1.Restore(bytes.NewReader(snap.Bytes()), 1); err != nil {
		t.Fatal(err)
	}
	if found, kv := get(t, g2, "b"); !found || string(kv.Value) != "two" {
		t.Fatalf("group 2 lost b after group 1's restore: found=%v %q", found, kv.Value)
	}
	if found, _ := get(t, g1, "b"); found {
		t.Fatal("group 1 sees group 2's key")
	}
	if found, kv := get(t, g1, "a"); !found || string(kv.Value) != "one" {
		t.Fatalf("group 1 lost a after its own restore: found=%v %q", found, kv.Value)
	}
}
