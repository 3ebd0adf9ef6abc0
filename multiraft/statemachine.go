package multiraft

import "io"

// Command is one committed command handed to StateMachine.Apply.
type Command struct {
	// Index is the command's raft log index. It never decreases; commands
	// proposed together may share one entry, and so one index.
	Index uint64
	// Data is the command as proposed. It is valid only during the Apply
	// call: copy what must outlive it.
	Data []byte
	// Result is set by Apply; it is returned to the proposer (if the
	// proposer is on this node). The engine does not retain it after
	// handing it over, and does not modify it.
	Result []byte
}

// StateMachine is the user's replicated state of one group. The engine
// creates nothing: the user passes one StateMachine per group to
// StartGroup.
//
// Apply, Snapshot, Restore and AppliedIndex are called by the scheduler
// worker that holds the group, never concurrently with each other for one
// group. Query is called on the goroutine of the Read caller and may run
// concurrently with Apply; it must be safe for that.
type StateMachine interface {
	// Apply applies committed commands in log order and sets each one's
	// Result. An error is fatal: the Host stops, because a replica that
	// could not apply a committed command can no longer agree with the
	// others.
	Apply(cmds []Command) error
	// Query answers a read once the engine has made sure the state machine
	// reflects every write committed before the Read began. Errors are
	// returned to the reader as they are.
	Query(query []byte) ([]byte, error)
	// Snapshot writes the whole state to w. An error is fatal.
	Snapshot(w io.Writer) error
	// Restore replaces the whole state by a snapshot read from r, taken at
	// log index index. An error is fatal.
	Restore(r io.Reader, index uint64) error
	// AppliedIndex returns the index of the last command whose effect is
	// durable in the state machine's own storage, so a restart replays only
	// what follows; an in-memory state machine returns 0 and is restored
	// from the last snapshot. Called once, when the group starts.
	AppliedIndex() uint64
}

// Syncer is implemented by a state machine that keeps its applied state in
// durable storage of its own (its AppliedIndex survives a restart). For
// such a group the engine truncates the log every Config.TruncateEntries
// applied entries without taking a snapshot: it calls Sync, then persists
// only the truncation point (index, term, membership). A follower that
// needs the truncated entries still gets a snapshot, built when asked. Far
// cheaper than snapshots for a large state, and the log stays short, so
// log entries are mostly deleted before the store writes them out again
// (flushes and compactions, BENCHMARKS.md).
type Syncer interface {
	// Sync makes the effect of every command applied so far durable. It is
	// called by the worker that holds the group, between Apply calls. An
	// error is fatal.
	Sync() error
}

// SnapshotGate is implemented by a state machine that may refuse a
// snapshot for now (a range whose span another replica on the node still
// holds: package ranges). AcceptSnapshot is called by the worker that holds
// the group with the data of a snapshot raft would restore, before raft
// sees it; false drops the message, and the leader sends the snapshot
// again later. It must not block and must not retain data.
type SnapshotGate interface {
	AcceptSnapshot(data []byte) bool
}

// MembershipApplier is implemented by a state machine that keeps a record
// of its group's membership (package kv: the range descriptor's replicas)
// and so must change it in the same apply as raft's configuration, or
// refuse the change.
//
// ApplyMembership is called by the worker that holds the group, between
// Apply calls, for each committed membership change at index, with the
// data its proposer gave ChangeMembershipWith (nil if none; valid only
// during the call). It returns whether the change takes effect. On false,
// every replica applies an empty change to raft instead (raft skips a
// change for node 0), the membership stays as it was, and the proposer
// gets ErrChangeRefused; so the answer must follow from the replicated
// state alone. The engine persists the configuration right after each
// call, so a node that crashed between the two replays one change at
// most, the last the state machine saw: the call comes again with an
// index the state machine has applied, and must give the same answer (or
// one with the same outcome: a change that changes nothing). An error is
// fatal: the Host stops.
type MembershipApplier interface {
	ApplyMembership(index uint64, ch Change, data []byte) (bool, error)
}
