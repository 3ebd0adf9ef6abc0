package multiraft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"slices"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// noteSoftState records leadership and term changes from a Ready, before
// its messages are classified and its entries applied.
func (g *group) noteState(rd *raft.Ready) {
	if rd.SoftState != nil {
		if rd.SoftState.RaftState != g.role {
			g.h.metrics.roleChange(g.role, rd.SoftState.RaftState)
			g.role = rd.SoftState.RaftState
		}
		if rd.SoftState.Lead != g.lead {
			g.lead = rd.SoftState.Lead
			// An outstanding ReadIndex round may never be answered by a
			// deposed leader; reads are safe to retry, so fail them now.
			for k, b := range g.reads {
				delete(g.reads, k)
				b.finish(ErrLeaderChanged)
			}
		}
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		g.term = rd.HardState.Term
		g.commit = rd.HardState.Commit
	}
}

// applyReady applies what a persisted Ready commits: a received snapshot,
// committed entries, read states. Writes that apply produces (conf states,
// snapshots) go into b, committed by the caller without sync: they can be
// redone from the log after a crash. It returns the leader event to publish,
// if any, and false if the Host failed.
func (g *group) applyReady(rd *raft.Ready, w *worker) (LeaderEvent, bool, bool) {
	restored, _ := transport.SnapshotFile(rd.Snapshot.Data)
	for _, f := range g.snapFiles {
		if f != restored {
			os.Remove(f) // a received snapshot raft did not take
		}
	}
	g.snapFiles = g.snapFiles[:0]
	if !raft.IsEmptySnap(rd.Snapshot) {
		meta := rd.Snapshot.Metadata
		if err := restore(g.sm, &rd.Snapshot); err != nil {
			g.h.fatal(fmt.Errorf("group %d: restore snapshot at %d: %w", g.id, meta.Index, err))
			return LeaderEvent{}, false, false
		}
		g.h.metrics.snapshotsRestored.Add(1)
		g.applied, g.snapIndex, g.confIndex = meta.Index, meta.Index, meta.Index
		g.publishConf()
	}
	if len(rd.CommittedEntries) > 0 {
		if !g.applyEntries(rd.CommittedEntries, w) {
			return LeaderEvent{}, false, false
		}
	}
	for _, rs := range rd.ReadStates {
		k, ok := readKey(g.h.cfg.NodeID, rs.RequestCtx)
		if !ok {
			continue
		}
		if b, ok := g.reads[k]; ok {
			delete(g.reads, k)
			b.index = rs.Index
			g.readWaiting = append(g.readWaiting, b)
		}
	}
	if len(g.readWaiting) > 0 {
		keep := g.readWaiting[:0]
		for _, b := range g.readWaiting {
			if b.index <= g.applied {
				b.finish(nil)
			} else {
				keep = append(keep, b)
			}
		}
		g.readWaiting = keep
	}
	if len(g.transfers) > 0 && g.lead != 0 {
		keep := g.transfers[:0]
		for _, t := range g.transfers {
			if t.to == g.lead {
				t.done <- nil
			} else {
				keep = append(keep, t)
			}
		}
		g.transfers = keep
	}
	if sy, ok := g.sm.(Syncer); ok {
		if g.applied-g.snapIndex >= g.h.cfg.TruncateEntries && !g.truncateLog(sy, w.batch) {
			return LeaderEvent{}, false, false
		}
	} else if g.applied-g.snapIndex >= g.h.cfg.SnapshotEntries {
		if !g.takeSnapshot(w.batch) {
			return LeaderEvent{}, false, false
		}
	}
	g.publishStatus()
	return g.leaderEvent()
}

// leaderEvent returns an event when the group's leader or term differs
// from the last one published — but for a leader only once it has committed
// an entry of its own term (the entry at the commit index has the current
// term): before that it cannot serve reads or prove its leadership.
func (g *group) leaderEvent() (LeaderEvent, bool, bool) {
	if g.lead == g.published.Leader && (g.lead == 0 || g.term == g.published.Term) {
		return LeaderEvent{}, false, true
	}
	if g.lead != 0 {
		if t, err := g.log.Term(g.commit); err != nil || t != g.term {
			return LeaderEvent{}, false, true
		}
	}
	g.published = LeaderEvent{Group: g.id, Leader: g.lead, Term: g.term}
	return g.published, true, true
}

