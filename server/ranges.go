package server

// Finding the range of a key.
//
// A node routes every request by its key: to its own replica of the range
// that holds the key when it has one (ranges.Store.Lookup), else to a node
// that has one, found in its cache of the meta index (kv.RangeCache),
// which it fills from the meta range: its own replica of range 1 if it
// has one, else another node's. A request whose range turned out not to
// hold its key (it split or merged meanwhile: kv.Result.KeyMismatch,
// kv.ErrKeyMismatch) is routed again, here; only a node that cannot route
// it answers the client FailedPrecondition with the ranges it knows, in
// the MDRanges trailer.

import (
	"bytes"
	"context"
	"errors"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/ranges"
	"github.com/flotilla/flotilla/kv"
)

// MDRanges is a binary trailer on a FailedPrecondition that says a
// request's range does not hold its key: kv.EncodeDescriptors of the
// ranges the answering node knows around the key.
const MDRanges = "flotilla-ranges-bin"

// MsgKeyMismatch starts the message of such a refusal (batch answers carry
// no trailer).
const MsgKeyMismatch = "kv: key not in range"

// metaPrefetch is how many descriptors a meta lookup asks for at once.
const metaPrefetch = 64

// rangeOf returns the range that holds key: local says this node has an
// initialized replica of it. Errors are gRPC statuses.
func (s *Server) rangeOf(ctx context.Context, key []byte) (id uint64, local bool, err error) {
	if r := s.ranges.Lookup(key); r != nil {
		return r.ID, true, nil
	}
	if d, ok := s.cache.Lookup(key); ok {
		return d.ID, false, nil
	}
	ds, err := s.metaLookup(ctx, key, metaPrefetch)
	if err != nil {
		return 0, false, err
	}
	s.cache.Insert(ds...)
	if d, ok := s.cache.Lookup(key); ok {
		return d.ID, false, nil
	}
	return 0, false, status.Errorf(codes.Unavailable, "server: the meta index has no range for %q yet; retry", key)
}

// keyRange returns the range of a request's key after checking the key.
func (s *Server) keyRange(ctx context.Context, key []byte) (uint64, error) {
	if err := kv.CheckKey(key); err != nil {
		return 0, status.Error(codes.InvalidArgument, err.Error())
	}
	id, _, err := s.rangeOf(ctx, key)
	return id, err
}

// local reports whether range g has a replica on this node.
func (s *Server) local(g uint64) bool {
	_, ok := s.ranges.Get(g)
	return ok
}

// metaLookup reads up to limit descriptors of the meta index from the one
// holding key: from the local replica of the meta range if there is one (a
// serializable read: the index is a cache, and a range corrects a stale
// entry by answering that it does not hold the key), else from a node that
// has one.
func (s *Server) metaLookup(ctx context.Context, key []byte, limit int) ([]kv.Descriptor, error) {
	if s.local(kv.MetaRangeID) {
		out, err := s.host.QueryLocal(kv.MetaRangeID, kv.EncodeMetaQuery(key, limit))
		if err == nil {
			return kv.DecodeDescriptors(out)
		}
		if !errors.Is(err, kv.ErrUninitialized) {
			return nil, s.rpcError(ctx, kv.MetaRangeID, err, false)
		}
	}
	if forwardedIn(ctx) {
		return nil, s.notHosted(ctx, kv.MetaRangeID)
	}
	conn, fctx, err := s.forwardTo(ctx, kv.MetaRangeID)
	if err != nil {
		return nil, err
	}
	resp, err := api.NewClusterClient(conn).Ranges(fctx, &api.RangesRequest{Key: key, Limit: uint32(limit)})
	if err != nil {
		return nil, err
	}
	out := make([]kv.Descriptor, 0, len(resp.Ranges))
	for _, ri := range resp.Ranges {
		out = append(out, descriptorOf(ri))
	}
	return out, nil
}

// descriptorOf returns the descriptor a RangeInfo carries.
func descriptorOf(ri *api.RangeInfo) kv.Descriptor {
	return kv.Descriptor{ID: ri.Id, Start: ri.Start, End: ri.End, Replicas: ri.Replicas, Learners: ri.Learners, Generation: ri.Generation, Sticky: ri.Sticky}
}

