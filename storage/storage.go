// Package storage persists the raft state of many groups in one store, so
// that the engine can write the entries and hard states of every group that
// is ready in one cycle with one batch and one sync (group commit).
//
// The engine keeps only the terms of each group's log in memory, and the
// recent entries of all groups in one node-wide cache of bounded size; it
// reads entries back from here (Store.Entries) when the cache misses them,
// and whole groups at start-up. The store is write-mostly, and its layout is
// chosen for cheap appends, range deletes and scans of one group's log.
//
// Two implementations: Pebble (durable, for nodes) and Mem (a map, for the
// deterministic harness and simulation, able to lose unsynced writes on a
// simulated crash).
//
// Goroutines: Pebble's own, and one of this package per open Pebble store,
// the compaction scheduler's grantLoop (compactsched.go), which the
// store's Close stops.
//
// Lock order: Pebble.closing, then Pebble's own (Stats holds closing's
// read lock across the DB's Metrics); compactionScheduler.mu and
// stallClock.mu are leaves, taken under Pebble's locks (Pebble calls into
// them holding its mutexes); Mem.mu is a leaf.
package storage

import (
	"errors"

	"go.etcd.io/raft/v3/raftpb"
)

// Sentinel errors.
var (
	// ErrClosed is returned by operations on a closed store.
	ErrClosed = errors.New("storage: closed")
	// ErrCorrupt is returned when persisted data cannot be decoded.
	ErrCorrupt = errors.New("storage: corrupt data")
	// ErrEntryMissing is returned by Store.Entries when an index in the
	// range it reads holds no entry: truncated, deleted with a snapshot or
	// a conflicting append, or never written.
	ErrEntryMissing = errors.New("storage: log entry missing")
	// ErrConfig is returned by OpenPebble for a PebbleOptions field it
	// checks (CompactionDuty) outside the limits its doc gives; what
	// Pebble itself refuses comes back as Pebble's error, wrapped.
	ErrConfig = errors.New("storage: invalid config")
)

// GroupState is everything persisted for one group.
type GroupState struct {
	// HardState is the last saved hard state; empty if none.
	HardState raftpb.HardState
	// ConfState is the membership as of ConfIndex.
	ConfState raftpb.ConfState
	// ConfIndex is the log index of the last configuration change whose
	// effect ConfState includes; 0 for the bootstrap membership.
	ConfIndex uint64
	// Snapshot is the last snapshot, with its data; empty if none.
	Snapshot raftpb.Snapshot
	// Entries is the log after the snapshot (or after the truncation point),
	// in index order without gaps.
	Entries []raftpb.Entry
}

// Store holds the raft state of every group of one node.
//
// A Store is safe for concurrent use: several workers may build and commit
// batches at the same time. Load and Groups are meant for start-up.
type Store interface {
	// Groups lists the groups that have any persisted state, ascending.
	Groups() ([]uint64, error)
	// Load returns what is persisted for group. A group with nothing
	// persisted returns a zero GroupState and no error. The caller owns the
	// returned slices.
	Load(group uint64) (GroupState, error)
	// Entries returns the group's log entries with indexes in [lo, hi), in
	// order: the first (lo) even if it is larger than maxBytes, then as
	// many of the next as fit with it in maxBytes (their encoded sizes,
	// raftpb.Entry.Size, summed). lo >= hi returns no entry and no error.
	// It reads what committed batches wrote, synced or not; an entry a
	// concurrent Commit writes or deletes may or may not be seen.
	//
	// If an index in [lo, hi) holds no entry, and no entry before it
	// stopped the read at maxBytes, it returns an error wrapping
	// ErrEntryMissing, naming the group and the index, and no entries; an
	// undecodable entry gives ErrCorrupt. Entries covered by a
	// snapshot saved with SetSnapshotKeepLog stay readable until
	// truncated, though Load no longer returns them.
	//
	// The caller owns the returned slice and the entries' Data: nothing
	// aliases the store's buffers.
	Entries(group, lo, hi, maxBytes uint64) ([]raftpb.Entry, error)
	// NewBatch returns an empty batch. Batches are not safe for concurrent
	// use; each worker uses its own.
	NewBatch() Batch
	// Close releases the store. Batches must not be used afterwards.
	Close() error
}

// Batch collects writes for many groups; Commit applies them atomically.
// The batch copies what it is given: callers may reuse their buffers once a
// method returns.
type Batch interface {
	// Append writes entries (ascending, contiguous). Entries of the group
	// after the last one written and up to prevLast (the group's last index
	// before this append) are deleted: raft overwrote a conflicting tail.
	Append(group uint64, entries []raftpb.Entry, prevLast uint64)
	// SetHardState saves hs as the group's hard state.
	SetHardState(group uint64, hs raftpb.HardState)
	// SetConfState saves the membership as of log index index.
	SetConfState(group uint64, cs raftpb.ConfState, index uint64)
	// SetSnapshot saves snap (metadata and data) and deletes the group's
	// whole log: raft drops every entry it had when it restores a snapshot,
	// those past the snapshot's index too (a follower's conflicting tail;
	// kept, a restart loaded them as the log's tail, with terms below the
	// snapshot's). Entries appended after it in the same batch stay.
	SetSnapshot(group uint64, snap raftpb.Snapshot)
	// SetSnapshotKeepLog saves snap like SetSnapshot but deletes no log
	// entry: the entries it covers stay readable with Store.Entries (for
	// followers that lag a little) until the caller deletes them with
	// Truncate. Load returns only the entries after the snapshot.
	SetSnapshotKeepLog(group uint64, snap raftpb.Snapshot)
	// Truncate deletes the group's log entries with index < before.
	Truncate(group uint64, before uint64)
	// DeleteGroup deletes everything of the group.
	DeleteGroup(group uint64)
	// Empty reports whether the batch holds no write.
	Empty() bool
	// Commit applies the batch atomically; with sync, it returns only once
	// the writes are durable. After Commit the batch is empty and may be
	// reused. An error means nothing is known to be durable; the engine
	// treats it as fatal.
	Commit(sync bool) error
	// Close releases the batch without committing it.
	Close()
}
