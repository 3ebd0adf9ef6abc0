package client

import (
	"context"
	"slices"
	"sync"

	"github.com/flotilla/flotilla/api"
)

// Status gathers the cluster's status from every node: the node list from
// the cluster map, each group as its leader reports it (or the replica
// with the highest term when no leader answered), and every node's links.
// A node is listed alive as the cluster's gossip membership counts it, as
// the node that answered the cluster map knows it; a node it counts down
// is not asked for its groups, and the groups of a node that does not
// answer the client are missing.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	m, err := c.ClusterMap(ctx)
	if err != nil {
		return api.Status{}, err
	}
	st := api.Status{ClusterID: m.ClusterId, Nodes: []api.StatusNode{}, Groups: []api.StatusGroup{}, Peers: []api.StatusPeer{}}
	answers := make([]*api.NodeStatusResponse, len(m.Nodes))
	var wg sync.WaitGroup
	for i, n := range m.Nodes {
		// A node the map counts down (gossip) is not asked: a frozen one
		// would hold the status for an attempt timeout, for an answer
		// that, if it came, would be stale.
		if n.ClientAddr == "" || n.Membership == api.NodeRemoved || !n.Alive {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cc, err := c.conn(n.ClientAddr)
			if err != nil {
				return
			}
			actx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
			defer cancel()
			if r, err := api.NewClusterClient(cc).NodeStatus(actx, &api.NodeStatusRequest{}); err == nil && r.ClusterId == m.ClusterId {
				answers[i] = r
			}
		}()
	}
	wg.Wait()
	best := make(map[uint64]*api.GroupInfo)
	fromLeader := make(map[uint64]bool)
	for _, g := range m.GroupInfos {
		best[g.Id] = g
	}
	for i, n := range m.Nodes {
		r := answers[i]
		st.Nodes = append(st.Nodes, api.StatusNode{ID: n.Id, PeerAddr: n.PeerAddr, ClientAddr: n.ClientAddr,
			HTTPAddr: n.HttpAddr, Alive: n.Alive, Dead: !n.Alive && n.Dead, Membership: n.Membership, Drained: n.Drained,
			UsedBytes: n.UsedBytes, AvailableBytes: n.AvailableBytes})
		if r == nil {
			continue
		}
		for _, g := range r.Groups {
			// The leader's own view has the freshest commit index; without
			// one, the replica with the highest term knows the most.
			switch {
			case fromLeader[g.Id]:
			case g.Leader == n.Id:
				best[g.Id], fromLeader[g.Id] = g, true
			case best[g.Id] == nil || g.Term > best[g.Id].Term:
				best[g.Id] = g
			}
		}
		for _, p := range r.Peers {
			st.Peers = append(st.Peers, api.StatusPeer{From: p.From, To: p.To, QueueLen: p.QueueLen, Sent: p.Sent, Dropped: p.Dropped})
		}
	}
	ids := make([]uint64, 0, len(best))
	for id := range best {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		g := best[id]
		st.Groups = append(st.Groups, api.StatusGroup{ID: g.Id, Leader: g.Leader, Term: g.Term,
			Replicas: g.Replicas, Commit: g.Commit, Applied: g.Applied})
	}
	return st, nil
}
