// Package transport moves raft messages between Flotilla nodes.
//
// A node runs one Transport. The engine hands it messages through Send and
// receives messages and feedback through the Handler it registered. The
// contract on both sides is the same: nobody blocks. Send enqueues into a
// bounded per-peer queue and returns; a full queue drops and counts (raft
// retransmits). Handler methods record under a leaf lock and return.
//
// Lanes. Each peer has separate lanes so that one kind of traffic never
// waits behind another (docs/design.md, law 5):
//   - heartbeats: MsgHeartbeat and MsgHeartbeatResp with an empty Context
//     (or QuiesceContext, ForgotContext), coalesced per peer and flushed by
//     FlushHeartbeats once per tick;
//   - raft: every other message, batched by the per-peer sender;
//   - snapshots: MsgSnap, sent on a stream of their own, with the outcome
//     reported through Handler.ReportSnapshot.
//
// Heartbeats that carry a Context belong to a ReadIndex round: they travel on
// the raft lane at once, because a linearizable read waits for them.
//
// Replica IDs are node IDs: a group's replica on node 3 has raft ID 3. So
// Msg.From and Msg.To name nodes, and the transport routes on Msg.To.
package transport

import (
	"bytes"
	"errors"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// Envelope is one raft message for one group.
type Envelope struct {
	// Group is the raft group the message belongs to.
	Group uint64
	// Msg is the raft message. Msg.From and Msg.To are node IDs.
	Msg raftpb.Message
}

// Handler receives what the transport delivers. The engine implements it.
//
// Every method is called from transport goroutines (receive loops, sender
// loops), possibly concurrently, with no transport lock held. Implementations
// must not block: they record under a leaf lock, wake the owner of the state
// and return. They must not call back into the Transport.
type Handler interface {
	// HandleBatch delivers messages received from node from. The handler
	// takes ownership of batch and of everything it references. An empty
	// batch is a ping: node from is alive (FlushHeartbeats).
	HandleBatch(from uint64, batch []Envelope)
	// ReportUnreachable says that messages to node to were dropped because
	// the peer could not be reached (dial failed, write deadline, broken
	// stream). The engine tells every group with a replica on that node on
	// its next tick.
	ReportUnreachable(to uint64)
	// ReportSnapshot says whether the snapshot of group for node to was
	// delivered (ok) or not.
	ReportSnapshot(group, to uint64, ok bool)
}

// Transport sends raft messages to peer nodes.
type Transport interface {
	// Start registers h and begins delivering to it. It must be called once,
	// before Send.
	Start(h Handler) error
	// Send hands messages to the transport and never blocks. Messages for a
	// peer whose queue is full, or for an unknown peer, are dropped and
	// counted. The transport takes ownership of the messages (their entries
	// and snapshot data must not be modified afterwards) but not of the batch
	// slice, which the caller may reuse once Send returns.
	Send(batch []Envelope)
	// FlushHeartbeats sends the heartbeats queued since the last call as one
	// batch per peer and, if ping, an empty batch (a ping) to every peer it
	// has none for: so every peer hears from this node every few ticks,
	// whatever the groups do, which is what the engine's node liveness
	// counts on (followers of a group never message each other). The
	// engine calls it once per tick, with ping every PingTicks ticks
	// (multiraft.Config). It never blocks.
	FlushHeartbeats(ping bool)
	// AddPeer tells the transport how to reach node id. Adding a known peer
	// with a new address replaces the address.
	AddPeer(id uint64, addr string)
	// RemovePeer forgets node id, closing its connection and dropping what
	// was queued for it.
	RemovePeer(id uint64)
	// Stats returns per-peer figures for status pages.
	Stats() []PeerStats
	// Close stops every goroutine of the transport and waits for them. No
	// Handler method is called after Close returns.
	Close() error
}

// PeerStats are the figures of one directed link, from this node to To.
type PeerStats struct {
	From, To uint64
	// QueueLen is the number of messages waiting in the raft lane.
	QueueLen int
	// Sent counts messages written to the peer, all lanes.
	Sent uint64
	// Dropped counts messages dropped for this peer, all reasons.
	Dropped uint64
	// LastContact is when a write to the peer last succeeded; zero if never.
	LastContact time.Time
	// RTT is the last measured round-trip time; zero if unknown.
	RTT time.Duration
}

// Drop reasons, used as the reason label of
// flotilla_transport_messages_dropped_total.
const (
	DropQueueFull   = "queue_full"
	DropUnknownPeer = "unknown_peer"
	DropUnreachable = "unreachable"
	DropClosed      = "closed"
	DropFault       = "fault"
)

// Sentinel errors.
var (
	// ErrClosed is returned by operations on a closed transport.
	ErrClosed = errors.New("transport: closed")
	// ErrUnknownPeer is returned when a node ID has no known address.
	ErrUnknownPeer = errors.New("transport: unknown peer")
)

// QuiesceContext is the context of the heartbeat with which a leader
// quiesces its group, and of the responses (multiraft/quiesce.go). They
// travel coalesced like any heartbeat: a node that quiesces thousands of
// groups at once sends one batch per peer, not thousands of messages.
var QuiesceContext = []byte("flotilla.quiesce")

// ForgotContext is the context of the heartbeat response with which a
// follower tells a leader that it forgot it, liveness having counted its
// node down (multiraft/liveness.go, pokeOldLeader). Coalesced too: when a
// node's ranges all fail over at once, each survivor sends one batch.
var ForgotContext = []byte("flotilla.forgot")

// IsHeartbeat reports whether m travels on the coalesced heartbeat lane:
// heartbeats and their responses that are not part of a ReadIndex round
// (an empty context, QuiesceContext or ForgotContext).
func IsHeartbeat(m *raftpb.Message) bool {
	return (m.Type == raftpb.MsgHeartbeat || m.Type == raftpb.MsgHeartbeatResp) &&
		(len(m.Context) == 0 || bytes.Equal(m.Context, QuiesceContext) || bytes.Equal(m.Context, ForgotContext))
}
