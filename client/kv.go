package client

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

func checkKV(key, value []byte) error {
	if err := kv.CheckKey(key); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if err := kv.CheckValue(value); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	return nil
}

// WriteOption changes how Put and CompareAndSwap write.
type WriteOption func(*writeOptions)

type writeOptions struct {
	lease, leaseGroup uint64
}

// WithLease attaches the key to lease l: the cluster deletes the key when
// the lease is revoked or expires (its keep-alives stopped for a TTL).
// The lease must live in the key's group: grant it with
// GrantFor(ctx, key, ttl). A lease of another group fails with
// ErrInvalidArgument, one that is gone with ErrLeaseNotFound; nothing is
// written then. A later Put of the key without WithLease, or a Delete,
// detaches it. A nil l attaches to nothing.
func WithLease(l *Lease) WriteOption {
	return func(o *writeOptions) {
		if l != nil {
			o.lease, o.leaseGroup = l.ID(), l.Group()
		}
	}
}

// WithLeaseID is WithLease for a lease known by ID only (kept alive by
// another process, say): group is the group that granted it, or 0 to
// assume the key's group.
func WithLeaseID(group, id uint64) WriteOption {
	return func(o *writeOptions) { o.lease, o.leaseGroup = id, group }
}

// writeOpts applies opts to a write of a key of group g.
func writeOpts(g uint64, opts []WriteOption) (writeOptions, error) {
	var wo writeOptions
	for _, o := range opts {
		o(&wo)
	}
	if wo.lease != 0 && wo.leaseGroup != 0 && wo.leaseGroup != g {
		return wo, fmt.Errorf("%w: lease %d lives in group %d, the key in group %d; grant the lease with GrantFor(ctx, key, ttl)",
			ErrInvalidArgument, wo.lease, wo.leaseGroup, g)
	}
	return wo, nil
}

// Put sets key to value and returns the group revision of the write.
// Keys are 1..4096 bytes, values up to 1 MiB. The client does not retain
// key or value. See WithLease.
//
// Put is retried only while it certainly was not applied (not leader, not
// sent). Once an attempt may have been applied, Put returns ErrAmbiguous
// instead of sending it again: a second copy applied after a concurrent
// writer's put would bring the old value back, which no linearizable
// history allows. Read the key to learn the outcome.
func (c *Client) Put(ctx context.Context, key, value []byte, opts ...WriteOption) (uint64, error) {
	if err := checkKV(key, value); err != nil {
		return 0, err
	}
	g := c.GroupOf(key)
	wo, err := writeOpts(g, opts)
	if err != nil {
		return 0, err
	}
	var rev uint64
	var bkey, bvalue []byte // copies for the batch stream, made once
	err = c.do(ctx, g, false, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) (uint64, error) {
		if b := c.batcher(cc); b != nil {
			if bkey == nil {
				buf := make([]byte, len(key)+len(value))
				bkey, bvalue = buf[:len(key):len(key)], buf[len(key):]
				copy(bkey, key)
				copy(bvalue, value)
			}
			r, err := b.call(ctx, &api.BatchOp{Op: &api.BatchOp_Put{Put: &api.PutRequest{Key: bkey, Value: bvalue, Group: g,
				Lease: wo.lease, LeaseGroup: wo.leaseGroup}}})
			if err != errNoBatch {
				if err != nil {
					return 0, err
				}
				rev = r.GetPut().GetRevision()
				return r.GetPut().GetHeader().GetLeader(), nil
			}
		}
		r, err := api.NewKVClient(cc).Put(ctx, &api.PutRequest{Key: key, Value: value, Group: g,
			Lease: wo.lease, LeaseGroup: wo.leaseGroup}, opts...)
		if err != nil {
			return 0, err
		}
		rev = r.Revision
		return r.Header.GetLeader(), nil
	})
	return rev, err
}

// ReadOption changes how Get and Scan read.
type ReadOption func(*readOptions)

type readOptions struct{ serializable bool }

// Serializable lets the answering replica serve the read from its own
// state, which may be stale, instead of confirming it with the leader.
func Serializable() ReadOption { return func(o *readOptions) { o.serializable = true } }

