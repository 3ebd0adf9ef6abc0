package multiraft

// Starting, stopping and removing a group's replica.

import (
	"context"
	"fmt"
	"slices"
	"sort"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/storage"
)

// StartGroup starts the replica of group id on this node with state
// machine sm. If the store has state for the group, the group restarts
// from it and members is ignored. Otherwise members (node IDs) is the
// group's initial membership; every initial member must be started with the
// same list. A node joining an existing group passes no members and waits
// for the leader to send it the log (or a snapshot) after ChangeMembership
// added it. A new group whose state machine already holds state
// (AppliedIndex above 0, a Syncer: a range made by a split) starts its log
// after that index, at term InitialTerm, on every initial member alike.
func (h *Host) StartGroup(id uint64, members []uint64, sm StateMachine) error {
	return h.StartGroups([]GroupStart{{ID: id, Members: members, SM: sm}})
}

// GroupStart is one group for StartGroups: the arguments of StartGroup,
// and the node expected to lead a new group.
type GroupStart struct {
	ID      uint64
	Members []uint64
	SM      StateMachine
	// Leader, if not 0, is the member expected to lead a new group.
	// Ignored for a group that has state here. If it is this node, the
	// replica campaigns as it starts: at once without Config.Quiesce;
	// with it, when its turn comes (Config.MaxStartCampaigns campaign at
	// once, startcampaign.go), running no election timer until then. If it
	// is another node, the replica here starts quiesced under it (with
	// Config.Quiesce and failover on): it runs no election timer while
	// the leader campaigns, any message wakes it, and liveness wakes it if
	// that node goes down or is never heard from (bootGraceTicks). Without
	// it, every replica of 10,000 new groups ran an election timer while
	// their leaders campaigned (BENCHMARKS.md, "Quiescence"). A group that
	// has state here starts quiesced too, under the voter it last voted
	// for (restart.go).
	Leader uint64
	// NoVoteWhileEmpty: while the replica has no log and no snapshot it
	// answers no vote or pre-vote request. For a replica of a group that
	// removed this node before and may have added it back (package
	// ranges): raft knows replicas by node, and an empty replica would
	// grant its vote to any candidate, one still counting this node as a
	// voter of a configuration the group has left included, which could
	// then win with it and overwrite committed entries. Added back, the
	// node is a learner until it caught up (it has a snapshot by then),
	// and a learner's vote is never needed.
	NoVoteWhileEmpty bool
}

