package multiraft

// Quiescence: an idle group costs nothing per tick (Config.Quiesce).
//
// The rule. On a tick, a leader quiesces its group when nothing is in
// flight (no proposal, read, transfer or membership change waiting), its
// log is committed and applied through its last entry, the configuration
// is not joint, every follower that node liveness counts live has
// acknowledged that last entry, and a quorum of the voters (itself
// included) is live. It sends each follower a quiesce heartbeat (a
// MsgHeartbeat whose context is quiesceCtx, committing the last entry) and
// leaves the active set: the tick walks only active groups, so a quiesced
// group gets no tick, no timer, no heartbeat and no map lookup. A follower
// that steps a quiesce heartbeat from its leader, at the leader's term,
// with its own log committed through that same last entry and nothing of
// its own to do, quiesces too (its election timer, reset by that
// heartbeat, stops). A follower that does not match stays active and is
// caught up by the leader on its next message; but one that holds more
// than the heartbeat commits (the leader did not hear its
// acknowledgements: cut off from it one way, it counts it down and
// lagging, and sends it nothing more until it hears it again) holds still
// behind it, as below, rather than time out. One that matches but waits
// for something of its own (a proposal its leader never got) stays active
// to time it out, its election timer stopped (leaderQuiesced), and
// quiesces once idle. One exception: a replica
// restarted from its state starts quiesced (restart.go) and may stay so
// behind its leader, whose paced catch-up (catchup.go) then reaches it.
//
// Waking. Anything for the group wakes it: a message other than a quiesce
// heartbeat or its response, a proposal, a read, a transfer, a campaign, a
// membership change, a snapshot report. A follower woken by anything but
// its leader sends its leader a heartbeat response, which wakes the leader
// (so a follower that will want heartbeats gets them before its election
// timer runs out). Node liveness (liveness.go) does the rest, on every
// tick and only for the nodes whose state changed: when a node goes down,
// every quiesced group it leads wakes here (its followers then forget it
// and elect, as for an active group: the failover), and so does every
// quiesced group this node leads that no longer has a quorum counted live
// (it steps down; wakeLostQuorumLocked); when a node comes back, the
// quiesced groups this node leads wake
// a few at a time, those it lacks entries of first, and catch it up
// (catchup.go).
//
// Partitions. A quiesced leader cut off from its followers is a leader in
// name only: it serves nothing without waking, since every read is a
// ReadIndex round and every write a proposal, and both need a quorum's
// answer after the wake. Its followers' liveness counts its node down and
// they elect a new leader; on its side liveness counts the followers down,
// wakes the group, and CheckQuorum steps it down within an election
// timeout of ticks. Cut off one way (it still hears a follower that no
// longer hears it), it may count a quorum live and sleep on: that
// follower, forgetting it, tells it so (pokeOldLeader, forgotCtx), and if
// the others are no quorum it wakes and stays awake two election timeouts
// (holdAwake) for CheckQuorum, which steps it down within two election
// timeouts of the last poke. So no range stays led on both sides for longer than the
// liveness timeout plus an election timeout, and neither side's leader
// serves anything stale meanwhile. A leader does not quiesce without a live
// quorum, so it keeps ticking (and steps down) when cut off.
//
// Lock order: Host.quiet.mu, then Host.act.mu or a group's in.mu; Host.mu,
// then Host.act.mu (StartGroup). They are held only for bookkeeping, never
// across a raft call.

import (
	"bytes"
	"cmp"
	"maps"
	"slices"
	"sync"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"

	"github.com/flotilla/flotilla/transport"
)

// quiesceCtx is the context of a quiesce heartbeat and of its response
// (raft echoes it); the transport coalesces them like other heartbeats. A
// ReadIndex context is 16 bytes (readContext), so the two never meet; a
// leader's raft finds no pending read for it and ignores the response's
// acknowledgement.
var quiesceCtx = transport.QuiesceContext

