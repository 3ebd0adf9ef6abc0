package multiraft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/flotilla/flotilla/transport"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// group is one raft group replica on this Host.
//
// Ownership: fields outside in and st belong to the scheduler worker that
// currently holds the group (see scheduler); no other goroutine touches
// them. in is the inbox, written by any goroutine under in.mu (a leaf below
// Host.mu). st mirrors a few figures for readers on other goroutines.
type group struct {
	id uint64
	h  *Host

	rn  *raft.RawNode
	log *memLog
	sm  StateMachine

	applied   uint64
	snapIndex uint64 // index of the last persisted snapshot
	confIndex uint64 // index of the last conf change persisted in the conf state
	// addedAt: for a node a conf change this replica applied made a
	// member (voter or learner) from a non-member, that change's index
	// (nil until one is). An
	// acknowledgement of entries below it comes from the node's replica
	// from before its removal, delayed or duplicated on the way: stepped,
	// it would set the new, empty replica's match past its log, and the
	// leader would never send it a snapshot, and would send it a commit
	// index past its log in heartbeats (raft panics: the simulation, seed
	// 1118). Such acknowledgements are dropped, at this replica's term or
	// an earlier one (handleInputs).
	addedAt   map[uint64]uint64
	lead      uint64
	term      uint64
	commit    uint64
	role      raft.StateType
	published LeaderEvent
	ticks     uint64

	proposals map[uint64]*proposal // nil until the first (track); nil again when quiesced
	held      []*proposal
	confSince uint64 // tick at which confPending was set
	// confCheck: the key of a membership change this leader just handed
	// to raft. The next Ready shows whether raft appended it, or replaced
	// it with an empty entry because its previous change, or the log of
	// an earlier term, was not applied yet (checkConfAppended).
	confCheck uint64
	// confRetry: a membership change raft replaced so; it is proposed
	// again once the group has applied through confRetryAt, the index of
	// the entry that replaced it (retryConf). The held proposals wait.
	confRetry   *proposal
	confRetryAt uint64
	reads       map[uint64]*readBatch // by the key in their request context; nil until the first, and when quiesced
	readWaiting []*readBatch
	transfers   []*transfer
	// transferHeld: proposals that arrived while this leader was handing
	// leadership away (raft drops them then); proposed again if the
	// transfer fails, failed with ErrNotLeader (not appended) once
	// another node leads.
	transferHeld []*proposal
	// failoverFrom is the leader that liveness found down (liveness.go),
	// failoverTick when this replica last acted on it; pokes, how many
	// times it told that leader so (pokeOldLeader), the last at pokeTick.
	failoverFrom, failoverTick uint64
	pokes                      int
	pokeTick                   uint64
	// quietLeader: see quiesced.
	quietLeader uint64
	// leaderQuietLead, leaderQuietTerm: see leaderQuiet.
	leaderQuietLead, leaderQuietTerm uint64
	// holdAwake: a leader does not quiesce before this tick (of g.ticks):
	// a follower told it that it forgot it (forgotCtx). Owner only.
	holdAwake uint64
	// outbox: messages of this node's own making (quiesce heartbeats) to
	// send after the group's Ready messages of the current cycle.
	outbox []transport.Envelope
	// snapFiles: received snapshots (transport.FileMarker) stepped since
	// the last Ready; applyReady removes those raft did not take.
	snapFiles []string

	// The flags, together: a bool between two words takes a word (they
	// were 48 of the struct's 680 bytes; BENCHMARKS.md, "Quiescence:
	// memory per replica").
	//
	// confPending: a membership change is in raft (confSince).
	confPending bool
	// releaseAfterAdvance: a conf change applied in the current Ready; the
	// held proposals go to raft once it is advanced.
	releaseAfterAdvance bool
	stopped             bool
	// quiesced: the group does not tick (quiesce.go), since it quiesced
	// under quietLeader. Set and cleared by the owner through Host.quiesce
	// and Host.unquiesce, under Host.quiet.mu.
	quiesced bool
	// leaderQuiet: this follower's leader, leaderQuietLead at term
	// leaderQuietTerm, quiesced while the follower waited for something
	// of its own (leaderQuiesced, quiesce.go): it stays active, but raft's
	// election timer stops while it follows that leader in that term.
	// Owner only.
	leaderQuiet bool
	// noVoteEmpty: GroupStart.NoVoteWhileEmpty. Set at start.
	noVoteEmpty bool
	// catchUpQueued: g is in Host.quiet.mu.catchUpQ (catchup.go). Under
	// Host.quiet.mu.
	catchUpQueued bool

	in struct {
		sync.Mutex
		msgs        []raftpb.Message
		props       []*proposal
		reads       []*readReq
		transfers   []*transfer
		unreachable []uint64
		snaps       []snapReport
		stop        *stopReq
		// tick: a tick waits. Ticks coalesce (loops.go, tick).
		tick     bool
		campaign bool
		forget   bool
		closed   bool
		wake     bool // liveness wakes the quiesced group (quiesce.go)
		// requeue: its start campaign found no leader in time; it waits
		// for another turn if nothing else woke it (startcampaign.go).
		requeue bool
		// hello: a replica restarted quiesced under the voter it last
		// voted for asks it for a heartbeat, to learn its leader
		// (restart.go).
		hello bool
	}

	st struct {
		lead, term, commit, applied atomic.Uint64
		role                        atomic.Int32
		voters, learners            atomic.Pointer[[]uint64]
		quiesced                    atomic.Bool
	}
}