// StartGroups is StartGroup for many groups: the start state of the new
// ones is written in batches of startChunk groups (each group's state in
// one), a sync each, and the groups run only once it is durable. If
// preparing or writing fails, no group of gs was started (state already
// written for new ones is kept, and a retry starts from it); if
// publishing fails part way (the Host closing, or a concurrent StartGroup
// of one of the IDs), the groups before it run and the error says how
// many. Started one by one, each with its own sync, 10,000 ranges took
// minutes (BENCHMARKS.md, "Quiescence").
func (h *Host) StartGroups(gs []GroupStart) error {
	if h.isStopped() {
		return ErrStopped
	}
	b := h.store.NewBatch()
	defer b.Close()
	staged := false
	// quietUnder[i]: the leader groups[i] starts quiesced under (0: none).
	quietUnder := make([]uint64, 0, len(gs))
	// restarted[i]: groups[i] starts from its state here, quiesced under
	// restartLeader (it says hello: restart.go).
	restarted := make([]bool, 0, len(gs))
	seen := make(map[uint64]bool, len(gs))
	groups := make([]*group, 0, len(gs))
	warm := make([][]raftpb.Entry, 0, len(gs))
	chunked := 0 // groups prepared into b since its last commit
	for i := range gs {
		if seen[gs[i].ID] {
			return fmt.Errorf("%w: %d", ErrGroupExists, gs[i].ID)
		}
		seen[gs[i].ID] = true
		if l := gs[i].Leader; l != 0 && len(gs[i].Members) > 0 && !slices.Contains(gs[i].Members, l) {
			return fmt.Errorf("%w: group %d: expected leader %d is not among its members %v",
				ErrInvalidRequest, gs[i].ID, l, gs[i].Members)
		}
		if chunked++; chunked > startChunk && !b.Empty() {
			if err := b.Commit(true); err != nil {
				return fmt.Errorf("multiraft: write the start of %d groups: %w", len(gs), err)
			}
			chunked = 1
		}
		g, wrote, ents, err := h.prepareGroup(gs[i].ID, gs[i].Members, gs[i].SM, b)
		if err != nil {
			return err
		}
		g.noVoteEmpty = gs[i].NoVoteWhileEmpty
		warm = append(warm, ents)
		staged = staged || wrote
		groups = append(groups, g)
		var under uint64
		if l := gs[i].Leader; l != 0 && wrote && g.term == BootTerm {
			switch {
			case l == h.cfg.NodeID && h.bootQuiet():
				under = l // waits for its turn to campaign
			case l == h.cfg.NodeID:
				g.in.campaign = true // unpublished: no lock needed yet
			case h.bootQuiet():
				under = l
			}
		} else if !wrote && h.bootQuiet() {
			under = g.restartLeader()
		}
		quietUnder = append(quietUnder, under)
		restarted = append(restarted, !wrote)
	}
	if staged {
		if err := b.Commit(true); err != nil {
			return fmt.Errorf("multiraft: write the start of %d groups: %w", len(gs), err)
		}
	}
	var toLead []*group  // published, waiting for their turn to campaign
	var toHello []*group // restarted, quiesced under a voter to ask for a heartbeat
	defer func() {
		h.queueStartCampaigns(toLead)
		h.queueHellos(toHello)
	}()
	for i, g := range groups {
		// Quiesced before it is published: nothing reaches it before.
		quiesced := quietUnder[i] != 0 && h.quiesceNew(g, quietUnder[i])
		if err := h.publishGroup(g, warm[i]); err != nil {
			if quiesced {
				h.unquiesceUnpublished(g) // this one only: the others run
			}
			if i > 0 {
				// Some run already: the Host is closing (or a caller
				// raced a StartGroup of the same ID), and they stop
				// with it.
				return fmt.Errorf("multiraft: %d of %d groups started: %w", i, len(groups), err)
			}
			return err
		}
		switch {
		case quiesced && quietUnder[i] == h.cfg.NodeID:
			toLead = append(toLead, g)
		case quiesced && restarted[i]:
			toHello = append(toHello, g)
		}
	}
	return nil
}

// startChunk is the most groups StartGroups stages in one batch. A batch
// past half of Pebble's memtable goes in as a "flushable batch", which
// Pebble kept in memory after it was flushed: the start of 10,000 groups in
// one batch held 4 MB of heap for good, 0.4 KiB per idle replica
// (BENCHMARKS.md, "Quiescence: the idle floor and memory, later"). A
// group's start state is about 0.3 KiB, so 512 of them stay far below that.
const startChunk = 512