// wakeCtx marks the heartbeat response a woken follower sends its leader
// to wake it (wake): unlike an ordinary response, it is never benign.
var wakeCtx = []byte("flotilla.wake")

// forgotCtx marks the heartbeat response a follower sends the leader it
// forgot because liveness counts its node down (pokeOldLeader). It wakes
// a quiesced leader that, without that follower, counts no quorum live
// (benign); the leader then stays awake two election timeouts (holdAwake),
// long enough for CheckQuorum to step it down if its followers no longer
// hear it. Anywhere else it is benign.
var forgotCtx = transport.ForgotContext

// isQuiesce reports whether m is a quiesce heartbeat or its response.
func isQuiesce(m *raftpb.Message) bool {
	return (m.Type == raftpb.MsgHeartbeat || m.Type == raftpb.MsgHeartbeatResp) && bytes.Equal(m.Context, quiesceCtx)
}

// activeSet holds the groups that tick: every group but the quiesced, in
// group ID order (the order the tick queues them in, as before quiescence:
// the simulation replays it). A change costs a move of the active groups
// only, which are few when many are quiesced.
type activeSet struct {
	mu struct {
		sync.Mutex
		gs []*group
	}
}

// add makes g tick. Idempotent.
func (a *activeSet) add(g *group) {
	a.mu.Lock()
	defer a.mu.Unlock()
	i, found := slices.BinarySearchFunc(a.mu.gs, g.id, byID)
	if !found {
		a.mu.gs = slices.Insert(a.mu.gs, i, g)
	}
}

// remove stops g ticking. Idempotent.
func (a *activeSet) remove(g *group) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if i, found := slices.BinarySearchFunc(a.mu.gs, g.id, byID); found && a.mu.gs[i] == g {
		a.mu.gs = slices.Delete(a.mu.gs, i, i+1)
	}
}

func byID(g *group, id uint64) int { return cmp.Compare(g.id, id) }

// snapshot appends the active groups to gs.
func (a *activeSet) snapshot(gs []*group) []*group {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append(gs, a.mu.gs...)
}

// quietIndex holds the quiesced groups by the leader they quiesced under,
// and the liveness each node had at the last tick, to wake the right
// groups when it changes.
type quietIndex struct {
	mu struct {
		sync.Mutex
		byLeader map[uint64]map[uint64]*group
		n        int
		down     map[uint64]bool // peers found down at the last tick
		// epoch counts the ticks at which some peer's liveness changed: a
		// leader quiesces only if it did not change during its checks.
		epoch uint64
		// startQ holds the new groups this node is to lead that wait for
		// their turn to campaign, in start order; starting, those that
		// campaigned and have no leader yet, with the tick they did
		// (startcampaign.go).
		startQ   []*group
		starting map[*group]int64
		// lagging holds, by node, the groups quiesced under this node
		// while that node was down and behind; catchUpQ, those of nodes
		// that came back, waiting for their turn to wake; catchingUp,
		// those woken for it, with the tick they were (catchup.go).
		lagging    map[uint64]map[uint64]*group
		catchUpQ   []*group
		catchingUp map[*group]int64
		// helloQ holds the replicas restarted quiesced that wait for
		// their turn to ask for a heartbeat; helloing, those that asked,
		// with the tick they did (restart.go).
		helloQ   []*group
		helloing map[*group]int64
	}
}

// livenessEpoch returns the count of liveness changes so far (quiesce).
func (h *Host) livenessEpoch() uint64 {
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	return h.quiet.mu.epoch
}

// Quiesced returns how many local replicas are quiesced.
func (h *Host) Quiesced() int {
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	return h.quiet.mu.n
}

