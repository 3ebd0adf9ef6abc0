// Package mrtest runs a whole multi-node, multi-group Flotilla cluster in
// one goroutine: Hosts in Manual mode, in-memory stores that can lose
// unsynced writes, an in-memory network delivered by hand, and ticks driven
// by the test. Nothing here sleeps or starts a goroutine, so a scenario
// produces the same outputs every time.
//
// Use it from tests of the engine and of anything built on it; the
// datadriven scenarios under multiraft/testdata are written against it.
package mrtest

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"

	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// Options configure a Cluster. Zero values take the defaults.
type Options struct {
	// Nodes is the number of nodes, with IDs 1..Nodes. Default 3.
	Nodes int
	// Groups is the number of groups, with IDs 1..Groups, each replicated
	// on every node. Default 1.
	Groups int
	// ElectionTicks and HeartbeatTicks as in multiraft.Config; defaults 10
	// and 1.
	ElectionTicks, HeartbeatTicks int
	// SnapshotEntries as in multiraft.Config; default 1000.
	SnapshotEntries uint64
	// CompactionOverhead as in multiraft.Config; default 10.
	CompactionOverhead uint64
	// Logger; default discards.
	Logger *slog.Logger
	// DisableProposalForwarding as in multiraft.Config.
	DisableProposalForwarding bool
	// DisableFailover as in multiraft.Config: groups whose leader went
	// silent wait for raft's election timeout.
	DisableFailover bool
	// Quiesce as in multiraft.Config: idle groups stop ticking; the
	// planted bugs as there too.
	Quiesce, QuiesceIgnoringLiveness, QuiesceWithLaggards, QuiesceOnlyMatchedFollower bool
	// BootLeader, if set, names each new group's expected leader
	// (multiraft.GroupStart.Leader): the other replicas start quiesced
	// under it. Nodes start their groups with one StartGroups call.
	BootLeader func(group uint64) uint64
	// MaxStartCampaigns, MaxCatchUps and LivenessStretch as in
	// multiraft.Config.
	MaxStartCampaigns, MaxCatchUps, LivenessStretch int
	// Unannounced as in multiraft.Config: the nodes ping no peer until
	// their Host's Announce.
	Unannounced bool
	// QueueCap as in transport.MemOptions: each peer lane's capacity in
	// messages (more in one delivery round are dropped). Default 4096.
	QueueCap int
}

// Cluster is a set of Hosts on one in-memory network. Not safe for
// concurrent use: one goroutine drives it.
type Cluster struct {
	Opts  Options
	Net   *transport.MemNetwork
	Hosts map[uint64]*multiraft.Host
	// Stores survive crashes (minus their unsynced writes).
	Stores map[uint64]*storage.Mem
	// SMs are the state machines, by node then group. A crash replaces
	// them with empty ones, as a process restart would.
	SMs map[uint64]map[uint64]*KV

	members []uint64
	// joined are nodes added after bootstrap: they start their groups with
	// no members and wait for the leader's log.
	joined map[uint64]bool
}

