package server

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// MsgTxnSpansRanges starts the InvalidArgument of a transaction whose keys
// lie in more than one range; the message names them.
const MsgTxnSpansRanges = "kv: transaction spans ranges"

// maxTxnRangesNamed bounds the ranges the refusal of a transaction that
// spans ranges names.
const maxTxnRangesNamed = 8

// Txn applies a transaction on the range that holds all its keys (see
// kv/txn.go). The node routes it like a write; a range that split under it
// is looked up again.
func (k *kvService) Txn(ctx context.Context, req *api.TxnRequest) (*api.TxnResponse, error) {
	txn, err := TxnFromAPI(req)
	if err != nil {
		return nil, k.s.count("txn", status.Error(codes.InvalidArgument, err.Error()))
	}
	cmd := withSession(kv.TxnCommand(txn), req.Session)
	if _, err := cmd.Encode(); err != nil {
		return nil, k.s.count("txn", status.Error(codes.InvalidArgument, err.Error()))
	}
	for attempt := 0; ; attempt++ {
		g, err := k.s.txnRange(ctx, &txn)
		if err != nil {
			return nil, k.s.count("txn", err)
		}
		req.Group = g
		var fwd *api.TxnResponse
		res, forwarded, err := k.s.write(ctx, &g, cmd, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			fwd, err = api.NewKVClient(cc).Txn(ctx, req)
			return err
		})
		if forwarded {
			return fwd, k.s.count("txn", err)
		}
		if isKeyMismatch(err) && attempt < maxReroutes {
			// The range split or merged since it was looked up: the
			// lookup above now finds the new ranges.
			k.s.metrics.reroutes.Inc()
			continue
		}
		return k.txnAnswer(g, res, err)
	}
}

// txnAnswer turns the outcome of a transaction proposed on group g into
// the answer, and counts it.
func (k *kvService) txnAnswer(g uint64, res kv.Result, err error) (*api.TxnResponse, error) {
	if err == nil && res.LeaseMissing {
		err = status.Errorf(codes.NotFound, "%v: a put of the transaction names a lease range %d does not have; nothing written", kv.ErrLeaseNotFound, g)
	}
	if err != nil {
		return nil, k.s.count("txn", err)
	}
	k.s.count("txn", nil)
	return txnResponse(k.s.header(g), g, res), nil
}

// isKeyMismatch reports whether err is the refusal of a range that does
// not hold what it was sent (keyMismatch).
func isKeyMismatch(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.FailedPrecondition && strings.HasPrefix(st.Message(), MsgKeyMismatch)
}

// txnRange returns the range that holds every key and span of t, as this
// node knows the ranges; a transaction over several is refused, naming
// them. A transaction that names nothing goes to the first range.
func (s *Server) txnRange(ctx context.Context, t *kv.Txn) (uint64, error) {
	spans := t.Spans()
	if len(spans) == 0 {
		g, _, err := s.rangeOf(ctx, nil)
		return g, err
	}
	ds, err := txnRanges(spans, func(at, end []byte) ([]kv.Descriptor, error) {
		return s.spanRanges(ctx, at, end, maxTxnRangesNamed)
	})
	if err != nil {
		return 0, err
	}
	if len(ds) > 1 {
		// Before refusing, ask the meta index itself: a local replica
		// behind a merge, or the cache, may still show its two halves
		// (the refusal is final for the client).
		ds, err = txnRanges(spans, func(at, end []byte) ([]kv.Descriptor, error) {
			return s.metaSpan(ctx, at, end)
		})
		if err != nil {
			return 0, err
		}
		s.cache.Insert(ds...)
	}
	if len(ds) == 1 {
		return ds[0].ID, nil
	}
	names := make([]string, len(ds))
	for i, d := range ds {
		names[i] = fmt.Sprintf("%d %s", d.ID, kv.SpanString(d.Start, d.End))
	}
	return 0, status.Errorf(codes.InvalidArgument, "%s %s; the keys of one transaction must lie in one range", MsgTxnSpansRanges, strings.Join(names, ", "))
}

