package multiraft

// Node liveness and failover.
//
// A frozen or dead node leads its groups until each follower's election
// timeout runs out, 1 to 2 election timeouts (raft randomizes them), and
// with CheckQuorum a follower refuses votes while it thinks its leader
// lives. For a client, every group the node led is unavailable for that
// long. But the node's silence is visible much sooner, and once for all of
// its groups: a leader sends every follower a heartbeat each HeartbeatTicks
// (coalesced per node pair), so a peer this node has heard nothing from for
// LivenessTicks is down.
//
// Failover. On each tick, a follower whose leader is down forgets it
// (raft's ForgetLeader: a leaderless follower grants pre-votes at once),
// and the one survivor chosen for the group campaigns, again every
// failoverRetryTicks while the group has no leader: the live voters other
// than the down leader, in ID order, indexed by the group ID (so a dead
// node's groups spread over the survivors, and the survivors agree without
// talking). With PreVote, a campaign that does not win a quorum of
// pre-votes changes no term. So a one-way black hole from a live leader to
// one follower (seed 002) costs nothing: that follower forgets and may
// campaign, but the other followers still hear the leader and refuse their
// pre-votes (they are in the leader's lease), and the leader keeps its
// term. A leader is deposed only when a quorum of its followers stopped
// hearing it. The price: a leader that stalls for the liveness timeout (a
// long GC pause, an fsync stall, a starved process) loses its groups at
// that timeout instead of at the election timeout. The failover is off
// unless PreVote and CheckQuorum are both on, which it relies on.
//
// An overloaded node. A node whose tick fires a whole interval late (its
// goroutines wait for a CPU) reads its peers' pings late too, and would
// count live peers down: then every range it follows under them wakes and
// campaigns, which loads every node more. Starting 100,000 ranges on 3
// nodes of one 2-vCPU machine fell into that loop (50,000 failovers in 5
// minutes, and no settling; BENCHMARKS.md, "100,000 ranges again"). So
// the timeout stretches while this node is behind, by one LivenessTicks
// for each late tick, up to Config.LivenessStretch times, and shrinks by
// one for each LivenessTicks of ticks on time (the "local health" of
// SWIM's Lifeguard extension, which memberlist uses). The price: a peer
// that dies while this node is overloaded is found later, by up to
// LivenessStretch-1 liveness timeouts of this node's ticks (more in wall
// time: a late ticker drops ticks). A peer found down stays down until it
// is heard from: a stretch that grows does not revive it. A stretched
// node also counts a dead follower live for longer, so a leader may
// quiesce with a dead follower among those holding its last entry (it
// steps down once it counts it down, as before), and nodes with
// different stretches may choose different survivors for a 5-voter
// group (raft's election timeout is then the fallback). Coalesced group
// ticks (tick) are not the signal: they are routine under client load,
// and with them failover under load took 3.2-3.9 s instead of 1.2 s
// (BENCHMARKS.md, "An overloaded node's liveness").
//
// What "heard" means is any message batch from the peer (HandleBatch):
// heartbeats, appends, responses, and the ping every node sends every peer
// it has no heartbeat for every PingTicks, twice per liveness timeout
// (transport.Transport.FlushHeartbeats) — followers of a group
// never message each other, and without the pings two live followers
// would count each other down and both campaign. It is kept in ticks of
// this Host, so the failover is as deterministic as the rest of the engine
// (Manual mode, the simulation).

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/transport"
)

// livenessFloor is the shortest wall-clock silence counted as a death
// when ticks are very short (Config.LivenessTicks).
const livenessFloor = 300 * time.Millisecond

// failoverRetryTicks spaces the chosen survivor's campaigns while its
// group has no leader.
const failoverRetryTicks = 2

// liveness records, per peer, the tick at which this Host last heard from
// it. heard is copy-on-write: HandleBatch reads it with no lock; mu (a
// leaf) serializes adding a peer.
type liveness struct {
	ticks atomic.Int64 // ticks since the Host started
	heard atomic.Pointer[map[uint64]*peerLive]
	// first is the tick at which the first peer was heard from (valid
	// once heard holds a peer): when this node joined the others.
	first atomic.Int64
	// stretch is the factor of LivenessTicks a peer must be silent for to
	// be down, 1..Config.LivenessStretch (see "An overloaded node").
	// Written by the tick alone (judge); calm counts the ticks kept up
	// since it last moved.
	stretch atomic.Int64
	calm    int
	mu      sync.Mutex
}

