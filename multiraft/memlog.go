package multiraft

import (
	"fmt"
	"sort"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/storage"
)

// memLog implements raft.Storage for one group. It holds what raft asks
// for often and cheaply: the hard state, the conf state, the compaction
// point, the last index and the terms of the entries. The entries
// themselves are in the store (written before they are appended here) and
// the recent ones in the Host's entry cache (entrycache.go): Entries looks
// in the cache first and reads the store on a miss.
//
// Owned by the worker holding the group: raft calls it only from inside
// RawNode methods, which only that worker calls. It needs no lock; the
// cache it shares with the other groups has its own.
//
// The log is (index, last]; index and term are those of the compaction
// point, the last entry dropped (or the snapshot the log starts after).
// Entries handed to raft are never modified afterwards: they are copies
// of the cache's entry values (sharing data nobody modifies) or entries
// read for the call.
type memLog struct {
	hs raftpb.HardState
	cs raftpb.ConfState
	// index and term of the compaction point.
	index, term uint64
	last        uint64
	// terms: the entries of (index, last] by term, one run per term change,
	// ascending.
	terms []termRun
	id    uint64
	src   *logSource
	// owner is the group whose state Snapshot produces; nil in tests of
	// the log alone. (A method of the group, not a closure: 24 bytes less
	// per replica.)
	owner *group
}

// termRun says that the entries from index on, up to the next run, have
// term term.
type termRun struct{ index, term uint64 }

// logSource is where the memLogs of a Host find entries, and what they do
// when the store fails them. Shared by the Host's groups; read-only.
type logSource struct {
	cache *entryCache
	store storage.Store
	// fatal stops the Host (Host.fatal).
	fatal func(error)
}

var _ raft.Storage = (*memLog)(nil)

func newMemLog(id uint64, src *logSource, compactIndex, compactTerm uint64) *memLog {
	return &memLog{id: id, src: src, index: compactIndex, term: compactTerm, last: compactIndex}
}

func (l *memLog) InitialState() (raftpb.HardState, raftpb.ConfState, error) {
	return l.hs, l.cs, nil
}

func (l *memLog) FirstIndex() (uint64, error) { return l.index + 1, nil }

func (l *memLog) LastIndex() (uint64, error) { return l.last, nil }

func (l *memLog) lastIndex() uint64 { return l.last }

// Term answers from the runs, with no cache or store access.
func (l *memLog) Term(i uint64) (uint64, error) {
	switch {
	case i < l.index:
		return 0, raft.ErrCompacted
	case i == l.index:
		return l.term, nil
	case i > l.last:
		return 0, raft.ErrUnavailable
	}
	return l.termOf(i), nil
}

// termOf returns the term of entry i, in (index, last].
func (l *memLog) termOf(i uint64) uint64 {
	k := sort.Search(len(l.terms), func(k int) bool { return l.terms[k].index > i })
	return l.terms[k-1].term
}

// Entries returns the entries from the cache, and what it lacks from the
// store (then caching them). The returned slice is the caller's: raft may
// append to it.
//
// A store that fails the read stops the Host (fatal) and Entries returns
// no entry and no error. raft v3.6 panics on any error from Entries when
// it collects committed entries (ErrCompacted is taken only when sending
// to a follower), but takes a short result there for its size limit:
// nothing is applied or sent, and the halted Host runs no further cycle.
// Elsewhere raft panics on the empty answer (a campaign scanning the
// unapplied entries for a membership change); processCycle ends that
// panic, since the Host is stopping (TestEntriesReadErrorStopsHostWithoutPanic).
func (l *memLog) Entries(lo, hi, maxSize uint64) ([]raftpb.Entry, error) {
	if lo <= l.index {
		return nil, raft.ErrCompacted
	}
	if hi > l.last+1 {
		return nil, raft.ErrUnavailable
	}
	if lo >= hi {
		return nil, nil
	}
	ents, size, done := l.src.cache.get(l.id, lo, hi, maxSize)
	if done {
		return ents, nil
	}
	next, room := lo+uint64(len(ents)), maxSize
	if len(ents) > 0 {
		room = maxSize - size // get stopped below maxSize
	}
	read, err := l.src.store.Entries(l.id, next, hi, room)
	if err == nil {
		err = l.check(read, next, hi)
	}
	if err != nil {
		l.src.fatal(fmt.Errorf("group %d: read log entries [%d,%d): %w", l.id, next, hi, err))
		return nil, nil
	}
	l.src.cache.add(l.id, read)
	if len(ents) == 0 {
		return read, nil
	}
	if uint64(read[0].Size()) > room {
		// The store returns its first entry whatever its size; the
		// cache's entries came first.
		return ents, nil
	}
	return append(ents, read...), nil
}