// applyEntries applies committed entries, batching consecutive commands
// into one StateMachine.Apply call.
func (g *group) applyEntries(ents []raftpb.Entry, w *worker) bool {
	cmds, keys := w.cmds[:0], w.keys[:0]
	flush := func() bool {
		if len(cmds) == 0 {
			return true
		}
		if err := g.sm.Apply(cmds); err != nil {
			g.h.fatal(fmt.Errorf("group %d: apply through index %d: %w", g.id, cmds[len(cmds)-1].Index, err))
			return false
		}
		for i := range cmds {
			if p, ok := g.proposals[keys[i]]; ok {
				delete(g.proposals, keys[i])
				p.finish(cmds[i].Result, nil)
			}
			cmds[i] = Command{}
		}
		cmds, keys = cmds[:0], keys[:0]
		return true
	}
	defer func() { w.cmds, w.keys = cmds[:0], keys[:0] }()
	for i := range ents {
		e := &ents[i]
		if e.Index <= g.applied {
			// Replayed after a restart: the state machine has it. A
			// membership change past the persisted conf state is applied
			// again, though: the state machine's applied index may have
			// been saved before the conf state was.
			if (e.Type == raftpb.EntryConfChange || e.Type == raftpb.EntryConfChangeV2) && e.Index > g.confIndex {
				if !g.applyConfChange(e, w.batch) {
					return false
				}
			}
			continue
		}
		switch e.Type {
		case raftpb.EntryNormal:
			if len(e.Data) < 8 {
				break // the empty entry of a new leader, or a dropped change
			}
			if !isPacked(e.Data) {
				cmds = append(cmds, Command{Index: e.Index, Data: e.Data[8:]})
				keys = append(keys, binary.BigEndian.Uint64(e.Data))
				break
			}
			if err := unpack(e.Data, func(key uint64, cmd []byte) {
				cmds = append(cmds, Command{Index: e.Index, Data: cmd})
				keys = append(keys, key)
			}); err != nil {
				g.h.fatal(fmt.Errorf("group %d: entry %d: %w", g.id, e.Index, err))
				return false
			}
		case raftpb.EntryConfChange, raftpb.EntryConfChangeV2:
			if !flush() || !g.applyConfChange(e, w.batch) {
				return false
			}
		}
		g.applied = e.Index
	}
	return flush()
}

// noteAdded records in addedAt the nodes that the change at index made
// members (voters or learners) of the group from non-members, and forgets
// those it removed.
func (g *group) noteAdded(before, after *raftpb.ConfState, index uint64) {
	in := func(cs *raftpb.ConfState, n uint64) bool {
		return slices.Contains(cs.Voters, n) || slices.Contains(cs.Learners, n) ||
			slices.Contains(cs.VotersOutgoing, n) || slices.Contains(cs.LearnersNext, n)
	}
	for _, l := range [][]uint64{after.Voters, after.Learners, after.VotersOutgoing, after.LearnersNext} {
		for _, n := range l {
			if !in(before, n) {
				if g.addedAt == nil {
					g.addedAt = map[uint64]uint64{}
				}
				g.addedAt[n] = index
			}
		}
	}
	for n := range g.addedAt {
		if !in(after, n) {
			delete(g.addedAt, n)
		}
	}
}

// applyConfChange applies one membership change; false if the Host failed.
func (g *group) applyConfChange(e *raftpb.Entry, b storage.Batch) bool {
	var cc raftpb.ConfChangeI
	var ctx []byte
	if e.Type == raftpb.EntryConfChange {
		var c raftpb.ConfChange
		if err := c.Unmarshal(e.Data); err != nil {
			g.h.fatal(fmt.Errorf("group %d: decode conf change at %d: %w", g.id, e.Index, err))
			return false
		}
		cc, ctx = c, c.Context
	} else {
		var c raftpb.ConfChangeV2
		if err := c.Unmarshal(e.Data); err != nil {
			g.h.fatal(fmt.Errorf("group %d: decode conf change at %d: %w", g.id, e.Index, err))
			return false
		}
		cc, ctx = c, c.Context
	}
	key, ch, data, single := decodeChange(cc, ctx)
	refused := false
	ma, applier := g.sm.(MembershipApplier)
	if applier && single {
		take, err := ma.ApplyMembership(e.Index, ch, data)
		if err != nil {
			g.h.fatal(fmt.Errorf("group %d: state machine applying membership change at %d: %w", g.id, e.Index, err))
			return false
		}
		if !take {
			cc, refused = refusedChange, true
		}
	}
	// A change at or below confIndex is already part of the persisted conf
	// state (a restart replays it); applying it twice could fail.
	if e.Index > g.confIndex {
		before := g.log.cs
		cs := g.rn.ApplyConfChange(cc)
		g.noteAdded(&before, cs, e.Index)
		g.log.cs = *cs
		g.confIndex = e.Index
		b.SetConfState(g.id, *cs, e.Index)
		if applier {
			// Durable now, not with the cycle: the state machine synced
			// its record of this change, and a crash must leave at most
			// this one change for a replay to ask it about again (the
			// record shows the last change exactly; a later one would
			// hide this one's answer: MembershipApplier).
			nb := g.h.store.NewBatch()
			nb.SetConfState(g.id, *cs, e.Index)
			err := nb.Commit(!g.h.cfg.DisableSync)
			nb.Close()
			if err != nil {
				g.h.fatal(fmt.Errorf("group %d: persist the membership at %d: %w", g.id, e.Index, err))
				return false
			}
		}
		g.publishConf()
	}
	if p, ok := g.proposals[key]; ok && len(ctx) >= 8 {
		delete(g.proposals, key)
		if refused {
			p.finish(nil, fmt.Errorf("%w: %v of node %d in group %d", ErrChangeRefused, ch.Kind, ch.Node, g.id))
		} else {
			p.finish(nil, nil)
		}
	}
	// Held proposals go to raft only after this Ready is advanced: until
	// then raft counts the change as unapplied and would turn a second
	// change into an empty entry.
	g.releaseAfterAdvance = true
	return true
}

