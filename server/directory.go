package server

import (
	"fmt"
	"maps"
	"slices"

	"google.golang.org/grpc"
)

// The node directory: every node of the cluster and its peer address.
//
// The bootstrap nodes are --initial-cluster. A node that joins later
// (`flotilla start --join`, join.go) is recorded in the meta range, in the
// server record nodesKey: a line "ID PEER_ADDR NONCE" per joined node
// (NONCE in hex: join.go), in ID order, written compare-and-set by the
// node that admits it, so that two joins at once cannot take the same ID
// or address. Every node rereads the record with the membership record
// (authLoop, every --auth-refresh), and learns from its peers' discovery
// answers the nodes they know and it does not (Peer.Info), and adds the
// nodes it did not know: a raft transport peer and a connection for
// discovery and the peer services. A node never leaves the directory:
// a removed one stays, refused (decommission.go), and its ID is never
// given out again.
//
// Each node also keeps the joined nodes it knows in its meta file
// (meta.Nodes; authLoop writes it when the directory grew), so that after
// a restart it reaches them before it can read the meta range, whose
// replicas may all be on joined nodes by then.

// nodesKey is the key of the joined nodes' record, among the nodes'
// records (isNodeRecord).
const nodesKey = "n/nodes"

// nodeDir is one version of the directory. Never changed once published
// (Server.dir): a change publishes a new one.
type nodeDir struct {
	ids   []uint64          // every node, ascending
	addrs map[uint64]string // peer address of every node
	// conns are the clients of every other node's peer services
	// (discovery, proposals, replica state, auth records). Closed by
	// closeAll only.
	conns map[uint64]*grpc.ClientConn
}

// nodeIDs returns every node of the cluster, ascending. The caller must not
// change it.
func (s *Server) nodeIDs() []uint64 { return s.dir.Load().ids }

// isNode reports whether id is a node of the cluster (removed ones
// included).
func (s *Server) isNode(id uint64) bool {
	_, ok := s.dir.Load().addrs[id]
	return ok
}

// peerConn returns the client of node id's peer services; nil for this
// node and for a node not in the directory.
func (s *Server) peerConn(id uint64) *grpc.ClientConn { return s.dir.Load().conns[id] }

// peerAddrOf returns node id's peer address ("" if unknown).
func (s *Server) peerAddrOf(id uint64) string { return s.dir.Load().addrs[id] }

// joinedNodes returns the nodes of the directory that are not bootstrap
// nodes, with their peer addresses.
func (s *Server) joinedNodes() map[uint64]string {
	out := map[uint64]string{}
	for id, addr := range s.dir.Load().addrs {
		if _, ok := s.cfg.InitialCluster[id]; !ok {
			out[id] = addr
		}
	}
	return out
}

// addNodes adds to the directory the nodes of nodes it does not hold: it
// dials them (without waiting: gRPC connects when first used) and makes
// them raft transport peers. A node it holds keeps its address: an ID's
// address never changes (Peer.Join refuses another). It returns the IDs it
// added.
func (s *Server) addNodes(nodes map[uint64]string) ([]uint64, error) {
	// Dialled with no lock held (the dial options read the certificates);
	// a node another caller added meanwhile is closed again.
	old := s.dir.Load()
	conns := map[uint64]*grpc.ClientConn{}
	var err error
	for _, id := range slices.Sorted(maps.Keys(nodes)) {
		if _, ok := old.addrs[id]; ok || id == 0 {
			continue
		}
		conn, cerr := grpc.NewClient(nodes[id], append(peerDialOptions(s.cfg.PeerAddr), s.sec.peerDial(id))...)
		if cerr != nil {
			err = fmt.Errorf("server: node %d at %s: %w", id, nodes[id], cerr)
			continue
		}
		conns[id] = conn
	}
	if len(conns) == 0 {
		return nil, err
	}
	var added []uint64
	var extra []*grpc.ClientConn
	s.dirMu.Lock()
	if s.dirClosed {
		// closeAll closed the connections already: these are not kept.
		s.dirMu.Unlock()
		for _, c := range conns {
			c.Close()
		}
		return nil, err
	}
	cur := s.dir.Load()
	next := &nodeDir{ids: slices.Clone(cur.ids), addrs: maps.Clone(cur.addrs), conns: maps.Clone(cur.conns)}
	for _, id := range slices.Sorted(maps.Keys(conns)) {
		if _, ok := cur.addrs[id]; ok {
			extra = append(extra, conns[id])
			continue
		}
		next.ids = append(next.ids, id)
		next.addrs[id] = nodes[id]
		next.conns[id] = conns[id]
		added = append(added, id)
	}
	slices.Sort(next.ids)
	s.dir.Store(next)
	s.dirMu.Unlock()
	for _, c := range extra {
		c.Close()
	}
	// With no lock held: AddPeer takes the transport's.
	for _, id := range added {
		s.tr.AddPeer(id, nodes[id])
	}
	return added, err
}

// newNodeDir returns the directory a node starts with: the bootstrap
// nodes, and the joined nodes its meta file remembers.
func newNodeDir(initial, joined map[uint64]string) *nodeDir {
	d := &nodeDir{addrs: maps.Clone(initial), conns: map[uint64]*grpc.ClientConn{}}
	if d.addrs == nil {
		d.addrs = map[uint64]string{}
	}
	maps.Copy(d.addrs, joined)
	d.ids = slices.Sorted(maps.Keys(d.addrs))
	return d
}

// persistNodes writes the joined nodes of the directory to the meta file
// when they differ from what it last wrote. Called by authLoop only (it
// owns dirPersisted), with no lock held: it fsyncs.
func (s *Server) persistNodes() {
	joined := s.joinedNodes()
	if maps.Equal(joined, s.dirPersisted) {
		return
	}
	m := s.dirMeta
	m.Nodes = joined
	if err := writeMeta(s.cfg.DataDir, m); err != nil {
		s.log.Warn("could not write the joined nodes to the meta file; will retry", "err", err)
		return
	}
	s.dirPersisted = joined
}