// quiesce takes g out of the active set under leader. It refuses (false)
// when leader is another node that liveness counts down (that node's
// groups were woken at the tick that found it down, and g must not miss
// it), or, for this node's own leadership, when liveness changed since
// epoch (livenessEpoch, read before the leader's checks), or a node of
// lagging (the followers down and behind) is not yet recorded down
// (laggingLocked). Called by g's owner.
func (h *Host) quiesce(g *group, leader, epoch uint64, lagging []uint64) bool {
	if !h.quiesceUnder(g, leader, epoch, lagging) {
		return false
	}
	if len(lagging) == 0 && g.applied >= g.log.lastIndex() {
		// This replica applied every entry it holds and (a leader) every
		// follower holds them too: none is read again but from the store
		// (by a replica that lost its log, a new one, or this one leading
		// later a follower that is behind), so the cache lets them go. A
		// quiesced replica's entries were 0.15 KiB of its memory
		// (BENCHMARKS.md, "Quiescence: the idle floor and memory, later").
		// With a lagging follower they stay, for its catch-up; and a
		// follower that quiesced before it applied keeps those it is about
		// to apply.
		h.logSrc.cache.drop(g.id)
	}
	// A quiesced replica has nothing in flight; maps grown by a burst
	// keep their buckets when emptied, so they go (made again on use).
	// Here, not in quiesceLocked: the owner runs this, and only the
	// owner touches them.
	if len(g.proposals) == 0 {
		g.proposals = nil
	}
	if len(g.reads) == 0 {
		g.reads = nil
	}
	return true
}

// quiesceUnder is quiesce's part under h.quiet.mu: it checks liveness and
// the lagging followers, and records g as quiesced.
func (h *Host) quiesceUnder(g *group, leader, epoch uint64, lagging []uint64) bool {
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	if leader != h.cfg.NodeID && h.PeerDown(leader) {
		return false
	}
	if leader == h.cfg.NodeID && epoch != h.quiet.mu.epoch {
		// Liveness changed since the leader's checks (the tick runs
		// alongside the workers): they may not hold any more.
		return false
	}
	if !h.laggingLocked(g, lagging) {
		return false
	}
	h.quiesceLocked(g, leader)
	h.act.remove(g)
	return true
}

// quiesceLocked records g as quiesced under leader. Under raft.None (a
// group waiting for its turn to campaign, startcampaign.go) it is in no
// byLeader set: liveness never wakes it. h.quiet.mu is held.
func (h *Host) quiesceLocked(g *group, leader uint64) {
	if leader != raft.None {
		if h.quiet.mu.byLeader == nil {
			h.quiet.mu.byLeader = make(map[uint64]map[uint64]*group)
		}
		m := h.quiet.mu.byLeader[leader]
		if m == nil {
			m = make(map[uint64]*group)
			h.quiet.mu.byLeader[leader] = m
		}
		m[g.id] = g
	}
	h.quiet.mu.n++
	g.quiesced, g.quietLeader = true, leader
	g.leaderQuiet = false // quiesced itself: a wake starts afresh
	g.st.quiesced.Store(true)
}

// unquiesce puts g back in the active set. Called by g's owner (or by
// removeGroup for a stopped one).
func (h *Host) unquiesce(g *group) {
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	h.unquiesceLocked(g)
	if !g.stopped {
		h.act.add(g)
	}
}

// bootQuiet reports whether new groups may start quiesced under their
// expected leader (GroupStart.Leader): quiescence and the liveness
// failover that wakes them are both on.
func (h *Host) bootQuiet() bool {
	return h.cfg.Quiesce && !h.cfg.DisableFailover && !h.cfg.DisablePreVote && !h.cfg.DisableCheckQuorum
}

// quiesceNew quiesces new group g under leader before it is published
// (StartGroups): no owner runs it yet. If leader is this node, g waits for
// its turn to campaign (startcampaign.go). Otherwise it refuses (false) if liveness
// counts leader down: that change was seen before g existed, and nothing
// would wake g.
func (h *Host) quiesceNew(g *group, leader uint64) bool {
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	if leader == h.cfg.NodeID {
		h.quiesceLocked(g, raft.None) // waits for its turn to campaign
		return true
	}
	if h.quiet.mu.down[leader] || h.PeerDown(leader) {
		return false
	}
	h.quiesceLocked(g, leader)
	return true
}

