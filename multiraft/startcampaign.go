package multiraft

// Paced start campaigns: a node that starts many new groups as their
// expected leader (GroupStart.Leader is this node) campaigns for at most
// Config.MaxStartCampaigns of them at once.
//
// Why. Each campaign sends a pre-vote to every follower, then a vote, then
// the leader's first append, and the followers answer each. 30,000 ranges
// on 3 nodes are 10,000 campaigns per node: started at once, they overran
// the transport's raft lanes (4,096 messages per peer), 1 to 2 million
// messages were dropped, and after 5 minutes not every range had a leader;
// with 100,000 ranges, none had one after 2 minutes (BENCHMARKS.md,
// "Quiescence").
//
// How. A group waiting its turn is quiesced under no leader (quietLeader
// is raft.None, and it is in no byLeader set): it runs no election timer,
// liveness never wakes it, and its followers wait quiesced under this node
// (StartGroups). Each tick, the Host drops from the campaigning set the
// groups that have a leader (any leader) or campaigned two election
// timeouts ago, and campaigns for the next groups of the queue, in start
// order, until the set is full again. A group whose campaign found no
// leader within two election timeouts (its followers' node not serving
// yet: it is still starting its own ranges, and the pre-votes were
// dropped) goes back to the end of the queue, quiesced again, unless
// something else woke it meanwhile, or its campaign moved its term (a
// candidate runs on its own timer). A waiting group that anything else
// woke (a message from a follower that gave up on this node, a proposal, a
// removal) is skipped: it runs already. So at most MaxStartCampaigns
// groups of the start run at once per node, whatever the peers do, and the
// pace follows the machine: a slow node campaigns fewer groups per tick.
//
// Ticks drive it, like everything else in the engine, so the simulation
// replays it (its nodes bootstrap their ranges through StartGroups).

import (
	"go.etcd.io/raft/v3"
)

// startWaiting reports whether g waits for its turn to campaign. Called
// with h.quiet.mu held.
func startWaiting(g *group) bool { return g.quiesced && g.quietLeader == raft.None }

// queueStartCampaigns queues the published groups gs, quiesced under no
// leader by quiesceNew, for their campaigns.
func (h *Host) queueStartCampaigns(gs []*group) {
	if len(gs) == 0 {
		return
	}
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	h.queueStartLocked(gs...)
}

// queueStartLocked appends gs to the queue of start campaigns.
// h.quiet.mu is held.
func (h *Host) queueStartLocked(gs ...*group) {
	h.quiet.mu.startQ = append(h.quiet.mu.startQ, gs...)
	h.metrics.startWaiting.Store(int64(len(h.quiet.mu.startQ)))
}

// paceStartCampaigns campaigns for the next groups waiting their turn
// (see the top of this file) and appends their IDs to ids, for the
// scheduler. Called by tick.
func (h *Host) paceStartCampaigns(ids []uint64) []uint64 {
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	q := &h.quiet.mu
	if len(q.startQ) == 0 && len(q.starting) == 0 {
		return ids
	}
	now := h.live.ticks.Load()
	gaveUp := sweepPaced(q.starting, now, 2*int64(h.cfg.ElectionTicks),
		func(g *group) bool { return g.st.lead.Load() != raft.None })
	for _, g := range gaveUp {
		g.in.Lock()
		g.in.requeue = true // its owner decides (maybeRequeueStart)
		g.in.Unlock()
		ids = append(ids, g.id)
	}
	if q.starting == nil {
		q.starting = make(map[*group]int64, h.cfg.MaxStartCampaigns)
	}
	// A group woken by something else runs on its own. The owner of the
	// others wakes them (a campaign wakes).
	ids = popPaced(&q.startQ, q.starting, h.cfg.MaxStartCampaigns, now, ids, startWaiting,
		func(g *group) { g.in.campaign = true })
	h.metrics.startWaiting.Store(int64(len(q.startQ)))
	return ids
}

// StartCampaignsWaiting returns how many new groups this node is to lead
// wait for their turn to campaign, as of the last tick.
func (h *Host) StartCampaignsWaiting() int { return int(h.metrics.startWaiting.Load()) }

// maybeRequeueStart quiesces g again and queues it for another start
// campaign, if its last one found no leader and nothing else runs it: it
// knows no leader, its term is the start's, it is no candidate, and it
// waits for nothing. Called by the owner at the end of a round of inputs
// that woke nothing.
func (g *group) maybeRequeueStart() {
	h := g.h
	if g.quiesced || g.stopped || g.lead != raft.None || g.term != BootTerm || g.role == raft.StateCandidate ||
		g.role == raft.StateLeader || !g.idle() {
		return
	}
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	h.quiesceLocked(g, raft.None)
	h.act.remove(g)
	h.queueStartLocked(g)
	h.metrics.startRequeues.Add(1)
}

// StartCampaignRequeues returns how many start campaigns found no leader
// in time and went back to the queue.
func (h *Host) StartCampaignRequeues() uint64 { return h.metrics.startRequeues.Load() }
