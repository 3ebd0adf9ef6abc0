package server

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/phase"
	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/transport"
)

// peerDialOptions dial peers from the host of this node's peer address, as
// the raft transport does, so a firewall rule on one directed link cuts
// discovery and raft alike; and with the peer connections' fixed
// flow-control windows (transport.WindowDialOptions).
func peerDialOptions(peerAddr string) []grpc.DialOption {
	var local net.Addr
	if host, _, err := net.SplitHostPort(peerAddr); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			local = &net.TCPAddr{IP: ip}
		}
	}
	d := &net.Dialer{LocalAddr: local, Timeout: 5 * time.Second}
	return append(transport.WindowDialOptions(),
		// A peer that was down is retried soon after it comes back, so
		// its addresses are learned within a second or two.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: time.Second,
		}),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}),
	)
}

// selfInfo describes this node.
func (s *Server) selfInfo() *api.NodeInfo {
	return &api.NodeInfo{
		Id:         s.cfg.NodeID,
		PeerAddr:   s.cfg.PeerAddr,
		ClientAddr: s.ClientAddr(),
		HttpAddr:   s.HTTPAddr(),
		Alive:      true,
	}
}

// localGroups describes every local replica.
func (s *Server) localGroups() []*api.GroupInfo {
	gs, _ := s.describeGroups(s.host.Status())
	return gs
}

// describeGroups describes the local replicas of sts (Host.Status), in
// its order. complete is false when a replica the Host runs is not in the
// range store (it is being started or removed), so its descriptor is
// missing for now.
func (s *Server) describeGroups(sts []multiraft.GroupStatus) (gs []*api.GroupInfo, complete bool) {
	out := make([]*api.GroupInfo, 0, len(sts))
	complete = true
	for _, st := range sts {
		gi := &api.GroupInfo{
			Id:      st.ID,
			Leader:  st.Leader,
			Term:    st.Term,
			Commit:  st.Commit,
			Applied: st.Applied,
			Role:    st.Role,
		}
		if r, ok := s.ranges.Get(st.ID); ok {
			if d, ok := r.Descriptor(); ok {
				gi.Replicas, gi.Start, gi.End, gi.Generation = d.Replicas, d.Start, d.End, d.Generation
			}
			if st.Leader == s.cfg.NodeID {
				gi.Bytes, gi.Sized = r.Size() // the rebalancer's byte counts (rangeSizes)
			}
		} else {
			complete = false
		}
		out = append(out, gi)
	}
	return out, complete
}

// groupsVersion is the version of what describeGroups returns, for
// InfoResponse.version: equal values mean equal descriptions, within one
// start of this node (infoBase differs between starts). It moves with the
// Host's StatusVersion, which covers every field of a GroupInfo: leader,
// term, commit, applied and role directly, and the descriptor fields
// because a replica's descriptor changes only by what it applies (a split,
// a merge, a membership change, a snapshot), which moves its applied
// index. The sizes of the ranges this node leads (Bytes, Sized) are the
// range store's, which moves SizesVersion when one changes. OpsPerSec is
// not reported here. The one thing it misses, a replica the Host runs but
// the range store does not hold yet (or any more), makes describeGroups
// incomplete, and Info then answers version 0. Read it before
// describeGroups (multiraft.Host.StatusVersion).
func (s *Server) groupsVersion() uint64 {
	return s.infoBase + s.host.StatusVersion() + s.ranges.SizesVersion()
}

type peerService struct {
	api.UnimplementedPeerServer
	s *Server
}

