package gossip

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Meta is what a node gossips about itself besides its address: where its
// clients and operators reach it, and its capacity. It travels as memberlist
// node meta (JSON, at most memberlist.MetaMaxSize bytes).
type Meta struct {
	ClientAddr string `json:"c,omitempty"`
	HTTPAddr   string `json:"h,omitempty"`
	// Replicas and Leaders: the replicas the node holds and leads.
	Replicas int `json:"r,omitempty"`
	Leaders  int `json:"l,omitempty"`
	// UsedBytes: the bytes of its data directory; AvailableBytes: those its
	// file system has left for it.
	UsedBytes      uint64 `json:"u,omitempty"`
	AvailableBytes uint64 `json:"a,omitempty"`
	// Version: the state machine version of the node's build
	// (kv.StateMachineVersion); 0 from a build before it was gossiped.
	Version uint32 `json:"v,omitempty"`
}

// Node is what this node's gossip knows of another.
type Node struct {
	ID uint64
	// Live: memberlist counts the node a member, alive or suspect (SWIM's
	// suspect is a member given time to refute; it is not counted down).
	Live bool
	Meta Meta
}

// MembersConfig configures Members.
type MembersConfig struct {
	// NodeID is this node's ID, its memberlist name in decimal. Required.
	NodeID uint64
	// ClusterID labels every packet and stream: a node of another cluster
	// is not heard.
	ClusterID uint64
	// Transport carries the gossip. Required; Members shuts it down.
	Transport *Transport
	// ProbeInterval is SWIM's probe interval: each node probes one other
	// this often. A node that stops answering is suspect after a probe
	// (ProbeInterval/2 unanswered, then up to 3 indirect probes), and down
	// after the suspicion timeout: 4 × ProbeInterval × max(1,
	// log10(nodes)); with 4 nodes or more it starts at 6 times that and
	// shrinks as other nodes confirm. Default 1s; 10ms..1m.
	ProbeInterval time.Duration
	// Allow says whether the node named id may be a member: memberlist
	// ignores a node it refuses (not in the cluster's directory, or
	// removed) until it allows it. Called on memberlist's goroutines,
	// sometimes with memberlist's locks held: it must not block or call
	// into Members. Nil: every node.
	Allow func(id uint64) bool
	// Logger receives memberlist's log. Default slog.Default().
	Logger *slog.Logger
}

// Members is this node's gossip membership: hashicorp/memberlist over a
// Transport. Its methods are safe for concurrent use.
type Members struct {
	cfg  MembersConfig
	list *memberlist.Memberlist
	meta atomic.Pointer[[]byte] // this node's meta, encoded; what NodeMeta returns
	self atomic.Pointer[Meta]   // the same, decoded

	// mu guards nodes. A leaf: memberlist's event callbacks take it with
	// memberlist's own locks held, so nothing under it calls memberlist.
	mu    sync.Mutex
	nodes map[uint64]*Node
}

// StartMembers creates this node's memberlist, alone: Join brings it
// others. meta is what it gossips about itself first.
func StartMembers(cfg MembersConfig, meta Meta) (*Members, error) {
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.NodeID == 0:
		return nil, fmt.Errorf("%w: node ID 0", ErrConfig)
	case cfg.Transport == nil:
		return nil, fmt.Errorf("%w: no Transport", ErrConfig)
	case cfg.ProbeInterval < 10*time.Millisecond || cfg.ProbeInterval > time.Minute:
		return nil, fmt.Errorf("%w: probe interval %v outside 10ms..1m", ErrConfig, cfg.ProbeInterval)
	}
	m := &Members{cfg: cfg, nodes: map[uint64]*Node{}}
	if err := m.setMeta(meta); err != nil {
		return nil, err
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = strconv.FormatUint(cfg.NodeID, 10)
	mc.Transport = cfg.Transport
	mc.Label = fmt.Sprintf("flotilla-%x", cfg.ClusterID)
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeInterval / 2
	mc.GossipInterval = cfg.ProbeInterval / 5
	mc.PushPullInterval = 30 * cfg.ProbeInterval
	// A stream (state sync, fallback probe) waits this long at most; a
	// join to a frozen node gives up after it.
	mc.TCPTimeout = max(2*cfg.ProbeInterval, time.Second)
	// A node that restarts at another address takes its name back once
	// it was down this long.
	mc.DeadNodeReclaimTime = cfg.ProbeInterval
	mc.Delegate = (*delegate)(m)
	mc.Events = (*delegate)(m)
	mc.Alive = (*delegate)(m)
	mc.LogOutput = &logWriter{log: cfg.Logger}
	list, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip: start memberlist: %w", err)
	}
	m.list = list
	return m, nil
}

