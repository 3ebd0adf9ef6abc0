package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/certs"
	"github.com/flotilla/flotilla/kv"
)

// Joining a running cluster (`flotilla start --join HOST:PORT,...`).
//
// A new node with an empty data directory asks a node of the cluster, at
// its peer address, to admit it (Peer.Join). The admitting node writes the
// new node's ID and peer address into the joined nodes' record of the
// meta range (directory.go), compare-and-set, and answers the cluster's
// identity (its ID and bootstrap flags) and every joined node's address.
// The new node writes its meta file, marked joined, and starts with no
// replica; the others learn of it at their next reread of the record
// (within --auth-refresh) and make it a raft peer, and the replica moves
// of the rebalancer (--rebalance-interval) give it its share. No other
// node restarts or changes its flags.
//
// Each ask carries a nonce the new node keeps in its data directory
// (joinNonceFile) until it has written its meta file: the record keeps
// it with the node, so that an ask repeated after a lost answer gets the
// same ID, and a node that lost its data directory cannot rejoin under its
// old ID (its raft votes and log would be gone while its peers count on
// them): it joins under a new ID, and the old one is decommissioned.

// joinWait is how long a new node keeps asking the nodes of --join before
// it gives up.
const joinWait = 2 * time.Minute

// joinNonceFile holds the nonce of a node's join in its data directory.
const joinNonceFile = "flotilla.join"

// joinedNode is one line of the joined nodes' record: the node's peer
// address and the nonce of its join.
type joinedNode struct {
	addr  string
	nonce uint64
}

// Join serves Peer.Join (see the api and the comment at the top).
func (p *peerService) Join(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	resp, err := p.s.admit(ctx, req)
	return resp, p.s.count("join", err)
}

func (s *Server) admit(ctx context.Context, req *api.JoinRequest) (*api.JoinResponse, error) {
	if err := checkHostPort(req.PeerAddr); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "server: join: peer address: %v", err)
	}
	if req.Nonce == 0 {
		return nil, status.Error(codes.InvalidArgument, "server: join: no nonce")
	}
	if (req.Groups != 0 && int(req.Groups) != s.cfg.Groups) || (req.Replicas != 0 && int(req.Replicas) != s.cfg.Replicas) {
		return nil, status.Errorf(codes.InvalidArgument,
			"server: join: --groups %d and --replicas %d differ from the cluster's, %d and %d (with --join, leave them out)",
			req.Groups, req.Replicas, s.cfg.Groups, s.cfg.Replicas)
	}
	if !s.sec.insecure {
		// peerMember let the call through for any node certificate of
		// the CA: it must name the ID asked for.
		id, ok := callerNode(ctx)
		if !ok || req.NodeId != id {
			return nil, status.Errorf(codes.PermissionDenied,
				"server: join: with TLS a node joins under the ID its certificate names (node-%d.crt asks for node %d); give --id", id, req.NodeId)
		}
	}
	for attempt := 0; attempt < authWriteAttempts; attempt++ {
		recs, err := s.authRecords(ctx, true)
		if err != nil {
			return nil, err
		}
		raw, joined, unread := s.joinedOf(recs)
		_, states, _ := s.membershipOf(recs)
		s.mergeMembership(states)
		id, known, err := s.pickJoinID(req, joined, unread, states)
		if err != nil {
			return nil, err
		}
		if !known {
			next := maps.Clone(joined)
			next[id] = joinedNode{addr: req.PeerAddr, nonce: req.Nonce}
			ok, err := s.writeServerRecord(ctx, nodesKey, encodeNodes(next, unread), raw)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue // another change came first: decide again on it
			}
			joined = next
			s.log.Info("node admitted to the cluster", "member", id, "peer_addr", req.PeerAddr)
		}
		addrs := joinedAddrs(joined)
		if _, err := s.addNodes(addrs); err != nil {
			s.log.Warn("join: could not dial a node", "err", err)
		}
		return &api.JoinResponse{
			ClusterId:      s.clusterID,
			NodeId:         id,
			Groups:         uint32(s.cfg.Groups),
			Replicas:       uint32(s.cfg.Replicas),
			InitialCluster: FormatInitialCluster(s.cfg.InitialCluster),
			Nodes:          addrs,
		}, nil
	}
	return nil, status.Errorf(codes.Aborted, "server: join: the nodes record kept changing; gave up after %d attempts", authWriteAttempts)
}

