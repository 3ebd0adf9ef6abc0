package server

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/api"
)

// TestDiscoveryIncremental: in an idle cluster, a Peer.Info that sends
// back the version of the last answer carries no groups (and the
// discovery loops get such answers); after a write to one of the
// answering node's ranges it carries them all again, the write included.
// Node 4, which holds no replica of the written range, still sees it in
// its cluster map and range views, from its peers' answers, before and
// after.
func TestDiscoveryIncremental(t *testing.T) {
	c := startCluster(t, 4, 4)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A key whose range g has no replica on node 4; node `to` holds one.
	var key []byte
	var g uint64
	for i := 0; key == nil; i++ {
		k := fmt.Appendf(nil, "%x-disc-%d", i%16, i)
		if g = initialRange(4, k); !c.nodes[4].local(g) {
			key = k
		}
	}
	var to uint64
	for id := uint64(1); id <= 3 && to == 0; id++ {
		if c.nodes[id].local(g) {
			to = id
		}
	}
	cc, err := grpc.NewClient(c.nodes[to].PeerAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	peer := api.NewPeerClient(cc)
	info := func(known uint64) (*api.InfoResponse, error) {
		return peer.Info(ctx, &api.InfoRequest{ClusterId: c.nodes[to].ClusterID(), From: 4, KnownVersion: known})
	}
	groupOf := func(gs []*api.GroupInfo, id uint64) *api.GroupInfo {
		if i := slices.IndexFunc(gs, func(gi *api.GroupInfo) bool { return gi.Id == id }); i >= 0 {
			return gs[i]
		}
		return nil
	}

	// Idle: once leaders settled and ranges quiesced, the second answer
	// says unchanged and carries nothing.
	var full *api.InfoResponse
	waitFor(t, 20*time.Second, "an unchanged answer to an idle cluster's second Info", func() error {
		first, err := info(0)
		if err != nil {
			return err
		}
		if first.Unchanged || first.Version == 0 || len(first.Groups) != len(c.nodes[to].Host().Groups()) {
			return fmt.Errorf("first answer: unchanged=%v version=%d %d groups", first.Unchanged, first.Version, len(first.Groups))
		}
		if gi := groupOf(first.Groups, g); gi == nil || gi.Leader == 0 || len(gi.Replicas) == 0 {
			return fmt.Errorf("first answer describes range %d as %v", g, gi)
		}
		again, err := info(first.Version)
		if err != nil {
			return err
		}
		if !again.Unchanged || len(again.Groups) != 0 || again.Version != first.Version {
			return fmt.Errorf("second answer: unchanged=%v version=%d (was %d) %d groups",
				again.Unchanged, again.Version, first.Version, len(again.Groups))
		}
		if again.Node.GetClientAddr() != c.nodes[to].ClientAddr() {
			return fmt.Errorf("an unchanged answer must still describe the node: %v", again.Node)
		}
		full = first
		return nil
	})
	// Node 4's discovery loop asks the same way, and keeps the groups it
	// holds: checked after two unchanged answers in a row.
	views := func(want *api.GroupInfo) error {
		s := c.nodes[4]
		// A cluster map for a caller who may not see the spans (no
		// identity) must not clear them from the reports node 4 keeps.
		if _, err := (&clusterService{s: s}).ClusterMap(context.Background(), &api.ClusterMapRequest{}); err != nil {
			return err
		}
		s.peers.Lock()
		v := s.peers.views[to]
		unchanged, held := 0, false
		if v != nil {
			gi := groupOf(v.groups, g)
			unchanged, held = v.unchanged, v.ok && gi != nil && len(gi.Replicas) > 0
		}
		s.peers.Unlock()
		if unchanged < 2 || !held {
			return fmt.Errorf("node 4's view of node %d: %d unchanged answers in a row, holds range %d with its replicas: %v", to, unchanged, g, held)
		}
		gi := groupOf(s.groupInfos(), g)
		if gi == nil || gi.Leader == 0 || !slices.Equal(gi.Replicas, want.Replicas) || gi.Commit < want.Commit {
			return fmt.Errorf("node 4's cluster map shows range %d as %v, want leader, replicas %v, commit %d or more",
				g, gi, want.Replicas, want.Commit)
		}
		d, ok := s.descriptor(g)
		if !ok || !slices.Equal(d.Replicas, want.Replicas) {
			return fmt.Errorf("node 4's descriptor of range %d: %v %v", g, d, ok)
		}
		if ri := s.rangeInfo(d, false); ri.Leader != gi.Leader {
			return fmt.Errorf("node 4's ranges view: range %d led by %d, cluster map says %d", g, ri.Leader, gi.Leader)
		}
		return nil
	}
	waitFor(t, 10*time.Second, "node 4's views of range "+fmt.Sprint(g)+" while idle", func() error {
		return views(groupOf(full.Groups, g))
	})

	// A write moves the answering node's version: the next answer to the
	// idle version carries every group, the write's commit included.
	if _, err := rawKV(t, c.nodes[4].ClientAddr()).Put(ctx, &api.PutRequest{Key: key, Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	var after *api.InfoResponse
	waitFor(t, 10*time.Second, "an answer with groups after a write", func() error {
		r, err := info(full.Version)
		if err != nil {
			return err
		}
		gi := groupOf(r.Groups, g)
		if r.Unchanged || r.Version == full.Version || len(r.Groups) != len(full.Groups) || gi == nil ||
			gi.Commit <= groupOf(full.Groups, g).Commit {
			return fmt.Errorf("after the write: unchanged=%v version=%d (idle %d) %d groups, range %d: %v",
				r.Unchanged, r.Version, full.Version, len(r.Groups), g, gi)
		}
		after = r
		return nil
	})
	waitFor(t, 10*time.Second, "node 4's views of range "+fmt.Sprint(g)+" after the write", func() error {
		return views(groupOf(after.Groups, g))
	})
}