// descriptor returns what this node knows of range g's descriptor: its
// own replica's, else its cache's, else a peer's report.
func (s *Server) descriptor(g uint64) (kv.Descriptor, bool) {
	if r, ok := s.ranges.Get(g); ok {
		if d, ok := r.Descriptor(); ok {
			return *d, true
		}
	}
	if d, ok := s.cache.Get(g); ok {
		return d, true
	}
	var best *api.GroupInfo
	s.peers.Lock()
	for _, v := range s.peers.views {
		for _, gi := range v.groups {
			if gi.Id == g && len(gi.Replicas) > 0 && (best == nil || gi.Generation > best.Generation) {
				best = gi
			}
		}
	}
	s.peers.Unlock()
	if best == nil {
		return kv.Descriptor{}, false
	}
	return kv.Descriptor{ID: g, Start: best.Start, End: best.End, Replicas: best.Replicas, Generation: best.Generation}, true
}

// replicasOf returns the nodes that hold range g, as far as this node
// knows.
func (s *Server) replicasOf(g uint64) []uint64 {
	if d, ok := s.descriptor(g); ok {
		return d.Replicas
	}
	var out []uint64
	s.peers.Lock()
	for id, v := range s.peers.views {
		for _, gi := range v.groups {
			if gi.Id == g {
				out = append(out, id)
			}
		}
	}
	s.peers.Unlock()
	slices.Sort(out)
	return out
}

// keyMismatch is the answer to a request for key that range g does not
// hold, when this node cannot route it: FailedPrecondition, with the
// ranges this node knows around the key in the MDRanges trailer.
func (s *Server) keyMismatch(ctx context.Context, g uint64, key []byte) error {
	var ds []kv.Descriptor
	if r := s.ranges.Lookup(key); r != nil {
		d, _ := r.Descriptor()
		ds = append(ds, *d)
	} else if d, ok := s.cache.Lookup(key); ok {
		ds = append(ds, d)
	}
	if d, ok := s.descriptor(g); ok && !slices.ContainsFunc(ds, func(e kv.Descriptor) bool { return e.ID == d.ID }) {
		ds = append(ds, d)
	}
	if len(ds) > 0 {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(MDRanges, string(kv.EncodeDescriptors(ds))))
	}
	return status.Errorf(codes.FailedPrecondition, "%s: range %d does not hold %q (it split or merged); look it up again", MsgKeyMismatch, g, key)
}

// spanRanges returns the ranges that hold [start, end), in key order, as
// this node knows them (local replicas first, then the cache and the meta
// index), at most limit of them.
func (s *Server) spanRanges(ctx context.Context, start, end []byte, limit int) ([]kv.Descriptor, error) {
	var out []kv.Descriptor
	at := start
	for len(out) < limit {
		var d kv.Descriptor
		if r := s.ranges.Lookup(at); r != nil {
			rd, _ := r.Descriptor()
			d = *rd
		} else if cd, ok := s.cache.Lookup(at); ok {
			d = cd
		} else {
			ds, err := s.metaLookup(ctx, at, metaPrefetch)
			if err != nil {
				return nil, err
			}
			s.cache.Insert(ds...)
			cd, ok := s.cache.Lookup(at)
			if !ok {
				return nil, status.Errorf(codes.Unavailable, "server: the meta index has no range for %q yet; retry", at)
			}
			d = cd
		}
		out = append(out, d)
		if len(d.End) == 0 || (len(end) > 0 && bytes.Compare(d.End, end) >= 0) {
			break
		}
		at = d.End
	}
	return out, nil
}

// errRangeNotFound is the answer for a range ID no node is known to hold.
func errRangeNotFound(g uint64) error {
	return status.Errorf(codes.NotFound, "server: range %d is not known here (it may have merged away)", g)
}

// rangeStats returns the size of local replica r's data and its recent
// load.
func (s *Server) rangeStats(r *ranges.Replica) (bytes uint64, opsPerSec float64) {
	n, err := r.SM.SpanBytes()
	if err != nil {
		s.log.Warn("measure range size", "group", r.ID, "err", err)
	}
	return n, s.ranges.Load(r.ID)
}
