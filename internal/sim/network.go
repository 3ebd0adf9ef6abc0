package sim

import (
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/transport"
)

// network is the simulated network: it turns each sent batch into a
// delivery event at a seeded delay, or drops it, or delivers it twice.
// Owned by the simulation goroutine.
type network struct {
	s *sim
	// blocked counts the faults blocking each directed link (from, to):
	// partitions and black holes. Blocked links drop silently.
	blocked map[[2]uint64]int
	// slow adds latency to a directed link.
	slow map[[2]uint64]time.Duration

	dropP, dupP float64
	minDelay    time.Duration
	maxDelay    time.Duration
	// reorderP is the chance a batch takes up to reorderMax extra.
	reorderP   float64
	reorderMax time.Duration
}

func newNetwork(s *sim) *network {
	return &network{
		s:        s,
		blocked:  make(map[[2]uint64]int),
		slow:     make(map[[2]uint64]time.Duration),
		minDelay: 100 * time.Microsecond,
		maxDelay: 2 * time.Millisecond,
	}
}

// configure draws the run's network rates from the seed.
func (nw *network) configure() {
	s := nw.s
	f := s.cfg.Faults
	if f&FaultDrop != 0 {
		nw.dropP = s.rng.Float64() * 0.05
	}
	if f&FaultDuplicate != 0 {
		nw.dupP = s.rng.Float64() * 0.03
	}
	if f&FaultDelay != 0 {
		nw.maxDelay = s.between(time.Millisecond, 10*time.Millisecond)
		nw.reorderP = s.rng.Float64() * 0.1
		nw.reorderMax = s.between(10*time.Millisecond, 60*time.Millisecond)
	}
}

// healAll removes every fault and stops dropping and duplicating.
func (nw *network) healAll() {
	clear(nw.blocked)
	clear(nw.slow)
	nw.dropP, nw.dupP, nw.reorderP = 0, 0, 0
}

func (nw *network) isBlocked(from, to uint64) bool { return nw.blocked[[2]uint64{from, to}] > 0 }

// block blocks the link from → to until unblock.
func (nw *network) block(from, to uint64) { nw.blocked[[2]uint64{from, to}]++ }

func (nw *network) unblock(from, to uint64) {
	k := [2]uint64{from, to}
	if nw.blocked[k] > 0 {
		nw.blocked[k]--
	}
	if nw.blocked[k] == 0 {
		delete(nw.blocked, k)
	}
}

// send carries batch (all for node to) from node from.
func (nw *network) send(src *simTransport, to uint64, batch []transport.Envelope) {
	s := nw.s
	from := src.n.id
	if to == 0 || to >= uint64(len(s.nodes)) || s.nodes[to] == nil {
		// No such node (a learner FaultMembership added, or FaultJoin's
		// node before it joined): the real transport drops what it has
		// no peer for.
		s.record("unknown-peer", from, to, uint64(len(batch)))
		nw.failSnapshots(src, to, batch)
		return
	}
	if nw.isBlocked(from, to) || (nw.dropP > 0 && s.rng.Float64() < nw.dropP) {
		s.record("drop", from, to, uint64(len(batch)))
		nw.failSnapshots(src, to, batch)
		return
	}
	nw.schedule(src, to, batch)
	// Duplicates include forwarded proposals (MsgProp), which raft appends
	// as often as they arrive: client sessions make the copies apply
	// nothing.
	if nw.dupP > 0 && s.rng.Float64() < nw.dupP {
		s.record("dup", from, to, uint64(len(batch)))
		nw.schedule(src, to, cloneBatch(batch))
	}
}

func (nw *network) delay(from, to uint64) time.Duration {
	s := nw.s
	d := s.between(nw.minDelay, nw.maxDelay)
	if nw.reorderP > 0 && s.rng.Float64() < nw.reorderP {
		d += s.between(0, nw.reorderMax)
	}
	return d + nw.slow[[2]uint64{from, to}]
}

func (nw *network) schedule(src *simTransport, to uint64, batch []transport.Envelope) {
	s := nw.s
	from := src.n.id
	s.after(nw.delay(from, to), func() {
		dst := s.nodes[to]
		if nw.isBlocked(from, to) || !dst.up {
			s.record("lost", from, to, uint64(len(batch)))
			nw.failSnapshots(src, to, batch)
			return
		}
		deliver := func() {
			nw.hashBatch(from, to, batch)
			s.res.Delivered++
			dst.host.HandleBatch(from, batch)
			dst.drain()
			src.reportSnapshots(to, batch, true)
		}
		if dst.paused {
			// A frozen process's socket buffers hold what reaches it.
			dst.held = append(dst.held, deliver)
			return
		}
		deliver()
	})
}

// failSnapshots tells the sender, a little later, that the snapshots in a
// lost batch did not arrive (the real transport learns it when the stream
// fails).
func (nw *network) failSnapshots(src *simTransport, to uint64, batch []transport.Envelope) {
	for i := range batch {
		if batch[i].Msg.Type == raftpb.MsgSnap {
			nw.s.after(100*time.Millisecond, func() { src.reportSnapshots(to, batch, false) })
			return
		}
	}
}

