package server

// Where a request goes.
//
// Writes are proposed on their group's leader only (the engine does not
// forward proposals: multiraft DisableProposalForwarding), so that a
// refused proposal is known not to have been appended. A node that holds a
// replica but does not lead forwards the request, once, to the leader; a
// node without a replica forwards it to a replica.
//
// A request is never sent to a leader this node knows to be gone, and never
// answered "dropped" for a leadership that merely moved:
//
//   - While the group has no leader, or its leader's node is down (nothing
//     heard from it for the liveness timeout: multiraft Host.PeerDown), the
//     request waits here, for at most leaderWait, for a leader to be
//     elected (awaitLeader), then goes there. Only then is it answered "no
//     leader yet" (FailedPrecondition), which the client retries.
//   - A proposal that raft refused unappended because leadership moved (a
//     transfer completed, the leader was deposed: ErrNotLeader, ErrNoLeader)
//     is routed again to the new leader, up to maxReroutes times.
//   - A forwarded session write whose target goes silent (liveness) or
//     stops leading is given up and routed again: writes carry client
//     sessions (kv/session.go), so a second copy applies nothing. After
//     maxReroutes the write is answered Unavailable (the client retries).
//     A write without a session is forwarded once and waited for.
//
// A request forwarded here by another node is served here or refused with
// the leader hint, never forwarded again: a request crosses at most one
// hop, so two nodes with different views cannot bounce it between them.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
)

// maxReroutes bounds how often one request is routed again after its
// proposal was refused unappended.
const maxReroutes = 3

// leaderWatch wakes requests that wait for a group's leader. Lock order:
// mu is a leaf.
type leaderWatch struct {
	mu sync.Mutex
	ch chan struct{} // closed, and replaced, at every batch of leader events
}

func newLeaderWatch() *leaderWatch { return &leaderWatch{ch: make(chan struct{})} }

// changed returns a channel closed at the next leader change.
func (w *leaderWatch) changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

func (w *leaderWatch) notify() {
	w.mu.Lock()
	close(w.ch)
	w.ch = make(chan struct{})
	w.mu.Unlock()
}

// leaderWatchLoop wakes waiting requests at every leader change of a local
// group.
func (s *Server) leaderWatchLoop() {
	sub := s.host.Subscribe()
	defer sub.Close()
	for {
		if _, err := sub.Next(s.ctx); err != nil {
			return // stopping, or the Host stopped
		}
		s.leaders.notify()
	}
}

// leaderWait bounds how long a request waits here for its group to have a
// leader it can be sent to: two election timeouts, enough for one failed
// election and a successful one.
func (s *Server) leaderWait() time.Duration { return 2 * s.electionTimeout() }

// usableLeader returns the leader of group g (this node included) if a
// request may be sent to it: known, and its node not down. 0 otherwise.
func (s *Server) usableLeader(g uint64) uint64 {
	l := s.leaderOf(g)
	if l == 0 || (l != s.cfg.NodeID && s.host.PeerDown(l)) {
		return 0
	}
	return l
}

// awaitLeader waits until group g, which has a local replica, has a usable
// leader, and returns it. It gives up after leaderWait with a
// FailedPrecondition "no leader yet", or when ctx ends or the node stops.
func (s *Server) awaitLeader(ctx context.Context, g uint64) (uint64, error) {
	return s.awaitLeaderBut(ctx, g, 0)
}

// awaitLeaderBut is awaitLeader for a leader other than node not (0: any).
func (s *Server) awaitLeaderBut(ctx context.Context, g, not uint64) (uint64, error) {
	if l := s.usableLeader(g); l != 0 && l != not {
		return l, nil // the common case: no wait, no lock
	}
	var deadline time.Time
	for {
		ch := s.leaders.changed() // before the check: no change is missed
		if l := s.usableLeader(g); l != 0 && l != not {
			return l, nil
		}
		now := time.Now()
		if deadline.IsZero() {
			deadline = now.Add(s.leaderWait())
			s.metrics.leaderWaits.Inc()
		}
		left := deadline.Sub(now)
		if left <= 0 {
			return 0, s.noLeaderYet(g)
		}
		// Liveness changes (a leader's node found down) come with no
		// event: look again every tick.
		t := time.NewTimer(min(left, s.cfg.TickInterval))
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return 0, status.FromContextError(ctx.Err()).Err()
		case <-s.stopc:
			t.Stop()
			return 0, status.Error(codes.Unavailable, "server: node stopping; retry on another node")
		}
		t.Stop()
	}
}