// unquiesceUnpublished undoes quiesceNew for a group whose start failed.
func (h *Host) unquiesceUnpublished(g *group) {
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	h.unquiesceLocked(g)
}

// bootGraceTicks is how long after this Host first heard from a peer
// another peer never heard from counts as down for the groups quiesced
// under it at their start (GroupStart.Leader): the liveness timeout plus an
// election timeout, for it to start and campaign. Counted from the first
// peer heard, not from this Host's start: a node starting many ranges
// takes a while before it serves its peers, and so do the others.
func (h *Host) bootGraceTicks() int64 {
	return int64(h.cfg.LivenessTicks + h.cfg.ElectionTicks)
}

func (h *Host) unquiesceLocked(g *group) {
	if !g.quiesced {
		return
	}
	if m := h.quiet.mu.byLeader[g.quietLeader]; m != nil {
		delete(m, g.id)
		if len(m) == 0 {
			delete(h.quiet.mu.byLeader, g.quietLeader)
		}
	}
	if g.quietLeader == h.cfg.NodeID {
		h.unlagLocked(g)
	}
	h.quiet.mu.n--
	g.quiesced, g.quietLeader = false, 0
	g.st.quiesced.Store(false)
}

// wakeOnLiveness wakes the quiesced groups liveness says must wake (see
// the top of this file): it compares each peer's state with the last
// tick's. Called by tick, after the tick count moved. It returns the woken
// groups' IDs, appended to ids, for the scheduler.
func (h *Host) wakeOnLiveness(ids []uint64) []uint64 {
	if !h.cfg.Quiesce {
		return ids
	}
	heard := *h.live.heard.Load()
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	if h.quiet.mu.down == nil {
		h.quiet.mu.down = make(map[uint64]bool)
	}
	changed, wakeOwn := false, false
	// In ID order, and the woken groups too (wakeLocked): the simulation
	// replays the order groups are queued in.
	for _, peer := range slices.Sorted(maps.Keys(heard)) {
		down := h.PeerDown(peer)
		if down == h.quiet.mu.down[peer] {
			continue
		}
		h.quiet.mu.down[peer] = down
		changed = true
		switch {
		case down:
			wakeOwn = true
			if !h.cfg.QuiesceIgnoringLiveness {
				ids = h.wakeLocked(peer, ids)
			}
		default:
			h.queueCatchUpLocked(peer)
		}
	}
	if changed {
		h.quiet.mu.epoch++
	}
	if wakeOwn {
		ids = h.wakeLostQuorumLocked(ids)
	}
	// Groups started quiesced under a peer never heard from (StartGroups)
	// wake once the grace is over: that node may never come. Only groups
	// started so are quiesced under a peer not heard from (quiesce needs a
	// message from the leader); they are marked each tick until their
	// owner ran them.
	if len(heard) == 0 || h.live.ticks.Load()-h.live.first.Load() < h.bootGraceTicks() {
		return ids
	}
	unheard := false
	for leader := range h.quiet.mu.byLeader {
		unheard = unheard || (leader != h.cfg.NodeID && heard[leader] == nil)
	}
	if unheard {
		for _, leader := range slices.Sorted(maps.Keys(h.quiet.mu.byLeader)) {
			if leader != h.cfg.NodeID && heard[leader] == nil {
				ids = h.wakeLocked(leader, ids)
			}
		}
	}
	return ids
}

// wakeLocked marks every group quiesced under leader for waking (its owner
// wakes it when it next runs) and appends their IDs to ids.
func (h *Host) wakeLocked(leader uint64, ids []uint64) []uint64 {
	m := h.quiet.mu.byLeader[leader]
	for _, id := range slices.Sorted(maps.Keys(m)) {
		g := m[id]
		g.in.Lock()
		g.in.wake = true
		g.in.Unlock()
		ids = append(ids, id)
	}
	return ids
}

