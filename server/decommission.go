package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// Decommissioning (`flotilla node decommission N`).
//
// The nodes' membership is kept in the meta range, among the server's
// records (kv's auth table, which kv stores and never interprets), as one
// record, membershipKey, that lists every node leaving or gone: a line
// "ID STATE" each, STATE api.NodeDecommissioning or api.NodeRemoved, in
// ID order. A node not listed is a member. One record for all, written
// compare-and-set, so that a change is decided on the states of all the
// nodes as they are (two decommissions at once cannot both pass the check
// of the nodes left). A node's state only moves forward (none,
// decommissioning, removed), so of two reads the later state is always
// the right one, and a node merges what it reads into what it knows
// (mergeMembership) rather than replacing it. Every node rereads the
// record with the user and role tables (authLoop, every
// Config.AuthRefresh), so a change reaches every node within that.
//
// What the states do:
//   - decommissioning: no replica moves onto the node (checkMove,
//     evacuateLoop's choice of targets), no leadership is handed to it
//     (balanceLoop), and the leader of each range with a replica there
//     moves it to a member (evacuateLoop);
//   - removed: the node holds no replica. Every other node refuses it: the
//     raft transport ends its streams (transport.GRPCTransport.Refuse) and
//     discovery answers it only that it was removed, upon which it stops
//     with ErrRemoved (so `flotilla start` exits 1). Its ID is never given
//     back.
//
// Cluster.Decommission marks the node decommissioning; a later call marks
// it removed once every node has had the time to read the mark
// (membershipSettle, so no node still moves a replica onto it) and no
// replica is left there: by the node's own answer if it answers, and by
// the meta index, this node's replicas and the live nodes' reports. The
// CLI calls it until then, printing the count it answers.

// membershipKey is the key of the membership record. User and role
// records start with "u/" and "r/" (auth.UserKey, auth.RoleKey); every
// key under "n/" is the nodes' (tablesOf skips them).
const membershipKey = "n/membership"

// ErrRemoved: this node was removed from the cluster (decommissioned) and
// may not take part again.
var ErrRemoved = errors.New("server: this node was removed from the cluster")

// isNodeRecord reports whether a server record is the nodes' rather than
// the user and role tables'.
func isNodeRecord(key []byte) bool { return bytes.HasPrefix(key, []byte("n/")) }

// writeServerRecord writes a record of the meta range's server table
// (kv.AuthPut; an empty value deletes it: kv.AuthDelete), compare-and-set
// on raw, its value as read (nil: absent). ok false: it changed since.
func (s *Server) writeServerRecord(ctx context.Context, key string, value, raw []byte) (ok bool, err error) {
	cmd := kv.AuthPut([]byte(key), value, raw, raw == nil)
	if len(value) == 0 {
		cmd = kv.AuthDelete([]byte(key), raw)
	}
	enc, err := cmd.Encode()
	if err != nil {
		return false, status.Error(codes.Internal, err.Error())
	}
	out, err := s.proposeRemote(ctx, kv.MetaRangeID, enc)
	if err != nil {
		return false, err
	}
	res, err := kv.DecodeResult(out)
	if err != nil {
		return false, status.Errorf(codes.Internal, "server: record %s: %v", key, err)
	}
	if res.Err != "" {
		return false, status.Errorf(codes.FailedPrecondition, "server: %s", res.Err)
	}
	return res.OK, nil
}

// appendLines appends lines to b, each ended by a newline: the lines of a
// nodes' record this version could not read, kept as they were.
func appendLines(b []byte, lines []string) []byte {
	for _, l := range lines {
		b = append(append(b, l...), '\n')
	}
	return b
}