// pickJoinID decides the ID of the node req asks to join, on the records
// as read: joined, the joined nodes, unread, the record's lines this
// version cannot read (their IDs are taken too), and states, the
// membership. known: the node is in joined already (an ask repeated: same
// nonce).
func (s *Server) pickJoinID(req *api.JoinRequest, joined map[uint64]joinedNode, unread []string, states map[uint64]string) (id uint64, known bool, err error) {
	for id, n := range joined {
		if n.nonce == req.Nonce {
			if n.addr != req.PeerAddr || (req.NodeId != 0 && req.NodeId != id) {
				return 0, false, status.Errorf(codes.AlreadyExists,
					"server: join: this node joined as node %d at %s; start it with those (or a new data directory)", id, n.addr)
			}
			if states[id] != "" {
				return 0, false, status.Errorf(codes.PermissionDenied, "server: join: node %d is %s", id, states[id])
			}
			return id, true, nil
		}
	}
	all := maps.Clone(s.cfg.InitialCluster)
	for id, n := range joined {
		all[id] = n.addr
	}
	for other, addr := range all {
		if addr == req.PeerAddr && states[other] != api.NodeRemoved {
			return 0, false, status.Errorf(codes.AlreadyExists,
				"server: join: peer address %s is node %d's; a node that lost its data directory joins under a new ID after `flotilla node decommission %d`",
				addr, other, other)
		}
	}
	taken := func(id uint64) bool {
		_, ok := all[id]
		return ok || slices.ContainsFunc(unread, func(l string) bool { return lineID(l) == id })
	}
	if len(all)+len(unread) >= MaxNodes {
		return 0, false, status.Errorf(codes.ResourceExhausted, "server: join: the cluster has %d nodes, the most it may have", len(all))
	}
	if id = req.NodeId; id != 0 {
		if states[id] != "" {
			return 0, false, status.Errorf(codes.InvalidArgument,
				"server: join: node %d was decommissioned (%s) and its ID is never given back; choose an ID never used", id, states[id])
		}
		if taken(id) {
			return 0, false, status.Errorf(codes.AlreadyExists, "server: join: node ID %d is taken (node at %s)", id, all[id])
		}
		return id, false, nil
	}
	for other := range all {
		id = max(id, other)
	}
	for other := range states {
		id = max(id, other)
	}
	for _, l := range unread {
		id = max(id, lineID(l))
	}
	if id == math.MaxUint64 {
		return 0, false, status.Errorf(codes.ResourceExhausted, "server: join: node ID %d is taken, and no ID above it is left; give --id", id)
	}
	return id + 1, false, nil
}

// lineID returns the node ID a line of a nodes' record starts with (0 if
// none).
func lineID(line string) uint64 {
	f, _, _ := strings.Cut(strings.TrimSpace(line), " ")
	id, _ := strconv.ParseUint(f, 10, 64)
	return id
}

// callerNode returns the node ID of the caller's verified certificate.
func callerNode(ctx context.Context) (uint64, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return 0, false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return 0, false
	}
	var leaf *x509.Certificate
	if leaf = verifiedLeaf(&ti.State); leaf == nil {
		return 0, false
	}
	return certs.NodeID(leaf)
}

// joinedOf returns the joined nodes' record among recs (nil if none), the
// nodes it lists, and the lines it cannot read (from a newer version;
// logged), which a rewrite keeps.
func (s *Server) joinedOf(recs []kv.KeyValue) (raw []byte, nodes map[uint64]joinedNode, unread []string) {
	nodes = map[uint64]joinedNode{}
	raw, lines := recordLines(recs, nodesKey)
	for _, line := range lines {
		id, n, ok := parseNodeLine(line)
		if !ok {
			s.log.Warn("skipping a line of the nodes record this version cannot read", "line", line)
			unread = append(unread, line)
			continue
		}
		nodes[id] = n
	}
	return raw, nodes, unread
}

// parseNodeLine parses "ID PEER_ADDR NONCE" (NONCE in hex).
func parseNodeLine(line string) (id uint64, n joinedNode, ok bool) {
	f := strings.Fields(line)
	if len(f) != 3 {
		return 0, n, false
	}
	id, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || id == 0 || checkHostPort(f[1]) != nil {
		return 0, n, false
	}
	nonce, err := strconv.ParseUint(f[2], 16, 64)
	if err != nil || nonce == 0 {
		return 0, n, false
	}
	return id, joinedNode{addr: f[1], nonce: nonce}, true
}

