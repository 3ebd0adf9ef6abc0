package server

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/gossip"
	"github.com/flotilla/flotilla/internal/phase"
	"github.com/flotilla/flotilla/kv"
)

// The nodes' gossip membership (internal/gossip: hashicorp/memberlist over
// the peer connections). It is what says which nodes are live: the
// allocator (rebalanceLoop, evacuateLoop, balanceLoop: aliveNodes) and
// the clients (the cluster map's NodeInfo.alive) go by it, not by raft's
// view of each group. Each node also gossips its client and HTTP
// addresses and its capacity (gossip.Meta).
//
// Membership itself stays the meta range's: gossip lets in only the nodes
// of the directory (directory.go) that are not removed (gossip's Allow).

// newGossip creates the gossip transport and registers its service on the
// peer server. Called by New.
func (s *Server) newGossip() error {
	// The peer address as configured is what the others dial; one with
	// port 0 (tests) is the listener's.
	addr := s.cfg.PeerAddr
	if _, port, err := net.SplitHostPort(addr); err == nil && port == "0" {
		addr = s.peerLis.Addr().String()
	}
	t, err := gossip.New(gossip.Config{
		Addr: addr,
		Conn: s.gossipConn,
		Check: func(ctx context.Context) error {
			if s.sec.insecure {
				return nil
			}
			// As the raft transport (Refuse): a removed node, whose
			// certificate is still good, is not heard.
			if id, ok := callerNode(ctx); !ok || !s.isNode(id) || s.membership(id) == api.NodeRemoved {
				return status.Error(codes.PermissionDenied, "server: gossip is for the cluster's nodes only")
			}
			return nil
		},
		Logger: s.log,
	})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.gossipTr = t
	api.RegisterGossipServer(s.peerSrv, t)
	for outcome, read := range map[string]func(gossip.Stats) uint64{
		"sent":       func(st gossip.Stats) uint64 { return st.Sent },
		"dropped":    func(st gossip.Stats) uint64 { return st.Dropped },
		"failed":     func(st gossip.Stats) uint64 { return st.Failed },
		"dropped_in": func(st gossip.Stats) uint64 { return st.DroppedIn },
	} {
		s.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "flotilla_gossip_packets_total",
			Help:        "Gossip packets by outcome: sent; dropped (the destination's queue was full: seed 003); failed (no connection, or its stream broke); dropped_in (received while memberlist was behind).",
			ConstLabels: prometheus.Labels{"outcome": outcome},
		}, func() float64 { return float64(read(t.Stats())) }))
	}
	return nil
}

// startGossip starts this node's memberlist, alone: gossipLoop joins it to
// the others. Called by New, once the listeners exist.
func (s *Server) startGossip() error {
	m, err := gossip.StartMembers(gossip.MembersConfig{
		NodeID:        s.cfg.NodeID,
		ClusterID:     s.clusterID,
		Transport:     s.gossipTr,
		ProbeInterval: s.cfg.GossipInterval,
		Allow: func(id uint64) bool {
			return s.isNode(id) && s.membership(id) != api.NodeRemoved
		},
		Logger: s.log,
	}, s.gossipMeta())
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.gossip = m
	return nil
}

// gossipConn routes gossip: to a node by its memberlist name (its ID),
// else by its peer address.
func (s *Server) gossipConn(name, addr string) (*grpc.ClientConn, bool) {
	d := s.dir.Load()
	if id, err := strconv.ParseUint(name, 10, 64); err == nil {
		c, ok := d.conns[id]
		return c, ok && c != nil
	}
	for id, a := range d.addrs {
		if a == addr && d.conns[id] != nil {
			return d.conns[id], true
		}
	}
	return nil, false
}

