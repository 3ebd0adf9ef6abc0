package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/internal/certs"
	"github.com/flotilla/flotilla/kv"
)

// join starts a node that joins c through node 1, asking for ID want (0:
// the cluster's choice), in data directory dir (under c.dir), on peer
// (nil: a new port). It returns the node, also in c.nodes under its ID.
func (c *cluster) join(dir string, want uint64, peer net.Listener) *Server {
	c.t.Helper()
	if peer == nil {
		var err error
		if peer, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			c.t.Fatal(err)
		}
	}
	cfg := c.config(1)
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	cfg.NodeID, cfg.InitialCluster, cfg.Groups, cfg.Replicas = want, nil, 0, 0
	cfg.DataDir = filepath.Join(c.dir, dir)
	cfg.PeerAddr, cfg.PeerListener = "", peer
	cfg.Join = []string{c.initial[1]}
	s, err := New(cfg)
	if err != nil {
		peer.Close()
		c.t.Fatal(err)
	}
	s.Start()
	c.nodes[s.NodeID()] = s
	return s
}

// TestJoin: two nodes join a running cluster of three under writes (one
// given its ID by the cluster, one asking for its own), with no other
// node restarted; every node learns of them; the rebalancer gives them
// their share of the replicas; no write fails and every acknowledged one
// reads back. Restarted, a joined node is the same node, and a bootstrap
// node knows the joined ones from its data directory before it reads the
// meta range.
func TestJoin(t *testing.T) {
	c := startClusterWith(t, 3, 6, func(cfg *Config) {
		cfg.Replicas = 3
		cfg.DeadAfter = -1
		cfg.RebalanceInterval = 100 * time.Millisecond
		cfg.MoveCatchUp = 2 * time.Second
		cfg.AuthRefresh = 100 * time.Millisecond
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cl := c.client()

	// Writes throughout.
	var (
		mu     sync.Mutex
		acked  [][]byte
		failed []error
	)
	wctx, stopWrites := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; wctx.Err() == nil; i++ {
				k := fmt.Appendf(nil, "%02x-w%d-%d", (i*37+w*61)%256, w, i)
				pctx, pcancel := context.WithTimeout(wctx, 10*time.Second)
				_, err := cl.Put(pctx, k, k)
				pcancel()
				mu.Lock()
				switch {
				case err == nil:
					acked = append(acked, k)
				case wctx.Err() == nil:
					failed = append(failed, err)
				}
				mu.Unlock()
			}
		})
	}

	n4 := c.join("j4", 0, nil)
	if n4.NodeID() != 4 {
		t.Fatalf("the first node to join got ID %d, want 4 (the next never used)", n4.NodeID())
	}
	n5 := c.join("j5", 7, nil)
	if n5.NodeID() != 7 {
		t.Fatalf("asked for ID 7, got %d", n5.NodeID())
	}
	start := time.Now()
	waitFor(t, 2*time.Minute, "every node at 3 or 4 of the 18 replicas", func() error {
		for id, s := range c.nodes {
			if ids := s.nodeIDs(); !slices.Equal(ids, []uint64{1, 2, 3, 4, 7}) {
				return fmt.Errorf("node %d knows nodes %v", id, ids)
			}
		}
		ds, err := c.nodes[1].allDescriptors(ctx)
		if err != nil {
			return err
		}
		count := map[uint64]int{}
		for _, d := range ds {
			if len(d.Replicas) != 3 || len(d.Learners) != 0 {
				return fmt.Errorf("range %d on %v, learners %v", d.ID, d.Replicas, d.Learners)
			}
			for _, r := range d.Replicas {
				count[r]++
			}
		}
		for _, id := range []uint64{1, 2, 3, 4, 7} {
			if count[id] < 3 || count[id] > 4 {
				return fmt.Errorf("replica counts %v", count)
			}
		}
		return nil
	})
	t.Logf("balanced over 5 nodes %v after the joins", time.Since(start).Round(time.Millisecond))
	stopWrites()
	wg.Wait()
	mu.Lock()
	if len(failed) > 0 {
		t.Errorf("%d writes failed during the joins, first: %v", len(failed), failed[0])
	}
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged")
	}
	t.Logf("%d writes acknowledged", len(acked))
	for _, k := range acked {
		got, err := cl.Get(ctx, k)
		if err != nil || string(got.Value) != string(k) {
			t.Fatalf("acknowledged %q reads back %q, %v", k, got.Value, err)
		}
	}
	mu.Unlock()

	// node list: the joined nodes with their addresses.
	m, err := cl.ClusterMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var listed []uint64
	for _, n := range m.Nodes {
		listed = append(listed, n.Id)
		if n.Id == 7 && (n.PeerAddr != n5.PeerAddr() || n.ClientAddr != n5.ClientAddr()) {
			t.Errorf("node 7 listed at %s/%s, want %s/%s", n.PeerAddr, n.ClientAddr, n5.PeerAddr(), n5.ClientAddr())
		}
	}
	if !slices.Equal(listed, []uint64{1, 2, 3, 4, 7}) {
		t.Errorf("cluster map lists nodes %v", listed)
	}

	// Restarts: node 7 on its data directory is node 7 again; node 1
	// knows nodes 4 and 7 before it reads anything.
	addr7 := n5.PeerAddr()
	if err := n5.Stop(); err != nil {
		t.Fatal(err)
	}
	delete(c.nodes, 7)
	l, err := net.Listen("tcp", addr7)
	if err != nil {
		t.Fatal(err)
	}
	if again := c.join("j5", 0, l); again.NodeID() != 7 {
		t.Fatalf("restarted, the joined node is node %d, want 7", again.NodeID())
	}
	if err := c.nodes[1].Stop(); err != nil {
		t.Fatal(err)
	}
	delete(c.nodes, 1)
	cfg := c.config(1)
	c.tweak(&cfg)
	cfg.AuthRefresh = time.Minute // no reread yet: what it knows comes from its data directory
	s1, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ids := s1.nodeIDs(); !slices.Equal(ids, []uint64{1, 2, 3, 4, 7}) {
		t.Errorf("node 1, restarted, knows nodes %v before reading the meta range", ids)
	}
	s1.Start()
	c.nodes[1] = s1
	// Node 2 restarted with a meta file that lists no joined node (as
	// if it was down while they joined) learns of them (from its peers'
	// discovery answers, or its first read of the meta range).
	if err := c.nodes[2].Stop(); err != nil {
		t.Fatal(err)
	}
	delete(c.nodes, 2)
	cfg2 := c.config(2)
	c.tweak(&cfg2)
	cfg2.AuthRefresh = time.Minute
	m2, _, err := readMeta(cfg2.DataDir)
	if err != nil || len(m2.Nodes) != 2 {
		t.Fatalf("node 2's meta file lists joined nodes %v (%v), want 4 and 7", m2.Nodes, err)
	}
	m2.Nodes = nil
	if err := writeMeta(cfg2.DataDir, m2); err != nil {
		t.Fatal(err)
	}
	s2, err := New(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	if ids := s2.nodeIDs(); !slices.Equal(ids, []uint64{1, 2, 3}) {
		t.Fatalf("node 2, restarted with no joined node in its meta file, knows nodes %v", ids)
	}
	s2.Start()
	c.nodes[2] = s2
	waitFor(t, 20*time.Second, "node 2 told of nodes 4 and 7", func() error {
		if ids := s2.nodeIDs(); !slices.Equal(ids, []uint64{1, 2, 3, 4, 7}) {
			return fmt.Errorf("node 2 knows nodes %v", ids)
		}
		return nil
	})
	c.waitLeaders()
	for _, k := range acked[:min(len(acked), 50)] {
		got, err := cl.Get(ctx, k)
		if err != nil || string(got.Value) != string(k) {
			t.Fatalf("after the restarts, %q reads back %q, %v", k, got.Value, err)
		}
	}
}