// NewCluster builds and starts a cluster. No leader is elected yet: call
// Campaign or tick past an election timeout.
func NewCluster(o Options) (*Cluster, error) {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Groups == 0 {
		o.Groups = 1
	}
	if o.ElectionTicks == 0 {
		o.ElectionTicks = 10
	}
	if o.HeartbeatTicks == 0 {
		o.HeartbeatTicks = 1
	}
	if o.SnapshotEntries == 0 {
		o.SnapshotEntries = 1000
	}
	if o.CompactionOverhead == 0 {
		o.CompactionOverhead = 10
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	c := &Cluster{
		Opts:   o,
		Net:    transport.NewMemNetwork(transport.MemOptions{Manual: true, QueueCap: o.QueueCap}),
		Hosts:  make(map[uint64]*multiraft.Host),
		Stores: make(map[uint64]*storage.Mem),
		SMs:    make(map[uint64]map[uint64]*KV),
		joined: make(map[uint64]bool),
	}
	for id := uint64(1); id <= uint64(o.Nodes); id++ {
		c.members = append(c.members, id)
		c.Stores[id] = storage.NewMem()
	}
	for _, id := range c.members {
		if err := c.start(id); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Nodes returns the node IDs, ascending.
func (c *Cluster) Nodes() []uint64 { return append([]uint64(nil), c.members...) }

func (c *Cluster) start(id uint64) error {
	tr := c.Net.Transport(id)
	for _, p := range c.members {
		if p != id {
			tr.AddPeer(p, "")
		}
	}
	h, err := multiraft.NewHost(multiraft.Config{
		NodeID:             id,
		Store:              c.Stores[id],
		Transport:          tr,
		Manual:             true,
		ElectionTicks:      c.Opts.ElectionTicks,
		HeartbeatTicks:     c.Opts.HeartbeatTicks,
		SnapshotEntries:    c.Opts.SnapshotEntries,
		CompactionOverhead: c.Opts.CompactionOverhead,
		Logger:             c.Opts.Logger,

		DisableProposalForwarding:  c.Opts.DisableProposalForwarding,
		DisableFailover:            c.Opts.DisableFailover,
		Quiesce:                    c.Opts.Quiesce,
		QuiesceIgnoringLiveness:    c.Opts.QuiesceIgnoringLiveness,
		QuiesceWithLaggards:        c.Opts.QuiesceWithLaggards,
		QuiesceOnlyMatchedFollower: c.Opts.QuiesceOnlyMatchedFollower,
		MaxStartCampaigns:          c.Opts.MaxStartCampaigns,
		MaxCatchUps:                c.Opts.MaxCatchUps,
		LivenessStretch:            c.Opts.LivenessStretch,
		Unannounced:                c.Opts.Unannounced,
	})
	if err != nil {
		return err
	}
	c.Hosts[id] = h
	c.SMs[id] = make(map[uint64]*KV)
	initial := c.members
	if c.joined[id] {
		initial = nil
	}
	starts := make([]multiraft.GroupStart, 0, c.Opts.Groups)
	for g := uint64(1); g <= uint64(c.Opts.Groups); g++ {
		sm := NewKV()
		c.SMs[id][g] = sm
		st := multiraft.GroupStart{ID: g, Members: initial, SM: sm}
		if c.Opts.BootLeader != nil {
			st.Leader = c.Opts.BootLeader(g)
		}
		starts = append(starts, st)
	}
	return h.StartGroups(starts)
}

// AddNode starts a new node that joins every group empty; it takes part
// once a membership change adds it.
func (c *Cluster) AddNode(id uint64) error {
	if _, ok := c.Stores[id]; ok {
		return fmt.Errorf("mrtest: node %d exists", id)
	}
	c.members = append(c.members, id)
	c.joined[id] = true
	c.Stores[id] = storage.NewMem()
	return c.start(id)
}

// Tick ticks every running host once, in node order.
func (c *Cluster) Tick() {
	for _, id := range c.members {
		if h := c.Hosts[id]; h != nil {
			h.Tick()
		}
	}
}

// Process runs one cycle on every running host and delivers what they
// sent. It returns how much happened (groups processed plus messages
// delivered); 0 means the cluster is quiet.
func (c *Cluster) Process() int {
	n := 0
	for _, id := range c.members {
		if h := c.Hosts[id]; h != nil {
			n += h.Process()
		}
	}
	return n + c.Net.Deliver()
}

// Stabilize processes and delivers until the cluster is quiet, at most
// 10,000 rounds (then it returns an error: something keeps talking).
func (c *Cluster) Stabilize() error {
	for i := 0; i < 10000; i++ {
		if c.Process() == 0 {
			return nil
		}
	}
	return errors.New("mrtest: cluster did not stabilize in 10000 rounds")
}

// TickStable ticks n times, stabilizing after each tick.
func (c *Cluster) TickStable(n int) error {
	for i := 0; i < n; i++ {
		c.Tick()
		if err := c.Stabilize(); err != nil {
			return err
		}
	}
	return nil
}

// Campaign makes node's replica of group campaign, and stabilizes.
func (c *Cluster) Campaign(node, group uint64) error {
	if err := c.Hosts[node].Campaign(group); err != nil {
		return err
	}
	return c.Stabilize()
}

// Leader returns the leader of group as the majority of running nodes see
// it, or 0.
func (c *Cluster) Leader(group uint64) uint64 {
	votes := map[uint64]int{}
	for _, h := range c.Hosts {
		if h == nil {
			continue
		}
		if l, _, err := h.Leader(group); err == nil && l != 0 {
			votes[l]++
		}
	}
	for l, n := range votes {
		if n > len(c.members)/2 {
			return l
		}
	}
	return 0
}

// Propose proposes cmd on node and drives the cluster until the proposal
// completes (at most rounds ticks). It returns the result.
func (c *Cluster) Propose(node, group uint64, cmd string) (string, error) {
	f := c.Hosts[node].ProposeAsync(group, []byte(cmd))
	for i := 0; i < 100; i++ {
		if err := c.Stabilize(); err != nil {
			return "", err
		}
		select {
		case <-f.Done():
			res, err := f.Result()
			return string(res), err
		default:
		}
		c.Tick()
	}
	return "", errors.New("mrtest: proposal did not complete within 100 ticks")
}

// Read reads key linearizably on node, driving the cluster until it
// completes (at most 100 ticks).
func (c *Cluster) Read(node, group uint64, key string) (string, error) {
	f := c.Hosts[node].ReadAsync(group, []byte(key))
	for i := 0; i < 100; i++ {
		if err := c.Stabilize(); err != nil {
			return "", err
		}
		select {
		case <-f.Done():
			v, err := f.Result()
			return string(v), err
		default:
		}
		c.Tick()
	}
	return "", errors.New("mrtest: read did not complete within 100 ticks")
}

// ReadMany starts a linearizable read of key on each of nodes at once,
// then delivers messages until nothing moves, without ticking. It returns
// each node's value, or "pending" for a read that has not completed: a
// read round that the leader dropped would complete only by timing out,
// many ticks later.
func (c *Cluster) ReadMany(nodes []uint64, group uint64, key string) ([]string, error) {
	fs := make([]multiraft.ReadFuture, len(nodes))
	for i, n := range nodes {
		fs[i] = c.Hosts[n].ReadAsync(group, []byte(key))
	}
	if err := c.Stabilize(); err != nil {
		return nil, err
	}
	out := make([]string, len(nodes))
	for i, f := range fs {
		select {
		case <-f.Done():
			v, err := f.Result()
			if err != nil {
				out[i] = "error: " + err.Error()
			} else {
				out[i] = fmt.Sprintf("%q", v)
			}
		default:
			out[i] = "pending"
		}
	}
	return out, nil
}

// Crash stops node without flushing, drops its unsynced writes and its
// state machines.
func (c *Cluster) Crash(node uint64) {
	if h := c.Hosts[node]; h != nil {
		h.Stop()
		c.Hosts[node] = nil
	}
	c.Net.Transport(node).Close()
	c.Net.Forget(node)
	c.Stores[node].Crash()
	c.SMs[node] = nil
}

// Restart starts a crashed node again from its store.
func (c *Cluster) Restart(node uint64) error {
	if c.Hosts[node] != nil {
		return fmt.Errorf("mrtest: node %d is running", node)
	}
	return c.start(node)
}

// Status returns one line per group and node: leader, term, commit,
// applied, for golden-file tests.
func (c *Cluster) Status() string {
	var out string
	for g := uint64(1); g <= uint64(c.Opts.Groups); g++ {
		out += fmt.Sprintf("group %d:", g)
		for _, id := range c.members {
			h := c.Hosts[id]
			if h == nil {
				out += fmt.Sprintf(" n%d=down", id)
				continue
			}
			s, err := h.GroupStatus(g)
			if err != nil {
				out += fmt.Sprintf(" n%d=%v", id, err)
				continue
			}
			out += fmt.Sprintf(" n%d[%s lead=%d term=%d commit=%d applied=%d]",
				id, shortRole(s.Role), s.Leader, s.Term, s.Commit, s.Applied)
		}
		out += "\n"
	}
	return out
}

func shortRole(r string) string {
	switch r {
	case "StateLeader":
		return "L"
	case "StateCandidate":
		return "C"
	case "StatePreCandidate":
		return "P"
	default:
		return "F"
	}
}

// Close stops every host and transport.
func (c *Cluster) Close() {
	ids := append([]uint64(nil), c.members...)
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		if h := c.Hosts[id]; h != nil {
			h.Stop()
		}
		c.Net.Transport(id).Close()
	}
}
