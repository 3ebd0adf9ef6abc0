package server

// The node's side of its ranges (internal/ranges): the Env through which
// the Store proposes splits and meta updates wherever the ranges' leaders
// are, the peer RPCs that carry them, and the operators' Split and Merge.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/ranges"
	"github.com/flotilla/flotilla/kv"
)

// envTimeout bounds one internal proposal or question to a peer.
const envTimeout = 10 * time.Second

// rangeEnv is the Server as the Store's ranges.Env.
type rangeEnv struct{ s *Server }

var _ ranges.Env = rangeEnv{}

func (e rangeEnv) Now() time.Time { return time.Now() }

func (e rangeEnv) After(d time.Duration, fn func()) { time.AfterFunc(d, fn) }

// Propose proposes cmd on range id's leader: here with ProposeFunc if this
// node leads, else through the leader's Peer.Propose, following leader
// hints a few times.
func (e rangeEnv) Propose(id uint64, cmd []byte, done func([]byte, error)) {
	s := e.s
	if s.local(id) {
		if l, _, _ := s.host.Leader(id); l == s.cfg.NodeID {
			s.host.ProposeFunc(id, cmd, done)
			return
		}
	}
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, envTimeout)
		defer cancel()
		done(s.proposeRemote(ctx, id, cmd))
	}()
}

// proposeRemote proposes cmd on range id's leader, wherever it is.
func (s *Server) proposeRemote(ctx context.Context, id uint64, cmd []byte) ([]byte, error) {
	var last error
	for attempt := 0; attempt < 2*maxReroutes; attempt++ {
		l := s.usableLeader(id)
		if l == 0 && s.local(id) {
			var err error
			if l, err = s.awaitLeader(ctx, id); err != nil {
				return nil, err
			}
		}
		if l == 0 {
			for _, r := range s.replicasOf(id) {
				if r != s.cfg.NodeID && !s.host.PeerDown(r) {
					l = r
					break
				}
			}
		}
		if l == s.cfg.NodeID {
			out, err := s.host.Propose(ctx, id, cmd)
			if err == nil || !leaderMoved(err) {
				return out, err
			}
			last = err
			continue
		}
		conn := s.peerConn(l)
		if conn == nil {
			return nil, fmt.Errorf("server: range %d: no leader to propose to", id)
		}
		var md metadata.MD
		resp, err := api.NewPeerClient(conn).Propose(ctx, &api.PeerProposeRequest{ClusterId: s.clusterID, Group: id, Command: cmd}, grpc.Trailer(&md))
		if err == nil {
			return resp.Result, nil
		}
		last = err
		if status.Code(err) != codes.FailedPrecondition || ctx.Err() != nil {
			return nil, err
		}
		if err := wait(ctx, s.cfg.TickInterval); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("server: range %d: no leader took the proposal: %w", id, last)
}

// wait waits d or until ctx ends.
func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// PeerDescriptor asks node for its replica of range id.
func (e rangeEnv) PeerDescriptor(node, id uint64, done func(kv.Descriptor, bool)) {
	s := e.s
	conn := s.peerConn(node)
	if conn == nil {
		done(kv.Descriptor{}, false)
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, envTimeout)
		defer cancel()
		resp, err := api.NewPeerClient(conn).ReplicaState(ctx, &api.ReplicaStateRequest{ClusterId: s.clusterID, Group: id})
		if err != nil || len(resp.Descriptor_) == 0 {
			done(kv.Descriptor{}, false)
			return
		}
		d, err := kv.DecodeDescriptor(resp.Descriptor_)
		done(d, err == nil)
	}()
}

// PeerHolds asks node whether it holds an initialized replica of range id.
func (e rangeEnv) PeerHolds(node, id uint64, done func(holds, answered bool)) {
	s := e.s
	if node == s.cfg.NodeID {
		r, ok := s.ranges.Get(id)
		done(ok && hasDescriptor(r), true)
		return
	}
	conn := s.peerConn(node)
	if conn == nil {
		done(false, false)
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, envTimeout)
		defer cancel()
		resp, err := api.NewPeerClient(conn).ReplicaState(ctx, &api.ReplicaStateRequest{ClusterId: s.clusterID, Group: id})
		switch {
		case status.Code(err) == codes.NotFound:
			done(false, true)
		case err != nil:
			done(false, false)
		default:
			done(len(resp.Descriptor_) > 0, true)
		}
	}()
}

// hasDescriptor reports whether replica r is initialized.
func hasDescriptor(r *ranges.Replica) bool {
	_, ok := r.Descriptor()
	return ok
}

