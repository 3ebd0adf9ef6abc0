package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

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
// The lease must live in the key's range: grant it with
// GrantFor(ctx, key, ttl) (a lease granted for a key covers the keys of
// the range that held it then, and of both halves after that range
// splits). A lease the key's range does not have fails with
// ErrLeaseNotFound; nothing is written then. A later Put of the key
// without WithLease, or a Delete, detaches it. A nil l attaches to
// nothing.
func WithLease(l *Lease) WriteOption {
	return func(o *writeOptions) {
		if l != nil {
			o.lease, o.leaseGroup = l.ID(), l.Group()
		}
	}
}

// WithLeaseID is WithLease for a lease known by ID only (kept alive by
// another process, say): group is the range that granted it, or 0.
func WithLeaseID(group, id uint64) WriteOption {
	return func(o *writeOptions) { o.lease, o.leaseGroup = id, group }
}

// writeOpts applies opts to a write of a key of range g. (Whether the
// range has the lease is the range's to say: ErrLeaseNotFound.)
func writeOpts(g uint64, opts []WriteOption) (writeOptions, error) {
	var wo writeOptions
	for _, o := range opts {
		o(&wo)
	}
	return wo, nil
}

// write runs a write to group g in the client's session: every attempt
// builds its request with the session block it is given (same sequence
// number, the current floor, and register until the group has the
// session). See do for the retries.
func (c *Client) write(ctx context.Context, g uint64, start func(at attempt, cc *grpc.ClientConn, sess *api.Session, done func(answer))) (any, error) {
	seq := c.session.begin()
	v, err := c.do(ctx, g, true, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		start(at, cc, c.session.ref(g, seq), done)
	})
	// Any answer the group gave through its state machine shows that it
	// has the session.
	c.session.end(g, seq, err == nil || errors.Is(err, ErrLeaseNotFound))
	return v, err
}

// sendBatchable sends op over cc's Batch stream when the node serves it,
// else the unary call; either way done gets the response that resp picks
// out of a batch result (or the unary call returns) and its header.
func (c *Client) sendBatchable(at attempt, cc *grpc.ClientConn, done func(answer), op *api.BatchOp,
	resp func(*api.BatchResult) (any, *api.Header), call func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error)) {
	if b := c.batcher(cc); b != nil && b.start(op, func(r *api.BatchResult, err error) {
		a := answer{err: err}
		if err != nil {
			a.leader = batchHint(err)
		} else {
			var h *api.Header
			a.val, h = resp(r)
			a.leader, a.term, a.group = h.GetLeader(), h.GetTerm(), h.GetGroup()
		}
		done(a)
	}) {
		return
	}
	unary(at, done, call)
}

// Put sets key to value and returns the group revision of the write.
// Keys are 1..4096 bytes, values up to 1 MiB. The client does not retain
// key or value. See WithLease.
//
// Put is applied exactly once however often it is retried (client
// sessions): it returns an error only for a bad request or when its
// deadline ends first, ErrAmbiguous if an attempt's outcome was then
// unknown.
func (c *Client) Put(ctx context.Context, key, value []byte, opts ...WriteOption) (uint64, error) {
	if err := checkKV(key, value); err != nil {
		return 0, err
	}
	g := c.rangeOf(ctx, key)
	wo, err := writeOpts(g, opts)
	if err != nil {
		return 0, err
	}
	// One copy for every attempt: attempts may outlive the call.
	buf := make([]byte, len(key)+len(value))
	bkey, bvalue := buf[:len(key):len(key)], buf[len(key):]
	copy(bkey, key)
	copy(bvalue, value)
	v, err := c.write(ctx, g, func(at attempt, cc *grpc.ClientConn, sess *api.Session, done func(answer)) {
		req := &api.PutRequest{Key: bkey, Value: bvalue, Group: g, Lease: wo.lease, LeaseGroup: wo.leaseGroup, Session: sess}
		c.sendBatchable(at, cc, done, &api.BatchOp{Op: &api.BatchOp_Put{Put: req}},
			func(r *api.BatchResult) (any, *api.Header) { return r.GetPut(), r.GetPut().GetHeader() },
			func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
				r, err := api.NewKVClient(cc).Put(ctx, req, opts...)
				return r, r.GetHeader(), err
			})
	})
	if err != nil {
		return 0, err
	}
	return v.(*api.PutResponse).GetRevision(), nil
}