type snapReport struct {
	to uint64
	ok bool
}

// proposal is a command or membership change waiting for its result.
type proposal struct {
	key       uint64
	data      []byte               // key(8) + command, for a normal entry
	cc        *raftpb.ConfChangeV2 // for a membership change
	promote   bool                 // cc is a PromoteLearner (checkChange)
	kind      ChangeKind           // cc's kind, and what goes with it
	ccData    []byte               // (changeContext)
	startTick uint64
	done      chan struct{} // closed by finish, unless cb is set
	cb        func([]byte, error)
	result    []byte
	err       error
}

func (p *proposal) finish(res []byte, err error) {
	if p.cb != nil {
		p.cb(res, err)
		return
	}
	p.result, p.err = res, err
	close(p.done)
}

type readReq struct {
	done chan struct{}
	err  error
}

type readBatch struct {
	index     uint64
	startTick uint64
	reqs      []*readReq
}

func (b *readBatch) finish(err error) {
	for _, r := range b.reqs {
		r.err = err
		close(r.done)
	}
}

type transfer struct {
	to        uint64
	startTick uint64
	done      chan error
}

type stopReq struct {
	remove removal
	done   chan struct{}
}

// removal is what stopping a group does to its raft state.
type removal uint8

const (
	keepState      removal = iota // StopGroup: all of it stays
	deleteState                   // RemoveGroup: all of it goes
	deleteKeepVote                // RemoveReplicaAsync: all but term and vote
)