// TestJoinRefusals: Peer.Join's answers to a repeated ask (the same ID), to
// an ID or address that is another node's, and to bad asks; and a joining
// node's refusal when its flags differ from the cluster's.
func TestJoinRefusals(t *testing.T) {
	c := startClusterWith(t, 3, 2, func(cfg *Config) { cfg.DeadAfter = -1 })
	ctx := ctxT(t)
	cc, err := grpc.NewClient(c.initial[2], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	peer := api.NewPeerClient(cc)

	first, err := peer.Join(ctx, &api.JoinRequest{PeerAddr: "127.0.0.1:1", Nonce: 42})
	if err != nil {
		t.Fatal(err)
	}
	if first.NodeId != 4 || first.ClusterId != c.nodes[1].ClusterID() || first.Groups != 2 || first.Replicas != 3 ||
		first.Nodes[4] != "127.0.0.1:1" || first.InitialCluster != FormatInitialCluster(c.initial) {
		t.Fatalf("join answered %v", first)
	}
	again, err := peer.Join(ctx, &api.JoinRequest{PeerAddr: "127.0.0.1:1", Nonce: 42})
	if err != nil || again.NodeId != 4 {
		t.Fatalf("the same ask again: node %d, %v; want node 4", again.GetNodeId(), err)
	}
	for _, tc := range []struct {
		name string
		req  *api.JoinRequest
		code codes.Code
	}{
		{"taken ID", &api.JoinRequest{NodeId: 4, PeerAddr: "127.0.0.1:2", Nonce: 43}, codes.AlreadyExists},
		{"bootstrap ID", &api.JoinRequest{NodeId: 2, PeerAddr: "127.0.0.1:2", Nonce: 43}, codes.AlreadyExists},
		{"taken address", &api.JoinRequest{PeerAddr: c.initial[3], Nonce: 43}, codes.AlreadyExists},
		{"same nonce, other address", &api.JoinRequest{PeerAddr: "127.0.0.1:3", Nonce: 42}, codes.AlreadyExists},
		{"no nonce", &api.JoinRequest{PeerAddr: "127.0.0.1:3"}, codes.InvalidArgument},
		{"bad address", &api.JoinRequest{PeerAddr: "nowhere", Nonce: 44}, codes.InvalidArgument},
	} {
		_, err := peer.Join(ctx, tc.req)
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.code)
		}
	}
	// Every node learns of node 4 from the record.
	waitFor(t, 10*time.Second, "node 4 known everywhere", func() error {
		for id, s := range c.nodes {
			if s.peerAddrOf(4) != "127.0.0.1:1" {
				return fmt.Errorf("node %d does not know node 4", id)
			}
		}
		return nil
	})
	// Discovery answers tell an asker that knows fewer nodes of the
	// joined ones.
	info, err := peer.Info(ctx, &api.InfoRequest{ClusterId: first.ClusterId, From: 1, KnownNodes: 3})
	if err != nil || info.Nodes[4] != "127.0.0.1:1" {
		t.Fatalf("Info to an asker knowing 3 nodes: nodes %v, %v", info.GetNodes(), err)
	}
	if info, err := peer.Info(ctx, &api.InfoRequest{ClusterId: first.ClusterId, From: 1, KnownNodes: 4}); err != nil || len(info.Nodes) != 0 {
		t.Fatalf("Info to an asker knowing every node: nodes %v, %v", info.GetNodes(), err)
	}
	next, err := peer.Join(ctx, &api.JoinRequest{PeerAddr: "127.0.0.1:4", Nonce: 45})
	if err != nil || next.NodeId != 5 || len(next.Nodes) != 2 {
		t.Fatalf("a second node: %v, %v; want node 5 with both joined nodes", next, err)
	}

	// A joining node whose --replicas differs from the cluster's.
	cfg := c.config(1)
	cfg.NodeID, cfg.InitialCluster, cfg.Groups, cfg.Replicas = 0, nil, 0, 5
	cfg.DataDir, cfg.PeerAddr = filepath.Join(c.dir, "bad"), "127.0.0.1:0"
	cfg.Join = []string{c.initial[1]}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.PeerAddr, cfg.PeerListener = "", l
	if s, err := New(cfg); err == nil {
		s.Stop()
		t.Fatal("a node joining with --replicas 5 into a cluster of 3 started")
	}
	// Config refusals.
	bad := c.config(1)
	bad.Join = []string{c.initial[1]}
	if _, err := New(bad); err == nil {
		t.Error("--join with --initial-cluster accepted")
	}
}

