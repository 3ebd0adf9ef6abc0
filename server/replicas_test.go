package server

import (
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"testing"
	"time"
)

// --replicas: a 5-node cluster's ranges have 5 voters with --replicas 5
// and 3 by default, each on distinct nodes, with the preferred leaders
// spread; writes commit either way.
func TestReplicationFactor(t *testing.T) {
	for _, factor := range []int{0, 5} { // 0: the default, 3
		t.Run(fmt.Sprint("replicas=", factor), func(t *testing.T) {
			c := startClusterWith(t, 5, 5, func(cfg *Config) { cfg.Replicas = factor })
			want := factor
			if want == 0 {
				want = DefaultReplicas
			}
			holders := map[uint64]int{} // node → replicas it holds
			for id, s := range c.nodes {
				for _, st := range s.Host().Status() {
					holders[id]++
					voters := slices.Clone(st.Voters)
					slices.Sort(voters)
					if len(slices.Compact(voters)) != want || len(st.Voters) != want {
						t.Fatalf("node %d: group %d has voters %v, want %d distinct", id, st.ID, st.Voters, want)
					}
					if !slices.Contains(st.Voters, id) {
						t.Fatalf("node %d runs group %d but is not among its voters %v", id, st.ID, st.Voters)
					}
				}
			}
			total := 0
			for _, n := range holders {
				total += n
			}
			if total != 5*want {
				t.Fatalf("%d replicas over the nodes (%v), want %d", total, holders, 5*want)
			}
			cl := c.client()
			ctx := ctxT(t)
			for i := range 20 {
				if _, err := cl.Put(ctx, []byte(fmt.Sprintf("%x", i*13)), []byte("v")); err != nil {
					t.Fatalf("put: %v", err)
				}
			}
		})
	}
}

// The factor is part of the cluster's identity (as are the initial
// cluster and the group count), and only the values that make sense pass.
func TestReplicasConfig(t *testing.T) {
	ic := map[uint64]string{1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"}
	// The default keeps the ID of the clusters made before the flag:
	// fnv-64a of "flotilla/v1;groups=16;" and the initial cluster.
	h := fnv.New64a()
	fmt.Fprintf(h, "flotilla/v1;groups=16;%s", FormatInitialCluster(ic))
	if got := ClusterID(ic, 16, DefaultReplicas); got != h.Sum64() {
		t.Fatalf("cluster ID %x with the default factor, want %x as before --replicas", got, h.Sum64())
	}
	if ClusterID(ic, 16, 3) == ClusterID(ic, 16, 5) {
		t.Fatal("the cluster ID does not follow the replication factor")
	}
	for _, n := range []int{-1, 2, 4, 8} {
		cfg := Config{NodeID: 1, DataDir: t.TempDir(), PeerAddr: ic[1], ClientAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
			InitialCluster: ic, Groups: 4, Replicas: n, Insecure: true}
		cfg.setDefaults()
		if err := cfg.validate(); !errors.Is(err, ErrConfig) {
			t.Fatalf("--replicas %d: %v, want ErrConfig", n, err)
		}
	}
	if got := Replicas(7, []uint64{1, 2, 3, 4, 5}, 5); fmt.Sprint(got) != "[2 3 4 5 1]" {
		t.Fatalf("Replicas(7, 5 nodes, 5) = %v", got)
	}
	if got := Replicas(7, []uint64{1, 2, 3}, 5); fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("Replicas(7, 3 nodes, 5) = %v", got)
	}
}

// A node's views of its peers keep only the ranges it holds no replica of
// (every reader asks the local replica first); with them, it still knows
// every range of the cluster.
func TestViewsLeaveOutHeldRanges(t *testing.T) {
	c := startCluster(t, 5, 10)
	s := c.nodes[1]
	waitFor(t, 10*time.Second, "node 1's views of its peers", func() error {
		s.peers.Lock()
		defer s.peers.Unlock()
		known := map[uint64]bool{}
		for _, st := range s.Host().Status() {
			known[st.ID] = true
		}
		for id := uint64(2); id <= 5; id++ {
			v := s.peers.views[id]
			if v == nil || !v.ok || v.version == 0 {
				return fmt.Errorf("no answer from node %d yet", id)
			}
			for _, g := range v.groups {
				if s.local(g.Id) {
					t.Fatalf("node 1's view of node %d holds range %d, which node 1 holds", id, g.Id)
				}
				known[g.Id] = true
			}
		}
		if len(known) != 10 {
			return fmt.Errorf("node 1 knows %d of the 10 ranges", len(known))
		}
		return nil
	})
}