// handleInputs drains the inbox into the RawNode. Called by the owner.
func (g *group) handleInputs() {
	g.in.Lock()
	msgs, props, reads, transfers := g.in.msgs, g.in.props, g.in.reads, g.in.transfers
	tick, unreachable, snaps, stop := g.in.tick, g.in.unreachable, g.in.snaps, g.in.stop
	campaign, forget, wake, requeue, hello := g.in.campaign, g.in.forget, g.in.wake, g.in.requeue, g.in.hello
	g.in.msgs, g.in.props, g.in.reads, g.in.transfers = nil, nil, nil, nil
	g.in.tick, g.in.unreachable, g.in.snaps, g.in.stop = false, nil, nil, nil
	g.in.campaign, g.in.forget, g.in.wake, g.in.requeue, g.in.hello = false, false, false, false, false
	g.in.Unlock()

	// Quiescence (quiesce.go): what in this round wakes the group, and
	// whether it brings a quiesce heartbeat to follow.
	local := len(props) > 0 || len(reads) > 0 || len(transfers) > 0 || campaign || forget || len(snaps) > 0 || wake
	wakes, byLeader := local, false
	var quiet *raftpb.Message
	if g.h.cfg.Quiesce {
		for i := range msgs {
			m := &msgs[i]
			switch {
			case m.Type == raftpb.MsgHeartbeat && bytes.Equal(m.Context, quiesceCtx):
				quiet = m
			case !g.benign(m):
				wakes = true
				byLeader = byLeader || m.From == g.lead
			}
		}
	} else {
		wakes = wakes || len(msgs) > 0
	}
	if g.quiesced && wakes && stop == nil {
		g.wake(byLeader && !local)
	}
	// A quiesce heartbeat may come with its sender's ordinary heartbeats
	// at its term, which wake a replica that lost its leader (a follower
	// that missed the leader's last quiesce heartbeat, timed out and asks
	// for pre-votes, which wake the leader): stepped, they make it that
	// leader's follower again, and it may quiesce in this same round.
	// Without this it never did: each pre-vote woke the leader, whose
	// heartbeat and quiesce heartbeat then came together again (30 of
	// 10,000 ranges stayed awake so, BENCHMARKS.md "Quiescence").
	quietOK := quiet != nil && !local
	if quietOK && wakes {
		for i := range msgs {
			m := &msgs[i]
			if m != quiet && !g.benign(m) && (m.Type != raftpb.MsgHeartbeat || m.From != quiet.From || m.Term != quiet.Term) {
				quietOK = false
				break
			}
		}
	}

	if stop != nil {
		// What was drained with the stop request fails with the rest.
		for i := range msgs {
			releaseSnapshot(&msgs[i])
		}
		for _, p := range props {
			p.finish(nil, ErrGroupRemoved)
		}
		for _, r := range reads {
			r.err = ErrGroupRemoved
			close(r.done)
		}
		for _, t := range transfers {
			t.done <- ErrGroupRemoved
		}
		g.shutdown(ErrGroupRemoved, stop.remove)
		close(stop.done)
		return
	}
	for _, to := range unreachable {
		g.rn.ReportUnreachable(to)
	}
	if len(unreachable) > 0 {
		g.h.metrics.unreachableApplied.Add(uint64(len(unreachable)))
	}
	for _, s := range snaps {
		st := raft.SnapshotFinish
		if !s.ok {
			st = raft.SnapshotFailure
		}
		g.rn.ReportSnapshot(s.to, st)
	}
	if tick {
		if !g.behindQuietLeader() {
			g.rn.Tick()
		}
		g.ticks++
		if g.ticks%uint64(g.h.cfg.ElectionTicks) == 0 {
			g.expire()
		}
		g.checkLiveness()
	}
	if forget {
		_ = g.rn.ForgetLeader()
	}
	if campaign {
		_ = g.rn.Campaign()
	}
	gate, gated := g.sm.(SnapshotGate)
	for i := range msgs {
		m := &msgs[i]
		var file string
		if m.Type == raftpb.MsgSnap && m.Snapshot != nil {
			file, _ = transport.SnapshotFile(m.Snapshot.Data)
		}
		if gated && m.Type == raftpb.MsgSnap && m.Snapshot != nil && m.Snapshot.Metadata.Index > g.commit &&
			!gate.AcceptSnapshot(m.Snapshot.Data) {
			// Not now: the leader's transport reports the snapshot sent,
			// raft probes this follower again after a heartbeat, and sends
			// it again.
			g.h.metrics.snapshotsRefused.Add(1)
			if file != "" {
				os.Remove(file)
			}
			continue
		}
		if file != "" {
			// Raft takes it (it is then restored, and removed by restore)
			// or ignores it: applyReady removes it then.
			g.snapFiles = append(g.snapFiles, file)
		}
		if g.forgetsLeader(m) {
			_ = g.rn.ForgetLeader()
		}
		if m.Type == raftpb.MsgHeartbeatResp && bytes.Equal(m.Context, forgotCtx) && g.role == raft.StateLeader &&
			m.Term == g.term && !g.h.liveQuorumWithout(g, m.From) {
			// A follower forgot this leader (pokeOldLeader), and the
			// others it counts live are no quorum: stay awake for
			// CheckQuorum to judge whether the followers still hear it.
			g.holdAwake = g.ticks + 2*uint64(g.h.cfg.ElectionTicks)
		}
		if g.leaderQuiet && m.From == g.lead && m.Type != raftpb.MsgHeartbeat && !g.benign(m) {
			// The leader woke: it appends, or hands over. (Not an empty
			// append at this replica's last entry: a quiesced leader
			// probes with those, and they may come after its quiesce
			// heartbeat, on the other lane.)
			g.leaderQuiet = false
		}
		if g.laggingHello(m) {
			continue // answered, and caught up paced (answerHellos)
		}
		if g.noVoteEmpty && (m.Type == raftpb.MsgVote || m.Type == raftpb.MsgPreVote) && g.log.lastIndex() == 0 {
			continue // GroupStart.NoVoteWhileEmpty
		}
		if m.Type == raftpb.MsgAppResp && !m.Reject && m.Index < g.addedAt[m.From] && m.Term <= g.term {
			// The node's replica from before its removal (addedAt). (Not
			// one at a later term: a new replica that kept its old
			// replica's term answers this leader so, and must make it
			// step down, or it never takes the leader's snapshot.)
			continue
		}
		// Errors here are messages from removed or unknown peers, or stale
		// responses: raft ignores them, and so do we.
		_ = g.rn.Step(*m)
	}
	if quiet != nil {
		g.followQuiet(quiet)
	}
	for _, t := range transfers {
		t.startTick = g.ticks
		if g.lead == t.to {
			t.done <- nil
			continue
		}
		g.transfers = append(g.transfers, t)
		g.rn.TransferLeader(t.to)
	}
	if len(props) > 0 {
		if g.confPending {
			g.held = append(g.held, props...)
		} else {
			g.propose(props)
		}
	}
	if len(reads) > 0 {
		g.readIndex(reads)
	}
	g.releaseTransferHeld()
	if hello {
		g.sayHello()
	}
	g.answerHellos(msgs)
	switch {
	case quietOK:
		g.maybeQuiesceFollower(quiet)
	case requeue && !wakes:
		g.maybeRequeueStart()
	case tick && !wakes:
		g.maybeQuiesce()
	}
}