// check verifies that entries read from the store for [lo, hi) are the
// log's: consecutive from lo, at least one, with the terms of the runs. A
// mismatch is a store that lost or overwrote entries behind the engine's
// back, or a bug.
func (l *memLog) check(read []raftpb.Entry, lo, hi uint64) error {
	if len(read) == 0 || uint64(len(read)) > hi-lo {
		return fmt.Errorf("%w: %d entries for [%d,%d)", storage.ErrCorrupt, len(read), lo, hi)
	}
	for i := range read {
		e := &read[i]
		if e.Index != lo+uint64(i) || e.Term != l.termOf(e.Index) {
			return fmt.Errorf("%w: entry %d/%d read where the log has %d/%d",
				storage.ErrCorrupt, e.Index, e.Term, lo+uint64(i), l.termOf(lo+uint64(i)))
		}
	}
	return nil
}

// Snapshot produces a snapshot of the group's current applied state. A
// state machine that cannot read its own state stops the Host, as any
// storage error on the raft path does.
func (l *memLog) Snapshot() (raftpb.Snapshot, error) {
	if l.owner == nil {
		return raftpb.Snapshot{}, raft.ErrSnapshotTemporarilyUnavailable
	}
	s, err := l.owner.snapshotFor(true)
	if err != nil {
		l.src.fatal(fmt.Errorf("snapshot for a follower: %w", err))
		return raftpb.Snapshot{}, raft.ErrSnapshotTemporarilyUnavailable
	}
	return s, nil
}

// append adds entries, which the store holds already, replacing any
// conflicting tail, and caches them.
func (l *memLog) append(ents []raftpb.Entry) {
	l.src.cache.put(l.id, l.record(ents))
}

// record adds the terms of entries, replacing any conflicting tail, and
// returns the entries past the compaction point.
func (l *memLog) record(ents []raftpb.Entry) []raftpb.Entry {
	if len(ents) == 0 {
		return nil
	}
	if first := ents[0].Index; first <= l.index {
		// Already compacted away: keep only the part after the compaction
		// point.
		if ents[len(ents)-1].Index <= l.index {
			return nil
		}
		ents = ents[l.index+1-first:]
	}
	first := ents[0].Index
	if first > l.last+1 {
		panic("multiraft: log gap in append")
	}
	l.terms = l.terms[:sort.Search(len(l.terms), func(k int) bool { return l.terms[k].index >= first })]
	for i := range ents {
		if n := len(l.terms); n == 0 || l.terms[n-1].term != ents[i].Term {
			l.terms = append(l.terms, termRun{index: ents[i].Index, term: ents[i].Term})
		}
	}
	l.last = ents[len(ents)-1].Index
	return ents
}

// applySnapshot resets the log to start after snap.
func (l *memLog) applySnapshot(meta raftpb.SnapshotMetadata) {
	l.index, l.term, l.last = meta.Index, meta.Term, meta.Index
	l.terms = nil
	l.cs = meta.ConfState
	l.src.cache.drop(l.id)
}

// compact drops entries up to and including index.
func (l *memLog) compact(index uint64) {
	if index <= l.index || index > l.last {
		return
	}
	l.term = l.termOf(index)
	if index == l.last {
		l.terms = nil
	} else {
		// From the run that holds index+1 on.
		k := sort.Search(len(l.terms), func(k int) bool { return l.terms[k].index > index+1 }) - 1
		n := copy(l.terms, l.terms[k:])
		l.terms = l.terms[:n]
		l.terms[0].index = index + 1
		if cap(l.terms) > 8 && 4*n < cap(l.terms) {
			// Many elections, compacted away: give the array back.
			l.terms = append([]termRun(nil), l.terms...)
		}
	}
	l.index = index
	l.src.cache.compact(l.id, index)
}
