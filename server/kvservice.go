package server

import (
	"context"
	"errors"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
)

// Metadata keys of the client API.
const (
	// MDLeader is a trailer on FailedPrecondition errors: the node ID of
	// the group's leader as the answering node knows it.
	MDLeader = "flotilla-leader"
	// mdForwarded marks a request one node forwarded to another, so that a
	// request is forwarded at most once.
	mdForwarded = "flotilla-forwarded"
)

// errMismatch is what query returns when the range does not hold the key
// asked about: keyQuery routes the query again.
var errMismatch = status.Error(codes.FailedPrecondition, MsgKeyMismatch)

// Messages that start the status of a refused session write (clients look
// for them).
const (
	// MsgSessionUnknown starts the FailedPrecondition of a write whose
	// session the group does not have: resend it with register.
	MsgSessionUnknown = "kv: session unknown"
	// MsgSessionStale starts the Aborted of a write numbered below its
	// session's floor.
	MsgSessionStale = "kv: session stale"
)

// kvService implements api.KVServer. Requests are routed by key
// (ranges.go): a write goes to its range's leader (route.go), a read is
// answered by the local replica with ReadIndex. A node without a replica
// of the key's range forwards the request once to a node that has one.
type kvService struct {
	api.UnimplementedKVServer
	s *Server
}

// leaseNotFound is the error of a put or CAS whose lease group g does not
// have. Its message starts with kv.ErrLeaseNotFound's text, which clients
// look for.
func leaseNotFound(g, lease uint64) error {
	return status.Errorf(codes.NotFound, "%v: lease %d in range %d (expired, revoked, or granted in a range that does not hold the key); nothing written",
		kv.ErrLeaseNotFound, lease, g)
}

func (k *kvService) Put(ctx context.Context, req *api.PutRequest) (*api.PutResponse, error) {
	g, err := k.s.keyRange(ctx, req.Key)
	if err != nil {
		return nil, k.s.count("put", err)
	}
	req.Group = g
	var fwd *api.PutResponse
	res, forwarded, err := k.s.write(ctx, &g, withSession(kv.Command{Op: kv.OpPut, Key: req.Key, Value: req.Value, Lease: req.Lease}, req.Session),
		func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			fwd, err = api.NewKVClient(cc).Put(ctx, req)
			return err
		})
	if forwarded {
		return fwd, k.s.count("put", err)
	}
	return k.putAnswer(g, req.Lease, res, err)
}

// putAnswer turns the outcome of a put proposed on group g into the
// answer, and counts it.
func (k *kvService) putAnswer(g, lease uint64, res kv.Result, err error) (*api.PutResponse, error) {
	if err == nil && res.LeaseMissing {
		err = leaseNotFound(g, lease)
	}
	if err != nil {
		return nil, k.s.count("put", err)
	}
	k.s.count("put", nil)
	return &api.PutResponse{Header: k.s.header(g), Revision: res.Revision}, nil
}

func (k *kvService) Delete(ctx context.Context, req *api.DeleteRequest) (*api.DeleteResponse, error) {
	g, err := k.s.keyRange(ctx, req.Key)
	if err != nil {
		return nil, k.s.count("delete", err)
	}
	req.Group = g
	var fwd *api.DeleteResponse
	res, forwarded, err := k.s.write(ctx, &g, withSession(kv.Command{Op: kv.OpDelete, Key: req.Key}, req.Session),
		func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			fwd, err = api.NewKVClient(cc).Delete(ctx, req)
			return err
		})
	if forwarded {
		return fwd, k.s.count("delete", err)
	}
	return k.deleteAnswer(g, res, err)
}

// deleteAnswer turns the outcome of a delete proposed on group g into the
// answer, and counts it.
func (k *kvService) deleteAnswer(g uint64, res kv.Result, err error) (*api.DeleteResponse, error) {
	if err != nil {
		return nil, k.s.count("delete", err)
	}
	k.s.count("delete", nil)
	return &api.DeleteResponse{Header: k.s.header(g), Deleted: res.OK, Revision: res.Revision}, nil
}