// gossipMeta is what this node gossips about itself now.
func (s *Server) gossipMeta() gossip.Meta {
	m := gossip.Meta{ClientAddr: s.ClientAddr(), HTTPAddr: s.HTTPAddr(), Version: kv.StateMachineVersion}
	if s.host != nil {
		for _, g := range s.host.Status() {
			m.Replicas++
			if g.Leader == s.cfg.NodeID {
				m.Leaders++
			}
		}
	}
	if s.store != nil {
		m.UsedBytes = s.store.DB().Metrics().DiskSpaceUsage()
	}
	m.AvailableBytes = availableBytes(s.cfg.DataDir)
	return m
}

// gossipMetaEvery is how many gossip intervals pass between two refreshes
// of this node's meta: its counts move with every replica move, and each
// change is a broadcast to every node.
const gossipMetaEvery = 10

// gossipLoop keeps this node in the gossip membership: it joins the
// directory's nodes that gossip does not count live (at start, after a
// partition, a node joined since), each at most every 5 intervals, and
// spreads this node's meta every gossipMetaEvery intervals if it changed.
// Started by Start; memberlist's own loops run beside it. Its joins run
// on goroutines of their own, one per node, waited for within the pass.
func (s *Server) gossipLoop() {
	t := phase.NewTicker(s.cfg.GossipInterval)
	defer t.Stop()
	nextTry := map[uint64]time.Time{}
	for tick := 0; ; tick++ {
		live := s.gossip.Live()
		now := time.Now()
		seeds := map[uint64]string{}
		for _, id := range s.nodeIDs() {
			if live[id] || s.membership(id) == api.NodeRemoved || now.Before(nextTry[id]) {
				continue
			}
			seeds[id] = s.peerAddrOf(id)
			nextTry[id] = now.Add(5 * s.cfg.GossipInterval)
		}
		// One join per node, at once: each one that does not answer
		// waits out the stream timeout, and they must not add up.
		var joins sync.WaitGroup
		for id, addr := range seeds {
			joins.Go(func() { s.gossip.Join(map[uint64]string{id: addr}) })
		}
		joins.Wait()
		if tick%gossipMetaEvery == 0 {
			if err := s.gossip.SetMeta(s.gossipMeta(), s.cfg.GossipInterval); err != nil {
				s.log.Warn("gossip: could not spread this node's meta", "err", err)
			}
		}
		select {
		case <-s.stopc:
			return
		case <-t.C:
			t.Next()
		}
	}
}

// gossipLive returns the nodes gossip counts live, and whether gossip has
// heard of each node at all: a node it never heard of (this node just
// started, or gossip has not reached it yet) is judged by discovery.
func (s *Server) gossipLive() (live, heard map[uint64]bool) {
	nodes := s.gossip.Nodes()
	live, heard = map[uint64]bool{s.cfg.NodeID: true}, map[uint64]bool{s.cfg.NodeID: true}
	for id, n := range nodes {
		heard[id] = true
		if n.Live {
			live[id] = true
		}
	}
	return live, heard
}

// runsVersion reports whether every node of nodes has gossiped a state
// machine version of v or later (this node runs kv.StateMachineVersion):
// a proposal that a replica of an older build would refuse while newer
// ones apply it is made only then (ranges.Config.SubsetMerge). A node not
// heard from has not. Takes the gossip's leaf lock only: the range store's
// loop calls it.
func (s *Server) runsVersion(nodes []uint64, v uint32) bool {
	var known map[uint64]gossip.Node
	for _, n := range nodes {
		if n == s.cfg.NodeID {
			continue
		}
		if known == nil {
			if s.gossip == nil {
				return false
			}
			known = s.gossip.Nodes()
		}
		if known[n].Meta.Version < v {
			return false
		}
	}
	return kv.StateMachineVersion >= v
}

// gossipMetas returns the client and HTTP addresses and capacity each node
// last gossiped.
func (s *Server) gossipMetas() map[uint64]gossip.Meta {
	out := map[uint64]gossip.Meta{}
	for id, n := range s.gossip.Nodes() {
		out[id] = n.Meta
	}
	return out
}