// ReadOption changes how Get and Scan read.
type ReadOption func(*readOptions)

type readOptions struct {
	serializable bool
	revision     uint64
}

// AtRevision makes a read see the keys as of revision rev of their ranges
// (see kv/history.go): the latest write of each key at or before it. A
// revision whose history a range no longer keeps fails with ErrCompacted,
// whose message says from which revision on it does; one a range has not
// reached fails with ErrFutureRevision.
func AtRevision(rev uint64) ReadOption { return func(o *readOptions) { o.revision = rev } }

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
	g := c.rangeOf(ctx, key)
	key = bytes.Clone(key) // attempts may outlive the call
	v, err := c.do(ctx, g, false, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewKVClient(cc).Get(ctx, &api.GetRequest{Key: key, Serializable: ro.serializable, Group: g, Revision: ro.revision}, opts...)
			return r, r.GetHeader(), err
		})
	})
	if err != nil {
		return KeyValue{}, err
	}
	r := v.(*api.GetResponse)
	if !r.Found {
		return KeyValue{}, fmt.Errorf("%w: %q", ErrKeyNotFound, key)
	}
	return keyValue(r.Kv), nil
}

// Delete removes key and reports whether it existed. Applied exactly once,
// retried like Put.
func (c *Client) Delete(ctx context.Context, key []byte) (bool, error) {
	if err := checkKV(key, nil); err != nil {
		return false, err
	}
	g := c.rangeOf(ctx, key)
	bkey := bytes.Clone(key) // attempts may outlive the call
	v, err := c.write(ctx, g, func(at attempt, cc *grpc.ClientConn, sess *api.Session, done func(answer)) {
		req := &api.DeleteRequest{Key: bkey, Group: g, Session: sess}
		c.sendBatchable(at, cc, done, &api.BatchOp{Op: &api.BatchOp_Delete{Delete: req}},
			func(r *api.BatchResult) (any, *api.Header) { return r.GetDelete(), r.GetDelete().GetHeader() },
			func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
				r, err := api.NewKVClient(cc).Delete(ctx, req, opts...)
				return r, r.GetHeader(), err
			})
	})
	if err != nil {
		return false, err
	}
	return v.(*api.DeleteResponse).GetDeleted(), nil
}

// CompareAndSwap sets key to value if its current value equals expected;
// a nil expected requires the key to be absent (an empty non-nil slice
// requires an empty value). It returns whether it swapped and the key's
// value afterwards (found false: absent). Applied exactly once, retried
// like Put: a retry of a swap that applied gets the first outcome, never a
// second comparison. With WithLease, a swap attaches the key to the lease
// (see Put).
func (c *Client) CompareAndSwap(ctx context.Context, key, expected, value []byte, wopts ...WriteOption) (swapped bool, current KeyValue, found bool, err error) {
	if err := checkKV(key, value); err != nil {
		return false, KeyValue{}, false, err
	}
	if err := checkKV(key, expected); err != nil {
		return false, KeyValue{}, false, err
	}
	g := c.rangeOf(ctx, key)
	wo, err := writeOpts(g, wopts)
	if err != nil {
		return false, KeyValue{}, false, err
	}
	absent := expected == nil
	key, expected, value = bytes.Clone(key), bytes.Clone(expected), bytes.Clone(value)
	v, err := c.write(ctx, g, func(at attempt, cc *grpc.ClientConn, sess *api.Session, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewKVClient(cc).CompareAndSwap(ctx, &api.CompareAndSwapRequest{
				Key: key, Expected: expected, ExpectAbsent: absent, Value: value, Group: g,
				Lease: wo.lease, LeaseGroup: wo.leaseGroup, Session: sess}, opts...)
			return r, r.GetHeader(), err
		})
	})
	if err != nil {
		return false, KeyValue{}, false, err
	}
	r := v.(*api.CompareAndSwapResponse)
	if r.Found {
		current = keyValue(r.Current)
	}
	return r.Succeeded, current, r.Found, nil
}

