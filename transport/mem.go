package transport

// Lock order for the in-memory transport (acquire left before right, never
// the reverse; most of these are leaves and are never held together):
//
//	MemNetwork.mu < MemTransport.mu < memPeer.mu
//
// No lock is held while a Handler method runs.

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// LinkState is the fault applied to one directed link of a MemNetwork.
type LinkState int

const (
	// LinkOK delivers everything.
	LinkOK LinkState = iota
	// LinkBlackHole drops everything silently: the sender learns nothing,
	// as with a peer whose packets vanish without an RST.
	LinkBlackHole
	// LinkCut drops everything and reports the peer unreachable to the
	// sender, as with a refused connection or an open circuit breaker.
	LinkCut
)

// MemNetwork connects in-memory transports inside one process.
//
// In manual mode no goroutine runs: messages wait in per-peer queues until
// the test calls Deliver, so a whole cluster can be driven by hand from one
// goroutine. In automatic mode each peer of each transport has a sender
// goroutine that delivers as soon as messages are queued.
type MemNetwork struct {
	manual   bool
	queueCap int

	mu struct {
		sync.Mutex
		nodes map[uint64]*MemTransport
		links map[[2]uint64]LinkState
	}
}

// MemOptions configure a MemNetwork.
type MemOptions struct {
	// Manual selects manual delivery (see MemNetwork). Default false.
	Manual bool
	// QueueCap is the capacity of each peer's raft lane, in messages.
	// Default 4096; must be positive.
	QueueCap int
}

// NewMemNetwork returns an empty network.
func NewMemNetwork(opts MemOptions) *MemNetwork {
	if opts.QueueCap <= 0 {
		opts.QueueCap = 4096
	}
	n := &MemNetwork{manual: opts.Manual, queueCap: opts.QueueCap}
	n.mu.nodes = make(map[uint64]*MemTransport)
	n.mu.links = make(map[[2]uint64]LinkState)
	return n
}

// Transport returns the transport of node id, creating it on first use.
func (n *MemNetwork) Transport(id uint64) *MemTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t, ok := n.mu.nodes[id]; ok {
		return t
	}
	t := &MemTransport{net: n, id: id, stop: make(chan struct{})}
	t.mu.peers = make(map[uint64]*memPeer)
	n.mu.nodes[id] = t
	return t
}

// Forget removes node id from the network, so that the next Transport(id)
// returns a new transport (a restarted process). Close the old one first.
func (n *MemNetwork) Forget(id uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.mu.nodes, id)
}

// SetLink sets the fault state of the directed link from → to.
func (n *MemNetwork) SetLink(from, to uint64, s LinkState) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s == LinkOK {
		delete(n.mu.links, [2]uint64{from, to})
		return
	}
	n.mu.links[[2]uint64{from, to}] = s
}

// Isolate sets both directions between id and every other node to s.
func (n *MemNetwork) Isolate(id uint64, s LinkState) {
	n.mu.Lock()
	ids := make([]uint64, 0, len(n.mu.nodes))
	for other := range n.mu.nodes {
		if other != id {
			ids = append(ids, other)
		}
	}
	n.mu.Unlock()
	for _, other := range ids {
		n.SetLink(id, other, s)
		n.SetLink(other, id, s)
	}
}

// HealAll removes every fault.
func (n *MemNetwork) HealAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.mu.links)
}

func (n *MemNetwork) lookup(from, to uint64) (*MemTransport, LinkState) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mu.nodes[to], n.mu.links[[2]uint64{from, to}]
}

// Deliver hands every queued message to its destination, in a fixed order
// (by sender, then by receiver), and returns how many it handled. Only in
// manual mode; messages queued by the deliveries themselves wait for the
// next call.
func (n *MemNetwork) Deliver() int {
	n.mu.Lock()
	ids := make([]uint64, 0, len(n.mu.nodes))
	for id := range n.mu.nodes {
		ids = append(ids, id)
	}
	n.mu.Unlock()
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	total := 0
	for _, id := range ids {
		t, _ := n.lookup(0, id)
		for _, p := range t.sortedPeers() {
			total += t.deliver(p)
		}
	}
	return total
}

