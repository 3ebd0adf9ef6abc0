package server

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/kv"
)

// Puts and CASes with a lease, on the unary paths and on the batch stream.
// Four nodes with three replicas per group, so that some requests are
// forwarded.
func TestPutWithLease(t *testing.T) {
	c := startCluster(t, 4, 4)
	ctx := ctxT(t)
	cl := c.client()
	unary, err := client.New(ctx, client.Config{Endpoints: c.endpoints(), DisableBatch: true})
	if err != nil {
		t.Fatal(err)
	}
	defer unary.Close()
	lease, err := cl.GrantFor(ctx, "5svc/a", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Close()
	g := lease.Group()
	var keys []string // keys of the lease's range
	other := ""       // a key of another range
	for i := 0; len(keys) < 3 || other == ""; i++ {
		k := fmt.Sprintf("%xsvc/%d", i%16, i)
		if initialRange(4, []byte(k)) == g {
			keys = append(keys, k)
		} else if other == "" {
			other = k
		}
	}
	if _, err := cl.Put(ctx, []byte(keys[0]), []byte("batched"), client.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
	if _, err := unary.Put(ctx, []byte(keys[1]), []byte("unary"), client.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
	if ok, _, _, err := unary.CompareAndSwap(ctx, []byte(keys[2]), nil, []byte("cas"), client.WithLease(lease)); err != nil || !ok {
		t.Fatalf("CAS: %v %v", ok, err)
	}

	// Every node refuses a lease the key's range does not have (granted
	// in another range) and an unknown lease, and writes nothing.
	for id, s := range c.nodes {
		kvc := rawKV(t, s.ClientAddr())
		err := rawAgain(func() error {
			_, err := kvc.Put(ctx, &api.PutRequest{Key: []byte(other), Value: []byte("x"), Lease: lease.ID(), LeaseGroup: g})
			return err
		})
		if status.Code(err) != codes.NotFound || !strings.HasPrefix(status.Convert(err).Message(), kv.ErrLeaseNotFound.Error()) {
			t.Fatalf("node %d, lease of another range: %v", id, err)
		}
		err = rawAgain(func() error {
			_, err := kvc.CompareAndSwap(ctx, &api.CompareAndSwapRequest{Key: []byte(other), ExpectAbsent: true, Value: []byte("x"), Lease: lease.ID(), LeaseGroup: g})
			return err
		})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("node %d, CAS with a lease of another range: %v", id, err)
		}
		if r, err := kvc.Get(ctx, &api.GetRequest{Key: []byte(other)}); err != nil || r.Found {
			t.Fatalf("node %d: a refused write wrote %v (%v)", id, r, err)
		}
		err = rawAgain(func() error {
			_, err := kvc.Put(ctx, &api.PutRequest{Key: []byte(keys[0]), Value: []byte("x"), Lease: 1 << 60})
			return err
		})
		if status.Code(err) != codes.NotFound || !strings.HasPrefix(status.Convert(err).Message(), kv.ErrLeaseNotFound.Error()) {
			t.Fatalf("node %d, unknown lease: %v", id, err)
		}
	}
	for _, k := range keys {
		if kv, err := cl.Get(ctx, []byte(k)); err != nil || string(kv.Value) == "x" {
			t.Fatalf("%s after refusals: %q %v", k, kv.Value, err)
		}
	}
	if _, err := cl.Get(ctx, []byte(other)); !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatalf("refused put wrote %s: %v", other, err)
	}

	// keys[2] is detached by a put without a lease; revoking deletes the rest.
	if _, err := unary.Put(ctx, []byte(keys[2]), []byte("plain")); err != nil {
		t.Fatal(err)
	}
	if err := lease.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys[:2] {
		if _, err := cl.Get(ctx, []byte(k)); !errors.Is(err, client.ErrKeyNotFound) {
			t.Fatalf("%s after revoke: %v", k, err)
		}
	}
	if kv, err := cl.Get(ctx, []byte(keys[2])); err != nil || string(kv.Value) != "plain" {
		t.Fatalf("detached key after revoke: %q %v", kv.Value, err)
	}
}