// syncedState is the data of a persisted snapshot that holds no state: the
// state machine (a Syncer) had made everything up to its index durable
// itself when it was written. It never leaves the node: followers get
// snapshots built by snapshot().
const syncedState = "flotilla: state machine synced"

// truncateLog truncates the log at the applied index once the state
// machine has made it durable (see Syncer); false if the Host failed.
func (g *group) truncateLog(sy Syncer, b storage.Batch) bool {
	if err := sy.Sync(); err != nil {
		g.h.fatal(fmt.Errorf("group %d: sync state machine at %d: %w", g.id, g.applied, err))
		return false
	}
	term, err := g.log.Term(g.applied)
	if err != nil {
		g.h.fatal(fmt.Errorf("group %d: term of applied index %d: %w", g.id, g.applied, err))
		return false
	}
	// The conf state is the one at the applied index: every change up to
	// it has been applied, none after it.
	b.SetSnapshotKeepLog(g.id, raftpb.Snapshot{
		Data: []byte(syncedState),
		Metadata: raftpb.SnapshotMetadata{
			Index:     g.applied,
			Term:      term,
			ConfState: storage.CloneConf(g.log.cs),
		},
	})
	g.snapIndex = g.applied
	g.compactLog(b)
	return true
}

// takeSnapshot snapshots the state machine at the applied index, saves it,
// and truncates the log behind it (compactLog).
func (g *group) takeSnapshot(b storage.Batch) bool {
	snap, err := g.snapshot()
	if err != nil {
		g.h.fatal(err)
		return false
	}
	b.SetSnapshotKeepLog(g.id, snap)
	g.snapIndex = snap.Metadata.Index
	g.compactLog(b)
	return true
}

// compactLog truncates the log behind the snapshot just saved at
// snapIndex, in memory (the log's terms, the entry cache) and in the store
// (through b), keeping CompactionOverhead entries for followers that lag a
// little: the snapshot was saved with SetSnapshotKeepLog, and they stay
// readable on disk.
func (g *group) compactLog(b storage.Batch) {
	if g.snapIndex <= g.h.cfg.CompactionOverhead {
		return
	}
	keep := g.snapIndex - g.h.cfg.CompactionOverhead
	g.log.compact(keep)
	b.Truncate(g.id, keep+1)
}

// snapshot captures the state machine at the applied index, whole: for
// the snapshot the node keeps itself (takeSnapshot).
func (g *group) snapshot() (raftpb.Snapshot, error) {
	return g.snapshotFor(false)
}

// snapshotFor is snapshot; forFollower allows a stream marker. With
// forFollower it is the memLog's snapshot source: raft calls it (on the
// owner) when a follower needs entries that were compacted away, and a
// state machine that can stream its state (SnapshotOpener) gives a stream
// marker instead of its state (snapstream.go).
func (g *group) snapshotFor(forFollower bool) (raftpb.Snapshot, error) {
	term, err := g.log.Term(g.applied)
	if err != nil {
		return raftpb.Snapshot{}, fmt.Errorf("group %d: term of applied index %d: %w", g.id, g.applied, err)
	}
	_, durable := g.sm.(Syncer)
	if op, ok := g.sm.(SnapshotOpener); ok && durable && forFollower {
		return g.openStream(op, raftpb.SnapshotMetadata{Index: g.applied, Term: term, ConfState: storage.CloneConf(g.log.cs)})
	}
	var buf bytes.Buffer
	if err := g.sm.Snapshot(&buf); err != nil {
		return raftpb.Snapshot{}, fmt.Errorf("group %d: snapshot at %d: %w", g.id, g.applied, err)
	}
	return raftpb.Snapshot{
		Data: buf.Bytes(),
		Metadata: raftpb.SnapshotMetadata{
			Index:     g.applied,
			Term:      term,
			ConfState: storage.CloneConf(g.log.cs),
		},
	}, nil
}