// Info answers with this node's addresses and its replicas: all of them,
// unless the asker already holds them as they are (req.KnownVersion is
// the current version), when the answer says so and costs nothing per
// replica. This keeps the discovery of an idle cluster cheap: with 10,000
// replicas, a full answer every second took a tenth of a core per node.
func (p *peerService) Info(ctx context.Context, req *api.InfoRequest) (*api.InfoResponse, error) {
	if req.ClusterId != p.s.clusterID {
		return nil, status.Errorf(codes.FailedPrecondition, "server: node %d belongs to cluster %x, not %x",
			p.s.cfg.NodeID, p.s.clusterID, req.ClusterId)
	}
	if p.s.membership(req.From) == api.NodeRemoved {
		return &api.InfoResponse{Removed: true}, nil
	}
	if known := p.s.knownIncarnation(req.From); req.Incarnation != 0 && known != 0 && known != req.Incarnation {
		return &api.InfoResponse{Superseded: true}, nil // incarnation.go
	}
	resp := &api.InfoResponse{Node: p.s.selfInfo()}
	if len(p.s.nodeIDs()) > int(req.KnownNodes) {
		resp.Nodes = p.s.joinedNodes()
	}
	v := p.s.groupsVersion()
	if v != 0 && req.KnownVersion == v {
		resp.Version, resp.Unchanged = v, true
		p.s.metrics.discoveryUnchanged.Inc()
		return resp, nil
	}
	gs, complete := p.s.describeGroups(p.s.host.Status())
	resp.Groups = gs
	if complete {
		resp.Version = v
	}
	p.s.metrics.discoveryAll.Inc()
	return resp, nil
}

// maxInfoBytes bounds a discovery answer (Peer.Info) this node accepts:
// 512 MiB. A full answer with 100,000 ranges was past gRPC's default of
// 4 MiB: every answer failed, the peers never
// learned each other's leaders, and each node described all of its
// replicas every second for nothing: 39% of a core per node, idle
// (BENCHMARKS.md, "Quiescence").
const maxInfoBytes = 512 << 20

// discoveryLoop asks every peer for its addresses and the leaders of its
// replicas, every DiscoveryInterval, all peers in parallel.
func (s *Server) discoveryLoop() {
	t := phase.NewTicker(s.cfg.DiscoveryInterval)
	defer t.Stop()
	for {
		s.discoverOnce()
		select {
		case <-s.stopc:
			return
		case <-t.C:
			t.Next()
		}
	}
}

func (s *Server) discoverOnce() {
	timeout := max(s.cfg.DiscoveryInterval, 500*time.Millisecond)
	type answer struct {
		id   uint64
		resp *api.InfoResponse
		err  error
	}
	// The versions of the groups held, read before asking: this loop is
	// the only writer of the views.
	dir := s.dir.Load()
	known := make(map[uint64]uint64, len(dir.conns))
	removals := s.ranges.Removals()
	s.peers.Lock()
	for id, v := range s.peers.views {
		if v.removals == removals {
			known[id] = v.version
		}
	}
	s.peers.Unlock()
	answers := make(chan answer, len(dir.conns))
	asked := 0
	for id, conn := range dir.conns {
		if s.membership(id) == api.NodeRemoved {
			continue // it holds nothing, and is refused
		}
		asked++
		req := &api.InfoRequest{ClusterId: s.clusterID, From: s.cfg.NodeID, KnownVersion: known[id], KnownNodes: uint32(len(dir.ids)),
			Incarnation: s.incarnation}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			resp, err := api.NewPeerClient(conn).Info(ctx, req, grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(maxInfoBytes))
			answers <- answer{id, resp, err}
		}()
	}
	now := time.Now()
	s.peers.Lock()
	for id := range s.peers.views {
		if s.membership(id) == api.NodeRemoved {
			delete(s.peers.views, id) // not asked any more: not alive, not waited for
		}
	}
	s.peers.Unlock()
	for range asked {
		a := <-answers
		if a.err == nil && a.resp.Removed {
			s.removedFromCluster(a.id)
			continue
		}
		if a.err == nil && a.resp.Superseded {
			s.superseded(fmt.Sprintf("node %d knows it under another incarnation", a.id))
			continue
		}
		if a.err == nil && len(a.resp.Nodes) > 0 {
			added, err := s.addNodes(a.resp.Nodes)
			for _, id := range added {
				s.log.Info("node joined the cluster (told by a peer)", "member", id, "peer_addr", a.resp.Nodes[id], "peer", a.id)
			}
			if err != nil {
				s.log.Warn("a joined node could not be dialled", "err", err)
			}
		}
		// Filtered before the lock: a full answer holds every range of
		// the peer, and readers of the views wait on the lock.
		var groups []*api.GroupInfo
		var sizes map[uint64]uint64
		if a.err == nil && !a.resp.Unchanged {
			sizes = ledSizes(a.id, a.resp.Groups)
			groups = s.notHeld(a.id, a.resp.Groups)
		}
		s.peers.Lock()
		v := s.peers.views[a.id]
		if v == nil {
			v = &peerView{}
			s.peers.views[a.id] = v
		}
		switch {
		case a.err != nil:
			// The groups and their version stay: the next answer may
			// still say they are unchanged.
			if code := status.Code(a.err); code != v.failCode {
				s.log.Warn("discovery: peer did not answer", "peer", a.id, "err", a.err)
				v.failCode = code
			}
			v.ok = false
		case a.resp.Unchanged:
			v.ok, v.failCode, v.lastOK, v.info = true, codes.OK, now, a.resp.Node
			v.unchanged++
			if a.resp.Version != known[a.id] {
				// Unchanged from a version not held here: keep what is
				// held, and ask for everything next time.
				v.version = 0
			}
		default:
			v.ok, v.failCode, v.lastOK, v.info, v.version = true, codes.OK, now, a.resp.Node, a.resp.Version
			v.groups, v.removals, v.sizes = groups, removals, sizes
			v.unchanged = 0
		}
		s.peers.Unlock()
	}
}