// peerLive is what liveness knows of one peer.
type peerLive struct {
	at atomic.Int64 // the tick at which it was last heard from
	// downMark is at+1 once the peer was found down with nothing heard
	// since: it stays down until it is heard from, whatever the stretch
	// does meanwhile (a stretch that grows must not bring a silent peer
	// back to life, which would undo its failover and, when the stretch
	// shrinks again, wake every range this node leads a second time).
	downMark atomic.Int64
}

// heardAt moves at forward to tick: never back, so that a note preempted
// between reading the tick and storing it cannot bring back an older tick
// (and with it a downMark set since).
func (p *peerLive) heardAt(tick int64) {
	for {
		old := p.at.Load()
		if tick <= old || p.at.CompareAndSwap(old, tick) {
			return
		}
	}
}

func (l *liveness) init() {
	l.heard.Store(&map[uint64]*peerLive{})
	l.stretch.Store(1)
}

// judge moves the stretch at a tick: up by one if the tick came late,
// down by one after every period ticks on time; within 1..most. Only the
// tick calls it.
func (l *liveness) judge(behind bool, period, most int64) {
	s := l.stretch.Load()
	switch {
	case behind:
		l.calm = 0
		l.stretch.Store(min(s+1, most))
	case s > 1:
		if l.calm++; int64(l.calm) >= period {
			l.calm = 0
			l.stretch.Store(s - 1)
		}
	}
}