// propose hands proposals to raft; consecutive commands go in one step.
func (g *group) propose(props []*proposal) {
	for len(props) > 0 {
		if g.lead == 0 {
			for _, p := range props {
				p.finish(nil, ErrNoLeader)
			}
			return
		}
		p := props[0]
		if p.cc != nil {
			props = props[1:]
			p.startTick = g.ticks
			if g.rn.BasicStatus().RaftState != raft.StateLeader {
				// Only a leader proposes a membership change. A follower
				// would forward it, and could not see whether the leader
				// appended it or raft replaced it by an empty entry (a
				// leader with an unapplied change in its log, a new one
				// included): it would hold every later proposal of the
				// group until the change expired as ambiguous, 10 s by
				// default (TestForwardedConfChangeRefused).
				p.finish(nil, ErrNotLeader)
				continue
			}
			if err := checkChange(g.log.cs, p.cc, p.promote); err != nil {
				if last := g.log.lastIndex(); g.applied < last {
					// The log holds entries not applied yet (a new
					// leader's inherited tail, say), a change among them
					// maybe: the configuration this change applies to
					// may not be g.log.cs. raft would refuse the change
					// now anyway; check it again once applied through
					// them (retryConf), the rest held behind it.
					g.confRetry, g.confRetryAt = p, last
					g.confPending, g.confSince = true, g.ticks
					g.held = append(g.held, props...)
					return
				}
				p.finish(nil, err)
				continue
			}
			if err := g.rn.ProposeConfChange(*p.cc); err != nil {
				if g.holdForTransfer([]*proposal{p}) {
					continue
				}
				p.finish(nil, g.dropErr())
				continue
			}
			g.track(p)
			g.confPending, g.confSince = true, g.ticks
			g.confCheck = p.key
			// Whatever follows waits until the change applies (seed 001):
			// raft would turn a second pending change into an empty entry.
			g.held = append(g.held, props...)
			return
		}
		n := 1
		for n < len(props) && props[n].cc == nil {
			n++
		}
		datas := packEntries(props[:n], nil)
		ents := make([]raftpb.Entry, len(datas))
		for i, d := range datas {
			ents[i].Data = d
		}
		err := g.rn.Step(raftpb.Message{Type: raftpb.MsgProp, From: g.h.cfg.NodeID, Entries: ents})
		if err != nil && g.holdForTransfer(props[:n]) {
			props = props[n:]
			continue
		}
		for _, p := range props[:n] {
			if err != nil {
				p.finish(nil, g.dropErr())
				continue
			}
			p.startTick = g.ticks
			g.track(p)
		}
		props = props[n:]
	}
}