// MemTransport is one node's endpoint on a MemNetwork. It implements
// Transport. Its methods are safe for concurrent use.
type MemTransport struct {
	net     *MemNetwork
	id      uint64
	handler atomic.Pointer[Handler]
	stop    chan struct{}
	wg      sync.WaitGroup
	// closedDrops counts messages sent after Close; they belong to no peer.
	closedDrops atomic.Uint64

	mu struct {
		sync.Mutex
		peers  map[uint64]*memPeer
		closed bool
	}
}

type memPeer struct {
	to   uint64
	wake chan struct{}

	sent    atomic.Uint64
	dropped atomic.Uint64
	last    atomic.Int64 // unix nanos of the last delivery

	mu struct {
		sync.Mutex
		queue      []Envelope
		heartbeats []Envelope
		ping       bool // an empty batch is due (FlushHeartbeats)
	}
}

var _ Transport = (*MemTransport)(nil)

// Start implements Transport.
func (t *MemTransport) Start(h Handler) error {
	t.handler.Store(&h)
	return nil
}

// AddPeer implements Transport. The address is ignored: the network routes
// by node ID.
func (t *MemTransport) AddPeer(id uint64, _ string) { t.peer(id) }

// RemovePeer implements Transport.
func (t *MemTransport) RemovePeer(id uint64) {
	t.mu.Lock()
	p := t.mu.peers[id]
	delete(t.mu.peers, id)
	t.mu.Unlock()
	if p != nil {
		p.mu.Lock()
		p.dropped.Add(uint64(len(p.mu.queue) + len(p.mu.heartbeats)))
		p.mu.queue, p.mu.heartbeats = nil, nil
		p.mu.Unlock()
	}
}

// peer returns the peer record of node id, creating it (and in automatic
// mode its sender goroutine) on first use. Returns nil once closed.
func (t *MemTransport) peer(id uint64) *memPeer {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.closed {
		return nil
	}
	p, ok := t.mu.peers[id]
	if !ok {
		p = &memPeer{to: id, wake: make(chan struct{}, 1)}
		t.mu.peers[id] = p
		if !t.net.manual {
			t.wg.Add(1)
			go t.sendLoop(p)
		}
	}
	return p
}

func (t *MemTransport) sortedPeers() []*memPeer {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := make([]*memPeer, 0, len(t.mu.peers))
	for _, p := range t.mu.peers {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].to < ps[j].to })
	return ps
}

// Send implements Transport.
func (t *MemTransport) Send(batch []Envelope) {
	var cur *memPeer
	for i := range batch {
		e := batch[i]
		if cur == nil || cur.to != e.Msg.To {
			cur = t.peer(e.Msg.To)
			if cur == nil {
				// Closed: what is left of the batch is dropped, and counted.
				t.closedDrops.Add(uint64(len(batch) - i))
				return
			}
		}
		cur.mu.Lock()
		switch {
		case IsHeartbeat(&e.Msg) && len(cur.mu.heartbeats) < memMaxHeartbeats:
			cur.mu.heartbeats = append(cur.mu.heartbeats, e)
		case IsHeartbeat(&e.Msg) || len(cur.mu.queue) >= t.net.queueCap:
			cur.dropped.Add(1)
		default:
			cur.mu.queue = append(cur.mu.queue, e)
		}
		cur.mu.Unlock()
		cur.poke()
	}
}

// memMaxHeartbeats bounds the heartbeats coalesced per peer between two
// flushes: far above one per group per tick for the group counts the
// in-memory network is used with, but bounded (law 4: past it, counted
// drops).
const memMaxHeartbeats = 1 << 17

// DroppedAfterClose counts messages handed to Send after Close.
func (t *MemTransport) DroppedAfterClose() uint64 { return t.closedDrops.Load() }