// ledSizes returns the sizes that peer's report gs gives of the ranges it
// leads and measured (peerView.sizes).
func ledSizes(peer uint64, gs []*api.GroupInfo) map[uint64]uint64 {
	var out map[uint64]uint64
	for _, g := range gs {
		if g.Sized && g.Leader == peer {
			if out == nil {
				out = map[uint64]uint64{}
			}
			out[g.Id] = g.Bytes
		}
	}
	return out
}

// notHeld returns those of gs, peer's report, (in place) whose range this
// node holds no initialized replica of (peerView.groups). A range held
// here that peer reports at a higher generation without this node may
// have lost its replica here to a move whose news did not come: the Store
// checks with peer (CheckRemoved); so does a replica here of another
// range whose span starts inside a reported range's, at an earlier
// generation (CheckSuperseded: merged away, or removed, while this node
// was away): for the ranges not held here at the reported generation or a
// later one (one held so leaves no such replica: the local index and
// reconcile deal with overlaps), at most once per supersededEvery per peer
// (a full answer comes each discovery round under load; at 100,000 ranges
// a search of the index for each would cost a good part of a core).
func (s *Server) notHeld(peer uint64, gs []*api.GroupInfo) []*api.GroupInfo {
	check := s.supersededDue(peer)
	superseded := func(g *api.GroupInfo) {
		if check && len(g.Replicas) > 0 {
			s.ranges.CheckSuperseded(peer, g.Id, g.Generation, g.Start, g.End)
		}
	}
	out := gs[:0]
	for _, g := range gs {
		// A local replica with no descriptor yet (an empty one waiting
		// for its first snapshot) answers nothing: the peers' reports
		// of its range stay.
		r, ok := s.ranges.Get(g.Id)
		if !ok {
			superseded(g)
			out = append(out, g)
			continue
		}
		d, ok := r.Descriptor()
		if !ok {
			superseded(g)
			out = append(out, g)
			continue
		}
		if d.Generation < g.Generation {
			superseded(g)
		}
		if len(g.Replicas) > 0 && g.Generation > d.Generation && !slices.Contains(g.Replicas, s.cfg.NodeID) {
			s.ranges.CheckRemoved(g.Id, peer)
		}
	}
	clear(gs[len(out):])
	if len(out) == 0 {
		return nil // not even the answer's array of pointers stays
	}
	return slices.Clone(out)
}

// supersededEvery: how often a peer's report is searched for replicas here
// that its ranges superseded (notHeld): such a replica is found within
// this of the report, which is soon enough for a leftover.
const supersededEvery = 10 * time.Second

