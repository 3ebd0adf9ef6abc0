package chaos

import (
	"context"
	"sync/atomic"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/transport"
)

// NaiveTransport is the deliberately naive node build of the seed tests: the
// Ready loop's Send hands every message, one at a time, to a sender that
// waits until the peer has taken it. It is the serial, synchronous sender of
// seed 002 (and the stalled heartbeat path of seed 000): one peer that does
// not answer (silently black-holed, or its connection refused) blocks the
// engine's worker, so no other peer hears from this node either.
//
// It rides on a GRPCTransport so that the same fault hooks apply to it: each
// message goes on the must-deliver lane (GRPCTransport.SendMust, with no
// deadline), which waits for room while the peer's lane is full and retries
// until the peer acknowledges. Build the GRPCTransport with a small
// MustQueueCap (Config.NaiveQueue) and a long WriteTimeout: the lane then
// holds at most that many unacknowledged messages before Send blocks. The
// receiving side's HandleMust decodes the raft message and hands it to the
// engine's HandleBatch. FlushHeartbeats does nothing: heartbeats were sent
// by Send, like every other message.
//
// Never use it outside tests. Abort (or Close) unblocks a Send that waits,
// so that a Host using it can stop.
type NaiveTransport struct {
	g      *transport.GRPCTransport
	ctx    context.Context
	cancel context.CancelFunc
	// blocked counts Send calls that are waiting right now.
	blocked atomic.Int64
}

var _ transport.Transport = (*NaiveTransport)(nil)

// NewNaive wraps g, which must not be started yet. The NaiveTransport owns g
// from then on: Close closes it.
func NewNaive(g *transport.GRPCTransport) *NaiveTransport {
	ctx, cancel := context.WithCancel(context.Background())
	return &NaiveTransport{g: g, ctx: ctx, cancel: cancel}
}

// naiveHandler adds HandleMust to the engine's Handler: must-deliver
// payloads are raft messages.
type naiveHandler struct {
	transport.Handler
}

// HandleMust implements transport.MustHandler.
func (h naiveHandler) HandleMust(from, group uint64, payload []byte) {
	var m raftpb.Message
	if err := m.Unmarshal(payload); err != nil {
		return
	}
	h.HandleBatch(from, []transport.Envelope{{Group: group, Msg: m}})
}

// Start implements transport.Transport.
func (n *NaiveTransport) Start(h transport.Handler) error { return n.g.Start(naiveHandler{h}) }

// Send implements transport.Transport the naive way: it sends each message
// in turn and blocks while the peer's lane is full, until Abort.
func (n *NaiveTransport) Send(batch []transport.Envelope) {
	n.blocked.Add(1)
	defer n.blocked.Add(-1)
	for i := range batch {
		e := &batch[i]
		data, err := e.Msg.Marshal()
		if err != nil {
			continue
		}
		if n.g.SendMust(n.ctx, e.Msg.To, e.Group, data) != nil && n.ctx.Err() != nil {
			return
		}
	}
}

// Blocked returns how many Send calls are in progress (a Send that lasts
// more than a moment is waiting on a peer).
func (n *NaiveTransport) Blocked() int64 { return n.blocked.Load() }

// FlushHeartbeats implements transport.Transport; Send already sent them.
func (n *NaiveTransport) FlushHeartbeats(bool) {}

// AddPeer implements transport.Transport.
func (n *NaiveTransport) AddPeer(id uint64, addr string) { n.g.AddPeer(id, addr) }

// RemovePeer implements transport.Transport.
func (n *NaiveTransport) RemovePeer(id uint64) { n.g.RemovePeer(id) }

// Stats implements transport.Transport.
func (n *NaiveTransport) Stats() []transport.PeerStats { return n.g.Stats() }

// Abort makes every waiting and future Send return at once (dropping what
// it has not sent), so that the Host can stop.
func (n *NaiveTransport) Abort() { n.cancel() }

// Close implements transport.Transport: Abort, then close the GRPCTransport.
func (n *NaiveTransport) Close() error {
	n.cancel()
	return n.g.Close()
}