// Get returns key's value; ErrKeyNotFound if it has none. Linearizable
// unless Serializable is given.
func (c *Client) Get(ctx context.Context, key []byte, opts ...ReadOption) (KeyValue, error) {
	if err := checkKV(key, nil); err != nil {
		return KeyValue{}, err
	}
	var ro readOptions
	for _, o := range opts {
		o(&ro)
	}
	g := c.GroupOf(key)
	var out KeyValue
	found := false
	err := c.do(ctx, g, true, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) (uint64, error) {
		r, err := api.NewKVClient(cc).Get(ctx, &api.GetRequest{Key: key, Serializable: ro.serializable, Group: g}, opts...)
		if err != nil {
			return 0, err
		}
		found = r.Found
		if r.Found {
			out = KeyValue{Key: r.Kv.Key, Value: r.Kv.Value, Revision: r.Kv.Revision, Group: r.Kv.Group}
		}
		return r.Header.GetLeader(), nil
	})
	if err != nil {
		return KeyValue{}, err
	}
	if !found {
		return KeyValue{}, fmt.Errorf("%w: %q", ErrKeyNotFound, key)
	}
	return out, nil
}

// Delete removes key and reports whether it existed. Retried like Put:
// only while it certainly was not applied, else ErrAmbiguous.
func (c *Client) Delete(ctx context.Context, key []byte) (bool, error) {
	if err := checkKV(key, nil); err != nil {
		return false, err
	}
	g := c.GroupOf(key)
	deleted := false
	var bkey []byte // a copy for the batch stream, made once
	err := c.do(ctx, g, false, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) (uint64, error) {
		if b := c.batcher(cc); b != nil {
			if bkey == nil {
				bkey = append([]byte(nil), key...)
			}
			r, err := b.call(ctx, &api.BatchOp{Op: &api.BatchOp_Delete{Delete: &api.DeleteRequest{Key: bkey, Group: g}}})
			if err != errNoBatch {
				if err != nil {
					return 0, err
				}
				deleted = r.GetDelete().GetDeleted()
				return r.GetDelete().GetHeader().GetLeader(), nil
			}
		}
		r, err := api.NewKVClient(cc).Delete(ctx, &api.DeleteRequest{Key: key, Group: g}, opts...)
		if err != nil {
			return 0, err
		}
		deleted = r.Deleted
		return r.Header.GetLeader(), nil
	})
	return deleted, err
}

// CompareAndSwap sets key to value if its current value equals expected;
// a nil expected requires the key to be absent (an empty non-nil slice
// requires an empty value). It returns whether it swapped and the key's
// value afterwards (found false: absent). It is never retried once it may
// have been applied: ErrAmbiguous says the outcome is unknown. With
// WithLease, a swap attaches the key to the lease (see Put).
func (c *Client) CompareAndSwap(ctx context.Context, key, expected, value []byte, wopts ...WriteOption) (swapped bool, current KeyValue, found bool, err error) {
	if err := checkKV(key, value); err != nil {
		return false, KeyValue{}, false, err
	}
	if err := checkKV(key, expected); err != nil {
		return false, KeyValue{}, false, err
	}
	g := c.GroupOf(key)
	wo, err := writeOpts(g, wopts)
	if err != nil {
		return false, KeyValue{}, false, err
	}
	err = c.do(ctx, g, false, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) (uint64, error) {
		r, err := api.NewKVClient(cc).CompareAndSwap(ctx, &api.CompareAndSwapRequest{
			Key: key, Expected: expected, ExpectAbsent: expected == nil, Value: value, Group: g,
			Lease: wo.lease, LeaseGroup: wo.leaseGroup}, opts...)
		if err != nil {
			return 0, err
		}
		swapped, found = r.Succeeded, r.Found
		if r.Found {
			current = KeyValue{Key: r.Current.Key, Value: r.Current.Value, Revision: r.Current.Revision, Group: r.Current.Group}
		}
		return r.Header.GetLeader(), nil
	})
	return swapped, current, found, err
}

// Scan returns up to limit keys starting with prefix, from every group,
// in key order; more says the limit cut the list short. limit 0 means
// 1000; at most 10000.
func (c *Client) Scan(ctx context.Context, prefix []byte, limit int, opts ...ReadOption) ([]KeyValue, bool, error) {
	if limit < 0 || limit > kv.MaxScanLimit {
		return nil, false, fmt.Errorf("%w: limit %d outside 0..%d", ErrInvalidArgument, limit, kv.MaxScanLimit)
	}
	var ro readOptions
	for _, o := range opts {
		o(&ro)
	}
	var out []KeyValue
	more := false
	err := c.do(ctx, 0, true, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) (uint64, error) {
		r, err := api.NewKVClient(cc).Scan(ctx, &api.ScanRequest{Prefix: prefix, Limit: uint32(limit), Serializable: ro.serializable}, opts...)
		if err != nil {
			return 0, err
		}
		out = out[:0]
		for _, k := range r.Kvs {
			out = append(out, KeyValue{Key: k.Key, Value: k.Value, Revision: k.Revision, Group: k.Group})
		}
		more = r.More
		return 0, nil
	})
	return out, more, err
}