// TestJoinSecure: with TLS a node joins under the ID its certificate
// names (another ID is refused, as is a join without --id), and takes
// replicas over mutual TLS.
func TestJoinSecure(t *testing.T) {
	dir := makeCerts(t, 4)
	c := startSecure(t, 3, dir, func(cfg *Config) {
		cfg.DeadAfter = -1
		cfg.RebalanceInterval = 100 * time.Millisecond
		cfg.MoveCatchUp = 2 * time.Second
	})
	ctx := ctxT(t)
	src, err := certs.NewNodeSource(dir, 4)
	if err != nil {
		t.Fatal(err)
	}
	peer := api.NewPeerClient(tlsConn(t, c.nodes[1].PeerAddr(), src.ClientConfig(certs.RequireNode(0)), ""))
	_, err = peer.Join(ctx, &api.JoinRequest{NodeId: 5, PeerAddr: "127.0.0.1:1", Nonce: 1})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("node 4's certificate asking to join as node 5: %v", err)
	}
	_, err = peer.Info(ctx, &api.InfoRequest{ClusterId: c.nodes[1].ClusterID(), From: 4})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("Peer.Info from node 4 before it joined: %v", err)
	}
	n4 := c.join("j4", 4, nil)
	waitFor(t, time.Minute, "node 4 holds a replica", func() error {
		if len(n4.Host().Status()) == 0 {
			return fmt.Errorf("node 4 holds no replica")
		}
		for _, st := range n4.Host().Status() {
			if st.Applied == 0 {
				return fmt.Errorf("node 4's replica of range %d applied nothing", st.ID)
			}
		}
		return nil
	})
}