// Join asks the nodes at addrs (ID → gossip address) for the membership
// and tells them of this node. It waits, with no lock held, up to the
// stream timeout (2 × ProbeInterval, at least 1s) for each node that does
// not answer. It returns how many answered.
func (m *Members) Join(addrs map[uint64]string) int {
	if len(addrs) == 0 {
		return 0
	}
	seeds := make([]string, 0, len(addrs))
	for id, a := range addrs {
		seeds = append(seeds, fmt.Sprintf("%d/%s", id, a))
	}
	n, _ := m.list.Join(seeds)
	return n
}

// SetMeta changes what this node gossips about itself: if it changed, the
// change is spread (memberlist.UpdateNode, which waits up to timeout for
// the news to leave; it is sent anyway after).
func (m *Members) SetMeta(meta Meta, timeout time.Duration) error {
	old := m.meta.Load()
	b, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	if old != nil && bytes.Equal(*old, b) {
		return nil
	}
	if err := m.setMeta(meta); err != nil {
		return err
	}
	return m.list.UpdateNode(timeout)
}

func (m *Members) setMeta(meta Meta) error {
	b, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	if len(b) > memberlist.MetaMaxSize {
		return fmt.Errorf("gossip: node meta of %d bytes is over memberlist's %d", len(b), memberlist.MetaMaxSize)
	}
	m.meta.Store(&b)
	m.self.Store(&meta)
	return nil
}

// Self returns what this node gossips about itself (SetMeta).
func (m *Members) Self() Meta { return *m.self.Load() }

// Nodes returns what this node's gossip knows of every other node it ever
// heard of, by ID: a copy.
func (m *Members) Nodes() map[uint64]Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[uint64]Node, len(m.nodes))
	for id, n := range m.nodes {
		out[id] = *n
	}
	return out
}

// Live returns the IDs of the nodes gossip counts live, this one included.
func (m *Members) Live() map[uint64]bool {
	out := map[uint64]bool{m.cfg.NodeID: true}
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, n := range m.nodes {
		if n.Live {
			out[id] = true
		}
	}
	return out
}

// Shutdown stops gossiping, without a leave message: to the others this
// node fails (a restart is back within the suspicion timeout; a stop for
// good is found dead). It shuts the Transport down.
func (m *Members) Shutdown() {
	_ = m.list.Shutdown()
}

// delegate is Members as memberlist's Delegate, EventDelegate and
// AliveDelegate. memberlist calls them on its goroutines, the events with
// its node lock held: each takes at most Members.mu.
type delegate Members

func (d *delegate) NodeMeta(limit int) []byte {
	b := *(*Members)(d).meta.Load()
	if len(b) > limit {
		return nil // setMeta keeps it within memberlist.MetaMaxSize
	}
	return b
}

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// NotifyAlive refuses a node that is not allowed (MembersConfig.Allow), or
// whose name is not a node ID.
func (d *delegate) NotifyAlive(n *memberlist.Node) error {
	id, err := strconv.ParseUint(n.Name, 10, 64)
	if err != nil || id == 0 {
		return fmt.Errorf("gossip: %q is not a node ID", n.Name)
	}
	if id != d.cfg.NodeID && d.cfg.Allow != nil && !d.cfg.Allow(id) {
		return fmt.Errorf("gossip: node %d is not a member of this cluster", id)
	}
	return nil
}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.note(n, true) }
func (d *delegate) NotifyLeave(n *memberlist.Node)  { d.note(n, false) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.note(n, true) }

// note records what memberlist says of n.
func (d *delegate) note(n *memberlist.Node, live bool) {
	id, err := strconv.ParseUint(n.Name, 10, 64)
	if err != nil || id == d.cfg.NodeID {
		return
	}
	var meta Meta
	if len(n.Meta) > 0 {
		if err := json.Unmarshal(n.Meta, &meta); err != nil {
			d.cfg.Logger.Warn("gossip: unreadable node meta", "member", id, "err", err)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	nn := &Node{ID: id, Live: live, Meta: meta}
	if old := d.nodes[id]; old != nil && len(n.Meta) == 0 {
		nn.Meta = old.Meta
	}
	d.nodes[id] = nn
}

// logWriter turns memberlist's log lines ("[LEVEL] memberlist: ...") into
// slog records at their level.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	level := slog.LevelInfo
	for tag, l := range map[string]slog.Level{"[DEBUG]": slog.LevelDebug, "[INFO]": slog.LevelInfo, "[WARN]": slog.LevelWarn, "[ERR]": slog.LevelError} {
		if i := bytes.Index(p, []byte(tag)); i >= 0 {
			level, line = l, string(bytes.TrimSpace(p[i+len(tag):]))
			break
		}
	}
	w.log.Log(context.Background(), level, line, "component", "gossip")
	return len(p), nil
}

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.AliveDelegate = (*delegate)(nil)
	_ io.Writer                = (*logWriter)(nil)
)
