package server

import (
	"context"
	"errors"
	"io"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/election"
	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
)

// electionService implements api.ElectionServer. Lease and election
// state is replicated in the KV state machine of the group that owns it;
// lease deadlines are kept by the group leader's Lessor (see package
// election for the expiry rule and why it is safe).
type electionService struct {
	api.UnimplementedElectionServer
	s *Server
}

// leaseGroup checks a lease request's range: one this node knows.
func (e *electionService) leaseGroup(g uint64) (uint64, error) {
	if g == 0 {
		return 0, status.Error(codes.InvalidArgument, "server: a lease request needs its range (group)")
	}
	if !e.s.local(g) && len(e.s.replicasOf(g)) == 0 {
		return 0, errRangeNotFound(g)
	}
	return g, nil
}

// leaseRange returns the range of a lease request: the range that holds the
// lease's home key when it is given (the lease's owner, whatever splits and
// merges happened: kv/lease.go), else the group named. (A home key is
// empty for a lease of range 1, which never goes away.)
func (e *electionService) leaseRange(ctx context.Context, group uint64, key []byte) (uint64, error) {
	if len(key) > 0 {
		return e.nameGroup(ctx, key)
	}
	return e.leaseGroup(group)
}

// nameGroup returns the range that holds an election's name.
func (e *electionService) nameGroup(ctx context.Context, name []byte) (uint64, error) {
	if err := kv.CheckKey(name); err != nil {
		return 0, status.Error(codes.InvalidArgument, "server: election name: "+err.Error())
	}
	return e.s.keyRange(ctx, name)
}

func (e *electionService) LeaseGrant(ctx context.Context, req *api.LeaseGrantRequest) (*api.LeaseGrantResponse, error) {
	var g uint64
	var err error
	if len(req.Key) > 0 {
		g, err = e.nameGroup(ctx, req.Key)
		req.Group, req.Key = g, nil // forwarded: to this range, wherever the key goes meanwhile
	} else {
		g, err = e.leaseGroup(req.Group)
	}
	if err != nil {
		return nil, e.s.count("lease_grant", err)
	}
	ttl := time.Duration(req.TtlMs) * time.Millisecond
	if err := kv.CheckTTL(ttl); err != nil {
		return nil, e.s.count("lease_grant", status.Error(codes.InvalidArgument, err.Error()))
	}
	var fwd *api.LeaseGrantResponse
	res, forwarded, err := e.s.write(ctx, &g, withSession(kv.Command{Op: kv.OpLeaseGrant, TTL: ttl}, req.Session),
		func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			fwd, err = api.NewElectionClient(cc).LeaseGrant(ctx, req)
			return err
		})
	if forwarded {
		return fwd, e.s.count("lease_grant", err)
	}
	if err != nil {
		return nil, e.s.count("lease_grant", err)
	}
	e.s.count("lease_grant", nil)
	return &api.LeaseGrantResponse{Header: e.s.header(g), Id: res.Lease, TtlMs: req.TtlMs, HomeKey: res.Current}, nil
}

func (e *electionService) LeaseRevoke(ctx context.Context, req *api.LeaseRevokeRequest) (*api.LeaseRevokeResponse, error) {
	g, err := e.leaseRange(ctx, req.Group, req.Key)
	if err != nil {
		return nil, e.s.count("lease_revoke", err)
	}
	if req.Id == 0 {
		return nil, e.s.count("lease_revoke", status.Error(codes.InvalidArgument, "server: lease 0"))
	}
	var fwd *api.LeaseRevokeResponse
	res, forwarded, err := e.s.write(ctx, &g, withSession(kv.Command{Op: kv.OpLeaseRevoke, Lease: req.Id}, req.Session),
		func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			fwd, err = api.NewElectionClient(cc).LeaseRevoke(ctx, req)
			return err
		})
	if forwarded {
		return fwd, e.s.count("lease_revoke", err)
	}
	if err != nil {
		return nil, e.s.count("lease_revoke", err)
	}
	e.s.count("lease_revoke", nil)
	return &api.LeaseRevokeResponse{Header: e.s.header(g), Revoked: res.OK}, nil
}