// dropErr is the error of a proposal raft refused: ErrNotLeader on a
// follower (proposals are not forwarded), else ErrDropped. It asks raft,
// not g.role: raft's state moves within a cycle (a vote steps a leader
// down) before the cycle's Ready updates g.role.
func (g *group) dropErr() error {
	if g.rn.BasicStatus().RaftState != raft.StateLeader {
		return ErrNotLeader
	}
	return ErrDropped
}

// holdForTransfer holds props if raft refused them because this leader is
// handing leadership away (seed 001's rule for conf changes, applied to
// transfers: a request that arrives during a planned move is not failed).
// releaseTransferHeld decides their fate once the transfer ends.
func (g *group) holdForTransfer(props []*proposal) bool {
	if st := g.rn.BasicStatus(); st.RaftState != raft.StateLeader || st.LeadTransferee == raft.None {
		return false
	}
	for _, p := range props {
		p.startTick = g.ticks
	}
	g.transferHeld = append(g.transferHeld, props...)
	return true
}

// releaseTransferHeld settles the proposals held over a transfer once it
// is over: proposed again if this node still leads (the transfer failed),
// failed with ErrNotLeader once another node leads (never appended: the
// caller sends them there), kept while the group has no leader. Called by
// the owner after each Ready and tick.
func (g *group) releaseTransferHeld() {
	if len(g.transferHeld) == 0 {
		return
	}
	st := g.rn.BasicStatus() // raft's state now, not as of the last Ready
	switch {
	case st.RaftState == raft.StateLeader && st.LeadTransferee == raft.None:
		held := g.transferHeld
		g.transferHeld = nil
		g.propose(held)
	case st.Lead != 0 && st.Lead != g.h.cfg.NodeID:
		for _, p := range g.transferHeld {
			p.finish(nil, ErrNotLeader)
		}
		g.transferHeld = nil
	}
}

func (g *group) readIndex(reads []*readReq) {
	if g.lead == 0 {
		for _, r := range reads {
			r.err = ErrNoLeader
			close(r.done)
		}
		return
	}
	key := g.h.newKey()
	if g.reads == nil {
		g.reads = make(map[uint64]*readBatch)
	}
	g.reads[key] = &readBatch{startTick: g.ticks, reqs: reads}
	g.rn.ReadIndex(readContext(g.h.cfg.NodeID, key))
}

// readContext is the request context of a ReadIndex round: a key unique to
// this Host incarnation (Host.newKey), then this node's ID. (The key comes
// first, like a proposal's: the simulation hashes what follows the first 8
// bytes of entries, and must not see the random key.) The leader keys
// pending rounds by their context and silently drops a request whose
// context is already pending, from whichever replica it came; so a context
// must never be shared by two replicas (hence the node ID), nor reused after
// a restart or a group's restart (hence the Host's random key base and one
// counter for all its groups).
func readContext(node, key uint64) []byte {
	ctx := make([]byte, 16)
	binary.BigEndian.PutUint64(ctx, key)
	binary.BigEndian.PutUint64(ctx[8:], node)
	return ctx
}

// readKey returns the key of a ReadIndex context made by readContext on
// node, or false for a context of another node or shape.
func readKey(node uint64, ctx []byte) (uint64, bool) {
	if len(ctx) != 16 || binary.BigEndian.Uint64(ctx[8:]) != node {
		return 0, false
	}
	return binary.BigEndian.Uint64(ctx), true
}