func (k *kvService) CompareAndSwap(ctx context.Context, req *api.CompareAndSwapRequest) (*api.CompareAndSwapResponse, error) {
	g, err := k.s.keyRange(ctx, req.Key)
	if err != nil {
		return nil, k.s.count("cas", err)
	}
	req.Group = g
	var fwd *api.CompareAndSwapResponse
	res, forwarded, err := k.s.write(ctx, &g, withSession(kv.Command{Op: kv.OpCAS, Key: req.Key, Value: req.Value,
		Expected: req.Expected, ExpectAbsent: req.ExpectAbsent, Lease: req.Lease}, req.Session),
		func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			fwd, err = api.NewKVClient(cc).CompareAndSwap(ctx, req)
			return err
		})
	if forwarded {
		return fwd, k.s.count("cas", err)
	}
	if err == nil && res.LeaseMissing {
		err = leaseNotFound(g, req.Lease)
	}
	if err != nil {
		return nil, k.s.count("cas", err)
	}
	k.s.count("cas", nil)
	resp := &api.CompareAndSwapResponse{Header: k.s.header(g), Succeeded: res.OK, Found: res.Found}
	if res.Found {
		resp.Current = &api.KeyValue{Key: req.Key, Value: res.Current, Revision: res.CurrentRevision, Group: g}
	}
	return resp, nil
}

func (k *kvService) Get(ctx context.Context, req *api.GetRequest) (*api.GetResponse, error) {
	g, err := k.s.keyRange(ctx, req.Key)
	if err != nil {
		return nil, k.s.count("get", err)
	}
	if !k.s.local(g) {
		req.Group = g
		return forward(ctx, k.s, g, "get", func(ctx context.Context, cc *grpc.ClientConn) (*api.GetResponse, error) {
			return api.NewKVClient(cc).Get(ctx, req)
		})
	}
	q, err := kv.EncodeGet(req.Key)
	if req.Revision > 0 {
		q, err = kv.EncodeGetAt(req.Key, req.Revision)
	}
	if err != nil {
		return nil, k.s.count("get", status.Error(codes.InvalidArgument, err.Error()))
	}
	out, err := k.s.keyQuery(ctx, &g, req.Key, q, req.Serializable)
	if err != nil {
		return nil, k.s.count("get", err)
	}
	found, item, err := kv.DecodeGet(out)
	if err != nil {
		return nil, k.s.count("get", status.Error(codes.Internal, err.Error()))
	}
	k.s.count("get", nil)
	resp := &api.GetResponse{Header: k.s.header(g), Found: found}
	if found {
		item.Key = req.Key
		resp.Kv = apiKeyValue(item, g)
	}
	return resp, nil
}

// maxScanRanges bounds the ranges one Scan call reads; the answer then
// carries a resume key.
const maxScanRanges = 256

func (k *kvService) Scan(ctx context.Context, req *api.ScanRequest) (*api.ScanResponse, error) {
	start, end := req.Start, req.End
	if len(req.Prefix) > 0 {
		if len(start) > 0 || len(end) > 0 {
			return nil, k.s.count("scan", status.Error(codes.InvalidArgument, "server: a scan takes a prefix or a span, not both"))
		}
		start, end = req.Prefix, kv.PrefixEnd(req.Prefix)
	}
	limit := int(req.Limit)
	if _, err := kv.EncodeScan(start, end, limit); err != nil {
		return nil, k.s.count("scan", status.Error(codes.InvalidArgument, err.Error()))
	}
	if limit == 0 {
		limit = kv.DefaultScanLimit
	}
	resp := &api.ScanResponse{}
	at := start
	for n := 0; ; n++ {
		if n == maxScanRanges || len(resp.Kvs) == limit {
			resp.More, resp.ResumeKey = true, at
			break
		}
		kvs, resume, err := k.scanRange(ctx, at, end, limit-len(resp.Kvs), req.Serializable, req.Revision)
		if err != nil {
			return nil, k.s.count("scan", err)
		}
		resp.Kvs = append(resp.Kvs, kvs...)
		if len(resume) == 0 {
			break
		}
		at = resume
	}
	k.s.count("scan", nil)
	return resp, nil
}

