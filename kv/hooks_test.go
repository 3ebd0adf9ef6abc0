package kv

import (
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestHooksSharedAndMerged: replicas given one Hooks share it (a pointer,
// not a copy each); a hook option before WithHooks is kept, in a copy of
// the replica's own; one after it changes that replica only.
func TestHooksSharedAndMerged(t *testing.T) {
	db := openDB(t, vfs.NewMem())
	defer db.Close()
	var descs, leases []uint64
	shared := &Hooks{Descriptor: func(id uint64) { descs = append(descs, id) }}
	lease := WithLeaseHook(func(id uint64) { leases = append(leases, id) })

	a := openRange(t, db, 3, "a", "b", WithHooks(shared))
	b := openRange(t, db, 4, "b", "c", WithHooks(shared))
	if a.hooks != shared || b.hooks != shared {
		t.Fatalf("replicas given one Hooks hold %p and %p, not the shared %p", a.hooks, b.hooks, shared)
	}
	before := openRange(t, db, 5, "c", "d", lease, WithHooks(shared))
	after := openRange(t, db, 6, "d", "e", WithHooks(shared), lease)
	for _, sm := range []*StateMachine{before, after} {
		if sm.hooks == shared {
			t.Fatalf("range %d: a lease hook of its own, yet it holds the shared Hooks", sm.id)
		}
		sm.descriptorChanged()
		sm.leasesChanged()
	}
	if shared.Leases != nil {
		t.Fatal("a hook option after WithHooks changed the shared Hooks")
	}
	a.leasesChanged() // the shared Hooks have none: nothing runs
	if want := []uint64{5, 6}; !slices.Equal(descs, want) || !slices.Equal(leases, want) {
		t.Fatalf("descriptor hook ran for %v, lease hook for %v; want both for %v", descs, leases, want)
	}
}
