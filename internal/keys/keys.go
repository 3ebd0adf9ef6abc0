// Package keys is the one registry of the kinds of key in a node's Pebble
// database. The raft logs (package storage) and every range's state
// machine (package kv) share that database; the first byte of every key is
// its kind, so two owners can never write the same key as long as each
// kind here has one owner. TestKindsDisjoint checks it.
//
// Two shapes of key (docs/design.md, "The range model"):
//
//   - Range-local kinds: the kind, the range (raft group) ID, 8 bytes
//     big-endian, then the rest of the layout given with the kind. A range
//     owns exactly the keys under its ID; removing a replica deletes them.
//   - Global kinds: the kind, then a user key. The range whose span holds
//     the user key owns the key, whichever range that is at the time: a
//     split or merge moves no such key, it only moves the boundary.
package keys

// Kind is the first byte of a key.
type Kind byte

// Kinds of the raft storage (package storage). All range-local.
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

// Global kinds of the KV state machine (package kv): keyed by user key.
const (
	// Data: key → mod revision(8), create revision and version
	// (uvarints), value (kv/stored.go).
	Data Kind = 'k'
	// Attached: key → lease(8), the lease the key is attached to.
	Attached Kind = 'A'
	// History: escaped key (0x00 → 0x00 0xff), 0x00 0x01, revision(8) →
	// the stored value the write set (as Data holds it), or nothing for a
	// delete: the key's past values (kv/history.go).
	History Kind = 'H'
	// Election: name → election record (an election's name is a key of
	// the keyspace: it lives in the range that holds that key).
	Election Kind = 'E'
)

// Range-local kinds of the KV state machine (package kv).
const (
	// Applied: range(8) → applied index(8) revision(8) lease counter(8).
	Applied Kind = 'a'
	// Descriptor: range(8) → the range's descriptor (kv.Descriptor): its
	// span, replicas and generation, replicated with the range.
	Descriptor Kind = 'D'
	// Lease: range(8) id(8) → TTL in ms(8), then the elections it
	// campaigns in.
	Lease Kind = 'L'
	// LeaseKeys: range(8) lease(8) key → nothing, the keys of the range
	// attached to a lease.
	LeaseKeys Kind = 'K'
	// Session: range(8) session(8) → a client session's record in the
	// range (session 0: the range's session clock).
	Session Kind = 'S'
	// Meta: range(8) end → the descriptor of the range whose span ends
	// at end (kv.MetaEnd encodes end). Only the meta range (range 1)
	// holds these: the index of every range.
	Meta Kind = 'M'
	// RangeIDs: range(8) → the next range ID to allocate. Only the meta
	// range holds it.
	RangeIDs Kind = 'I'
	// Frozen: range(8) → into(8) freeze index(8) merged(1): the range
	// is frozen to be merged into range into (it applies nothing more);
	// merged once the merge applied here (the replica is then removed).
	Frozen Kind = 'F'
	// Revoked: range(8) lease(8) → the lease's span at the grant: the
	// owner revoked or expired the lease and its stubs in other ranges
	// remain to be revoked.
	Revoked Kind = 'R'
	// Auth: range(8) key → record: the auth table, opaque records (the
	// server's users and roles) that kv stores and never interprets. Only
	// the meta range holds these.
	Auth Kind = 'U'
	// Tombstone: range(8) → generation(8): the range's replica here was
	// removed (a replica move) by a descriptor of that generation; no
	// replica of the range starts here again from a descriptor of that
	// generation or older (kv/replicas.go). Not a replica's state: removing
	// a replica keeps it.
	Tombstone Kind = 'T'
)

// Registered describes one kind: who owns it and its shape.
type Registered struct {
	Kind   Kind
	Owner  string // the package that writes it
	Name   string
	Global bool // keyed by user key, not by range ID
}

// All lists every kind, for the disjointness test and for tools that walk a
// database.
var All = []Registered{
	{RaftLog, "storage", "raft log entry", false},
	{RaftHardState, "storage", "raft hard state", false},
	{RaftConfState, "storage", "raft conf state", false},
	{RaftSnapshot, "storage", "raft snapshot", false},
	{Data, "kv", "user data", true},
	{Attached, "kv", "key's lease", true},
	{History, "kv", "key's past values", true},
	{Election, "kv", "election", true},
	{Applied, "kv", "applied index and revision", false},
	{Descriptor, "kv", "range descriptor", false},
	{Lease, "kv", "lease", false},
	{LeaseKeys, "kv", "lease's keys", false},
	{Session, "kv", "client session", false},
	{Meta, "kv", "meta index record", false},
	{RangeIDs, "kv", "range ID allocator", false},
	{Frozen, "kv", "range frozen for a merge", false},
	{Revoked, "kv", "revoked lease's stubs to revoke", false},
	{Auth, "kv", "auth record", false},
	{Tombstone, "kv", "removed replica's tombstone", false},
}