// supersededDue reports whether peer's report is due such a search now,
// and if so, notes that it had one.
func (s *Server) supersededDue(peer uint64) bool {
	s.supersededAt.Lock()
	defer s.supersededAt.Unlock()
	now := time.Now()
	if at, ok := s.supersededAt.last[peer]; ok && now.Sub(at) < supersededEvery {
		return false
	}
	if s.supersededAt.last == nil {
		s.supersededAt.last = map[uint64]time.Time{}
	}
	s.supersededAt.last[peer] = now
	return true
}

// nodeInfos returns every node of the cluster with what is known of it:
// its liveness and capacity from the gossip membership, its addresses
// from gossip, else from discovery.
func (s *Server) nodeInfos() []*api.NodeInfo {
	out := make([]*api.NodeInfo, 0, len(s.nodeIDs()))
	var dead map[uint64]bool
	if p := s.dead.Load(); p != nil {
		dead = *p
	}
	alive := s.aliveNodes()
	metas := s.gossipMetas()
	metas[s.cfg.NodeID] = s.gossip.Self()
	s.peers.Lock()
	defer s.peers.Unlock()
	for _, id := range s.nodeIDs() {
		var n *api.NodeInfo
		if id == s.cfg.NodeID {
			n = s.selfInfo()
		} else {
			n = &api.NodeInfo{Id: id, PeerAddr: s.peerAddrOf(id), Alive: alive[id]}
			if m, ok := metas[id]; ok && m.ClientAddr != "" {
				n.ClientAddr, n.HttpAddr = m.ClientAddr, m.HTTPAddr
			} else if v := s.peers.views[id]; v != nil && v.info != nil {
				n.ClientAddr, n.HttpAddr = v.info.ClientAddr, v.info.HttpAddr
			}
		}
		n.UsedBytes, n.AvailableBytes = metas[id].UsedBytes, metas[id].AvailableBytes
		n.Dead = dead[id] && !n.Alive
		n.Membership = s.membership(id)
		n.Drained = s.drainedNodes()[id]
		out = append(out, n)
	}
	return out
}

// aliveNodes returns the nodes the gossip membership counts live
// (gossip.go), this one included; a node gossip has not heard of yet (this
// node just started) counts live if it answered the last discovery round.
func (s *Server) aliveNodes() map[uint64]bool {
	live, heard := s.gossipLive()
	out := map[uint64]bool{s.cfg.NodeID: true}
	s.peers.Lock()
	defer s.peers.Unlock()
	for _, id := range s.nodeIDs() {
		switch {
		case heard[id]:
			if live[id] {
				out[id] = true
			}
		case s.peers.views[id] != nil && s.peers.views[id].ok:
			out[id] = true
		}
	}
	return out
}

// reachableNodes returns the live nodes that raft also hears from (not
// down by the Host's liveness) and that the raft transport reached
// recently: a node can answer discovery yet be black-holed for raft, and
// handing it a leadership would only fail.
func (s *Server) reachableNodes() map[uint64]bool {
	alive := s.aliveNodes()
	recent := 3 * time.Duration(s.cfg.ElectionTicks) * s.cfg.TickInterval
	for _, p := range s.tr.Stats() {
		if !p.LastContact.IsZero() && time.Since(p.LastContact) > recent {
			delete(alive, p.To)
		}
	}
	for id := range alive {
		if s.host.PeerDown(id) {
			delete(alive, id)
		}
	}
	return alive
}

// groupInfos returns every range this node knows of, by ID: from the
// local replica when there is one, else from the peer replica that
// reported the highest term.
func (s *Server) groupInfos() []*api.GroupInfo {
	best := make(map[uint64]*api.GroupInfo)
	for _, g := range s.localGroups() {
		best[g.Id] = g
	}
	s.peers.Lock()
	for _, v := range s.peers.views {
		if !v.ok {
			continue
		}
		for _, g := range v.groups {
			if s.local(g.Id) {
				continue
			}
			if b := best[g.Id]; b == nil || g.Term > b.Term || (g.Term == b.Term && g.Leader != 0 && b.Leader == 0) {
				best[g.Id] = g
			}
		}
	}
	s.peers.Unlock()
	out := make([]*api.GroupInfo, 0, len(best))
	for _, b := range best {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b *api.GroupInfo) int { return cmp.Compare(a.Id, b.Id) })
	return out
}

