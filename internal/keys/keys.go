// Package keys is the one registry of the kinds of key in a node's Pebble
// database. The raft logs (package storage) and every group's state machine
// (package kv) share that database; the first byte of every key is its
// kind, so two owners can never write the same key as long as each kind
// here has one owner. TestKindsDisjoint checks it.
//
// A kind is followed by the group ID (8 bytes, big-endian) and then by the
// rest of the layout given with it.
package keys

// Kind is the first byte of a key.
type Kind byte

// Kinds of the raft storage (package storage).
const (
	// RaftLog: group(8) index(8) → raftpb.Entry.
	RaftLog Kind = 'l'
	// RaftHardState: group(8) → raftpb.HardState.
	RaftHardState Kind = 'h'
	// RaftConfState: group(8) → confIndex(8) raftpb.ConfState.
	RaftConfState Kind = 'c'
	// RaftSnapshot: group(8) → raftpb.Snapshot.
	RaftSnapshot Kind = 's'
)

// Kinds of the KV state machine (package kv).
const (
	// Data: group(8) key → revision(8) value.
	Data Kind = 'k'
	// Applied: group(8) → applied index(8) revision(8).
	Applied Kind = 'a'
	// Lease: group(8) id(8) → TTL in ms(8), then the elections it
	// campaigns in.
	Lease Kind = 'L'
	// Election: group(8) name → election record.
	Election Kind = 'E'
	// Attached: group(8) key → lease(8), the lease the key is attached to.
	Attached Kind = 'A'
	// LeaseKeys: group(8) lease(8) key → nothing, the keys attached to a
	// lease.
	LeaseKeys Kind = 'K'
	// Session: group(8) session(8) → a client session's record in the
	// group (session 0: the group's session clock).
	Session Kind = 'S'
)

// Registered describes one kind: who owns it.
type Registered struct {
	Kind  Kind
	Owner string // the package that writes it
	Name  string
}

// All lists every kind, for the disjointness test and for tools that walk a
// database.
var All = []Registered{
	{RaftLog, "storage", "raft log entry"},
	{RaftHardState, "storage", "raft hard state"},
	{RaftConfState, "storage", "raft conf state"},
	{RaftSnapshot, "storage", "raft snapshot"},
	{Data, "kv", "user data"},
	{Applied, "kv", "applied index and revision"},
	{Lease, "kv", "lease"},
	{Election, "kv", "election"},
	{Attached, "kv", "key's lease"},
	{LeaseKeys, "kv", "lease's keys"},
	{Session, "kv", "client session"},
}