// noLeaderYet is the answer to a request whose group found no usable
// leader within leaderWait. Not done: the client retries.
func (s *Server) noLeaderYet(g uint64) error {
	l := s.leaderOf(g)
	why := "no leader yet"
	if l != 0 {
		why = fmt.Sprintf("leader %d not heard from; no new leader yet", l)
	}
	return status.Errorf(codes.FailedPrecondition, "server: group %d: %s (not applied; retry)", g, why)
}

// leaderMoved reports whether an engine error says a proposal was refused
// unappended because this node does not lead (any more), so that it may go
// to the leader. (ErrDropped, a full uncommitted log, is not: sending the
// proposal straight back to the same leader would only add to its load.)
func leaderMoved(err error) bool {
	return errors.Is(err, multiraft.ErrNotLeader) || errors.Is(err, multiraft.ErrNoLeader)
}

// write runs cmd, a write of range *g, on the range's leader. Here, if
// this node leads (or the request was forwarded here): the result and its
// error as a gRPC status, forwarded false. Elsewhere by remote, which must
// send the request with the context and connection it is given (the
// context carries the forwarded mark): remote's error, forwarded true. A
// write whose range turned out not to hold its key (a split or merge
// raced with it: nothing was written) is routed again by its key, and *g
// is set to the range that took it.
func (s *Server) write(ctx context.Context, g *uint64, cmd kv.Command,
	remote func(context.Context, *grpc.ClientConn) error) (res kv.Result, forwarded bool, err error) {
	// A session write may be sent again: a forward whose target goes
	// silent or is replaced is given up and routed anew.
	mayGiveUp := cmd.Session != 0
	b, err := encode(cmd)
	if err != nil {
		return kv.Result{}, false, status.Error(codes.InvalidArgument, err.Error())
	}
	for attempt := 0; ; attempt++ {
		if !s.local(*g) {
			return s.writeRemote(ctx, *g, mayGiveUp, remote)
		}
		if !forwardedIn(ctx) {
			l, err := s.awaitLeader(ctx, *g)
			if err != nil {
				return kv.Result{}, false, err
			}
			if l != s.cfg.NodeID {
				if attempt > maxReroutes {
					return kv.Result{}, false, s.unresponsive(*g)
				}
				err, gaveUp := s.forwardWatched(ctx, *g, l, true, mayGiveUp, remote)
				if gaveUp {
					s.metrics.reroutes.Inc()
					continue
				}
				return kv.Result{}, true, err
			}
		}
		out, err := s.host.Propose(ctx, *g, b)
		if err != nil && leaderMoved(err) && !forwardedIn(ctx) && attempt < maxReroutes {
			s.metrics.reroutes.Inc()
			continue
		}
		res, err := s.outcome(ctx, *g, out, err)
		if err == nil && res.KeyMismatch {
			if cmd.Op.NeedsKey() && attempt < maxReroutes {
				if ng, _, lerr := s.rangeOf(ctx, cmd.Key); lerr == nil && ng != *g {
					s.metrics.reroutes.Inc()
					*g = ng
					continue
				}
			}
			return kv.Result{}, false, s.keyMismatch(ctx, *g, cmd.Key)
		}
		return res, false, err
	}
}

// writeRemote forwards a write of range g, which has no replica here, to a
// node that has one (see forwardWatched).
func (s *Server) writeRemote(ctx context.Context, g uint64, mayGiveUp bool,
	remote func(context.Context, *grpc.ClientConn) error) (kv.Result, bool, error) {
	for attempt := 0; attempt <= maxReroutes; attempt++ {
		to, err := s.forwardTarget(ctx, g)
		if err != nil {
			return kv.Result{}, false, err
		}
		err, gaveUp := s.forwardWatched(ctx, g, to, false, mayGiveUp, remote)
		if !gaveUp {
			return kv.Result{}, true, err
		}
		s.metrics.reroutes.Inc()
	}
	return kv.Result{}, false, s.unresponsive(g)
}

// unresponsive is the answer to a session write whose forwards were given
// up maxReroutes times: not known to be applied; the client resends it.
func (s *Server) unresponsive(g uint64) error {
	return status.Errorf(codes.Unavailable, "server: group %d: its leader did not answer forwarded writes; retry", g)
}