// note records that a message batch came from peer now.
func (l *liveness) note(peer uint64) {
	if p := (*l.heard.Load())[peer]; p != nil {
		p.heardAt(l.ticks.Load())
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	m := *l.heard.Load()
	if p := m[peer]; p != nil {
		p.heardAt(l.ticks.Load())
		return
	}
	next := make(map[uint64]*peerLive, len(m)+1)
	for k, v := range m {
		next[k] = v
	}
	p := &peerLive{}
	p.at.Store(l.ticks.Load())
	next[peer] = p
	if len(m) == 0 {
		l.first.Store(p.at.Load())
	}
	l.heard.Store(&next)
}

// silent returns for how many ticks peer has been silent, and false if it
// was never heard from since this Host started (nothing to judge by).
func (l *liveness) silent(peer uint64) (int64, bool) {
	p := (*l.heard.Load())[peer]
	if p == nil {
		return 0, false
	}
	return l.ticks.Load() - p.at.Load(), true
}

// down reports whether peer is down: silent for limit ticks times the
// stretch, or found down before and not heard from since (downMark).
func (l *liveness) down(peer uint64, limit int64) bool {
	p := (*l.heard.Load())[peer]
	if p == nil {
		return false
	}
	at := p.at.Load()
	if p.downMark.Load() == at+1 {
		return true
	}
	if l.ticks.Load()-at < limit*l.stretch.Load() {
		return false
	}
	p.downMark.Store(at + 1)
	return true
}

// Announce makes a Host started with Config.Unannounced ping its peers
// (every PingTicks, the first at its next tick), and flush its coalesced
// heartbeats, from its next tick on: call it once
// the node serves. Idempotent; safe from any goroutine.
func (h *Host) Announce() { h.announced.Store(true) }

// PeerDown reports whether this node has heard nothing from node id for
// Config.LivenessTicks or longer, times the stretch while this node is
// behind (LivenessStretch); a peer found down stays down until it is
// heard from, even if the stretch grows meanwhile. A node never heard
// from since this Host started is not reported down. This node itself is
// never down.
func (h *Host) PeerDown(id uint64) bool {
	if id == h.cfg.NodeID {
		return false
	}
	return h.live.down(id, int64(h.cfg.LivenessTicks))
}

// LivenessStretch returns the factor by which the liveness timeout is
// stretched now: 1 while this node keeps up, up to
// Config.LivenessStretch while it is behind.
func (h *Host) LivenessStretch() int { return int(h.live.stretch.Load()) }

// Failovers counts the times a local follower forgot a leader that
// liveness found down.
func (h *Host) Failovers() uint64 { return h.metrics.failovers.Load() }

// checkLiveness is the failover step of a group on a tick. Called by the
// owner after the tick's Tick calls. (See the top of this file.)
func (g *group) checkLiveness() {
	h := g.h
	if h.cfg.DisableFailover || h.cfg.DisablePreVote || h.cfg.DisableCheckQuorum {
		return
	}
	if g.failoverFrom != 0 && !h.PeerDown(g.failoverFrom) {
		g.failoverFrom = 0 // it came back, or a leader was found
	}
	lead := g.lead // raft's own view changes with the next Ready
	if g.role == raft.StateFollower && lead != 0 && lead != h.cfg.NodeID && h.PeerDown(lead) {
		g.failoverFrom, g.failoverTick = lead, g.ticks-failoverRetryTicks
		g.pokes, g.pokeTick = 0, 0
		lead = 0
		_ = g.rn.ForgetLeader()
		h.metrics.failovers.Add(1)
		silent, _ := h.live.silent(g.failoverFrom)
		h.log.Info("leader not heard from; forgetting it", "group", g.id, "term", g.term, "leader", g.failoverFrom,
			"silent_ticks", silent)
	}
	if g.failoverFrom == 0 || lead != 0 {
		return
	}
	g.pokeOldLeader()
	if g.ticks-g.failoverTick < failoverRetryTicks {
		return
	}
	if g.role != raft.StateFollower && g.role != raft.StatePreCandidate {
		return
	}
	if g.chosenSurvivor() == h.cfg.NodeID {
		g.failoverTick = g.ticks
		_ = g.rn.Campaign()
	}
}

// maxPokes bounds the wake messages a follower sends the leader it forgot
// (pokeOldLeader), an election timeout apart: enough for a lost one, few
// enough that a lasting one-way cut (the leader unheard here, this node
// heard there) costs the leader nothing after them.
const maxPokes = 3

// pokeOldLeader sends the leader this follower forgot (failoverFrom) a
// message saying so (forgotCtx) on forgetting it, and again every election
// timeout while the group has no leader, maxPokes in all. The leader's node
// may be live but cut off one way: this node stopped hearing it while it
// still hears this node. If its replica is quiesced, nothing else may wake
// it (a node that goes down wakes only the ranges led there that it leaves
// without a live quorum, and this node still counts live there). The
// leader wakes for it only if, without this follower, the voters it
// counts live are no longer a quorum (benign); it then stays awake two
// election timeouts (holdAwake), and CheckQuorum steps it down once the
// pokes stop, which keeps the partition rule's bound near the liveness
// timeout plus two election timeouts (quiesce.go). They travel on the
// coalesced heartbeat lane, droppable: a node whose ranges all fail over
// at once sends one batch per peer, not one message per range.
func (g *group) pokeOldLeader() {
	h := g.h
	if !h.cfg.Quiesce || g.failoverFrom == 0 || g.pokes >= maxPokes ||
		(g.pokes > 0 && g.ticks-g.pokeTick < uint64(h.cfg.ElectionTicks)) {
		return
	}
	g.pokes++
	g.pokeTick = g.ticks
	h.tr.Send([]transport.Envelope{{Group: g.id, Msg: raftpb.Message{
		Type: raftpb.MsgHeartbeatResp, From: h.cfg.NodeID, To: g.failoverFrom, Term: g.term, Context: forgotCtx,
	}}})
}

// forgetsLeader reports whether m tells this follower that its leader
// gave up its leadership: a pre-vote from the leader for a term past the
// one it leads. A leader never campaigns, and its own pre-votes for the
// term it leads came before it led, so only a leader that stepped down
// (CheckQuorum, having lost its quorum) sends one. The follower then
// forgets it (raft's ForgetLeader) before stepping m, and grants the
// pre-vote at once. Without this it refused it while its lease of the
// stepped-down leader ran, and the group had no leader for up to two
// election timeouts more: in the simulation, a range whose leader lost
// its quorum to two pauses stayed leaderless 320 ms past the second
// pause's end (bound 312 ms; TestPausesFailOver, seed 19 once start
// campaigns placed every leader on one node). Only with the failover on.
func (g *group) forgetsLeader(m *raftpb.Message) bool {
	h := g.h
	if m.Type != raftpb.MsgPreVote || m.From == h.cfg.NodeID ||
		h.cfg.DisableFailover || h.cfg.DisablePreVote || h.cfg.DisableCheckQuorum {
		return false
	}
	st := g.rn.BasicStatus() // raft's view now: this round may have moved it
	return st.RaftState == raft.StateFollower && st.Lead == m.From && m.Term > st.Term
}

// chosenSurvivor returns the voter that campaigns for the group when its
// leader is down: among the voters this node thinks live, in ID order, the
// one at the group ID's position (0: none).
func (g *group) chosenSurvivor() uint64 {
	var live []uint64
	for _, v := range g.log.cs.Voters {
		if v != g.failoverFrom && !g.h.PeerDown(v) {
			live = append(live, v)
		}
	}
	if len(live) == 0 {
		return 0
	}
	slices.Sort(live)
	return live[g.id%uint64(len(live))]
}