func (e *electionService) LeaseTimeToLive(ctx context.Context, req *api.LeaseTimeToLiveRequest) (*api.LeaseTimeToLiveResponse, error) {
	g, err := e.leaseRange(ctx, req.Group, req.Key)
	if err != nil {
		return nil, e.s.count("lease_ttl", err)
	}
	if !e.s.local(g) {
		return forward(ctx, e.s, g, "lease_ttl", func(ctx context.Context, cc *grpc.ClientConn) (*api.LeaseTimeToLiveResponse, error) {
			return api.NewElectionClient(cc).LeaseTimeToLive(ctx, req)
		})
	}
	out, err := e.s.query(ctx, g, kv.EncodeLeaseQuery(req.Id), false)
	if err != nil {
		return nil, e.s.count("lease_ttl", err)
	}
	found, ttl, err := kv.DecodeLeaseQuery(out)
	if err != nil {
		return nil, e.s.count("lease_ttl", status.Error(codes.Internal, err.Error()))
	}
	resp := &api.LeaseTimeToLiveResponse{Header: e.s.header(g), Found: found, TtlMs: ttl.Milliseconds(), RemainingMs: -1}
	if rem, ok := e.s.lessor.Remaining(g, req.Id); ok && found {
		resp.RemainingMs = rem.Milliseconds()
	}
	e.s.count("lease_ttl", nil)
	return resp, nil
}

// LeaseKeepAlive renews leases, one request at a time. A renewal counts
// only if this node leads the group in the same term before and after a
// ReadIndex round that began after the request arrived: the round proves
// that no other leader was elected before the arrival time, so a later
// leader's takeover extension (a full TTL from its takeover) covers the
// deadline granted here.
func (e *electionService) LeaseKeepAlive(stream api.Election_LeaseKeepAliveServer) error {
	ctx := stream.Context()
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		received := time.Now()
		resp, err := e.keepAlive(ctx, req, received)
		e.s.count("lease_keepalive", err)
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

func (e *electionService) keepAlive(ctx context.Context, req *api.LeaseKeepAliveRequest, received time.Time) (*api.LeaseKeepAliveResponse, error) {
	g, err := e.leaseRange(ctx, req.Group, req.Key)
	if err != nil {
		return nil, err
	}
	r, ok := e.s.ranges.Get(g)
	if !ok {
		return nil, e.s.notHosted(ctx, g)
	}
	notLeader := func() error {
		if l := e.s.leaderOf(g); l != 0 {
			_ = grpc.SetTrailer(ctx, metadata.Pairs(MDLeader, strconv.FormatUint(l, 10)))
		}
		return status.Errorf(codes.FailedPrecondition, "server: group %d: %v", g, election.ErrNotLeading)
	}
	lead, term, err := e.s.host.Leader(g)
	if err != nil {
		return nil, e.s.rpcError(ctx, g, err, false)
	}
	if lead != e.s.cfg.NodeID {
		return nil, notLeader()
	}
	rctx, cancel := context.WithTimeout(ctx, e.s.electionTimeout())
	out, err := e.s.host.Read(rctx, g, kv.EncodeLeaseQuery(req.Id))
	cancel()
	if err != nil {
		return nil, e.s.rpcError(ctx, g, err, false)
	}
	found, ttl, err := kv.DecodeLeaseQuery(out)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &api.LeaseKeepAliveResponse{Header: e.s.header(g), Id: req.Id, Seq: req.Seq}
	if !found {
		return resp, nil
	}
	if lead2, term2, _ := e.s.host.Leader(g); lead2 != lead || term2 != term {
		return nil, notLeader()
	}
	v, _ := e.s.lessor.Version(g)
	if leases, v := r.SM.Leases(v); leases != nil {
		e.s.lessor.Sync(g, leases, v)
		// The lease loop may have synced a newer table meanwhile, which
		// this Sync undid: it syncs again at its next tick.
		e.s.leaseExp.leasesChanged(g)
	}
	switch err := e.s.lessor.Renew(g, term, req.Id, received, ttl); {
	case errors.Is(err, election.ErrNotLeading):
		return nil, notLeader()
	case errors.Is(err, election.ErrExpired):
		return resp, nil
	}
	resp.Found, resp.TtlMs = true, ttl.Milliseconds()
	return resp, nil
}

func (e *electionService) Campaign(ctx context.Context, req *api.CampaignRequest) (*api.CampaignResponse, error) {
	g, err := e.nameGroup(ctx, req.Name)
	if err != nil {
		return nil, e.s.count("campaign", err)
	}
	if req.Lease == 0 {
		return nil, e.s.count("campaign", status.Error(codes.InvalidArgument, "server: campaign needs a lease"))
	}
	req.Group = g
	var fwd *api.CampaignResponse
	res, forwarded, err := e.s.write(ctx, &g, withSession(kv.Command{Op: kv.OpCampaign, Key: req.Name, Value: req.Value, Lease: req.Lease}, req.Session),
		func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			fwd, err = api.NewElectionClient(cc).Campaign(ctx, req)
			return err
		})
	if forwarded {
		return fwd, e.s.count("campaign", err)
	}
	if err != nil {
		return nil, e.s.count("campaign", err)
	}
	if res.Err != "" {
		return nil, e.s.count("campaign", status.Error(codes.ResourceExhausted, res.Err))
	}
	e.s.count("campaign", nil)
	return &api.CampaignResponse{Header: e.s.header(g), LeaseFound: res.OK, Elected: res.OK && res.Found,
		State: resultState(req.Name, g, res)}, nil
}