// ReplicaApplied asks node (this one too) for its replica's applied index.
func (e rangeEnv) ReplicaApplied(node, id uint64, done func(uint64, bool)) {
	s := e.s
	if node == s.cfg.NodeID {
		r, ok := s.ranges.Get(id)
		if !ok {
			done(0, false)
			return
		}
		done(r.SM.AppliedIndex(), true)
		return
	}
	conn := s.peerConn(node)
	if conn == nil {
		done(0, false)
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, envTimeout)
		defer cancel()
		resp, err := api.NewPeerClient(conn).ReplicaState(ctx, &api.ReplicaStateRequest{ClusterId: s.clusterID, Group: id})
		if err != nil {
			done(0, false)
			return
		}
		done(resp.Applied, true)
	}()
}

// Removed tells node that its replica of range id was removed here
// (Peer.ReplicaState with removed_by); best effort.
func (e rangeEnv) Removed(node, id uint64) {
	s := e.s
	conn := s.peerConn(node)
	if conn == nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, envTimeout)
		defer cancel()
		_, err := api.NewPeerClient(conn).ReplicaState(ctx, &api.ReplicaStateRequest{ClusterId: s.clusterID, Group: id, RemovedBy: s.cfg.NodeID})
		if err != nil {
			s.log.Debug("telling a node its replica was removed", "peer", node, "group", id, "err", err)
		}
	}()
}

// Meta reads the meta index (metaLookup).
func (e rangeEnv) Meta(key []byte, limit int, done func([]kv.Descriptor, error)) {
	s := e.s
	if s.local(kv.MetaRangeID) {
		// Read here at once; but a replica not initialized yet forwards
		// (metaLookup), which must not hold the caller (the range store's
		// loop), nor wait without a bound.
		out, err := s.host.QueryLocal(kv.MetaRangeID, kv.EncodeMetaQuery(key, limit))
		if err == nil {
			done(kv.DecodeDescriptors(out))
			return
		}
		if !errors.Is(err, kv.ErrUninitialized) {
			done(nil, s.rpcError(s.ctx, kv.MetaRangeID, err, false))
			return
		}
	}
	go func() {
		ctx, cancel := context.WithTimeout(s.ctx, envTimeout)
		defer cancel()
		done(s.metaLookup(ctx, key, limit))
	}()
}

// Propose serves Peer.Propose: an internal command from another node's
// Store, proposed here if this node leads the group.
func (p *peerService) Propose(ctx context.Context, req *api.PeerProposeRequest) (*api.PeerProposeResponse, error) {
	s := p.s
	if req.ClusterId != s.clusterID {
		return nil, status.Errorf(codes.FailedPrecondition, "server: node %d belongs to cluster %x, not %x", s.cfg.NodeID, s.clusterID, req.ClusterId)
	}
	if !s.local(req.Group) {
		return nil, s.notHosted(ctx, req.Group)
	}
	if l, _, _ := s.host.Leader(req.Group); l != s.cfg.NodeID {
		if l != 0 {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(MDLeader, strconv.FormatUint(l, 10)))
		}
		return nil, status.Errorf(codes.FailedPrecondition, "server: node %d does not lead range %d", s.cfg.NodeID, req.Group)
	}
	out, err := s.host.Propose(ctx, req.Group, req.Command)
	if err != nil {
		return nil, s.rpcError(ctx, req.Group, err, true)
	}
	return &api.PeerProposeResponse{Result: out}, nil
}

// ReplicaState serves Peer.ReplicaState.
func (p *peerService) ReplicaState(ctx context.Context, req *api.ReplicaStateRequest) (*api.ReplicaStateResponse, error) {
	s := p.s
	if req.ClusterId != s.clusterID {
		return nil, status.Errorf(codes.FailedPrecondition, "server: node %d belongs to cluster %x, not %x", s.cfg.NodeID, s.clusterID, req.ClusterId)
	}
	r, ok := s.ranges.Get(req.Group)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "%v", errNotHosted(req.Group))
	}
	if req.RemovedBy != 0 {
		s.ranges.CheckRemoved(req.Group, req.RemovedBy)
	}
	resp := &api.ReplicaStateResponse{Applied: r.SM.AppliedIndex()}
	if d, ok := r.Descriptor(); ok {
		resp.Descriptor_ = d.Encode()
	}
	return resp, nil
}

