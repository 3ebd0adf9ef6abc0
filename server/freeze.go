package server

import (
	"context"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Freeze makes the node behave, to everyone else, like a process stopped
// with SIGSTOP: it neither sends nor receives raft traffic (every peer link
// black-holed both ways, as transport.Faults.Partition does) nor gossip
// (gossip.Transport.Pause), and every
// client request, discovery request and open stream hangs, its connection
// open, until Thaw or until the caller gives up. Unlike SIGSTOP the node's
// own clock and raft loop keep running. For the demo's pause and for tests
// of gray failures; Thaw undoes it. Safe to call more than once.
func (s *Server) Freeze() {
	others := make([]uint64, 0, len(s.nodeIDs()))
	for _, id := range s.nodeIDs() {
		if id != s.cfg.NodeID {
			others = append(others, id)
		}
	}
	s.tr.Faults().Partition([]uint64{s.cfg.NodeID}, others)
	s.gossipTr.Pause(true)
	s.freezer.set(true)
}

// Thaw undoes Freeze.
func (s *Server) Thaw() {
	s.freezer.set(false)
	s.gossipTr.Pause(false)
	s.tr.Faults().Heal()
}

// freezer holds requests while the node is frozen. Every request and
// stream message checks it, so the check is one atomic load; mu (a leaf)
// only serializes Freeze and Thaw.
type freezer struct {
	mu     sync.Mutex
	thawed atomic.Pointer[chan struct{}] // nil unless frozen; closed at Thaw
	held   atomic.Int64                  // requests and stream messages waiting now
}

func (f *freezer) set(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := f.thawed.Load()
	switch {
	case on && cur == nil:
		ch := make(chan struct{})
		f.thawed.Store(&ch)
	case !on && cur != nil:
		f.thawed.Store(nil)
		close(*cur)
	}
}

// wait returns at once unless the node is frozen; then it waits until it
// thaws or ctx ends.
func (f *freezer) wait(ctx context.Context) error {
	p := f.thawed.Load()
	if p == nil {
		return nil
	}
	thawed := *p
	f.held.Add(1)
	defer f.held.Add(-1)
	select {
	case <-thawed:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

// unary holds a unary call while the node is frozen.
func (f *freezer) unary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := f.wait(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// stream holds a stream, and every message it sends or receives, while the
// node is frozen.
func (f *freezer) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := f.wait(ss.Context()); err != nil {
		return err
	}
	return handler(srv, frozenStream{ss, f})
}

type frozenStream struct {
	grpc.ServerStream
	f *freezer
}

func (s frozenStream) SendMsg(m any) error {
	if err := s.f.wait(s.Context()); err != nil {
		return err
	}
	return s.ServerStream.SendMsg(m)
}

func (s frozenStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return s.f.wait(s.Context())
}