func (e *electionService) Resign(ctx context.Context, req *api.ResignRequest) (*api.ResignResponse, error) {
	g, err := e.nameGroup(ctx, req.Name)
	if err != nil {
		return nil, e.s.count("resign", err)
	}
	if req.Lease == 0 {
		return nil, e.s.count("resign", status.Error(codes.InvalidArgument, "server: resign needs a lease"))
	}
	req.Group = g
	var fwd *api.ResignResponse
	res, forwarded, err := e.s.write(ctx, &g, withSession(kv.Command{Op: kv.OpResign, Key: req.Name, Lease: req.Lease}, req.Session),
		func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			fwd, err = api.NewElectionClient(cc).Resign(ctx, req)
			return err
		})
	if forwarded {
		return fwd, e.s.count("resign", err)
	}
	if err != nil {
		return nil, e.s.count("resign", err)
	}
	e.s.count("resign", nil)
	return &api.ResignResponse{Header: e.s.header(g), Resigned: res.OK, State: resultState(req.Name, g, res)}, nil
}

func (e *electionService) Leader(ctx context.Context, req *api.LeaderRequest) (*api.LeaderResponse, error) {
	g, err := e.nameGroup(ctx, req.Name)
	if err != nil {
		return nil, e.s.count("leader", err)
	}
	if !e.s.local(g) {
		req.Group = g
		return forward(ctx, e.s, g, "leader", func(ctx context.Context, cc *grpc.ClientConn) (*api.LeaderResponse, error) {
			return api.NewElectionClient(cc).Leader(ctx, req)
		})
	}
	st, err := e.readState(ctx, g, req.Name)
	if err != nil {
		return nil, e.s.count("leader", err)
	}
	e.s.count("leader", nil)
	return &api.LeaderResponse{Header: e.s.header(g), State: st}, nil
}

func (e *electionService) readState(ctx context.Context, g uint64, name []byte) (*api.ElectionState, error) {
	q, err := kv.EncodeElectionQuery(name)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	out, err := e.s.query(ctx, g, q, false)
	if err != nil {
		return nil, err
	}
	el, err := kv.DecodeElection(out)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return electionState(name, g, el), nil
}

// Observe sends the current state (read linearizably), then every change
// this replica applies after it, in order. The watch starts before the
// read, so no change between them is lost; changes at or below the read's
// revision are dropped, so none is sent twice or out of order.
func (e *electionService) Observe(req *api.ObserveRequest, stream api.Election_ObserveServer) error {
	ctx := stream.Context()
	g, err := e.nameGroup(ctx, req.Name)
	if err != nil {
		return e.s.count("observe", err)
	}
	r, ok := e.s.ranges.Get(g)
	if !ok {
		return e.s.count("observe", e.s.notHosted(ctx, g))
	}
	w := r.SM.WatchElection(req.Name)
	defer w.Close()
	var last uint64
	read := func(skipped bool) error {
		st, err := e.readState(ctx, g, req.Name)
		if err != nil {
			return err
		}
		if st.Revision < last || (st.Revision == last && last != 0) {
			return nil
		}
		last = st.Revision
		return stream.Send(&api.ObserveResponse{State: st, Skipped: skipped})
	}
	if err := read(false); err != nil {
		return e.s.count("observe", err)
	}
	for {
		evs, skipped, ok := w.Next(ctx.Done())
		if !ok {
			return e.s.count("observe", status.FromContextError(ctx.Err()).Err())
		}
		for _, ev := range evs {
			if ev.Reset {
				if err := read(true); err != nil {
					return e.s.count("observe", err)
				}
				continue
			}
			if ev.Election.ModRevision <= last {
				continue
			}
			last = ev.Election.ModRevision
			if err := stream.Send(&api.ObserveResponse{State: electionState(req.Name, g, ev.Election), Skipped: skipped}); err != nil {
				return e.s.count("observe", err)
			}
			skipped = false
		}
	}
}