// TestJoinRefusesLeftoverData: a data directory with a database but no
// meta file (a node's whose meta file went) does not join: its raft state
// would come along under a new ID.
func TestJoinRefusesLeftoverData(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "CURRENT"), []byte("MANIFEST-000001\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{DataDir: dir, PeerListener: l, ClientAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Join: []string{"127.0.0.1:1"}, Insecure: true, Logger: quietLogger()})
	if !errors.Is(err, ErrOtherCluster) {
		if s != nil {
			s.Stop()
		}
		t.Fatalf("a join from a directory holding a database: %v, want ErrOtherCluster", err)
	}
}

// TestNodesRecordKeepsUnread: the nodes', membership and drained nodes'
// records read back as written, and a line this version cannot read (a
// newer version's) is kept by a rewrite, its ID not given out again.
func TestNodesRecordKeepsUnread(t *testing.T) {
	s := &Server{log: quietLogger(), cfg: Config{InitialCluster: map[uint64]string{1: "127.0.0.1:1"}}}
	nodes := map[uint64]joinedNode{4: {"127.0.0.4:2380", 0xabc}, 2: {"h:1", 7}}
	unread := []string{"9 a-newer-format", "bogus"}
	recs := []kv.KeyValue{{Key: []byte(nodesKey), Value: encodeNodes(nodes, unread)}}
	_, got, gotUnread := s.joinedOf(recs)
	if !maps.Equal(got, nodes) || !slices.Equal(gotUnread, unread) {
		t.Fatalf("read back %v, unread %q; wrote %v, %q", got, gotUnread, nodes, unread)
	}
	id, known, err := s.pickJoinID(&api.JoinRequest{PeerAddr: "127.0.0.5:2380", Nonce: 1}, got, gotUnread, nil)
	if err != nil || known || id != 10 {
		t.Errorf("the next ID with an unread line of node 9: %d (%v, %v), want 10", id, known, err)
	}
	if _, _, err := s.pickJoinID(&api.JoinRequest{NodeId: 9, PeerAddr: "127.0.0.5:2380", Nonce: 1}, got, gotUnread, nil); status.Code(err) != codes.AlreadyExists {
		t.Errorf("asking for ID 9, an unread line's: %v", err)
	}
	states := map[uint64]string{3: api.NodeRemoved, 6: api.NodeDecommissioning}
	_, gotStates, gotUnread := s.membershipOf([]kv.KeyValue{{Key: []byte(membershipKey), Value: encodeMembership(states, []string{"7 recommissioned"})}})
	if !maps.Equal(gotStates, states) || !slices.Equal(gotUnread, []string{"7 recommissioned"}) {
		t.Fatalf("membership read back %v, %q", gotStates, gotUnread)
	}
	drained := map[uint64]bool{3: true, 5: true}
	_, gotDrained, gotUnread := s.drainedOf([]kv.KeyValue{{Key: []byte(drainedKey), Value: encodeDrained(drained, []string{"x"})}})
	if !maps.Equal(gotDrained, drained) || !slices.Equal(gotUnread, []string{"x"}) {
		t.Fatalf("drained read back %v, %q", gotDrained, gotUnread)
	}
}
