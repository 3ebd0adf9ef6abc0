package api

// Status is the JSON document of `flotilla status -w json` and of a node's
// /debug/raft page. Field names are a contract (docs/design.md): they may be
// extended, never renamed or removed.
type Status struct {
	// ClusterID identifies the cluster.
	ClusterID uint64 `json:"cluster_id"`
	// Node is the node that produced the document; 0 when the CLI merged
	// the views of several nodes.
	Node   uint64        `json:"node,omitempty"`
	Nodes  []StatusNode  `json:"nodes"`
	Groups []StatusGroup `json:"groups"`
	Peers  []StatusPeer  `json:"peers"`
}

// StatusNode is one node of the cluster.
type StatusNode struct {
	ID         uint64 `json:"id"`
	PeerAddr   string `json:"peer_addr"`
	ClientAddr string `json:"client_addr"`
	HTTPAddr   string `json:"http_addr"`
	// Alive: the gossip membership counts the node live, as the node
	// asked knows it.
	Alive bool `json:"alive"`
	// Dead: the gossip membership has counted the node down for the node
	// asked's --dead-after; omitted when not.
	Dead bool `json:"dead,omitempty"`
	// Membership is NodeDecommissioning or NodeRemoved for a node that is
	// leaving or has left the cluster (`flotilla node decommission`);
	// omitted for a member.
	Membership string `json:"membership,omitempty"`
	// Drained: the node is marked drained (`flotilla node drain`): the
	// rebalancer leaves it empty; omitted when not.
	Drained bool `json:"drained,omitempty"`
	// UsedBytes and AvailableBytes: the node's capacity as it last
	// gossiped it: the bytes of its data directory, and those its file
	// system has left for it; omitted when not known.
	UsedBytes      uint64 `json:"used_bytes,omitempty"`
	AvailableBytes uint64 `json:"available_bytes,omitempty"`
}

// StatusGroup is one raft group, as its leader (or the best informed
// replica that answered) sees it.
type StatusGroup struct {
	ID       uint64   `json:"id"`
	Leader   uint64   `json:"leader"`
	Term     uint64   `json:"term"`
	Replicas []uint64 `json:"replicas"`
	Commit   uint64   `json:"commit"`
	Applied  uint64   `json:"applied"`
	// Quiesced: this replica is quiesced (it does not tick); omitted
	// when not.
	Quiesced bool `json:"quiesced,omitempty"`
}

// StatusPeer is one directed link between two nodes.
type StatusPeer struct {
	From     uint64 `json:"from"`
	To       uint64 `json:"to"`
	QueueLen uint64 `json:"queue_len"`
	Sent     uint64 `json:"sent"`
	Dropped  uint64 `json:"dropped"`
}

// NodeList is what `flotilla node list -w json` prints: every node of the
// cluster, its state and what it holds.
type NodeList struct {
	Nodes []NodeListEntry `json:"nodes"`
}

// Node states (NodeListEntry.State).
const (
	// NodeLive: the gossip membership counts the node live (SWIM: it
	// answers probes, directly or through other nodes).
	NodeLive = "live"
	// NodeSuspect: the gossip membership counts the node down, not for
	// --dead-after yet.
	NodeSuspect = "suspect"
	// NodeDead: the gossip membership has counted the node down for
	// --dead-after: its replicas move to live nodes.
	NodeDead = "dead"
	// NodeDecommissioning: `flotilla node decommission` is moving the
	// node's replicas off it; nothing moves onto it.
	NodeDecommissioning = "decommissioning"
	// NodeRemoved: the node was decommissioned: it holds no replica, and
	// the other nodes refuse it if it comes back.
	NodeRemoved = "removed"
)

// NodeListEntry is one node of a NodeList. Replicas counts the ranges it
// holds a replica of, Leaders those it leads, as the cluster's best
// informed replicas report them.
type NodeListEntry struct {
	ID         uint64 `json:"id"`
	PeerAddr   string `json:"peer_addr"`
	ClientAddr string `json:"client_addr"`
	HTTPAddr   string `json:"http_addr"`
	State      string `json:"state"`
	Replicas   int    `json:"replicas"`
	Leaders    int    `json:"leaders"`
	// Drained: marked drained (`flotilla node drain`; StatusNode.Drained);
	// omitted when not.
	Drained bool `json:"drained,omitempty"`
	// UsedBytes and AvailableBytes: as in StatusNode; omitted when not
	// known.
	UsedBytes      uint64 `json:"used_bytes,omitempty"`
	AvailableBytes uint64 `json:"available_bytes,omitempty"`
}

// NodeListOf derives the node list from a status document.
func NodeListOf(st Status) NodeList {
	replicas, leaders := map[uint64]int{}, map[uint64]int{}
	for _, g := range st.Groups {
		for _, r := range g.Replicas {
			replicas[r]++
		}
		if g.Leader != 0 {
			leaders[g.Leader]++
		}
	}
	out := NodeList{Nodes: make([]NodeListEntry, 0, len(st.Nodes))}
	for _, n := range st.Nodes {
		state := NodeSuspect
		switch {
		case n.Membership == NodeRemoved || n.Membership == NodeDecommissioning:
			state = n.Membership
		case n.Alive:
			state = NodeLive
		case n.Dead:
			state = NodeDead
		}
		out.Nodes = append(out.Nodes, NodeListEntry{ID: n.ID, PeerAddr: n.PeerAddr, ClientAddr: n.ClientAddr,
			HTTPAddr: n.HTTPAddr, State: state, Replicas: replicas[n.ID], Leaders: leaders[n.ID], Drained: n.Drained,
			UsedBytes: n.UsedBytes, AvailableBytes: n.AvailableBytes})
	}
	return out
}
