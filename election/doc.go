// Package election holds the lease rule of Flotilla's leases and
// elections for outside processes: the Lessor, which the node (package
// server) runs for the groups it leads. The Go API is in package client
// (Client.Grant, Client.Election); the CLI is `flotilla elect`.
//
// # Where the state lives
//
// A lease, and every election it campaigns in, live in one raft group:
// the group of the election's name. What is replicated, in that group's
// KV state machine (package kv), is the lease's TTL, the queue of
// candidates of each election (the oldest is the holder) and the holder's
// fencing token, the group revision at which it was elected, and the keys
// attached to the lease (a Put with client.WithLease; such a key must be
// in the lease's group: grant the lease with GrantFor on the key, and a
// lease of another group is refused). Deadlines
// are not replicated: wall-clock times mean nothing on another machine.
// Each leader re-derives them on its own clock.
//
// # The expiry rule
//
//  1. Only the group's leader expires a lease, by proposing an expire
//     command once the lease's deadline has passed by its clock. The
//     command deletes the lease, withdraws it from every election and
//     deletes every key attached to it; the next candidate becomes the
//     holder when it applies.
//  2. A node that becomes leader (multiraft's leader event: it has
//     committed an entry of its term, so it holds every committed entry)
//     gives every lease of the group a deadline one full TTL from that
//     moment, before it may expire any. A lease it has not seen before (granted
//     since) gets a full TTL from when it first sees it.
//  3. A keep-alive received at time r renews a lease to r+TTL only if the
//     node leads the group in the same term before and after a ReadIndex
//     round started after r, and the lease still exists at that read.
//     A lease whose deadline has passed can no longer be renewed: once
//     overdue it is expired, never revived.
//  4. The client counts the TTL from before it sent its last successful
//     keep-alive (send time s < r), less a 2% drift margin, and cancels
//     the lease's context at that local deadline unless renewed.
//
// # Why it is safe
//
// A second holder can be elected only after the first one's lease is
// expired by some leader L (1). Say the holder's last successful keep-alive
// was sent at s and received at r by leader L0 in term T.
//
//   - If L is L0 in term T, L expires no sooner than r+TTL (3), later than
//     the holder's local deadline s+TTL.
//   - If L is a later leader, it was elected after the ReadIndex round of
//     (3) completed: the quorum that confirmed L0 in term T after r
//     overlaps every quorum that elects a higher term. L's takeover comes
//     after r, and L waits a full TTL from its takeover (2), again later
//     than s+TTL.
//   - An expire command proposed by a deposed leader commits, if ever,
//     before the next leader's takeover (a leader commits earlier terms'
//     entries with its first own entry), so every later keep-alive reads
//     the lease as gone and fails (3); it cannot revoke a lease renewed
//     after it.
//
// So the holder's context ends before any other campaigner can be
// elected, as long as clocks run at the same rate within the margin.
// Leader changes and restarts only ever lengthen a lease (by at most one
// TTL), never shorten it: a holder that keeps renewing is never dropped.
// The fencing token still matters: a holder paused longer than its TTL
// (GC, a stopped VM) may act after its lease ended; a resource that
// refuses tokens lower than the highest it has seen stops it.
//
// # Elections, or the engine's leader events?
//
// Use these elections when the processes choosing a leader are outside
// the cluster: many instances of a service, one of which must be active,
// with a fencing token to hand to what it writes. Campaigners need only
// the client.
//
// Use multiraft.Host.Subscribe when you embed the engine and want to know
// which node leads a raft group: that leadership is raft's own, comes
// with no TTL to keep alive, and changes with elections inside the
// cluster. It is the right signal for placing work next to a group's
// leader, and the wrong one for processes that do not run a replica.
//
// # Compared with etcd's concurrency.Election
//
//   - Observe never skips a holder nor names one that is gone: states are
//     sent from the replicated queue, in revision order; a slow reader
//     gets the latest state (marked Skipped), never a stale one.
//   - Campaign ends with ErrLeaseLost when its lease is lost while it
//     waits, and withdraws the candidate when it fails.
//   - Resign clears the local state only after the cluster confirmed it,
//     so a failed Resign can be retried.
//   - Keep-alives feed no channel that must be drained: the lease exposes
//     a context and a deadline.
package election