// wakeLostQuorumLocked marks for waking every group quiesced under this
// node whose voters counted live are no longer a quorum (a peer went
// down), and appends their IDs to ids: such a leader must wake to step
// down (the partition rule at the top of this file). The others sleep on:
// they still have a quorum, and nothing of theirs changed. Waking every
// group led here whenever any peer went down (as this did before) made a
// peer's flap cost a wake of every range this node leads: with 100,000
// ranges on 3 nodes, one peer counted down for a moment while all were
// idle woke 60,000 of node 1's replicas (BENCHMARKS.md, "An overloaded
// node's liveness"). Groups queued for a catch-up stay queued. h.quiet.mu
// is held.
func (h *Host) wakeLostQuorumLocked(ids []uint64) []uint64 {
	m := h.quiet.mu.byLeader[h.cfg.NodeID]
	for _, id := range slices.Sorted(maps.Keys(m)) {
		g := m[id]
		if h.liveQuorum(g) {
			continue
		}
		g.in.Lock()
		g.in.wake = true
		g.in.Unlock()
		ids = append(ids, id)
	}
	return ids
}

// liveQuorum reports whether a quorum of g's voters (as last published) is
// counted live here. A quiesced group has no joint configuration.
func (h *Host) liveQuorum(g *group) bool { return h.liveQuorumWithout(g, raft.None) }

// liveQuorumWithout is liveQuorum not counting voter except (raft.None:
// none): the voter that told this leader it forgot it (forgotCtx).
func (h *Host) liveQuorumWithout(g *group, except uint64) bool {
	vp := g.st.voters.Load()
	if vp == nil {
		return false
	}
	live := 0
	for _, v := range *vp {
		if v != except && !h.PeerDown(v) {
			live++
		}
	}
	return live > len(*vp)/2
}

// idle reports whether the replica waits for nothing: no proposal, read,
// transfer or membership change of its own in flight (each of those needs
// ticks to time out, and a quiesced replica gets none).
func (g *group) idle() bool {
	return len(g.proposals) == 0 && len(g.held) == 0 && !g.confPending && g.confRetry == nil && g.confCheck == 0 &&
		len(g.reads) == 0 && len(g.readWaiting) == 0 && len(g.transfers) == 0 && len(g.transferHeld) == 0
}

// maybeQuiesce quiesces g if it is a leader that may (see the rule at the
// top of this file). Called by the owner on a tick, with nothing else to
// do in this round of inputs.
func (g *group) maybeQuiesce() {
	h := g.h
	if !h.cfg.Quiesce || g.quiesced || g.stopped {
		return
	}
	if g.behindQuietLeader() {
		// A follower behind its quiesced leader, done with what kept it
		// awake: it quiesces as it would have on the leader's quiesce
		// heartbeat (nothing came from the leader since, or leaderQuiet
		// would be off).
		if g.idle() && h.quiesce(g, g.lead, 0, nil) {
			g.leaderQuiet = false
			h.metrics.quiesces.Add(1)
		}
		return
	}
	if !g.idle() || g.ticks < g.holdAwake {
		return
	}
	epoch := h.livenessEpoch()
	st := g.rn.BasicStatus()
	if st.RaftState != raft.StateLeader || st.LeadTransferee != raft.None || st.Commit != g.applied {
		return
	}
	cs := &g.log.cs
	if len(cs.VotersOutgoing) > 0 {
		return
	}
	var last uint64
	behind := false
	g.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if id == h.cfg.NodeID {
			last = pr.Match
		}
	})
	if last != st.Commit {
		return
	}
	var lagging []uint64 // followers down and behind: caught up when back (catchup.go)
	g.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if id == h.cfg.NodeID || pr.Match == last || h.cfg.QuiesceWithLaggards {
			return
		}
		if h.PeerDown(id) {
			lagging = append(lagging, id)
		} else {
			behind = true
		}
	})
	if behind {
		return
	}
	live := 0
	for _, v := range cs.Voters {
		if v == h.cfg.NodeID || !h.PeerDown(v) {
			live++
		}
	}
	if live < len(cs.Voters)/2+1 {
		return
	}
	var out []transport.Envelope
	g.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
		if id == h.cfg.NodeID {
			return
		}
		out = append(out, transport.Envelope{Group: g.id, Msg: raftpb.Message{
			Type: raftpb.MsgHeartbeat, From: h.cfg.NodeID, To: id, Term: st.Term,
			// As raft's own heartbeats: never past what the follower holds.
			Commit:  min(pr.Match, st.Commit),
			Context: quiesceCtx,
		}})
	})
	if !h.quiesce(g, h.cfg.NodeID, epoch, lagging) {
		return
	}
	h.metrics.quiesces.Add(1)
	// Sent after this cycle's Ready (processCycle): a follower quiesces
	// only if the quiesce heartbeat is the last it gets, and the tick may
	// have made raft send an ordinary one.
	g.outbox = append(g.outbox, out...)
}