// Split serves Cluster.Split: on the node that leads the key's range
// (forwarded there if need be), the Store splits it.
func (c *clusterService) Split(ctx context.Context, req *api.SplitRequest) (*api.SplitResponse, error) {
	s := c.s
	if err := kv.CheckKey(req.Key); err != nil {
		return nil, s.count("split", status.Error(codes.InvalidArgument, err.Error()))
	}
	g, local, err := s.rangeOf(ctx, req.Key)
	if err != nil {
		return nil, s.count("split", err)
	}
	l, err := s.leaderFor(ctx, g, local)
	if err != nil {
		return nil, s.count("split", err)
	}
	if l != s.cfg.NodeID {
		if forwardedIn(ctx) {
			return nil, s.count("split", status.Errorf(codes.FailedPrecondition, "server: range %d: node %d does not lead it (retry)", g, s.cfg.NodeID))
		}
		conn, fctx, err := s.forwardToNode(ctx, l)
		if err != nil {
			return nil, s.count("split", err)
		}
		resp, err := api.NewClusterClient(conn).Split(fctx, req)
		return resp, s.count("split", err)
	}
	type result struct {
		left, right kv.Descriptor
		err         error
	}
	ch := make(chan result, 1)
	s.ranges.Split(g, req.Key, func(left, right kv.Descriptor, err error) { ch <- result{left, right, err} })
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, s.count("split", splitError(r.err))
		}
		return &api.SplitResponse{Left: s.rangeInfo(r.left, false), Right: s.rangeInfo(r.right, false)}, s.count("split", nil)
	case <-ctx.Done():
		return nil, s.count("split", status.FromContextError(ctx.Err()).Err())
	}
}

// leaderFor returns the leader of range g: waiting for one if it has a
// replica here, else as the peers report it.
func (s *Server) leaderFor(ctx context.Context, g uint64, local bool) (uint64, error) {
	if local {
		return s.awaitLeader(ctx, g)
	}
	if l := s.usableLeader(g); l != 0 {
		return l, nil
	}
	return 0, status.Errorf(codes.Unavailable, "server: range %d has no known leader yet; retry", g)
}

// splitError maps a Store error to a status.
func splitError(err error) error {
	switch {
	case errors.Is(err, kv.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ranges.ErrBusy), errors.Is(err, ranges.ErrNotLocal), errors.Is(err, ranges.ErrHandedOff):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return status.Error(codes.Unavailable, err.Error())
}

// Merge serves Cluster.Merge: on the node that leads the key's range
// (forwarded there if need be), the Store merges it with the range after
// it.
func (c *clusterService) Merge(ctx context.Context, req *api.MergeRequest) (*api.MergeResponse, error) {
	s := c.s
	if err := kv.CheckKey(req.Key); err != nil {
		return nil, s.count("merge", status.Error(codes.InvalidArgument, err.Error()))
	}
	g, local, err := s.rangeOf(ctx, req.Key)
	if err != nil {
		return nil, s.count("merge", err)
	}
	l, err := s.leaderFor(ctx, g, local)
	if err != nil {
		return nil, s.count("merge", err)
	}
	if l != s.cfg.NodeID {
		if forwardedIn(ctx) {
			return nil, s.count("merge", status.Errorf(codes.FailedPrecondition, "server: range %d: node %d does not lead it (retry)", g, s.cfg.NodeID))
		}
		conn, fctx, err := s.forwardToNode(ctx, l)
		if err != nil {
			return nil, s.count("merge", err)
		}
		resp, err := api.NewClusterClient(conn).Merge(fctx, req)
		return resp, s.count("merge", err)
	}
	type result struct {
		d   kv.Descriptor
		err error
	}
	ch := make(chan result, 1)
	s.ranges.Merge(g, func(d kv.Descriptor, err error) { ch <- result{d, err} })
	select {
	case r := <-ch:
		if errors.Is(r.err, ranges.ErrHandedOff) {
			// This node moved its own replica of the left range onto
			// the right range's nodes (the merge's alignment) and
			// handed the leadership on: the new leader, which holds a
			// replica of the right range, goes on. One more hop even
			// for a forwarded request, as for a move (Move): left with
			// its old voter, the range would keep one replica too many.
			nl, err := s.awaitLeaderBut(ctx, g, s.cfg.NodeID)
			if err != nil {
				return nil, s.count("merge", err)
			}
			conn, fctx, err := s.forwardToNode(ctx, nl)
			if err != nil {
				return nil, s.count("merge", err)
			}
			resp, err := api.NewClusterClient(conn).Merge(fctx, req)
			return resp, s.count("merge", err)
		}
		if r.err != nil {
			return nil, s.count("merge", splitError(r.err))
		}
		return &api.MergeResponse{Merged: s.rangeInfo(r.d, false)}, s.count("merge", nil)
	case <-ctx.Done():
		return nil, s.count("merge", status.FromContextError(ctx.Err()).Err())
	}
}