// scanRange reads up to limit keys of [at, end) from the range that holds
// at, and returns where to go on from (empty: the span is done).
func (k *kvService) scanRange(ctx context.Context, at, end []byte, limit int, serializable bool, rev uint64) ([]*api.KeyValue, []byte, error) {
	g, local, err := k.s.rangeOf(ctx, at)
	if err != nil {
		return nil, nil, err
	}
	if !local {
		sub := &api.ScanRequest{Start: at, End: end, Limit: uint32(limit), Serializable: serializable, Revision: rev}
		resp, err := forward(ctx, k.s, g, "scan_forward", func(ctx context.Context, cc *grpc.ClientConn) (*api.ScanResponse, error) {
			return api.NewKVClient(cc).Scan(ctx, sub)
		})
		if err != nil {
			return nil, nil, err
		}
		return resp.Kvs, resp.ResumeKey, nil
	}
	q, err := kv.EncodeScan(at, end, limit)
	if rev > 0 {
		q, err = kv.EncodeScanAt(at, end, limit, rev)
	}
	if err != nil {
		return nil, nil, status.Error(codes.InvalidArgument, err.Error())
	}
	out, err := k.s.keyQuery(ctx, &g, at, q, serializable)
	if err != nil {
		return nil, nil, err
	}
	items, resume, err := kv.DecodeScan(out)
	if err != nil {
		return nil, nil, status.Error(codes.Internal, err.Error())
	}
	kvs := make([]*api.KeyValue, len(items))
	for i, it := range items {
		kvs[i] = apiKeyValue(it, g)
	}
	return kvs, resume, nil
}

func (k *kvService) DeleteRange(ctx context.Context, req *api.DeleteRangeRequest) (*api.DeleteRangeResponse, error) {
	cmd := withSession(kv.Command{Op: kv.OpDeleteRange, Key: req.Start, End: req.End}, req.Session)
	if _, err := cmd.Encode(); err != nil {
		return nil, k.s.count("delete_range", status.Error(codes.InvalidArgument, err.Error()))
	}
	g, _, err := k.s.rangeOf(ctx, req.Start)
	if err != nil {
		return nil, k.s.count("delete_range", err)
	}
	if d, ok := k.s.descriptor(g); ok && !d.ContainsSpan(req.Start, req.End) {
		return nil, k.s.count("delete_range", k.s.keyMismatch(ctx, g, req.Start))
	}
	req.Group = g
	var fwd *api.DeleteRangeResponse
	res, forwarded, err := k.s.write(ctx, &g, cmd, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		fwd, err = api.NewKVClient(cc).DeleteRange(ctx, req)
		return err
	})
	if forwarded {
		return fwd, k.s.count("delete_range", err)
	}
	if err != nil {
		return nil, k.s.count("delete_range", err)
	}
	k.s.count("delete_range", nil)
	return &api.DeleteRangeResponse{Header: k.s.header(g), Deleted: res.Count, Revision: res.Revision}, nil
}

// withSession places cmd in the client session sess (nil: none).
func withSession(cmd kv.Command, sess *api.Session) kv.Command {
	if sess != nil && sess.Id != 0 {
		cmd.Session, cmd.Seq, cmd.Acked, cmd.Register = sess.Id, sess.Seq, sess.Acked, sess.Register
	}
	return cmd
}

// encode stamps cmd with this node's clock, the proposer's time that drives
// session expiry (kv/session.go), and encodes it. Called on the node that
// proposes.
func encode(cmd kv.Command) ([]byte, error) {
	cmd.Time = time.Now().UnixMilli()
	return cmd.Encode()
}

// outcome decodes the engine's outcome of a write to group g, mapping its
// error to a gRPC status (see rpcError).
func (s *Server) outcome(ctx context.Context, g uint64, out []byte, err error) (kv.Result, error) {
	if err != nil {
		return kv.Result{}, s.rpcError(ctx, g, err, true)
	}
	res, err := kv.DecodeResult(out)
	switch {
	case err != nil:
		return kv.Result{}, status.Error(codes.Internal, err.Error())
	case res.SessionUnknown:
		// Not applied: the client registers its session and resends.
		return kv.Result{}, status.Errorf(codes.FailedPrecondition, "%s: group %d has no such session (expired, or never registered); nothing written", MsgSessionUnknown, g)
	case res.KeyMismatch:
		return res, nil // the caller routes the write again
	case res.SessionStale:
		// Not applied now; the client had given this write up, so it may
		// or may not have applied before.
		return kv.Result{}, status.Errorf(codes.Aborted, "%s: group %d: the session's writes up to this one were acknowledged or given up; not applied now", MsgSessionStale, g)
	}
	return res, nil
}