// maybeQuiesceFollower quiesces a follower whose last input was m, a
// quiesce heartbeat, if it matches: from the leader raft follows, at its
// term, committing this replica's last entry. Called by the owner after
// stepping the round's messages, with nothing else to do in the round.
func (g *group) maybeQuiesceFollower(m *raftpb.Message) {
	if g.quiesced || g.stopped {
		return
	}
	st := g.rn.BasicStatus()
	if st.RaftState != raft.StateFollower || st.Lead != m.From || st.Term != m.Term {
		return
	}
	if m.Commit < st.Commit && !g.h.cfg.QuiesceOnlyMatchedFollower {
		// The leader quiesced counting this follower behind: it did not
		// hear its acknowledgements (cut off one way from it, and
		// counting it down and lagging, to catch up once heard again:
		// catchup.go). This follower holds more than the leader knows, and
		// hears it: it holds still, its election timer stopped, and node
		// liveness watches the leader. Timing out instead, it asked for
		// pre-votes every election timeout, knowing no leader, for as long
		// as the cut lasted (TestQuiesceUnheardFollowerHoldsStill).
		g.leaderQuiesced(m)
		return
	}
	// The round held only quiesce messages, so raft appended nothing
	// beyond what is persisted.
	if st.Commit != m.Commit || g.log.lastIndex() != m.Commit {
		return
	}
	if !g.idle() {
		g.leaderQuiesced(m)
		return
	}
	if g.h.quiesce(g, m.From, 0, nil) {
		g.h.metrics.quiesces.Add(1)
	}
}

// leaderQuiesced handles a quiesce heartbeat that matched this follower's
// log while it waits for something of its own (a proposal, a read): it
// needs ticks to time that out, so it stays active, but its election
// timer stops as a quiesced follower's does (leaderQuiet), and node
// liveness watches the leader for it. It quiesces once it is idle
// (maybeQuiesce), and ticks raft again once the leader sends anything but
// a heartbeat, or its leader or term changes. Before, such a follower
// timed out behind its quiesced leader and asked for pre-votes every
// election timeout until its wait ended (10 election timeouts for a
// proposal its leader dropped), and showed no leader each time: the
// simulation caught one 718 ms after a pause, bound 312 ms
// (TestPausesFailOver, seed 30, once transactions joined the workload).
func (g *group) leaderQuiesced(m *raftpb.Message) {
	if !g.leaderQuiet || g.leaderQuietLead != m.From || g.leaderQuietTerm != m.Term {
		g.leaderQuiet, g.leaderQuietLead, g.leaderQuietTerm = true, m.From, m.Term
		g.h.metrics.leaderQuiet.Add(1)
	}
}

