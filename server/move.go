package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/ranges"
	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Move serves Cluster.Move: on the node that leads the key's range
// (forwarded there if need be), the Store moves the replica
// (ranges.Store.Move). If that node is the one leaving, it hands the
// leadership to another replica and forwards the rest of the move to it.
func (c *clusterService) Move(ctx context.Context, req *api.MoveRequest) (*api.MoveResponse, error) {
	s := c.s
	if err := kv.CheckKey(req.Key); err != nil {
		return nil, s.count("move", status.Error(codes.InvalidArgument, err.Error()))
	}
	if err := s.checkMove(req.From, req.To); err != nil {
		return nil, s.count("move", err)
	}
	g, local, err := s.rangeOf(ctx, req.Key)
	if err != nil {
		return nil, s.count("move", err)
	}
	l, err := s.leaderFor(ctx, g, local)
	if err != nil {
		return nil, s.count("move", err)
	}
	if l != s.cfg.NodeID {
		if forwardedIn(ctx) {
			return nil, s.count("move", status.Errorf(codes.FailedPrecondition, "server: range %d: node %d does not lead it (retry)", g, s.cfg.NodeID))
		}
		return s.forwardMove(ctx, l, req)
	}
	type result struct {
		d   kv.Descriptor
		err error
	}
	ch := make(chan result, 1)
	s.ranges.Move(g, req.From, req.To, func(d kv.Descriptor, err error) { ch <- result{d, err} })
	select {
	case r := <-ch:
		if errors.Is(r.err, ranges.ErrHandedOff) {
			// This node leaves the range: the new leader removes it.
			// One more hop even for a forwarded request: the new leader
			// is not the node leaving, so it does not hand off again.
			nl, err := s.awaitLeaderBut(ctx, g, s.cfg.NodeID)
			if err != nil {
				return nil, s.count("move", err)
			}
			return s.forwardMove(ctx, nl, req)
		}
		if r.err != nil {
			return nil, s.count("move", moveError(r.err))
		}
		return &api.MoveResponse{Range: s.rangeInfo(r.d, false)}, s.count("move", nil)
	case <-ctx.Done():
		return nil, s.count("move", status.FromContextError(ctx.Err()).Err())
	}
}

// forwardMove asks node to make the move.
func (s *Server) forwardMove(ctx context.Context, node uint64, req *api.MoveRequest) (*api.MoveResponse, error) {
	conn, fctx, err := s.forwardToNode(ctx, node)
	if err != nil {
		return nil, s.count("move", err)
	}
	resp, err := api.NewClusterClient(conn).Move(fctx, req)
	return resp, s.count("move", err)
}

// checkMove refuses a move that names a node outside the cluster, or no
// node, or the same node twice, or onto a node decommissioning or removed.
func (s *Server) checkMove(from, to uint64) error {
	switch {
	case from == 0 && to == 0:
		return status.Error(codes.InvalidArgument, "server: a move needs a node to move from or to")
	case from == to:
		return status.Errorf(codes.InvalidArgument, "server: a move from node %d to itself", from)
	}
	for _, n := range []uint64{from, to} {
		if n != 0 && !s.isNode(n) {
			return status.Errorf(codes.InvalidArgument, "server: node %d is not in the cluster (nodes %v)", n, s.nodeIDs())
		}
	}
	if m := s.membership(to); to != 0 && m != "" {
		return status.Errorf(codes.InvalidArgument, "server: node %d is %s: no replica moves onto it", to, m)
	}
	return nil
}

// moveError maps a Store or engine error of a move to a status.
func moveError(err error) error {
	switch {
	case errors.Is(err, kv.ErrInvalid), errors.Is(err, multiraft.ErrInvalidRequest):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ranges.ErrBusy), errors.Is(err, ranges.ErrNotLocal), errors.Is(err, ranges.ErrNotLeader):
		return status.Error(codes.FailedPrecondition, fmt.Sprintf("%v (retry)", err))
	}
	return status.Error(codes.Unavailable, err.Error())
}
