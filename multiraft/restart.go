package multiraft

// Quiet restarts: a replica that restarts from its state here starts
// quiesced, and learns its leader by asking for a heartbeat, a few at a
// time.
//
// Why. A node restarting with 10,000 replicas started them all active:
// every one ran its election timer, and each one that no leader had
// reached within its election timeout campaigned, which woke that range's
// leader on a survivor. After a kill and a restart at 10,000 ranges,
// clients got 6–50 % of the healthy rate for 1–3 s (BENCHMARKS.md, "A
// node's return, paced").
//
// How. At its start (StartGroups) the replica is quiesced under the voter
// its hard state last voted for (restartLeader): the leader of its last
// term, unless that vote went to a candidate that lost. If it voted for
// itself (it led, or campaigned), it waits its turn to campaign
// (startcampaign.go): a leader elected meanwhile refuses the pre-vote,
// and the pre-vote wakes that leader, which heartbeats it. Otherwise it
// waits its turn to say hello: each tick once the node is announced
// (Config.Unannounced), while fewer than Config.MaxStartCampaigns hellos
// wait for an answer (a budget of its own, beside the start campaigns'),
// the next replica
// sends the voter it is quiesced under a heartbeat response whose context
// is helloCtx. A quiesced leader at the hello's term answers with a quiesce
// heartbeat without waking (answerHellos), and the replica learns its
// leader from it and stays quiesced; if the replica lacks entries, the
// leader does not step the hello (laggingHello) and queues the range for
// a paced catch-up (catchup.go). A leader at another term wakes (the
// replica then learns the new term from its heartbeats); a voter that is
// not the leader wakes and wakes its own leader, whose next heartbeat,
// or quiesce heartbeat, the replica follows (followQuiet re-indexes it
// under that leader). A replica waiting its turn to campaign takes a
// hello without waking, and answers none. A hello that a removed voter
// never answers is sent again every two election timeouts, for as long
// as the replica waits (a cost, not a fault: liveness still wakes it). A hello unanswered after
// two election timeouts is sent again, until the replica knows its leader
// or wakes. Liveness wakes the replica as any quiesced follower if the
// voter it is quiesced under goes down, or is never heard from.

import (
	"bytes"
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"

	"github.com/flotilla/flotilla/transport"
)

// helloCtx is the context of a restarted replica's hello (a
// MsgHeartbeatResp).
var helloCtx = []byte("flotilla.hello")

// restartLeader returns the voter a replica restarting from its state
// here starts quiesced under (0: none, it starts active): the one its hard
// state voted for in its last term, if that is a voter of a configuration
// that is not joint. Called before g is published.
func (g *group) restartLeader() uint64 {
	v, cs := g.log.hs.Vote, &g.log.cs
	if v == raft.None || len(cs.VotersOutgoing) > 0 || !slices.Contains(cs.Voters, v) {
		return raft.None
	}
	return v
}

// helloWaiting reports whether g waits to learn its leader from a hello.
// Called with h.quiet.mu held.
func helloWaiting(g *group) bool {
	return g.quiesced && g.quietLeader != raft.None && g.st.lead.Load() == raft.None
}

// queueHellos queues the published groups gs, quiesced under the voter
// they restarted under, for their hellos.
func (h *Host) queueHellos(gs []*group) {
	if len(gs) == 0 {
		return
	}
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	h.quiet.mu.helloQ = append(h.quiet.mu.helloQ, gs...)
}

// paceHellos sends the next hellos (see the top of this file) and appends
// the groups' IDs to ids, for the scheduler. Called by tick.
func (h *Host) paceHellos(ids []uint64) []uint64 {
	if !h.announced.Load() {
		return ids // the node does not serve yet (Config.Unannounced)
	}
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	q := &h.quiet.mu
	if len(q.helloQ) == 0 && len(q.helloing) == 0 {
		return ids
	}
	now := h.live.ticks.Load()
	again := sweepPaced(q.helloing, now, 2*int64(h.cfg.ElectionTicks), func(g *group) bool { return !helloWaiting(g) })
	q.helloQ = append(q.helloQ, again...) // unanswered: asked again
	if q.helloing == nil {
		q.helloing = make(map[*group]int64, h.cfg.MaxStartCampaigns)
	}
	return popPaced(&q.helloQ, q.helloing, h.cfg.MaxStartCampaigns, now, ids, helloWaiting,
		func(g *group) { g.in.hello = true })
}

