// Package multiraft runs many Raft groups on one node on top of
// go.etcd.io/raft/v3, storing their logs in one store with group commit.
//
// A Host holds the groups of one node. The user starts each group with its
// members and a StateMachine, then proposes commands (Propose), reads
// linearizably (Read), moves leadership (TransferLeadership), changes
// membership (ChangeMembership) and watches leaders (Subscribe).
//
// # Shape
//
// Inputs (messages from the transport, proposals, reads, ticks, feedback)
// land in a per-group inbox under a leaf lock, and the group is queued on
// the scheduler. A fixed pool of workers takes queued groups in batches;
// one worker holds a group at a time and is the only goroutine that touches
// its raft state. Per cycle a worker, for all the groups it holds:
//
//  1. steps inbox contents into each RawNode and collects the Readys (raft
//     reads log entries from the Host's entry cache, or the store on a
//     miss: memlog.go, entrycache.go);
//  2. sends the leaders' appends, then writes all entries and hard states
//     in one storage batch with one sync;
//  3. sends the other messages (the transport never blocks);
//  4. applies committed entries to the state machines, in batches;
//  5. publishes leader events to subscribers (never blocking) and advances.
//
// # Lock order
//
// Acquire left before right; never the reverse. Every lock here is held
// only for memory operations: none is held across a channel operation that
// can wait, I/O, fsync, or a call into user code or the transport.
//
//	Host.mu < group.in.mu
//	Host.mu < Host.act.mu        (publishGroup makes a group active)
//	Host.quiet.mu < group.in.mu, Host.quiet.mu < Host.act.mu
//	                            (quiescence and paced start campaigns:
//	                             quiesce.go, startcampaign.go)
//	Host.feedback.mu            (leaf)
//	Host.unknown.mu             (leaf; released before Config.UnknownGroup)
//	scheduler.mu                (leaf)
//	Host.streams.mu             (leaf; snapshot streams, snapstream.go)
//	Host.live.mu                (leaf; adds a peer to the liveness table)
//	entryCache.mu               (leaf; the node-wide entry cache, entrycache.go:
//	                             taken by workers inside raft calls, and
//	                             under Host.mu by publishGroup)
//	Host.confSets.mu            (leaf; interned membership lists,
//	                             confsets.go)
//	eventHub.mu < Subscription.mu
//
// The Handler methods the transport calls take only Host.mu (read) and the
// leaf locks, so transport feedback can never wait for a group's owner
// (seed 000).
//
// ProposeFunc callbacks run on a worker with no lock held; they must not
// block or call the Host (seed 001), so a consumer that gathers outcomes
// queues them under its own leaf lock and wakes its own goroutine.
package multiraft