// prepareGroup builds the replica of group id without running it, and
// stages in b the start state of a new group (wrote: b must be committed
// before the group runs). warm are loaded entries for the entry cache
// (publishGroup).
func (h *Host) prepareGroup(id uint64, members []uint64, sm StateMachine, b storage.Batch) (g *group, wrote bool, warm []raftpb.Entry, err error) {
	if id == 0 {
		return nil, false, nil, fmt.Errorf("%w: group ID 0", ErrInvalidRequest)
	}
	if sm == nil {
		return nil, false, nil, fmt.Errorf("%w: nil StateMachine", ErrInvalidRequest)
	}
	h.mu.RLock()
	_, exists := h.mu.groups[id]
	closing := h.mu.closing
	h.mu.RUnlock()
	if closing {
		return nil, false, nil, ErrStopped
	}
	if exists {
		return nil, false, nil, fmt.Errorf("%w: %d", ErrGroupExists, id)
	}
	st, err := h.store.Load(id)
	if err != nil {
		return nil, false, nil, fmt.Errorf("multiraft: load group %d: %w", id, err)
	}
	// No log, no snapshot, no membership: the replica starts now. (A
	// hard state alone is an empty replica that voted while it waited for
	// its first snapshot.)
	empty := len(st.Entries) == 0 && raft.IsEmptySnap(st.Snapshot) &&
		len(st.ConfState.Voters) == 0 && len(st.ConfState.Learners) == 0
	fresh := empty && raft.IsEmptyHardState(st.HardState)
	if at := sm.AppliedIndex(); empty && at > 0 && len(members) > 0 {
		// The state machine already holds the state at index at, made
		// by another group's command (a split creates its right half so:
		// package ranges). Every replica starts the same way: its log
		// begins after at, whose entry has term InitialTerm.
		h.startAt(b, id, at, members, &st)
		wrote = true
	} else if fresh && len(members) > 0 {
		// A new group: its membership is a snapshot at index 1 that holds
		// no state, and its log begins at 2. A node added later gets that
		// membership in a snapshot; from a log that began at 1 it would
		// apply the first change on an empty configuration, and raft
		// panics ("removed all voters"): TestJoinYoungGroup.
		h.writeStart(b, id, bootIndex, BootTerm, bootState, members, &st)
		wrote = true
	}
	snapMeta := st.Snapshot.Metadata
	g = &group{
		id:        id,
		h:         h,
		sm:        sm,
		log:       newMemLog(id, &h.logSrc, snapMeta.Index, snapMeta.Term),
		snapIndex: snapMeta.Index,
		confIndex: max(st.ConfIndex, snapMeta.Index),
	}
	g.log.hs = st.HardState
	g.log.cs = st.ConfState
	if st.ConfIndex < snapMeta.Index {
		g.log.cs = snapMeta.ConfState
	}
	loaded := g.log.record(st.Entries)
	g.log.owner = g
	applied := sm.AppliedIndex()
	if string(st.Snapshot.Data) == bootState && applied < snapMeta.Index {
		// Nothing lies at or below the boot index.
		applied = snapMeta.Index
	}
	if string(st.Snapshot.Data) == syncedState && applied < snapMeta.Index {
		// The state machine synced everything up to the truncation point
		// before it was written; what lies between its last command and
		// that point holds no command (empty entries, membership changes,
		// which the conf state has).
		if _, ok := sm.(Syncer); !ok {
			return nil, false, nil, fmt.Errorf("%w: group %d: the log was truncated for a state machine that syncs itself, and this one does not",
				ErrInvalidRequest, id)
		}
		applied = snapMeta.Index
	}
	if applied < snapMeta.Index {
		if err := restore(sm, &st.Snapshot); err != nil {
			return nil, false, nil, fmt.Errorf("multiraft: group %d: restore snapshot at %d: %w", id, snapMeta.Index, err)
		}
		applied = snapMeta.Index
	}
	if applied > st.HardState.Commit && applied > snapMeta.Index {
		return nil, false, nil, fmt.Errorf("%w: group %d: state machine applied index %d is past the log's commit index %d",
			ErrInvalidRequest, id, applied, st.HardState.Commit)
	}
	g.applied = applied
	g.term, g.commit = st.HardState.Term, st.HardState.Commit
	// raft replays from the last persisted membership change, not from the
	// state machine's applied index: a change the state machine has passed
	// may not have reached the conf state before a crash. applyEntries
	// skips the commands the state machine already has.
	raftApplied := min(applied, max(g.confIndex, snapMeta.Index))
	// The loaded entries raft hands back at once, to be applied again, go
	// into the cache as the group is published: they are in memory now,
	// and would be read again otherwise. The others were applied; they
	// wait on disk for a follower that needs them (their terms are in the
	// log). Many groups starting together fill the cache and evict each
	// other's oldest: a group's first Ready then reads them back, as it
	// would without the cache.
	warm = loaded[sort.Search(len(loaded), func(i int) bool { return loaded[i].Index > raftApplied }):]
	rn, err := raft.NewRawNode(&raft.Config{
		ID:                        h.cfg.NodeID,
		ElectionTick:              h.cfg.ElectionTicks,
		HeartbeatTick:             h.cfg.HeartbeatTicks,
		Storage:                   g.log,
		Applied:                   raftApplied,
		MaxSizePerMsg:             h.cfg.MaxSizePerMsg,
		MaxCommittedSizePerReady:  h.cfg.MaxSizePerMsg * 4,
		MaxUncommittedEntriesSize: h.cfg.MaxUncommittedBytes,
		MaxInflightMsgs:           h.cfg.MaxInflightMsgs,
		CheckQuorum:               !h.cfg.DisableCheckQuorum,
		PreVote:                   !h.cfg.DisablePreVote,
		DisableProposalForwarding: h.cfg.DisableProposalForwarding,
		// A leader that applies its own removal stops leading at once
		// rather than lead a group it is no member of. The group then
		// waits out an election timeout (the node is alive: no liveness
		// failover), so a caller that moves a leader's replica hands
		// the leadership away first.
		StepDownOnRemoval: true,
		Logger:            newRaftLogger(h.log, id),
	})
	if err != nil {
		return nil, false, nil, fmt.Errorf("multiraft: group %d: %w", id, err)
	}
	g.rn = rn
	g.role = raft.StateFollower
	return g, wrote, warm, nil
}