// expire fails requests that waited longer than RequestTimeoutTicks.
func (g *group) expire() {
	limit := uint64(g.h.cfg.RequestTimeoutTicks)
	old := func(start uint64) bool { return g.ticks-start > limit }
	for k, p := range g.proposals {
		if old(p.startTick) {
			delete(g.proposals, k)
			p.finish(nil, ErrAmbiguous)
		}
	}
	if len(g.transferHeld) > 0 {
		keep := g.transferHeld[:0]
		for _, p := range g.transferHeld {
			if old(p.startTick) {
				p.finish(nil, ErrNoLeader) // never appended
			} else {
				keep = append(keep, p)
			}
		}
		g.transferHeld = keep
	}
	if p := g.confRetry; p != nil && old(p.startTick) {
		g.confRetry = nil
		p.finish(nil, ErrDropped) // never appended
		g.releaseHeld()
	}
	if g.confPending && old(g.confSince) {
		// The change was lost (raft dropped it, or leadership moved): stop
		// holding the others.
		g.releaseHeld()
	}
	for k, b := range g.reads {
		if old(b.startTick) {
			delete(g.reads, k)
			b.finish(ErrTimeout)
		}
	}
	keep := g.transfers[:0]
	for _, t := range g.transfers {
		if old(t.startTick) {
			t.done <- ErrTimeout
		} else {
			keep = append(keep, t)
		}
	}
	g.transfers = keep
}

// checkConfAppended looks in the entries of the Ready that follows a
// membership change this leader proposed for the change itself. If raft
// put an empty entry in its place, the change is not pending: it waits in
// confRetry, and the proposals held behind it keep waiting, for a few
// round trips instead of the request timeout. Called by the owner.
func (g *group) checkConfAppended(ents []raftpb.Entry) {
	key := g.confCheck
	if key == 0 {
		return
	}
	g.confCheck = 0
	for i := range ents {
		if e := &ents[i]; e.Type == raftpb.EntryConfChangeV2 {
			var cc raftpb.ConfChangeV2
			if cc.Unmarshal(e.Data) == nil && len(cc.Context) >= 8 && binary.BigEndian.Uint64(cc.Context) == key {
				return // appended: pending until it applies
			}
		}
	}
	p, ok := g.proposals[key]
	if !ok || len(ents) == 0 {
		return
	}
	delete(g.proposals, key)
	// Invariant: one change is in raft or in confRetry at a time (the
	// others are held while confPending), so confRetry is empty here.
	g.confRetry, g.confRetryAt = p, ents[len(ents)-1].Index
}

// retryConf proposes a refused membership change again once the group
// has applied past the entry that replaced it: raft counts its previous
// change as applied then. Called by the owner after Advance.
func (g *group) retryConf() {
	p := g.confRetry
	if p == nil || g.applied < g.confRetryAt {
		return
	}
	g.confRetry = nil
	start := p.startTick
	g.propose([]*proposal{p})
	p.startTick = start // the request timeout counts from the first try
	if _, pending := g.proposals[p.key]; !pending && g.confRetry == nil {
		g.releaseHeld() // it failed (no leader now): the rest need not wait
	}
}

// releaseHeld ends the wait for a pending membership change and proposes
// what was held behind it, unless the change waits in confRetry: then it
// is still pending, and whatever followed it still waits for it.
func (g *group) releaseHeld() {
	if g.confRetry != nil {
		return
	}
	g.confPending = false
	held := g.held
	g.held = nil
	if len(held) > 0 {
		g.propose(held)
	}
}

// shutdown fails every request and marks the group stopped. Called by the
// owner (or by Host.Stop once no worker runs).
func (g *group) shutdown(err error, remove removal) {
	if g.stopped {
		return
	}
	g.stopped = true
	g.in.Lock()
	g.in.closed = true
	props, reads, transfers, msgs := g.in.props, g.in.reads, g.in.transfers, g.in.msgs
	g.in.props, g.in.reads, g.in.transfers, g.in.msgs = nil, nil, nil, nil
	g.in.Unlock()
	for i := range msgs {
		releaseSnapshot(&msgs[i])
	}
	if g.confRetry != nil {
		props = append(props, g.confRetry)
		g.confRetry = nil
	}
	if remove != keepState {
		// Stepped snapshots: raft's storage may name one already (a stop
		// between persisting a Ready and applying it), so only a removed
		// group's go; the next start's clean-up takes the others
		// (StoredSnapshotFile).
		for _, f := range g.snapFiles {
			os.Remove(f)
		}
	}
	g.snapFiles = nil
	g.h.closeGroupStreams(g.id)
	for _, p := range props {
		p.finish(nil, err)
	}
	for _, r := range reads {
		r.err = err
		close(r.done)
	}
	for _, t := range transfers {
		t.done <- err
	}
	for k, p := range g.proposals {
		delete(g.proposals, k)
		p.finish(nil, err)
	}
	for _, p := range g.held {
		p.finish(nil, err)
	}
	g.held = nil
	for _, p := range g.transferHeld {
		p.finish(nil, err)
	}
	g.transferHeld = nil
	for k, b := range g.reads {
		delete(g.reads, k)
		b.finish(err)
	}
	for _, b := range g.readWaiting {
		b.finish(err)
	}
	g.readWaiting = nil
	for _, t := range g.transfers {
		t.done <- err
	}
	g.transfers = nil
	g.h.removeGroup(g, remove)
}