// behindQuietLeader reports whether this replica still follows, in the
// same term, the leader whose quiescence leaderQuiesced recorded; it
// forgets it otherwise.
func (g *group) behindQuietLeader() bool {
	if !g.leaderQuiet {
		return false
	}
	st := g.rn.BasicStatus()
	if st.RaftState == raft.StateFollower && st.Lead == g.leaderQuietLead && st.Term == g.leaderQuietTerm {
		return true
	}
	g.leaderQuiet = false
	return false
}

// wake takes g out of quiescence for the inputs of this round. A follower
// woken by anything but its leader asks the leader to wake too.
func (g *group) wake(byLeader bool) {
	h := g.h
	h.unquiesce(g)
	h.metrics.wakes.Add(1)
	st := g.rn.BasicStatus()
	if byLeader || st.RaftState != raft.StateFollower || st.Lead == raft.None || st.Lead == h.cfg.NodeID {
		return
	}
	h.tr.Send([]transport.Envelope{{Group: g.id, Msg: raftpb.Message{
		Type: raftpb.MsgHeartbeatResp, From: h.cfg.NodeID, To: st.Lead, Term: st.Term, Context: wakeCtx,
	}}})
}

// benign reports whether m may reach a quiesced group without waking it
// (it is stepped all the same): a heartbeat of its leader at its term
// (the two lanes of a transport may deliver the leader's last ordinary
// heartbeat after its quiesce heartbeat; a read's heartbeat is answered
// without waking: only its leader needs to be awake for the read), or, at
// a leader, the response of a follower that holds the leader's last entry.
// A quiesce heartbeat's response is one of those. Also: a restarted
// replica's hello (restart.go), and the empty append raft probes a
// follower with, and its answer, when the follower's log ends at the
// leader's last entry.
func (g *group) benign(m *raftpb.Message) bool {
	switch m.Type {
	case raftpb.MsgHeartbeat:
		return m.From == g.lead && m.Term == g.term
	case raftpb.MsgApp: // (a replica restarted quiesced knows its leader by quietLeader only)
		// An empty append of its leader that this replica's log already
		// ends at: raft probes a follower so when it answers a heartbeat
		// while its progress is in the probe state (after the follower's
		// node was down), and a restarted replica's hello is such an
		// answer (restart.go).
		from := m.From == g.lead || (g.lead == raft.None && g.quiesced && m.From == g.quietLeader)
		if !from || m.Term != g.term || len(m.Entries) != 0 || m.Index != g.log.lastIndex() {
			return false
		}
		t, err := g.log.Term(m.Index)
		return err == nil && t == m.LogTerm
	case raftpb.MsgAppResp:
		// The answer to that probe: the follower holds the leader's last
		// entry.
		return g.lead == g.h.cfg.NodeID && m.Term == g.term && !m.Reject && m.Index == g.log.lastIndex()
	case raftpb.MsgHeartbeatResp:
		if bytes.Equal(m.Context, forgotCtx) {
			// At a later term it wakes the replica, which raft makes a
			// follower of that term (a quorum elected someone else).
			if m.Term != g.term {
				return m.Term < g.term
			}
			return g.lead != g.h.cfg.NodeID || g.h.liveQuorumWithout(g, m.From)
		}
		if isHello(m) && g.lead == raft.None && g.quiesced && g.quietLeader == raft.None {
			return true // waiting its turn to campaign (startcampaign.go): asked again later
		}
		if g.lead != g.h.cfg.NodeID || m.Term != g.term || bytes.Equal(m.Context, wakeCtx) {
			return false
		}
		if isHello(m) || bytes.Equal(m.Context, quiesceCtx) {
			// Answered, or an answer; a follower that lacks entries is
			// caught up paced (laggingHello).
			return true
		}
		var last, match uint64
		g.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
			switch id {
			case g.h.cfg.NodeID:
				last = pr.Match
			case m.From:
				match = pr.Match
			}
		})
		return match == last || g.h.cfg.QuiesceWithLaggards
	}
	return false
}
