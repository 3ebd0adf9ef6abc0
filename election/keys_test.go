package election_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/flotilla/flotilla/client"
)

// A key put with a lease lives while the lease's keep-alives run and is
// deleted once they stop and the lease expires; revoking deletes at once.
func TestLeasedKeyDeletedWhenLeaseEnds(t *testing.T) {
	c := startCluster(t, 4)
	cl := c.client(nil)
	ctx := ctxT(t, 60*time.Second)
	const key = "svc/instance-1"
	lease, err := cl.GrantFor(ctx, key, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Put(ctx, []byte(key), []byte("10.0.0.1"), client.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
	rangeOf := func(k string) uint64 {
		d, err := cl.RangeOf(ctx, []byte(k))
		if err != nil {
			t.Fatal(err)
		}
		return d.ID
	}
	// A key of the same range without the lease, which must stay.
	plain := ""
	for i := 0; plain == ""; i++ {
		if k := fmt.Sprintf("%xplain-%d", i%16, i); rangeOf(k) == lease.Group() {
			plain = k
		}
	}
	if _, err := cl.Put(ctx, []byte(plain), []byte("stays")); err != nil {
		t.Fatal(err)
	}

	// Refusals: a lease of another range, an unknown lease.
	other := ""
	for i := 0; other == ""; i++ {
		if k := fmt.Sprintf("%xother-%d", i%16, i); rangeOf(k) != lease.Group() {
			other = k
		}
	}
	if _, err := cl.Put(ctx, []byte(other), []byte("x"), client.WithLease(lease)); !errors.Is(err, client.ErrLeaseNotFound) {
		t.Fatalf("put with another range's lease: %v", err)
	}
	if _, err := cl.Put(ctx, []byte(other), []byte("x"), client.WithLeaseID(lease.Group(), lease.ID())); !errors.Is(err, client.ErrLeaseNotFound) {
		t.Fatalf("put with another range's lease ID: %v", err)
	}
	if _, err := cl.Put(ctx, []byte(key+"/x"), []byte("x"), client.WithLeaseID(0, 1<<60)); !errors.Is(err, client.ErrLeaseNotFound) {
		t.Fatalf("put with an unknown lease: %v", err)
	}
	if swapped, _, _, err := cl.CompareAndSwap(ctx, []byte(key+"/y"), nil, []byte("x"), client.WithLeaseID(0, 1<<60)); !errors.Is(err, client.ErrLeaseNotFound) || swapped {
		t.Fatalf("CAS with an unknown lease: swapped=%v %v", swapped, err)
	}

	// While keep-alives run, the key stays: watch it across three TTLs
	// (at least nine renewals, one per TTL/3).
	start := lease.Renewals()
	waitFor(t, 20*time.Second, "keep-alives for three TTLs", func() error {
		if _, err := cl.Get(ctx, []byte(key)); err != nil {
			t.Fatalf("leased key lost while its lease was kept alive (renewals %d): %v", lease.Renewals()-start, err)
		}
		if n := lease.Renewals() - start; n < 9 {
			return fmt.Errorf("%d renewals", n)
		}
		return nil
	})
	if lease.Err() != nil {
		t.Fatalf("lease ended while kept alive: %v", lease.Err())
	}

	// Stop the keep-alives without revoking: the leader expires the lease
	// one TTL later, and the key with it.
	lease.Close()
	waitFor(t, 10*time.Second, "leased key deleted after expiry", func() error {
		kv, err := cl.Get(ctx, []byte(key))
		if errors.Is(err, client.ErrKeyNotFound) {
			return nil
		}
		return fmt.Errorf("still %q (%v)", kv.Value, err)
	})
	if kv, err := cl.Get(ctx, []byte(plain)); err != nil || string(kv.Value) != "stays" {
		t.Fatalf("key without the lease: %q %v", kv.Value, err)
	}
	if _, err := cl.Put(ctx, []byte(key), []byte("late"), client.WithLease(lease)); !errors.Is(err, client.ErrLeaseNotFound) {
		t.Fatalf("put with the expired lease: %v", err)
	}

	// Revoke deletes at once; a CAS attaches like a put.
	l2, err := cl.GrantFor(ctx, key, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if swapped, _, _, err := cl.CompareAndSwap(ctx, []byte(key), nil, []byte("cas"), client.WithLease(l2)); err != nil || !swapped {
		t.Fatalf("CAS with a lease: swapped=%v %v", swapped, err)
	}
	if err := l2.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	if kv, err := cl.Get(ctx, []byte(key)); !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatalf("after revoke: %q %v", kv.Value, err)
	}
}