// publishStatus publishes the replica's leader, term, commit, applied
// index and role (Host.Status) and bumps the Host's status version if any
// of them changed. Called by g's owner, the only writer of g.st (and by
// publishGroup before anyone can read it).
func (g *group) publishStatus() {
	if g.st.lead.Load() == g.lead && g.st.term.Load() == g.term && g.st.commit.Load() == g.commit &&
		g.st.applied.Load() == g.applied && g.st.role.Load() == int32(g.role) {
		return
	}
	g.st.lead.Store(g.lead)
	g.st.term.Store(g.term)
	g.st.commit.Store(g.commit)
	g.st.applied.Store(g.applied)
	g.st.role.Store(int32(g.role))
	// After the stores: a reader that saw the new version sees the new
	// status (Host.StatusVersion).
	g.h.statusVersion.Add(1)
}

// publishConf publishes the replica's voters and learners and bumps the
// Host's status version. Called by g's owner when the membership changed
// (a conf change applied, a snapshot restored) and by publishGroup.
func (g *group) publishConf() {
	cs := g.log.cs
	g.st.voters.Store(g.h.confSets.intern(cs.Voters))
	g.st.learners.Store(g.h.confSets.intern(cs.Learners))
	g.h.statusVersion.Add(1)
}

// track records p as proposed, until it applies or expires. The map is
// made on the first proposal: an idle replica that never proposed keeps
// none (two empty maps, proposals and reads, were about 100 bytes of each
// idle replica; BENCHMARKS.md, "Quiescence: memory per idle replica").
func (g *group) track(p *proposal) {
	if g.proposals == nil {
		g.proposals = make(map[uint64]*proposal)
	}
	g.proposals[p.key] = p
}

// checkChange refuses a membership change that raft would accept and then
// panic on as every replica applies it (leaving no voter), or that would
// do something else than its kind says: removing a node that is not a
// member, promoting a node that is no member (raft would add it as a
// voter with no log, where the caller meant a learner that caught up; a
// voter's promotion changes nothing and passes), or adding as a learner a
// node that votes (a demotion). raft checks none of these when a change
// is proposed; a change that panics at apply stays in the log, and the
// node would crash again at every start. cs is the last applied
// configuration: the one the change applies to when nothing is left to
// apply (propose checks again later otherwise), the leader proposing one
// change at a time (the rest are held).
func checkChange(cs raftpb.ConfState, cc *raftpb.ConfChangeV2, promote bool) error {
	for _, c := range cc.Changes {
		voter, learner := slices.Contains(cs.Voters, c.NodeID), slices.Contains(cs.Learners, c.NodeID)
		switch c.Type {
		case raftpb.ConfChangeRemoveNode:
			if !voter && !learner {
				return fmt.Errorf("%w: remove node %d, which is not a member (voters %v, learners %v)", ErrInvalidRequest, c.NodeID, cs.Voters, cs.Learners)
			}
			if voter && len(cs.Voters) == 1 {
				return fmt.Errorf("%w: remove node %d, the last voter", ErrInvalidRequest, c.NodeID)
			}
		case raftpb.ConfChangeAddNode:
			if promote && !learner && !voter {
				return fmt.Errorf("%w: promote node %d, which is not a learner (learners %v)", ErrInvalidRequest, c.NodeID, cs.Learners)
			}
		case raftpb.ConfChangeAddLearnerNode:
			if voter {
				return fmt.Errorf("%w: add node %d as a learner: it is a voter", ErrInvalidRequest, c.NodeID)
			}
		}
	}
	return nil
}