// recordLines returns the nodes' record key among recs (nil if none) and
// its lines, trimmed, empty ones left out.
func recordLines(recs []kv.KeyValue, key string) (raw []byte, lines []string) {
	for _, r := range recs {
		if string(r.Key) != key {
			continue
		}
		raw = r.Value
		for _, l := range strings.Split(string(r.Value), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
	}
	return raw, lines
}

// membershipRank orders the states: a node's state only moves up.
func membershipRank(state string) int {
	switch state {
	case api.NodeDecommissioning:
		return 1
	case api.NodeRemoved:
		return 2
	}
	return 0
}

// membershipOf returns the membership record among recs (nil if none), the
// states it lists, and the lines it cannot read (a state from a newer
// version): those are logged and skipped, as the user and role tables,
// read with them, must still load, and a rewrite keeps them.
func (s *Server) membershipOf(recs []kv.KeyValue) (raw []byte, states map[uint64]string, unread []string) {
	return nodeLinesOf(s, recs, membershipKey, func(st string) (string, bool) { return st, membershipRank(st) != 0 })
}

// encodeMembership returns the membership record listing states, and then
// the lines unread as they were.
func encodeMembership(states map[uint64]string, unread []string) []byte {
	return encodeNodeLines(states, "%d %s\n", unread)
}

// nodeLinesOf reads the server record key among recs, a line "ID VALUE"
// per node, VALUE read by parse: it returns the record (nil if none), the
// values by node, and the lines it cannot read (from a newer version:
// logged and skipped, as the user and role tables, read with them, must
// still load), which a rewrite keeps.
func nodeLinesOf[V any](s *Server, recs []kv.KeyValue, key string, parse func(string) (V, bool)) (raw []byte, out map[uint64]V, unread []string) {
	out = map[uint64]V{}
	raw, lines := recordLines(recs, key)
	for _, line := range lines {
		id, val, ok := strings.Cut(line, " ")
		n, err := strconv.ParseUint(id, 10, 64)
		v, vok := parse(val)
		if !ok || err != nil || n == 0 || !vok {
			s.log.Warn("skipping a line of a nodes' record this version cannot read", "record", key, "line", line)
			unread = append(unread, line)
			continue
		}
		out[n] = v
	}
	return raw, out, unread
}

// encodeNodeLines returns a nodes' record of a line per node of m, in ID
// order, by format (of the ID and the value), then the lines unread as
// they were.
func encodeNodeLines[V any](m map[uint64]V, format string, unread []string) []byte {
	var b []byte
	for _, id := range slices.Sorted(maps.Keys(m)) {
		b = fmt.Appendf(b, format, id, m[id])
	}
	return appendLines(b, unread)
}

// membership returns node id's state as this node last read it: "" (a
// member), api.NodeDecommissioning or api.NodeRemoved.
func (s *Server) membership(id uint64) string {
	if m := s.members.Load(); m != nil {
		return (*m)[id]
	}
	return ""
}

// leavingNodes returns the nodes decommissioning or removed.
func (s *Server) leavingNodes() map[uint64]string {
	if m := s.members.Load(); m != nil {
		return *m
	}
	return nil
}

// mergeMembership takes in states read from the meta range: each node's
// state moves up, never down (a plain read may be older than what this
// node knows). A node newly removed is refused from then on; if it is this
// node, it stops with ErrRemoved.
func (s *Server) mergeMembership(states map[uint64]string) {
	s.membersMu.Lock()
	old := s.leavingNodes()
	var next map[uint64]string
	var removed []uint64
	for id, st := range states {
		if membershipRank(st) <= membershipRank(old[id]) {
			continue
		}
		if s.membersSeen == nil {
			s.membersSeen = map[uint64]time.Time{}
		}
		if _, ok := s.membersSeen[id]; !ok {
			s.membersSeen[id] = time.Now()
		}
		if next == nil {
			next = maps.Clone(old)
			if next == nil {
				next = map[uint64]string{}
			}
		}
		next[id] = st
		if st == api.NodeRemoved {
			removed = append(removed, id)
		}
	}
	if next != nil {
		s.members.Store(&next)
	}
	s.membersMu.Unlock()
	// Logged with no lock held (law 1: a log write is I/O).
	for id, st := range next {
		if st != old[id] {
			s.log.Info("node membership changed", "member", id, "state", st)
		}
	}
	for _, id := range removed {
		if id == s.cfg.NodeID {
			s.removedFromCluster(s.cfg.NodeID)
			continue
		}
		s.tr.Refuse(id)
	}
}

// removedFromCluster stops this node: by (a record or) node by's word, it
// was removed from the cluster.
func (s *Server) removedFromCluster(by uint64) {
	err := fmt.Errorf("%w (decommissioned; told by node %d): node %d may not come back", ErrRemoved, by, s.cfg.NodeID)
	if s.serveErr.CompareAndSwap(nil, &err) {
		s.log.Error("this node was removed from the cluster, stopping", "err", err)
	}
	s.halt()
}

// Decommission serves Cluster.Decommission (see the api and the comment at
// the top of this file).
func (c *clusterService) Decommission(ctx context.Context, req *api.DecommissionRequest) (*api.DecommissionResponse, error) {
	s := c.s
	resp, err := s.decommission(ctx, req.Node)
	return resp, s.count("decommission", err)
}

func (s *Server) decommission(ctx context.Context, node uint64) (*api.DecommissionResponse, error) {
	if !s.isNode(node) {
		return nil, status.Errorf(codes.InvalidArgument, "server: node %d is not in the cluster (nodes %v)", node, s.nodeIDs())
	}
	for attempt := 0; attempt < authWriteAttempts; attempt++ {
		recs, err := s.authRecords(ctx, true)
		if err != nil {
			return nil, err
		}
		raw, states, unread := s.membershipOf(recs)
		s.mergeMembership(states)
		next := maps.Clone(states)
		switch states[node] {
		case api.NodeRemoved:
			return &api.DecommissionResponse{State: api.NodeRemoved}, nil
		case "":
			var dead map[uint64]bool
			if p := s.dead.Load(); p != nil {
				dead = *p
			}
			// The nodes its replicas can move to: not leaving, not dead,
			// not drained (the evacuation moves nothing onto those).
			drained := s.drainedNodes()
			members := 0
			for _, n := range s.nodeIDs() {
				if n != node && states[n] == "" && !dead[n] && !drained[n] {
					members++
				}
			}
			if members < s.cfg.Replicas {
				return nil, status.Errorf(codes.InvalidArgument,
					"server: decommissioning node %d would leave %d live nodes, not drained, for a replication factor of %d", node, members, s.cfg.Replicas)
			}
			next[node] = api.NodeDecommissioning
		default:
			n, err := s.replicasOn(ctx, node)
			if err != nil {
				return nil, err
			}
			if n > 0 || !s.membershipSettled(node) {
				return &api.DecommissionResponse{State: api.NodeDecommissioning, Replicas: uint32(n)}, nil
			}
			next[node] = api.NodeRemoved
		}
		ok, err := s.writeServerRecord(ctx, membershipKey, encodeMembership(next, unread), raw)
		if err != nil {
			return nil, err
		}
		if ok {
			s.log.Info("node membership recorded", "member", node, "state", next[node])
			s.mergeMembership(map[uint64]string{node: next[node]})
		}
		// Read again: a new state (ours, or another caller's) is acted on
		// from what the record says.
	}
	return nil, status.Errorf(codes.Aborted, "server: the membership record kept changing; gave up after %d attempts", authWriteAttempts)
}

// membershipSettled reports whether this node has known node to be
// decommissioning for membershipSettle: long enough for every node to
// have read it (each rereads it every AuthRefresh, taken to be the same on
// every node), so that none still moves a replica onto it.
func (s *Server) membershipSettled(node uint64) bool {
	s.membersMu.Lock()
	at, ok := s.membersSeen[node]
	s.membersMu.Unlock()
	return ok && time.Since(at) >= s.membershipSettle()
}

// membershipSettle is how long a change of a server record takes to reach
// every node: each rereads them every AuthRefresh, taken to be the same on
// every node.
func (s *Server) membershipSettle() time.Duration { return 3*s.cfg.AuthRefresh + time.Second }

// replicasOn counts the ranges with a replica (or a learner) on node. Its
// sources each may be behind: the node's own answer (Peer.Info, all its
// replicas) when it answers, the meta index, this node's replicas, and the
// latest reports of the other live nodes (a move onto the node shows in
// the range's descriptor before the meta index; a report is up to a
// DiscoveryInterval old). Of a range, the newest descriptor any of them
// holds decides (every split, merge and membership change raises its
// generation); counting every source's, a move just made off the node
// still counted in a report a second old (e2e.TestDrainAndMoveCLI, 1 run
// in 8). A replica the node runs with no descriptor yet (an empty one
// waiting for its snapshot: an addition under way) counts. A dead node's
// last report is not counted: its replicas there were removed without it,
// and should one still be listed after it is removed, the evacuation
// moves it off.
func (s *Server) replicasOn(ctx context.Context, node uint64) (int, error) {
	type seen struct {
		gen uint64
		on  bool
	}
	newest := map[uint64]seen{}
	note := func(id, gen uint64, replicas []uint64) {
		on := slices.Contains(replicas, node)
		if cur, ok := newest[id]; ok {
			if cur.gen > gen {
				return
			}
			if cur.gen == gen {
				on = on || cur.on // one generation is one descriptor; should two differ, the count errs high
			}
		}
		newest[id] = seen{gen, on}
	}
	counted := map[uint64]bool{}
	var own []*api.GroupInfo
	if node == s.cfg.NodeID {
		own = s.localGroups()
	} else if conn := s.peerConn(node); conn != nil && !s.host.PeerDown(node) {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := api.NewPeerClient(conn).Info(ictx, &api.InfoRequest{ClusterId: s.clusterID, From: s.cfg.NodeID}, grpc.MaxCallRecvMsgSize(maxInfoBytes))
		cancel()
		if err == nil {
			own = resp.Groups
		}
	}
	for _, g := range own {
		if len(g.Replicas) == 0 {
			counted[g.Id] = true
			continue
		}
		note(g.Id, g.Generation, g.Replicas)
	}
	ds, err := s.allDescriptors(ctx)
	if err != nil {
		return 0, err
	}
	for _, d := range ds {
		note(d.ID, d.Generation, d.Replicas)
	}
	for _, r := range s.ranges.Replicas() {
		if d, ok := r.Descriptor(); ok {
			note(d.ID, d.Generation, d.Replicas)
		}
	}
	s.peers.Lock()
	for _, v := range s.peers.views {
		if !v.ok {
			continue
		}
		for _, g := range v.groups {
			if len(g.Replicas) > 0 {
				note(g.Id, g.Generation, g.Replicas)
			}
		}
	}
	s.peers.Unlock()
	for id, sn := range newest {
		if sn.on {
			counted[id] = true
		}
	}
	return len(counted), nil
}