// FlushHeartbeats implements Transport.
func (t *MemTransport) FlushHeartbeats(ping bool) {
	for _, p := range t.sortedPeers() {
		p.mu.Lock()
		if len(p.mu.heartbeats) > 0 {
			p.mu.queue = append(p.mu.queue, p.mu.heartbeats...)
			p.mu.heartbeats = p.mu.heartbeats[:0]
		} else if len(p.mu.queue) == 0 && ping {
			p.mu.ping = true
		}
		p.mu.Unlock()
		p.poke()
	}
}

func (p *memPeer) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (t *MemTransport) sendLoop(p *memPeer) {
	defer t.wg.Done()
	for {
		select {
		case <-t.stop:
			return
		case <-p.wake:
			t.deliver(p)
		}
	}
}

// deliver hands p's queue to its destination, holding no lock while the
// handlers run.
func (t *MemTransport) deliver(p *memPeer) int {
	p.mu.Lock()
	batch, ping := p.mu.queue, p.mu.ping
	p.mu.queue, p.mu.ping = nil, false
	p.mu.Unlock()
	if len(batch) == 0 && !ping {
		return 0
	}
	h := t.handler.Load()
	dst, link := t.net.lookup(t.id, p.to)
	var dh *Handler
	if dst != nil {
		dh = dst.handler.Load()
	}
	if dh == nil || link != LinkOK || dst.isClosed() {
		p.dropped.Add(uint64(len(batch)))
		if h != nil {
			if link == LinkCut || dh == nil {
				(*h).ReportUnreachable(p.to)
			}
			for i := range batch {
				if batch[i].Msg.Type == raftpb.MsgSnap {
					(*h).ReportSnapshot(batch[i].Group, p.to, false)
				}
			}
		}
		return max(len(batch), 1)
	}
	if h != nil {
		// Streamed snapshots go whole: their state, read from the sender.
		// One whose stream cannot be read (expired, the sender stopping)
		// is dropped and reported failed, as the gRPC transport does.
		keep := batch[:0]
		for i := range batch {
			if m := &batch[i].Msg; m.Type == raftpb.MsgSnap && m.Snapshot != nil {
				data, err := Materialize(*h, batch[i].Group, m.Snapshot.Data)
				if err != nil {
					p.dropped.Add(1)
					(*h).ReportSnapshot(batch[i].Group, p.to, false)
					continue
				}
				snap := *m.Snapshot
				snap.Data = data
				m.Snapshot = &snap
			}
			keep = append(keep, batch[i])
		}
		if batch = keep; len(batch) == 0 && !ping {
			return 1
		}
	}
	(*dh).HandleBatch(t.id, batch) // empty: a ping
	p.sent.Add(uint64(len(batch)))
	p.last.Store(time.Now().UnixNano())
	if h != nil {
		for i := range batch {
			if batch[i].Msg.Type == raftpb.MsgSnap {
				(*h).ReportSnapshot(batch[i].Group, p.to, true)
			}
		}
	}
	return max(len(batch), 1) // a ping counts as one
}

func (t *MemTransport) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mu.closed
}

// Stats implements Transport.
func (t *MemTransport) Stats() []PeerStats {
	var out []PeerStats
	for _, p := range t.sortedPeers() {
		p.mu.Lock()
		q := len(p.mu.queue)
		p.mu.Unlock()
		s := PeerStats{From: t.id, To: p.to, QueueLen: q, Sent: p.sent.Load(), Dropped: p.dropped.Load()}
		if l := p.last.Load(); l != 0 {
			s.LastContact = time.Unix(0, l)
		}
		out = append(out, s)
	}
	return out
}

// Close implements Transport.
func (t *MemTransport) Close() error {
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		return nil
	}
	t.mu.closed = true
	t.mu.Unlock()
	close(t.stop)
	t.wg.Wait()
	return nil
}