// query runs q on local group g (readLocal), its error a gRPC status.
func (s *Server) query(ctx context.Context, g uint64, q []byte, serializable bool) ([]byte, error) {
	out, err := s.readLocal(ctx, g, q, serializable)
	if err != nil {
		return nil, s.readError(ctx, g, err)
	}
	return out, nil
}

// readLocal runs q on local group g: linearizably (ReadIndex) unless
// serializable. A linearizable read first waits for a usable leader
// (awaitLeader), and is tried again if the leader changed under it
// (maxReroutes times at most). Its error is awaitLeader's (a gRPC status)
// or the engine's (readError maps both).
func (s *Server) readLocal(ctx context.Context, g uint64, q []byte, serializable bool) ([]byte, error) {
	if serializable {
		return s.host.QueryLocal(g, q)
	}
	for attempt := 0; ; attempt++ {
		if _, err := s.awaitLeader(ctx, g); err != nil {
			return nil, err
		}
		out, err := s.host.Read(ctx, g, q)
		if err != nil && attempt < maxReroutes && (errors.Is(err, multiraft.ErrLeaderChanged) || errors.Is(err, multiraft.ErrNoLeader)) {
			s.metrics.reroutes.Inc()
			continue
		}
		return out, err
	}
}

// readError is readLocal's error of group g as a gRPC status.
func (s *Server) readError(ctx context.Context, g uint64, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return s.rpcError(ctx, g, err, false)
}

// keyQuery runs q, a query about key, on *g's local replica (see query).
// If the range turned out not to hold key (it split or merged), the query
// is routed again by key, here if this node holds the new range, and *g is
// set to it; else it is answered with keyMismatch.
func (s *Server) keyQuery(ctx context.Context, g *uint64, key, q []byte, serializable bool) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		out, err := s.query(ctx, *g, q, serializable)
		if !errors.Is(err, errMismatch) {
			return out, err
		}
		if ng, local, lerr := s.rangeOf(ctx, key); lerr == nil && local && ng != *g && attempt < maxReroutes {
			s.metrics.reroutes.Inc()
			*g = ng
			continue
		}
		return nil, s.keyMismatch(ctx, *g, key)
	}
}

// rpcError maps an engine error to a gRPC status. FailedPrecondition
// always means "not done, safe to retry (elsewhere)", with the leader hint
// in the MDLeader trailer; Aborted means the outcome of a write is
// unknown.
func (s *Server) rpcError(ctx context.Context, g uint64, err error, write bool) error {
	if l := s.leaderOf(g); l != 0 {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(MDLeader, strconv.FormatUint(l, 10)))
	}
	switch {
	case errors.Is(err, multiraft.ErrNoLeader), errors.Is(err, multiraft.ErrDropped),
		errors.Is(err, multiraft.ErrNotLeader), errors.Is(err, multiraft.ErrLeaderChanged):
		return status.Errorf(codes.FailedPrecondition, "server: group %d: %v (not applied; retry)", g, err)
	case errors.Is(err, multiraft.ErrTimeout) && !write:
		return status.Errorf(codes.FailedPrecondition, "server: group %d: %v (retry)", g, err)
	case errors.Is(err, multiraft.ErrAmbiguous):
		return status.Errorf(codes.Aborted, "server: group %d: %v", g, err)
	case errors.Is(err, multiraft.ErrGroupNotFound):
		return status.Errorf(codes.NotFound, "server: group %d: %v", g, err)
	case errors.Is(err, multiraft.ErrStopped), errors.Is(err, multiraft.ErrGroupRemoved):
		return status.Errorf(codes.Unavailable, "server: group %d: %v", g, err)
	case errors.Is(err, kv.ErrInvalid), errors.Is(err, kv.ErrBadCommand):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, kv.ErrCompacted), errors.Is(err, kv.ErrFutureRevision):
		return status.Error(codes.OutOfRange, err.Error())
	case errors.Is(err, kv.ErrKeyMismatch):
		return errMismatch
	case errors.Is(err, kv.ErrUninitialized):
		return status.Errorf(codes.Unavailable, "server: range %d: %v (retry)", g, err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Errorf(codes.DeadlineExceeded, "server: group %d: %v", g, err)
	case errors.Is(err, context.Canceled):
		return status.Errorf(codes.Canceled, "server: group %d: %v", g, err)
	}
	return status.Errorf(codes.Internal, "server: group %d: %v", g, err)
}