// sayHello sends the voter g is quiesced under a hello, if g still waits
// to learn its leader. Called by the owner.
func (g *group) sayHello() {
	h := g.h
	if !g.quiesced || g.lead != raft.None || g.quietLeader == raft.None || g.quietLeader == h.cfg.NodeID {
		return
	}
	h.tr.Send([]transport.Envelope{{Group: g.id, Msg: raftpb.Message{
		Type: raftpb.MsgHeartbeatResp, From: h.cfg.NodeID, To: g.quietLeader, Term: g.term, Context: helloCtx,
	}}})
}

// isHello reports whether m is a restarted replica's hello.
func isHello(m *raftpb.Message) bool {
	return m.Type == raftpb.MsgHeartbeatResp && bytes.Equal(m.Context, helloCtx)
}

// progressOf returns the match of follower id, and this leader's own
// (its last entry). Called by the owner.
func (g *group) progressOf(id uint64) (match, last uint64) {
	g.rn.WithProgress(func(pid uint64, _ raft.ProgressType, pr tracker.Progress) {
		switch pid {
		case id:
			match = pr.Match
		case g.h.cfg.NodeID:
			last = pr.Match
		}
	})
	return match, last
}

// laggingHello reports whether m, at this quiesced leader's term, is the
// hello of a follower that lacks entries, or that follower's answer to
// the quiesce heartbeat answerHellos sent it: it is not stepped, and the
// range is queued for a paced catch-up (catchup.go). Stepped, raft would
// send the follower its missing entries (or a snapshot) at once, which
// wakes it, and its answers wake this leader: every range a restarted
// node lags on would wake at once. Called by the owner.
func (g *group) laggingHello(m *raftpb.Message) bool {
	if m.Type != raftpb.MsgHeartbeatResp || !(isHello(m) || bytes.Equal(m.Context, quiesceCtx)) ||
		!g.quiesced || g.lead != g.h.cfg.NodeID || m.Term != g.term {
		return false
	}
	match, last := g.progressOf(m.From)
	if match == last {
		return false
	}
	h := g.h
	h.quiet.mu.Lock()
	h.addCatchUpLocked(g)
	h.metrics.catchUpWaiting.Store(int64(len(h.quiet.mu.catchUpQ)))
	h.quiet.mu.Unlock()
	return true
}

// followQuiet re-indexes a quiesced replica under the sender of the
// quiesce heartbeat quiet, just stepped, if raft now follows that sender
// and the replica was quiesced under another node (a restarted replica
// whose vote went to a candidate that lost, restart.go): liveness must
// wake it if that node goes down, not if the other one does. Called by
// the owner.
func (g *group) followQuiet(quiet *raftpb.Message) {
	if !g.quiesced || quiet.From == g.quietLeader {
		return
	}
	if st := g.rn.BasicStatus(); st.RaftState != raft.StateFollower || st.Lead != quiet.From {
		return
	}
	h := g.h
	h.quiet.mu.Lock()
	defer h.quiet.mu.Unlock()
	if g.quiesced && !h.PeerDown(quiet.From) {
		h.unquiesceLocked(g)
		h.quiesceLocked(g, quiet.From)
	}
}

// answerHellos answers the hellos in msgs at this quiesced leader's term
// (which did not wake it: benign) with a quiesce heartbeat, which commits
// no more than the follower holds (laggingHello queued the catch-up of a
// follower that lacks entries). Called by the owner after stepping msgs.
func (g *group) answerHellos(msgs []raftpb.Message) {
	h := g.h
	if !g.quiesced || g.lead != h.cfg.NodeID {
		return
	}
	for i := range msgs {
		m := &msgs[i]
		if !isHello(m) || m.Term != g.term {
			continue
		}
		match, _ := g.progressOf(m.From)
		g.outbox = append(g.outbox, transport.Envelope{Group: g.id, Msg: raftpb.Message{
			Type: raftpb.MsgHeartbeat, From: h.cfg.NodeID, To: m.From, Term: g.term,
			Commit: min(match, g.commit), Context: quiesceCtx,
		}})
	}
}