// hashBatch adds a delivered batch to the trace. Entry data is hashed
// without its first 8 bytes, the proposal key the Host draws at random.
func (nw *network) hashBatch(from, to uint64, batch []transport.Envelope) {
	s := nw.s
	for i := range batch {
		m := &batch[i].Msg
		var snap uint64
		if m.Snapshot != nil {
			snap = m.Snapshot.Metadata.Index
		}
		s.record("msg", from, to, batch[i].Group, uint64(m.Type), m.Term, m.LogTerm, m.Index,
			m.Commit, uint64(len(m.Entries)), boolU(m.Reject), m.RejectHint, snap)
		for j := range m.Entries {
			e := &m.Entries[j]
			var h uint64
			if e.Type == raftpb.EntryNormal {
				// A packed entry's hash chains its commands' hashes.
				_ = multiraft.EntryCommands(e.Data, func(cmd []byte) { h = h*31 + cmdHash(cmd) })
			}
			s.record("ent", e.Index, e.Term, uint64(e.Type), h)
		}
	}
}

func boolU(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// cloneBatch copies a batch deep enough that two deliveries share no slice
// the receiver might append to.
func cloneBatch(batch []transport.Envelope) []transport.Envelope {
	out := make([]transport.Envelope, len(batch))
	for i, e := range batch {
		if len(e.Msg.Entries) > 0 {
			e.Msg.Entries = append([]raftpb.Entry(nil), e.Msg.Entries...)
		}
		if len(e.Msg.Responses) > 0 {
			e.Msg.Responses = append([]raftpb.Message(nil), e.Msg.Responses...)
		}
		out[i] = e
	}
	return out
}

// simTransport is one node incarnation's transport.Transport on the
// simulated network. Heartbeats wait for FlushHeartbeats, then travel as
// one batch per peer; everything else leaves as one batch per peer per
// Send. Owned by the simulation goroutine (the Host calls it only from
// Tick and Process, which the simulation calls).
type simTransport struct {
	n      *node
	nw     *network
	inc    uint64
	h      transport.Handler
	closed bool
	hb     map[uint64][]transport.Envelope
}

var _ transport.Transport = (*simTransport)(nil)

func (nw *network) transport(n *node) *simTransport {
	return &simTransport{n: n, nw: nw, inc: n.inc, hb: make(map[uint64][]transport.Envelope)}
}

// Start implements transport.Transport.
func (t *simTransport) Start(h transport.Handler) error {
	t.h = h
	return nil
}

// Send implements transport.Transport.
func (t *simTransport) Send(batch []transport.Envelope) {
	if t.closed {
		return
	}
	// Group by destination, keeping the order within each.
	var per map[uint64][]transport.Envelope
	var order []uint64
	for _, e := range batch {
		to := e.Msg.To
		if m := &e.Msg; m.Type == raftpb.MsgSnap && m.Snapshot != nil {
			// A streamed snapshot travels whole: its state, read from
			// this node now, as the real transport reads it when it sends.
			data, err := transport.Materialize(t.h, e.Group, m.Snapshot.Data)
			if err != nil {
				t.nw.s.violation("node %d: read a snapshot of group %d to send: %v", t.n.id, e.Group, err)
				continue
			}
			snap := *m.Snapshot
			snap.Data = data
			m.Snapshot = &snap
		}
		if transport.IsHeartbeat(&e.Msg) {
			t.hb[to] = append(t.hb[to], e)
			continue
		}
		if per == nil {
			per = make(map[uint64][]transport.Envelope, 4)
		}
		if _, ok := per[to]; !ok {
			order = append(order, to)
		}
		per[to] = append(per[to], e)
	}
	for _, to := range order {
		t.nw.send(t, to, per[to])
	}
}

// FlushHeartbeats implements transport.Transport.
func (t *simTransport) FlushHeartbeats(ping bool) {
	if t.closed {
		return
	}
	// Every other node hears from this one every PingTicks: its
	// heartbeats, or if ping, an empty batch, a ping
	// (transport.Transport.FlushHeartbeats).
	for _, to := range t.nw.s.ids {
		if to == t.n.id || (len(t.hb[to]) == 0 && !ping) {
			continue
		}
		t.nw.send(t, to, t.hb[to])
	}
	clear(t.hb)
}

// reportSnapshots tells this incarnation's Host the fate of the snapshots
// in batch, if it still runs.
func (t *simTransport) reportSnapshots(to uint64, batch []transport.Envelope, ok bool) {
	if t.closed || !t.n.up || t.n.inc != t.inc {
		return
	}
	any := false
	for i := range batch {
		if batch[i].Msg.Type == raftpb.MsgSnap {
			t.h.ReportSnapshot(batch[i].Group, to, ok)
			any = true
		}
	}
	if any {
		t.n.drain()
	}
}

// AddPeer implements transport.Transport; the network routes by node ID.
func (t *simTransport) AddPeer(uint64, string) {}

// RemovePeer implements transport.Transport.
func (t *simTransport) RemovePeer(id uint64) { delete(t.hb, id) }

// Stats implements transport.Transport.
func (t *simTransport) Stats() []transport.PeerStats { return nil }

// Close implements transport.Transport.
func (t *simTransport) Close() error {
	t.closed = true
	return nil
}