// leaderOf returns the group's leader as this node knows it.
func (s *Server) leaderOf(g uint64) uint64 {
	l, _ := s.leaderTerm(g)
	return l
}

// leaderTerm returns the group's leader as this node knows it, and the
// term in which it leads: from the local replica, else from the peer that
// reported the highest term.
func (s *Server) leaderTerm(g uint64) (leader, term uint64) {
	if s.local(g) {
		l, t, _ := s.host.Leader(g)
		return l, t
	}
	s.peers.Lock()
	defer s.peers.Unlock()
	for _, v := range s.peers.views {
		for _, gi := range v.groups {
			if gi.Id == g && gi.Leader != 0 && gi.Term >= term {
				leader, term = gi.Leader, gi.Term
			}
		}
	}
	return leader, term
}

// header is the header of an answer about group g.
func (s *Server) header(g uint64) *api.Header {
	l, t := s.leaderTerm(g)
	return &api.Header{Group: g, Leader: l, Term: t, Node: s.cfg.NodeID}
}

// clientAddrOf returns a node's client address, if known: from its
// discovery answer, else from what it gossiped.
func (s *Server) clientAddrOf(id uint64) string {
	if id == s.cfg.NodeID {
		return s.ClientAddr()
	}
	s.peers.Lock()
	var addr string
	if v := s.peers.views[id]; v != nil && v.info != nil {
		addr = v.info.ClientAddr
	}
	s.peers.Unlock()
	if addr == "" {
		// Not answered discovery yet (this node just started, or that
		// one is slow to answer): gossip brings it with the node's meta
		// at the first join.
		addr = s.gossip.Nodes()[id].Meta.ClientAddr
	}
	return addr
}

func (s *Server) peerStats() []*api.PeerStats {
	st := s.tr.Stats()
	out := make([]*api.PeerStats, 0, len(st))
	for _, p := range st {
		out = append(out, &api.PeerStats{
			From: p.From, To: p.To, QueueLen: uint64(p.QueueLen), Sent: p.Sent, Dropped: p.Dropped,
		})
	}
	slices.SortFunc(out, func(a, b *api.PeerStats) int { return cmp.Compare(a.To, b.To) })
	return out
}

type clusterService struct {
	api.UnimplementedClusterServer
	s *Server
}

func (c *clusterService) ClusterMap(ctx context.Context, _ *api.ClusterMapRequest) (*api.ClusterMapResponse, error) {
	gis := c.s.groupInfos()
	for i, gi := range gis {
		if !c.s.boundsVisible(ctx, gi.Start, gi.End) {
			// Routing by leader still works; the client learns the span
			// from nowhere (the node routes by key). A copy: gi may be a
			// peer's report, which discovery keeps for as long as the
			// peer answers that its groups are unchanged.
			gi = proto.Clone(gi).(*api.GroupInfo)
			gi.Start, gi.End, gi.Replicas, gi.Generation = nil, nil, nil, 0
			gi.Bytes, gi.Sized = 0, false
			gis[i] = gi
		}
	}
	return &api.ClusterMapResponse{
		ClusterId:  c.s.clusterID,
		Groups:     uint32(c.s.cfg.Groups),
		Nodes:      c.s.nodeInfos(),
		GroupInfos: gis,
	}, nil
}

func (c *clusterService) NodeStatus(ctx context.Context, _ *api.NodeStatusRequest) (*api.NodeStatusResponse, error) {
	return &api.NodeStatusResponse{
		ClusterId: c.s.clusterID,
		Node:      c.s.selfInfo(),
		Groups:    c.s.localGroups(),
		Peers:     c.s.peerStats(),
	}, nil
}