// txnRanges returns the distinct ranges that hold spans, as lookup finds
// them, at most maxTxnRangesNamed.
func txnRanges(spans [][2][]byte, lookup func(at, end []byte) ([]kv.Descriptor, error)) ([]kv.Descriptor, error) {
	var ds []kv.Descriptor
	for _, sp := range spans {
		in, err := lookup(sp[0], sp[1])
		if err != nil {
			return nil, err
		}
		for _, d := range in {
			if len(ds) < maxTxnRangesNamed && !slices.ContainsFunc(ds, func(e kv.Descriptor) bool { return e.ID == d.ID }) {
				ds = append(ds, d)
			}
		}
	}
	return ds, nil
}

// metaSpan returns the ranges of [start, end) as the meta index has them,
// at most maxTxnRangesNamed, bypassing the cache and the local replicas.
func (s *Server) metaSpan(ctx context.Context, start, end []byte) ([]kv.Descriptor, error) {
	ds, err := s.metaLookup(ctx, start, maxTxnRangesNamed)
	if err != nil {
		return nil, err
	}
	var out []kv.Descriptor
	for _, d := range ds {
		if len(end) > 0 && bytes.Compare(d.Start, end) >= 0 {
			break
		}
		if len(d.End) == 0 || bytes.Compare(d.End, start) > 0 {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return nil, status.Errorf(codes.Unavailable, "server: the meta index has no range for %q yet; retry", start)
	}
	return out, nil
}

// TxnFromAPI converts a transaction request to package kv's form; it
// refuses an unknown target, result or op kind.
func TxnFromAPI(req *api.TxnRequest) (kv.Txn, error) {
	var t kv.Txn
	for i, c := range req.Compares {
		if c.Target <= api.Compare_TARGET_UNSPECIFIED || c.Target > api.Compare_MOD {
			return kv.Txn{}, fmt.Errorf("%w: compare %d: target %v", kv.ErrInvalid, i, c.Target)
		}
		if c.Result <= api.Compare_RESULT_UNSPECIFIED || c.Result > api.Compare_GREATER {
			return kv.Txn{}, fmt.Errorf("%w: compare %d: result %v", kv.ErrInvalid, i, c.Result)
		}
		t.Compares = append(t.Compares, kv.Compare{Key: c.Key, Target: kv.CompareTarget(c.Target), Op: kv.CompareOp(c.Result), Value: c.Value, Number: c.Number})
	}
	for _, br := range []struct {
		from []*api.TxnOp
		to   *[]kv.TxnOp
	}{{req.Success, &t.Then}, {req.Failure, &t.Else}} {
		for i, op := range br.from {
			if op.Kind <= api.TxnOp_KIND_UNSPECIFIED || op.Kind > api.TxnOp_SCAN {
				return kv.Txn{}, fmt.Errorf("%w: op %d: kind %v", kv.ErrInvalid, i, op.Kind)
			}
			if op.Limit > kv.MaxTxnScanLimit {
				return kv.Txn{}, fmt.Errorf("%w: op %d: scan limit %d exceeds %d", kv.ErrInvalid, i, op.Limit, kv.MaxTxnScanLimit)
			}
			*br.to = append(*br.to, kv.TxnOp{Kind: kv.TxnOpKind(op.Kind), Key: op.Key, End: op.End, Value: op.Value, Lease: op.Lease, Limit: int(op.Limit)})
		}
	}
	return t, nil
}

// txnResponse is the answer of a transaction applied on group g.
func txnResponse(h *api.Header, g uint64, res kv.Result) *api.TxnResponse {
	resp := &api.TxnResponse{Header: h, Succeeded: res.OK, Revision: res.Revision}
	for _, op := range res.TxnOps {
		out := &api.TxnOpResponse{Kind: api.TxnOp_Kind(op.Kind), Found: op.Found, More: op.More, Deleted: op.Count}
		for _, item := range op.KVs {
			out.Kvs = append(out.Kvs, apiKeyValue(item, g))
		}
		resp.Responses = append(resp.Responses, out)
	}
	return resp
}

// apiKeyValue is item of range g as the API gives it.
func apiKeyValue(item kv.KeyValue, g uint64) *api.KeyValue {
	return &api.KeyValue{Key: item.Key, Value: item.Value, Revision: item.Revision, Group: g,
		CreateRevision: item.CreateRevision, Version: item.Version}
}
