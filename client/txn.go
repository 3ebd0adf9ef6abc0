package client

import (
	"context"
	"fmt"

	"google.golang.org/grpc"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// TxnResult is the outcome of a transaction.
type TxnResult struct {
	// Succeeded: every compare held, and the Then ops applied (else the
	// Else ops did).
	Succeeded bool
	// Revision is the range's revision after the transaction: the mod
	// revision of each key it put.
	Revision uint64
	// Group is the range that applied it.
	Group uint64
	// Ops are the results of the ops that applied, in order.
	Ops []TxnOpResult
}

// TxnOpResult is the outcome of one op of a transaction.
type TxnOpResult struct {
	Kind kv.TxnOpKind
	// Found and KVs: a get's key, if it exists (with More: its revisions
	// only; its value would have passed kv.MaxTxnReadBytes, read it with
	// Get). KVs and More: a scan's keys, More if its limit (or that bound)
	// cut them short.
	Found bool
	KVs   []KeyValue
	More  bool
	// Deleted: the keys a delete or delete-range deleted.
	Deleted uint64
}

// Txn applies t: if every one of its compares holds, its Then ops, else
// its Else ops, atomically and linearizably (kv.Txn says what each compare
// and op does, and its limits). Every key and span it names must lie in
// one range: one over several fails with ErrTxnSpansRanges, naming them,
// and applies nothing. Keep the keys of a transaction under one prefix
// that splits do not cut, or expect that error.
//
// Like Put, it is applied exactly once however often it is retried, so
// its reads are those of the one time it applied; ErrAmbiguous if the
// deadline ended while its outcome was unknown. A put naming a lease the
// range does not have fails with ErrLeaseNotFound, nothing applied. The
// client does not retain t.
func (c *Client) Txn(ctx context.Context, t kv.Txn) (TxnResult, error) {
	if _, err := kv.TxnCommand(t).Encode(); err != nil {
		return TxnResult{}, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	req := txnRequest(t)
	var g uint64
	if spans := t.Spans(); len(spans) > 0 {
		g = c.rangeOf(ctx, spans[0][0])
	}
	v, err := c.write(ctx, g, func(at attempt, cc *grpc.ClientConn, sess *api.Session, done func(answer)) {
		r := &api.TxnRequest{Compares: req.Compares, Success: req.Success, Failure: req.Failure, Group: g, Session: sess}
		c.sendBatchable(at, cc, done, &api.BatchOp{Op: &api.BatchOp_Txn{Txn: r}},
			func(r *api.BatchResult) (any, *api.Header) { return r.GetTxn(), r.GetTxn().GetHeader() },
			func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
				resp, err := api.NewKVClient(cc).Txn(ctx, r, opts...)
				return resp, resp.GetHeader(), err
			})
	})
	if err != nil {
		return TxnResult{}, err
	}
	resp := v.(*api.TxnResponse)
	out := TxnResult{Succeeded: resp.Succeeded, Revision: resp.Revision, Group: resp.GetHeader().GetGroup()}
	for _, op := range resp.Responses {
		r := TxnOpResult{Kind: kv.TxnOpKind(op.Kind), Found: op.Found, More: op.More, Deleted: op.Deleted}
		for _, item := range op.Kvs {
			r.KVs = append(r.KVs, keyValue(item))
		}
		out.Ops = append(out.Ops, r)
	}
	return out, nil
}

// txnRequest is t as the API carries it, on copies of its keys and
// values: attempts may outlive the call.
func txnRequest(t kv.Txn) *api.TxnRequest {
	req := &api.TxnRequest{}
	for _, c := range t.Compares {
		req.Compares = append(req.Compares, &api.Compare{Key: clone(c.Key), Target: api.Compare_Target(c.Target),
			Result: api.Compare_Result(c.Op), Value: clone(c.Value), Number: c.Number})
	}
	for _, br := range []struct {
		from []kv.TxnOp
		to   *[]*api.TxnOp
	}{{t.Then, &req.Success}, {t.Else, &req.Failure}} {
		for _, op := range br.from {
			*br.to = append(*br.to, &api.TxnOp{Kind: api.TxnOp_Kind(op.Kind), Key: clone(op.Key), End: clone(op.End),
				Value: clone(op.Value), Lease: op.Lease, Limit: uint32(op.Limit)})
		}
	}
	return req
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}