// Status returns this node's view of the cluster, the document served at
// /debug/raft.
func (s *Server) Status() api.Status {
	st := api.Status{ClusterID: s.clusterID, Node: s.cfg.NodeID}
	for _, n := range s.nodeInfos() {
		st.Nodes = append(st.Nodes, api.StatusNode{
			ID: n.Id, PeerAddr: n.PeerAddr, ClientAddr: n.ClientAddr, HTTPAddr: n.HttpAddr, Alive: n.Alive,
			Membership: n.Membership, Drained: n.Drained, UsedBytes: n.UsedBytes, AvailableBytes: n.AvailableBytes,
		})
	}
	sts := s.host.Status()
	gs, _ := s.describeGroups(sts)
	for i, g := range gs {
		st.Groups = append(st.Groups, api.StatusGroup{
			ID: g.Id, Leader: g.Leader, Term: g.Term, Replicas: g.Replicas, Commit: g.Commit, Applied: g.Applied,
			Quiesced: sts[i].Quiesced,
		})
	}
	for _, p := range s.peerStats() {
		st.Peers = append(st.Peers, api.StatusPeer{From: p.From, To: p.To, QueueLen: p.QueueLen, Sent: p.Sent, Dropped: p.Dropped})
	}
	if st.Groups == nil {
		st.Groups = []api.StatusGroup{}
	}
	if st.Peers == nil {
		st.Peers = []api.StatusPeer{}
	}
	return st
}

// errNotHosted is returned for a range this node holds no replica of and
// cannot forward.
func errNotHosted(g uint64) error {
	return fmt.Errorf("server: range %d has no replica on this node", g)
}

// Ranges answers from the meta index (metaLookup), with each range's
// leader as this node knows it, and with req.Stats the size and load its
// replicas reported.
func (c *clusterService) Ranges(ctx context.Context, req *api.RangesRequest) (*api.RangesResponse, error) {
	limit := int(req.Limit)
	switch {
	case limit == 0:
		limit = 1000
	case limit > 10000:
		return nil, c.s.count("ranges", status.Errorf(codes.InvalidArgument, "server: ranges limit %d over 10000", limit))
	}
	resp := &api.RangesResponse{}
	key := req.Key
	for len(resp.Ranges) < limit {
		ds, err := c.s.metaLookup(ctx, key, min(limit-len(resp.Ranges), kv.MaxMetaUpdate))
		if err != nil {
			return nil, c.s.count("ranges", err)
		}
		for _, d := range ds {
			if c.s.boundsVisible(ctx, d.Start, d.End) {
				resp.Ranges = append(resp.Ranges, c.s.rangeInfo(d, req.Stats))
			}
		}
		if len(ds) == 0 || len(ds[len(ds)-1].End) == 0 {
			break
		}
		key = ds[len(ds)-1].End
	}
	if n := len(resp.Ranges); n > 0 && len(resp.Ranges[n-1].End) > 0 {
		resp.More = true
	}
	return resp, c.s.count("ranges", nil)
}

// rangeInfo describes range d with what this node knows of it: its leader,
// and with stats, its size and load from the local replica, else its size
// from the peer reports (the load of a range not held here is not
// reported: 0). The local size is a scan of the range (exact; why
// `flotilla ranges --stats=false` exists), not the leader's last
// measurement (ranges.Replica.Size), tried: it lags the data by up to
// RangeMaxBytes/8 of writes, and listed a young cluster's ranges, measured
// when empty, at 0 bytes.
func (s *Server) rangeInfo(d kv.Descriptor, stats bool) *api.RangeInfo {
	ri := &api.RangeInfo{Id: d.ID, Start: d.Start, End: d.End, Replicas: d.Replicas, Learners: d.Learners, Generation: d.Generation, Sticky: d.Sticky}
	ri.Leader, ri.Term = s.leaderTerm(d.ID)
	if !stats {
		return ri
	}
	if r, ok := s.ranges.Get(d.ID); ok {
		ri.Bytes, ri.OpsPerSec = s.rangeStats(r)
		return ri
	}
	// The size its leader measured and reported (peerView.sizes); that
	// of a former leader if the leader's report did not come yet. (This
	// walked every group of every view, for each range listed: a
	// quadratic cost for a listing of every range.)
	s.peers.Lock()
	defer s.peers.Unlock()
	if v := s.peers.views[ri.Leader]; v != nil {
		if n, ok := v.sizes[d.ID]; ok {
			ri.Bytes = n
			return ri
		}
	}
	for _, v := range s.peers.views {
		if n, ok := v.sizes[d.ID]; ok {
			ri.Bytes = n
		}
	}
	return ri
}