// encodeNodes returns the joined nodes' record listing nodes, and then the
// lines unread as they were.
func encodeNodes(nodes map[uint64]joinedNode, unread []string) []byte {
	var b []byte
	for _, id := range slices.Sorted(maps.Keys(nodes)) {
		b = fmt.Appendf(b, "%d %s %x\n", id, nodes[id].addr, nodes[id].nonce)
	}
	return appendLines(b, unread)
}

// joinedAddrs returns the peer addresses of nodes.
func joinedAddrs(nodes map[uint64]joinedNode) map[uint64]string {
	out := make(map[uint64]string, len(nodes))
	for id, n := range nodes {
		out[id] = n.addr
	}
	return out
}

// joinCluster asks the nodes of --join, in turn, to admit this node, until
// one answers or joinWait passes; a refusal ends it at once. It returns
// the meta file the node is to write.
func (s *Server) joinCluster() (meta, error) {
	nonce, err := joinNonce(s.cfg.DataDir)
	if err != nil {
		return meta{}, err
	}
	deadline := time.Now().Add(joinWait)
	var last error
	for round := 1; ; round++ {
		for _, addr := range s.cfg.Join {
			m, err := s.joinVia(addr, nonce)
			if err == nil {
				return m, nil
			}
			switch status.Code(err) {
			case codes.InvalidArgument, codes.AlreadyExists, codes.PermissionDenied, codes.ResourceExhausted:
				return meta{}, fmt.Errorf("server: joining through %s was refused: %w", addr, err)
			}
			last = err
			s.log.Warn("join: no answer yet", "via", addr, "round", round, "err", err)
		}
		if time.Now().After(deadline) {
			return meta{}, fmt.Errorf("server: could not join the cluster through %s within %v: %w", strings.Join(s.cfg.Join, ","), joinWait, last)
		}
		time.Sleep(time.Second)
	}
}