// publishGroup runs a group prepareGroup built, whose start state is
// durable, and caches the entries warm of its log.
func (h *Host) publishGroup(g *group, warm []raftpb.Entry) error {
	id := g.id
	g.publishStatus()
	g.publishConf()

	h.mu.Lock()
	if h.mu.closing {
		h.mu.Unlock()
		return ErrStopped
	}
	if _, ok := h.mu.groups[id]; ok {
		h.mu.Unlock()
		return fmt.Errorf("%w: %d", ErrGroupExists, id)
	}
	// Active before anything can reach it (a quiesce heartbeat arriving
	// in between would quiesce a group the tick then still walks), unless
	// it starts quiesced (StartGroups).
	if !g.quiesced {
		h.act.add(g)
	}
	// Cached before the group is visible, so that no worker appends to its
	// log meanwhile; and only by the Host's one replica of id (a replica
	// that lost a race to start could put entries older than the
	// winner's).
	h.entries.put(id, warm)
	h.mu.groups[id] = g
	i := sort.Search(len(h.mu.ids), func(i int) bool { return h.mu.ids[i] >= id })
	h.mu.ids = append(h.mu.ids, 0)
	copy(h.mu.ids[i+1:], h.mu.ids[i:])
	h.mu.ids[i] = id
	h.mu.Unlock()
	h.statusVersion.Add(1) // after the group is in Status
	h.metrics.groupAdded(g.role)
	h.sched.enqueue(id)
	return nil
}

// InitialTerm is the term of the entry at the applied index of a group
// started from a state machine that already holds state (see StartGroup).
const InitialTerm = 5

// The start of a new group (StartGroup): a snapshot at bootIndex, term
// BootTerm, whose data is bootState: it holds no state, only the initial
// membership. It never leaves the node: a follower that needs it gets a
// snapshot built by snapshot().
const (
	bootIndex = 1
	bootState = "flotilla: initial membership"
)

// BootTerm is the term of a group started with its initial members: a
// group still at BootTerm has held no election.
const BootTerm = 1

// startAt writes the raft state of a group whose state machine starts at
// index at, with voters members, and sets st to it: its log is truncated at
// at (term InitialTerm), as if it had applied and synced that far.
func (h *Host) startAt(b storage.Batch, id, at uint64, members []uint64, st *storage.GroupState) {
	h.writeStart(b, id, at, InitialTerm, syncedState, members, st)
}

// writeStart stages in b the raft state of a group whose log begins after
// index at, of term term, described by a snapshot with data and the
// membership members, and sets st to it. A hard state the replica already
// had (a vote cast while it was empty) is kept if its term is later. The
// caller commits b, synced, before the group runs.
func (h *Host) writeStart(b storage.Batch, id, at, term uint64, data string, members []uint64, st *storage.GroupState) {
	// The voters are the interned list (confsets.go), which the group's
	// published list shares while it is in use (a collection between the
	// two may make a second copy): the log's conf state keeps it, and is
	// only ever replaced, never modified in place.
	cs := raftpb.ConfState{Voters: *h.confSets.intern(members)}
	hs := raftpb.HardState{Term: term, Commit: at}
	if st.HardState.Term > term {
		hs.Term, hs.Vote = st.HardState.Term, st.HardState.Vote
	}
	snap := raftpb.Snapshot{
		Data:     []byte(data),
		Metadata: raftpb.SnapshotMetadata{Index: at, Term: term, ConfState: cs},
	}
	b.SetSnapshot(id, snap)
	b.SetConfState(id, cs, at)
	b.SetHardState(id, hs)
	st.HardState, st.ConfState, st.ConfIndex, st.Snapshot = hs, cs, at, snap
}