// forwardWatched forwards a request of group g to node l (its leader, or a
// replica when this node has none; see forwardToNode) and waits for the
// answer. If mayGiveUp, it watches l while it waits: once l's node is down
// (liveness) or, l being the leader, the group has another known leader,
// it cancels the forward and reports gaveUp, so that the caller routes the request again instead
// of waiting on a node that will not answer (a frozen leader keeps its
// connections open). Only a request that may be delivered twice may be
// given up: a session write.
func (s *Server) forwardWatched(ctx context.Context, g, l uint64, leader, mayGiveUp bool,
	remote func(context.Context, *grpc.ClientConn) error) (err error, gaveUp bool) {
	conn, fctx, err := s.forwardToNode(ctx, l)
	if err != nil {
		return err, false
	}
	if !mayGiveUp {
		return remote(fctx, conn), false
	}
	fctx, cancel := context.WithCancel(fctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- remote(fctx, conn) }() // ends when fctx does
	t := time.NewTicker(s.cfg.TickInterval)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return err, false
		case <-t.C:
			if s.host.PeerDown(l) || (leader && s.leaderOf(g) != 0 && s.leaderOf(g) != l) {
				cancel()
				<-done
				return nil, true
			}
		}
	}
}

// forwardedIn reports whether the request in ctx was forwarded by another
// node.
func forwardedIn(ctx context.Context) bool {
	md, ok := metadata.FromIncomingContext(ctx)
	return ok && len(md.Get(mdForwarded)) > 0
}

// forwardToNode returns a connection to node id's client address and ctx
// marked as forwarded (outgoing metadata), so that the receiver serves the
// request itself instead of forwarding it again.
func (s *Server) forwardToNode(ctx context.Context, id uint64) (*grpc.ClientConn, context.Context, error) {
	addr := s.clientAddrOf(id)
	if addr == "" {
		return nil, nil, status.Errorf(codes.Unavailable, "server: node %d's client address is not known yet; retry", id)
	}
	conn, err := s.forwardConn(addr)
	if err != nil {
		return nil, nil, status.Errorf(codes.Unavailable, "server: forward to node %d: %v", id, err)
	}
	return conn, metadata.AppendToOutgoingContext(ctx, mdForwarded, strconv.FormatUint(s.cfg.NodeID, 10)), nil
}

// forwardTo picks the node to forward a request for group g to, which has
// no local replica here (forwardTarget), and returns a connection to it.
func (s *Server) forwardTo(ctx context.Context, g uint64) (*grpc.ClientConn, context.Context, error) {
	target, err := s.forwardTarget(ctx, g)
	if err != nil {
		return nil, nil, err
	}
	return s.forwardToNode(ctx, target)
}

// forwardTarget picks the node to forward a request for group g to, which
// has no local replica here: the leader if known and live, else the first
// live replica. A request that was itself forwarded is refused here.
func (s *Server) forwardTarget(ctx context.Context, g uint64) (uint64, error) {
	if forwardedIn(ctx) {
		return 0, s.notHosted(ctx, g)
	}
	target := s.leaderOf(g)
	alive := s.aliveNodes()
	if target == 0 || !alive[target] || s.host.PeerDown(target) {
		target = 0
		for _, r := range s.replicasOf(g) {
			// Not to this node: a write is here because another node leads.
			if alive[r] && r != s.cfg.NodeID && !s.host.PeerDown(r) {
				target = r
				break
			}
		}
	}
	if target == 0 || s.clientAddrOf(target) == "" {
		return 0, s.notHosted(ctx, g)
	}
	return target, nil
}

// forward sends a request for group g, which has no local replica, to a
// node that has one (see forwardTo), and counts it as method. call must use
// the context it is given: it carries the forwarded mark.
func forward[R any](ctx context.Context, s *Server, g uint64, method string, call func(context.Context, *grpc.ClientConn) (*R, error)) (*R, error) {
	conn, fctx, err := s.forwardTo(ctx, g)
	if err != nil {
		return nil, s.count(method, err)
	}
	resp, err := call(fctx, conn)
	return resp, s.count(method, err)
}

func (s *Server) notHosted(ctx context.Context, g uint64) error {
	if l := s.leaderOf(g); l != 0 {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(MDLeader, strconv.FormatUint(l, 10)))
	}
	return status.Errorf(codes.FailedPrecondition, "%v; ask one of nodes %v", errNotHosted(g), s.replicasOf(g))
}

func (s *Server) forwardConn(addr string) (*grpc.ClientConn, error) {
	s.fwd.Lock()
	defer s.fwd.Unlock()
	if c := s.fwd.conns[addr]; c != nil {
		return c, nil
	}
	// grpc.NewClient does not connect; it is safe under the leaf lock.
	// Keepalives close a connection to a node that vanished without a reset
	// (gRPC's minimum interval; the client listener permits it).
	c, err := grpc.NewClient(addr, s.sec.nodeDial(),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 3 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(kv.MaxValueSize+kv.MaxKeySize+64<<10)))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	s.fwd.conns[addr] = c
	return c, nil
}