// joinVia asks the node at addr (a peer address) to admit this node.
func (s *Server) joinVia(addr string, nonce uint64) (meta, error) {
	conn, err := grpc.NewClient(addr, append(peerDialOptions(s.cfg.PeerAddr), s.sec.peerDial(0))...)
	if err != nil {
		return meta{}, status.Errorf(codes.InvalidArgument, "--join %s: %v", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := api.NewPeerClient(conn).Join(ctx, &api.JoinRequest{
		NodeId: s.cfg.NodeID, PeerAddr: s.cfg.PeerAddr, Nonce: nonce, Groups: uint32(s.cfg.Groups), Replicas: uint32(s.cfg.Replicas),
	}, grpc.WaitForReady(true))
	if err != nil {
		return meta{}, err
	}
	m := meta{
		ClusterID:      resp.ClusterId,
		NodeID:         resp.NodeId,
		InitialCluster: resp.InitialCluster,
		Groups:         int(resp.Groups),
		Layout:         layoutRanges,
		Joined:         true,
		Nodes:          resp.Nodes,
	}
	if int(resp.Replicas) != DefaultReplicas {
		m.Replicas = int(resp.Replicas)
	}
	if m.NodeID == 0 || (s.cfg.NodeID != 0 && m.NodeID != s.cfg.NodeID) || m.Nodes[m.NodeID] != s.cfg.PeerAddr {
		return meta{}, status.Errorf(codes.InvalidArgument, "server: join: the answer of %s admits node %d at %q; asked for node %d at %s",
			addr, m.NodeID, m.Nodes[m.NodeID], s.cfg.NodeID, s.cfg.PeerAddr)
	}
	return m, nil
}

// checkEmpty refuses a data directory with no meta file that holds
// anything but the join's own files: a database there (a node's whose
// meta file went) carries raft state, votes and a log, that a new ID must
// not come with.
func checkEmpty(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("server: data dir: %w", err)
	}
	for _, e := range ents {
		n := e.Name()
		if n == joinNonceFile || n == "lost+found" || strings.HasPrefix(n, joinNonceFile+".tmp") || strings.HasPrefix(n, metaFile+".tmp") {
			continue // the join's own files; a new file system's own directory
		}
		return fmt.Errorf("%w: %s has no %s but holds %s: a node joins with an empty data directory (or restarts with its own, meta file included)",
			ErrOtherCluster, dir, metaFile, n)
	}
	return nil
}

// joinNonce returns the nonce of this node's join: the one in dir's
// joinNonceFile, else a new one written there (durably) first.
func joinNonce(dir string) (uint64, error) {
	n, ok, err := readHexFile(dir, joinNonceFile, "a join nonce (remove it to join anew)")
	if err != nil || ok {
		return n, err
	}
	if n, err = randomNonZero(); err != nil {
		return 0, fmt.Errorf("server: join nonce: %w", err)
	}
	return n, writeHexFile(dir, joinNonceFile, n)
}

// identify settles who this node is, from --initial-cluster, from the meta
// file of a node that joined before, or by joining (joinCluster). It sets
// s.cfg's NodeID, InitialCluster, Groups and Replicas, s.clusterID and
// s.dirMeta, and returns the nodes known (every peer address), and
// bootstrap: the node is a fresh bootstrap node, which bootstraps its
// replicas of the initial ranges and then writes its meta file; a joined
// node's is written here.
func (s *Server) identify() (bootstrap bool, known map[uint64]string, err error) {
	c := &s.cfg
	if len(c.Join) == 0 {
		want := meta{
			ClusterID:      ClusterID(c.InitialCluster, c.Groups, c.Replicas),
			NodeID:         c.NodeID,
			InitialCluster: FormatInitialCluster(c.InitialCluster),
			Groups:         c.Groups,
			Layout:         layoutRanges,
		}
		if c.Replicas != DefaultReplicas {
			want.Replicas = c.Replicas
		}
		got, fresh, err := checkMeta(c.DataDir, want)
		if err != nil {
			return false, nil, err
		}
		s.clusterID, s.dirMeta, s.dirPersisted = want.ClusterID, want, got.Nodes
		if err := s.loadIncarnation(fresh); err != nil {
			return false, nil, err
		}
		return fresh, newNodeDir(c.InitialCluster, got.Nodes).addrs, nil
	}
	m, fresh, err := readMeta(c.DataDir)
	if err != nil {
		return false, nil, err
	}
	if fresh {
		if err := checkEmpty(c.DataDir); err != nil {
			return false, nil, err
		}
		if m, err = s.joinCluster(); err != nil {
			return false, nil, err
		}
		if err := writeMeta(c.DataDir, m); err != nil {
			return false, nil, err
		}
		// The nonce has done its work: the meta file names the node now.
		_ = os.Remove(filepath.Join(c.DataDir, joinNonceFile))
	}
	path := filepath.Join(c.DataDir, metaFile)
	ic, err := ParseInitialCluster(m.InitialCluster)
	if err != nil {
		return false, nil, fmt.Errorf("%w: %s: %v", ErrOtherCluster, path, err)
	}
	replicas := replicasOrDefault(m.Replicas)
	switch {
	case m.Layout != layoutRanges:
		return false, nil, sameNode(c.DataDir, m, meta{Layout: layoutRanges})
	case ClusterID(ic, m.Groups, replicas) != m.ClusterID:
		return false, nil, fmt.Errorf("%w: %s names cluster %x, which is not that of its own flags", ErrOtherCluster, path, m.ClusterID)
	case c.NodeID != 0 && c.NodeID != m.NodeID:
		return false, nil, fmt.Errorf("%w: %s belongs to node %d, not node %d", ErrOtherCluster, c.DataDir, m.NodeID, c.NodeID)
	case c.Groups != 0 && c.Groups != m.Groups, c.Replicas != 0 && c.Replicas != replicas:
		return false, nil, fmt.Errorf("%w: --groups %d and --replicas %d differ from the cluster's, %d and %d (with --join, leave them out)",
			ErrConfig, c.Groups, c.Replicas, m.Groups, replicas)
	}
	self := ic[m.NodeID]
	if m.Joined {
		self = m.Nodes[m.NodeID]
	}
	if self != c.PeerAddr {
		return false, nil, fmt.Errorf("%w: --peer-addr %s differs from node %d's address in the cluster, %s", ErrConfig, c.PeerAddr, m.NodeID, self)
	}
	c.NodeID, c.InitialCluster, c.Groups, c.Replicas = m.NodeID, ic, m.Groups, replicas
	nodes := m.Nodes
	m.Nodes = nil
	s.clusterID, s.dirMeta, s.dirPersisted = m.ClusterID, m, nodes
	if err := s.loadIncarnation(false); err != nil {
		return false, nil, err
	}
	return false, newNodeDir(ic, nodes).addrs, nil
}