// StopGroup stops the local replica of group id, keeping its data, and
// waits until it stopped. Pending requests fail with ErrGroupRemoved.
func (h *Host) StopGroup(ctx context.Context, id uint64) error {
	return h.stopGroup(ctx, id, keepState)
}

// RemoveGroup stops the local replica of group id and deletes its raft
// state. The state machine's own data is the caller's to delete.
func (h *Host) RemoveGroup(ctx context.Context, id uint64) error {
	return h.stopGroup(ctx, id, deleteState)
}

// RemoveGroupAsync is RemoveGroup without the wait: it asks the group's
// owner to stop it and delete its raft state, and returns a channel closed
// once that is done. For callers that must not block on a worker (one that
// drives a Manual Host itself, say).
func (h *Host) RemoveGroupAsync(id uint64) (<-chan struct{}, error) {
	req, err := h.requestStop(id, deleteState)
	if err != nil {
		return nil, err
	}
	return req.done, nil
}

// RemoveReplicaAsync is RemoveGroupAsync for a replica that may start on
// this node again (its group removed the node, and may add it back): all
// its raft state goes but its term and vote, which stay as the hard state
// of an empty replica. raft knows a replica by its node's ID alone: one
// started here again from nothing could vote twice in a term, or take a
// stale leader of a term the removed replica had left behind. Started
// again, the replica is empty at that term.
func (h *Host) RemoveReplicaAsync(id uint64) (<-chan struct{}, error) {
	req, err := h.requestStop(id, deleteKeepVote)
	if err != nil {
		return nil, err
	}
	return req.done, nil
}

// requestStop hands group id's owner a stop request.
func (h *Host) requestStop(id uint64, remove removal) (*stopReq, error) {
	g, err := h.lookup(id)
	if err != nil {
		return nil, err
	}
	req := &stopReq{remove: remove, done: make(chan struct{})}
	g.in.Lock()
	if g.in.closed || g.in.stop != nil {
		g.in.Unlock()
		return nil, fmt.Errorf("%w: %d", ErrGroupRemoved, id)
	}
	g.in.stop = req
	g.in.Unlock()
	h.sched.enqueue(id)
	return req, nil
}

func (h *Host) stopGroup(ctx context.Context, id uint64, remove removal) error {
	req, err := h.requestStop(id, remove)
	if err != nil {
		return err
	}
	select {
	case <-req.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-h.stopped:
		return ErrStopped
	}
}

// removeGroup forgets g. Called by g's owner from shutdown.
func (h *Host) removeGroup(g *group, remove removal) {
	// Before g leaves the map: a replica of the same group started once it
	// has left may cache entries already (publishGroup).
	h.entries.drop(g.id)
	h.mu.Lock()
	if h.mu.groups[g.id] == g {
		delete(h.mu.groups, g.id)
		i := sort.Search(len(h.mu.ids), func(i int) bool { return h.mu.ids[i] >= g.id })
		h.mu.ids = append(h.mu.ids[:i], h.mu.ids[i+1:]...)
	}
	h.mu.Unlock()
	h.statusVersion.Add(1) // after the group left Status
	h.quiet.mu.Lock()
	h.unquiesceLocked(g)
	h.quiet.mu.Unlock()
	h.act.remove(g)
	h.metrics.groupRemoved(g.role)
	h.hub.forget(g.id)
	if remove != keepState {
		b := h.store.NewBatch()
		b.DeleteGroup(g.id)
		if hs := g.log.hs; remove == deleteKeepVote && (hs.Term != 0 || hs.Vote != 0) {
			// Its commit goes: the log that backed it is gone.
			b.SetHardState(g.id, raftpb.HardState{Term: hs.Term, Vote: hs.Vote})
		}
		if err := b.Commit(!h.cfg.DisableSync); err != nil {
			h.fatal(fmt.Errorf("delete group %d: %w", g.id, err))
		}
		b.Close()
	}
}
