package server

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// Drained nodes (`flotilla node drain N`, `flotilla node undrain N`).
//
// A drain empties a node by hand: the CLI moves its replicas off, one range
// at a time (Cluster.Move). So that the rebalancer, on by default, does not
// fill it again, the drain first marks the node drained in the meta range:
// the server record drainedKey lists the drained nodes, one ID a line,
// written compare-and-set. Every node rereads it with the other server
// records (authLoop, every --auth-refresh) and takes it as it reads it: a
// mark comes and goes (undrain), unlike a membership state, so an older
// read may undo a newer one for up to one reread. While a node is marked:
//   - the rebalancer neither counts it nor moves a replica onto it
//     (rebalanceOnce), nor does the evacuation of dead and leaving nodes
//     (evacuateLoop);
//   - no leadership is handed to it (settledLoop leaves it out of the live
//     set).
//
// Moves asked by hand (`flotilla move`) still may. Cluster.SetDrained
// answers how long every node may take to read the mark
// (membershipSettle); the drain waits that long before it moves replicas
// off, so that no rebalancer that had not read it undoes the drain.

// drainedKey is the key of the drained nodes' record, among the nodes'
// records (isNodeRecord).
const drainedKey = "n/drained"

// drainedNodes returns the nodes marked drained as this node last read
// them (nil: none). The caller must not change the map.
func (s *Server) drainedNodes() map[uint64]bool {
	if p := s.drained.Load(); p != nil {
		return *p
	}
	return nil
}

// drainedOf returns the drained nodes' record among recs (nil if none), the
// nodes it lists, and the lines it cannot read (from a newer version;
// logged), which a rewrite keeps.
func (s *Server) drainedOf(recs []kv.KeyValue) (raw []byte, nodes map[uint64]bool, unread []string) {
	nodes = map[uint64]bool{}
	raw, lines := recordLines(recs, drainedKey)
	for _, line := range lines {
		n, err := strconv.ParseUint(line, 10, 64)
		if err != nil || n == 0 {
			s.log.Warn("skipping a line of the drained nodes' record this version cannot read", "line", line)
			unread = append(unread, line)
			continue
		}
		nodes[n] = true
	}
	return raw, nodes, unread
}

// setDrainedNodes makes nodes the drained nodes this node knows, logging
// the changes.
func (s *Server) setDrainedNodes(nodes map[uint64]bool) {
	old := s.drainedNodes()
	if maps.Equal(old, nodes) {
		return
	}
	s.drained.Store(&nodes)
	for id := range nodes {
		if !old[id] {
			s.log.Info("node marked drained", "member", id)
		}
	}
	for id := range old {
		if !nodes[id] {
			s.log.Info("node no longer marked drained", "member", id)
		}
	}
}

// encodeDrained returns the drained nodes' record listing nodes, and then
// the lines unread as they were.
func encodeDrained(nodes map[uint64]bool, unread []string) []byte {
	var b []byte
	for _, id := range slices.Sorted(maps.Keys(nodes)) {
		b = fmt.Appendf(b, "%d\n", id)
	}
	return appendLines(b, unread)
}

// SetDrained serves Cluster.SetDrained (see the api and the comment at the
// top of this file).
func (c *clusterService) SetDrained(ctx context.Context, req *api.SetDrainedRequest) (*api.SetDrainedResponse, error) {
	resp, err := c.s.setDrained(ctx, req.Node, req.Drained)
	return resp, c.s.count("set_drained", err)
}

func (s *Server) setDrained(ctx context.Context, node uint64, drained bool) (*api.SetDrainedResponse, error) {
	if !s.isNode(node) {
		return nil, status.Errorf(codes.InvalidArgument, "server: node %d is not in the cluster (nodes %v)", node, s.nodeIDs())
	}
	for attempt := 0; attempt < authWriteAttempts; attempt++ {
		recs, err := s.authRecords(ctx, true)
		if err != nil {
			return nil, err
		}
		raw, nodes, unread := s.drainedOf(recs)
		if nodes[node] != drained {
			next := maps.Clone(nodes)
			if drained {
				next[node] = true
			} else {
				delete(next, node)
			}
			ok, err := s.writeServerRecord(ctx, drainedKey, encodeDrained(next, unread), raw)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue // another change came first: decide again on it
			}
			nodes = next
		}
		s.setDrainedNodes(nodes)
		// The caller waits (a wait here would outlast a client's attempt
		// timeout, and its retry, finding the mark set, would not wait).
		return &api.SetDrainedResponse{Drained: slices.Sorted(maps.Keys(nodes)), SettleMs: uint64(s.membershipSettle().Milliseconds())}, nil
	}
	return nil, status.Errorf(codes.Aborted, "server: the drained nodes' record kept changing; gave up after %d attempts", authWriteAttempts)
}
