package multiraft

import (
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// memLog implements raft.Storage over the in-memory tail of one group's
// log; the durable copy lives in the storage package and is read only at
// start-up.
//
// Owned by the worker holding the group: raft calls it only from inside
// RawNode methods, which only that worker calls. It needs no lock.
//
// ents[0] is a dummy entry at the compaction point (its Index and Term are
// those of the last entry dropped), so ents[i].Index == ents[0].Index+i.
// Entries handed to raft are never modified in place afterwards: a
// conflicting append or a compaction copies, because raft may still hold
// the old slice in outgoing messages.
type memLog struct {
	hs   raftpb.HardState
	cs   raftpb.ConfState
	ents []raftpb.Entry
	// snapshot produces a snapshot of the group's current applied state.
	snapshot func() (raftpb.Snapshot, error)
}

var _ raft.Storage = (*memLog)(nil)

func newMemLog(compactIndex, compactTerm uint64) *memLog {
	return &memLog{ents: []raftpb.Entry{{Index: compactIndex, Term: compactTerm}}}
}

func (l *memLog) InitialState() (raftpb.HardState, raftpb.ConfState, error) {
	return l.hs, l.cs, nil
}

func (l *memLog) offset() uint64 { return l.ents[0].Index }

func (l *memLog) FirstIndex() (uint64, error) { return l.offset() + 1, nil }

func (l *memLog) LastIndex() (uint64, error) { return l.lastIndex(), nil }

func (l *memLog) lastIndex() uint64 { return l.offset() + uint64(len(l.ents)) - 1 }

func (l *memLog) Term(i uint64) (uint64, error) {
	off := l.offset()
	if i < off {
		return 0, raft.ErrCompacted
	}
	if i-off >= uint64(len(l.ents)) {
		return 0, raft.ErrUnavailable
	}
	return l.ents[i-off].Term, nil
}

func (l *memLog) Entries(lo, hi, maxSize uint64) ([]raftpb.Entry, error) {
	off := l.offset()
	if lo <= off {
		return nil, raft.ErrCompacted
	}
	if hi > l.lastIndex()+1 {
		return nil, raft.ErrUnavailable
	}
	// Capped: raft appends unstable entries to what Entries returns, which
	// must never write into l.ents' spare capacity.
	ents := l.ents[lo-off : hi-off : hi-off]
	if len(ents) <= 1 {
		return ents, nil
	}
	size := uint64(ents[0].Size())
	for n := 1; n < len(ents); n++ {
		size += uint64(ents[n].Size())
		if size > maxSize {
			return ents[:n:n], nil
		}
	}
	return ents[:len(ents):len(ents)], nil
}

func (l *memLog) Snapshot() (raftpb.Snapshot, error) {
	if l.snapshot == nil {
		return raftpb.Snapshot{}, raft.ErrSnapshotTemporarilyUnavailable
	}
	return l.snapshot()
}

// append adds entries, replacing any conflicting tail.
func (l *memLog) append(ents []raftpb.Entry) {
	if len(ents) == 0 {
		return
	}
	off := l.offset()
	first := ents[0].Index
	if first <= off {
		// Already compacted away: keep only the part after the compaction
		// point.
		if ents[len(ents)-1].Index <= off {
			return
		}
		ents = ents[off+1-first:]
		first = ents[0].Index
	}
	switch k := first - off; {
	case k == uint64(len(l.ents)):
		l.ents = append(l.ents, ents...)
	case k < uint64(len(l.ents)):
		l.ents = append(append([]raftpb.Entry(nil), l.ents[:k]...), ents...)
	default:
		panic("multiraft: log gap in append")
	}
}

// applySnapshot resets the log to start after snap.
func (l *memLog) applySnapshot(meta raftpb.SnapshotMetadata) {
	l.ents = []raftpb.Entry{{Index: meta.Index, Term: meta.Term}}
	l.cs = meta.ConfState
}

// compact drops entries up to and including index.
func (l *memLog) compact(index uint64) {
	off := l.offset()
	if index <= off || index > l.lastIndex() {
		return
	}
	i := index - off
	ents := make([]raftpb.Entry, 1, uint64(len(l.ents))-i)
	ents[0] = raftpb.Entry{Index: l.ents[i].Index, Term: l.ents[i].Term}
	l.ents = append(ents, l.ents[i+1:]...)
}