func electionState(name []byte, g uint64, el kv.Election) *api.ElectionState {
	st := &api.ElectionState{Name: name, Group: g, Revision: el.ModRevision, Candidates: uint32(len(el.Candidates))}
	if l, ok := el.Leader(); ok {
		st.HasLeader, st.Value, st.Lease, st.Token = true, l.Value, l.Lease, el.Token
	}
	return st
}

func resultState(name []byte, g uint64, res kv.Result) *api.ElectionState {
	st := &api.ElectionState{Name: name, Group: g, Revision: res.CurrentRevision}
	if res.Lease != 0 {
		st.HasLeader, st.Value, st.Lease, st.Token = true, res.Current, res.Lease, res.Token
	}
	return st
}

// electionTimeout is the group election timeout: the bound on one
// confirmation round of a keep-alive.
func (s *Server) electionTimeout() time.Duration {
	return time.Duration(s.cfg.ElectionTicks) * s.cfg.TickInterval
}

// leaseLoop keeps the Lessor in step with this node's group leaderships
// and, each tick, with the lease tables that changed, and proposes the
// expiry of leases whose deadline passed (leaseExpiry). It is the only
// goroutine that calls Lead, StepDown, Due and Expired.
//
// Takeover: when this node becomes leader of a group (multiraft's leader
// event, published only once the leader committed an entry of its term),
// every lease of the group gets a full TTL from that moment.
//
// It ticks only while there is something to tick for (leaseExpiry.busy):
// a lease held in a group led here, an expiry in flight, or a lease table
// changed. Otherwise it sleeps until a leader event or a lease table
// change wakes it. Why: ticking every TickInterval for nothing was a
// quarter of an idle node's CPU (1.2-1.7 % of a core per node with it,
// 0.9-1.3 % without, 3 nodes with 3 idle ranges; BENCHMARKS.md,
// "Quiescence: the idle floor").
func (s *Server) leaseLoop() {
	sub := s.host.Subscribe()
	defer sub.Close()
	interval := s.cfg.TickInterval
	t := time.NewTimer(interval)
	defer t.Stop()
	next := time.Now().Add(interval)
	for {
		select {
		case <-s.stopc:
			return
		case <-sub.Ready():
		case <-s.leaseExp.wake:
		case <-t.C:
		}
		b, _, err := sub.TryNext()
		if errors.Is(err, multiraft.ErrStopped) {
			return
		}
		if len(b.Events) > 0 {
			// More may have come, or the subscription closed, after the
			// one wake this receive took: look again at once.
			sub.Wake()
		}
		for _, ev := range b.Events {
			r, ok := s.ranges.Get(ev.Group)
			if !ok {
				continue
			}
			sm := r.SM
			if ev.Leader == s.cfg.NodeID {
				leases, v := sm.Leases(0)
				s.lessor.Lead(ev.Group, ev.Term, leases, v)
				s.log.Debug("leases taken over", "group", ev.Group, "term", ev.Term, "leases", len(leases))
			} else {
				s.lessor.StepDown(ev.Group)
			}
		}
		if now := time.Now(); !now.Before(next) && s.leaseExp.busy() {
			next = now.Add(interval)
			s.leaseExp.tick()
		}
		// Timers since Go 1.23 deliver nothing stale after Stop or Reset.
		if s.leaseExp.busy() {
			t.Reset(time.Until(next))
		} else {
			t.Stop()
		}
	}
}

// newLeaseExpiry returns the lease loop's expiry state over s's Lessor,
// ranges and Host.
func (s *Server) newLeaseExpiry() *leaseExpiry {
	return &leaseExpiry{
		lessor: s.lessor,
		wake:   make(chan struct{}, 1),
		self:   s.cfg.NodeID,
		log:    s.log,
		table: func(g uint64) (leaseTable, bool) {
			r, ok := s.ranges.Get(g)
			if !ok {
				return nil, false
			}
			return r.SM, true
		},
		leader: func(g uint64) (uint64, uint64) {
			lead, term, _ := s.host.Leader(g)
			return lead, term
		},
		expire: func(g, lease uint64) (proposal, error) {
			b, err := encode(kv.Command{Op: kv.OpLeaseExpire, Lease: lease})
			if err != nil {
				return nil, err
			}
			return s.host.ProposeAsync(g, b), nil
		},
	}
}