// Scan returns up to limit keys starting with prefix, in key order; more
// says the limit cut the list short (ScanRange continues from a resume
// key). limit 0 means 1000; at most 10000.
func (c *Client) Scan(ctx context.Context, prefix []byte, limit int, opts ...ReadOption) ([]KeyValue, bool, error) {
	kvs, resume, err := c.ScanRange(ctx, prefix, kv.PrefixEnd(prefix), limit, opts...)
	return kvs, len(resume) > 0, err
}

// ScanRange returns up to limit keys of [start, end) in key order (empty
// start: from the beginning of the keyspace; empty end: to its end), and
// the key to continue from (empty: the span is done). It reads only the
// ranges of the span, one after another. limit 0 means 1000; at most
// 10000.
func (c *Client) ScanRange(ctx context.Context, start, end []byte, limit int, opts ...ReadOption) ([]KeyValue, []byte, error) {
	if limit < 0 || limit > kv.MaxScanLimit {
		return nil, nil, fmt.Errorf("%w: limit %d outside 0..%d", ErrInvalidArgument, limit, kv.MaxScanLimit)
	}
	if _, err := kv.EncodeScan(start, end, limit); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	var ro readOptions
	for _, o := range opts {
		o(&ro)
	}
	start, end = bytes.Clone(start), bytes.Clone(end)
	g := c.rangeOf(ctx, start)
	v, err := c.do(ctx, g, false, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewKVClient(cc).Scan(ctx, &api.ScanRequest{Start: start, End: end, Limit: uint32(limit), Serializable: ro.serializable, Revision: ro.revision}, opts...)
			return r, nil, err
		})
	})
	if err != nil {
		return nil, nil, err
	}
	r := v.(*api.ScanResponse)
	out := make([]KeyValue, 0, len(r.Kvs))
	for _, k := range r.Kvs {
		out = append(out, keyValue(k))
	}
	return out, r.ResumeKey, nil
}

// DeleteRange deletes every key of [start, end) (empty end: to the end of
// the keyspace) and returns how many it deleted. It deletes range by range:
// atomically within each range, not across them. Each range's delete is
// applied exactly once, retried like Put.
func (c *Client) DeleteRange(ctx context.Context, start, end []byte) (uint64, error) {
	if _, err := (kv.Command{Op: kv.OpDeleteRange, Key: start, End: end}).Encode(); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	start, end = bytes.Clone(start), bytes.Clone(end)
	var total uint64
	at := start
	for changed := 0; ; {
		d, ok := c.descriptorOf(ctx, at)
		if !ok {
			// No range known (the meta index unreachable, or a user who
			// may not read the range's bounds: they are keys): send the
			// whole rest; the node routes it by its start and, if it
			// spans ranges, answers with them.
			d = kv.Descriptor{}
		}
		sub := end
		if len(d.End) > 0 && (len(end) == 0 || bytes.Compare(d.End, end) < 0) {
			sub = d.End
		}
		v, err := c.write(ctx, d.ID, func(at2 attempt, cc *grpc.ClientConn, sess *api.Session, done func(answer)) {
			unary(at2, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
				var md metadata.MD
				r, err := api.NewKVClient(cc).DeleteRange(ctx, &api.DeleteRangeRequest{Start: at, End: sub, Group: d.ID, Session: sess},
					append(opts, grpc.Trailer(&md))...)
				if st, ok := status.FromError(err); ok && st.Code() == codes.FailedPrecondition && strings.HasPrefix(st.Message(), msgKeyMismatch) {
					// The span is not one range's any more: learn the
					// ranges the node knows, and cut the span again.
					c.ranges.Insert(rangesHint(md)...)
					return nil, nil, fmt.Errorf("%w: %s", ErrRangeChanged, st.Message())
				}
				return r, r.GetHeader(), err
			})
		})
		if errors.Is(err, ErrRangeChanged) && changed < 10 {
			// The range split or merged under the client's cache: look
			// the span up again.
			changed++
			c.ranges.Evict(d.ID, d.Generation)
			continue
		}
		if err != nil {
			return total, err
		}
		total += v.(*api.DeleteRangeResponse).GetDeleted()
		if len(sub) == 0 || (len(end) > 0 && bytes.Equal(sub, end)) {
			return total, nil
		}
		at = sub
	}
}
