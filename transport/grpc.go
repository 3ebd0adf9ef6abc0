package transport

// The gRPC peer transport.
//
// Files: grpc.go, the transport itself (construction, Start and Close,
// AddPeer and RemovePeer, Send, Stats, drop logging, the call gate);
// grpc_peer.go, one peer (its queues, heartbeat coalescing, feedback to the
// Handler); grpc_stream.go, the client streams of the lanes (open, send,
// recv, settle, backoff); grpc_lanes.go, the lane loops; grpc_redial.go,
// ending the backoff toward a peer that is back; grpc_server.go, the
// receiving side; grpc_config.go, the configuration. The lock order, the
// goroutine inventory and the ownership rules below hold for all of them.
//
// Lock order (acquire left before right, never the reverse):
//
//	GRPCTransport.mu < grpcPeer.mu
//	callGate.mu, Faults.mu, stream.mu, snapPacer.mu: leaves, never held with another lock
//
// No lock is held across a blocking step: a channel operation that can wait,
// network I/O (stream writes, reads, dials), or a Handler call. Every
// Handler method is called from a transport goroutine with no lock held.
//
// Goroutines. Each is a named loop with one job (named in its pprof label),
// started only through goLoop (by Start, by AddPeer after Start, or by a
// lane loop that opens a raft or heartbeat stream) and stopped only by
// cancelling a context that Close (or RemovePeer, for one peer) cancels;
// Close waits for all of them.
//
//	serveLoop         serves the peer service on the transport's own listener
//	dropLogLoop       logs per-peer drop deltas every DropLogInterval
//	raftSendLoop      per peer: drains the raft lane into one frame per write
//	heartbeatLoop     per peer: writes one coalesced heartbeat batch per flush
//	ackLoop           per raft or heartbeat stream: reads the peer's acks,
//	                  measures RTT, counts what a dead stream lost
//	snapshotLoop      per peer: streams snapshots in chunks, reports outcome
//	mustLoop          per peer: writes must-deliver frames, waits for acks,
//	                  retries until acked
//	probeLoop         per peer: while a lane backs off and the connection is
//	                  down, probes the peer and resets the backoff when it
//	                  answers (grpc_redial.go)
//
// Ownership. Queued messages belong to the transport from Send until written
// or dropped. A lane's stream and backoff state belong to its loop alone;
// others only signal a reset of the backoff (an atomic channel swap and a
// close, grpc_redial.go) and read the end of its wait from an atomic the loop
// publishes. Counters are atomics, read by Stats and the drop logger.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/flotilla/flotilla/internal/phase"
)

// MustHandler is implemented by a Handler that accepts must-deliver messages
// (GRPCTransport.SendMust). The same rules as for Handler apply: it is
// called with no transport lock held, must not block and must not call back
// into the transport. It owns payload. Delivery is at least once: after a
// broken stream a message may arrive twice.
type MustHandler interface {
	HandleMust(from, group uint64, payload []byte)
}

// GRPCTransport is the Transport between nodes over gRPC: one connection per
// peer node, shared by all groups, with a stream per lane (raft, heartbeats,
// snapshots, must-deliver). Its methods are safe for concurrent use.
type GRPCTransport struct {
	cfg     GRPCConfig
	id      uint64
	localIP net.IP // source address of outbound connections; nil: any
	faults  *Faults
	metrics *grpcMetrics
	epoch   time.Time
	// acksSent counts the acks this node's streams sent (tests).
	acksSent atomic.Uint64
	dialOps  []grpc.DialOption

	lis net.Listener // own listener, or nil when registered on cfg.Server
	srv *grpc.Server // own server, or nil

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine started by goLoop

	handler atomic.Pointer[handlers]
	peers   atomic.Pointer[map[uint64]*grpcPeer] // read-only copy of mu.peers
	gate    callGate                             // Handler calls from server handlers

	rejectedTotal atomic.Uint64

	// snapSlots holds a token per snapshot being sent (cap
	// MaxSnapshotsInFlight); snapPace paces their bytes (nil: no
	// SnapshotRate). snappace.go. snapInFlight and snapInFlightMax count
	// the snapshots being sent, and the most at once (tests).
	snapSlots       chan struct{}
	snapPace        *snapPacer
	snapInFlight    atomic.Int64
	snapInFlightMax atomic.Int64

	// refused is the set of nodes whose frames are refused (Refuse); nil
	// or absent: none. Copy on write under mu.
	refused atomic.Pointer[map[uint64]bool]

	resetOff resetSwitches // tests only: parts of the backoff reset turned off

	mu struct {
		sync.Mutex
		peers   map[uint64]*grpcPeer
		started bool
		closed  bool
	}
}

type handlers struct {
	h    Handler
	must MustHandler // nil if h does not implement it
}

var _ Transport = (*GRPCTransport)(nil)

// NewGRPC validates cfg and returns a transport that is not yet started. With
// cfg.ListenAddr it listens at once (see Addr) and serves from Start; with
// cfg.Server it registers the peer service there.
func NewGRPC(cfg GRPCConfig) (*GRPCTransport, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	t := &GRPCTransport{
		cfg:     c,
		id:      c.NodeID,
		faults:  newFaults(c.NodeID),
		metrics: newGRPCMetrics(c.Registerer),
		epoch:   time.Now(),
		// A burst of one chunk beyond the rate, for the whole node.
		snapSlots: make(chan struct{}, c.MaxSnapshotsInFlight),
		snapPace:  newSnapPacer(c.SnapshotRate, c.SnapshotChunkSize),
	}
	srcAddr := c.PeerAddr
	if srcAddr == "" {
		srcAddr = c.ListenAddr
	}
	if srcAddr != "" {
		if t.localIP, err = sourceIP(srcAddr); err != nil {
			return nil, fmt.Errorf("%w: source address from %q: %v", ErrConfig, srcAddr, err)
		}
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.mu.peers = make(map[uint64]*grpcPeer)
	t.peers.Store(&map[uint64]*grpcPeer{})
	t.dialOps = []grpc.DialOption{
		grpc.WithContextDialer(t.dial),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                c.KeepaliveTime,
			Timeout:             c.KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			// gRPC's own redial of a dead peer stays short, so that a peer
			// that comes back is connected again within connectBackoffMax
			// (a dial every half second to a dead peer costs nothing).
			// Resetting it instead (ClientConn.ResetConnectBackoff) races
			// in gRPC v1.85 with its own creation of subconnections: it
			// iterates a map it copied the reference of under its lock.
			Backoff: backoff.Config{
				BaseDelay:  min(c.BackoffBase, connectBackoffMax),
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   min(c.BackoffMax, connectBackoffMax),
			},
			MinConnectTimeout: c.DialTimeout,
		}),
		grpc.WithDefaultCallOptions(
			grpc.CallContentSubtype(codecName),
			grpc.MaxCallRecvMsgSize(c.maxRecvSize()),
			grpc.MaxCallSendMsgSize(c.maxRecvSize()),
		),
		grpc.WithSharedWriteBuffer(true),
		grpc.WithIdleTimeout(0),
	}
	// Clipped: each peer appends its credentials to a copy, not to spare
	// room shared with the others.
	t.dialOps = slices.Clip(append(t.dialOps, WindowDialOptions()...))
	if c.ListenAddr != "" {
		lis, err := net.Listen("tcp", c.ListenAddr)
		if err != nil {
			t.cancel()
			return nil, fmt.Errorf("transport: listen on %s: %w", c.ListenAddr, err)
		}
		t.lis = lis
		opts := ServerOptions(c)
		if c.ServerTLS != nil {
			opts = append(opts, grpc.Creds(credentials.NewTLS(c.ServerTLS)))
		}
		t.srv = grpc.NewServer(opts...)
		t.srv.RegisterService(&peerServiceDesc, t)
	} else {
		c.Server.RegisterService(&peerServiceDesc, t)
	}
	return t, nil
}

// connectBackoffMax caps gRPC's connect backoff toward a peer (see
// NewGRPC): half a second, well inside an election timeout.
const connectBackoffMax = 500 * time.Millisecond

// sourceIP returns the IP of the host part of addr, nil for an empty or
// unspecified host.
func sourceIP(addr string) (net.IP, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if host == "" {
		return nil, nil
	}
	ip := net.ParseIP(host)
	if ip == nil {
		ipa, err := net.ResolveIPAddr("ip", host)
		if err != nil {
			return nil, err
		}
		ip = ipa.IP
	}
	if ip.IsUnspecified() {
		return nil, nil
	}
	return ip, nil
}

// dial opens a TCP connection to addr from the local peer host.
func (t *GRPCTransport) dial(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: t.cfg.DialTimeout}
	if t.localIP != nil {
		d.LocalAddr = &net.TCPAddr{IP: t.localIP}
	}
	return d.DialContext(ctx, "tcp", addr)
}

// Addr returns the address the transport listens on (useful with port 0), or
// PeerAddr when it is registered on a server it does not own.
func (t *GRPCTransport) Addr() string {
	if t.lis != nil {
		return t.lis.Addr().String()
	}
	return t.cfg.PeerAddr
}

// ID returns this node's ID.
func (t *GRPCTransport) ID() uint64 { return t.id }

// Faults returns the fault hooks of this transport.
func (t *GRPCTransport) Faults() *Faults { return t.faults }

// goLoop runs fn on a new goroutine labelled name, counted in t.wg.
func (t *GRPCTransport) goLoop(name string, fn func()) {
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		pprof.Do(context.Background(), pprof.Labels("flotilla.transport", name), func(context.Context) { fn() })
	}()
}

// nanotime is a monotonic clock for RTT stamps.
func (t *GRPCTransport) nanotime() uint64 { return uint64(time.Since(t.epoch)) }

// Start implements Transport.
func (t *GRPCTransport) Start(h Handler) error {
	if h == nil {
		return errors.New("transport: nil handler")
	}
	hs := &handlers{h: h}
	hs.must, _ = h.(MustHandler)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.closed {
		return ErrClosed
	}
	if t.mu.started {
		return errors.New("transport: already started")
	}
	t.mu.started = true
	t.handler.Store(hs)
	for _, p := range t.mu.peers {
		p.startLocked()
	}
	t.goLoop("dropLogLoop", t.dropLogLoop)
	if t.srv != nil {
		t.goLoop("serveLoop", t.serveLoop)
	}
	return nil
}

func (t *GRPCTransport) serveLoop() {
	if err := t.srv.Serve(t.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		t.cfg.Logger.Error("transport: peer server stopped", "addr", t.Addr(), "err", err)
	}
}

// Close implements Transport.
func (t *GRPCTransport) Close() error {
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		return nil
	}
	t.mu.closed = true
	peers := t.mu.peers
	t.mu.peers = nil
	t.peers.Store(&map[uint64]*grpcPeer{})
	t.mu.Unlock()

	t.cancel()
	for _, p := range peers {
		p.stop()
	}
	if t.srv != nil {
		t.srv.Stop()
		_ = t.lis.Close()
	}
	t.wg.Wait()
	t.gate.close()
	return nil
}

// AddPeer implements Transport.
func (t *GRPCTransport) AddPeer(id uint64, addr string) {
	if id == 0 || id == t.id {
		return
	}
	t.mu.Lock()
	if t.mu.closed || t.isRefused(id) {
		t.mu.Unlock()
		return
	}
	old := t.mu.peers[id]
	if old != nil && old.addr == addr {
		t.mu.Unlock()
		return
	}
	p, err := t.newPeerLocked(id, addr)
	if err != nil {
		t.mu.Unlock()
		t.cfg.Logger.Error("transport: cannot add peer", "to", id, "addr", addr, "err", err)
		return
	}
	t.mu.peers[id] = p
	t.publishLocked()
	if t.mu.started {
		p.startLocked()
	}
	t.mu.Unlock()
	if old != nil {
		old.stop()
	}
}

// RemovePeer implements Transport.
func (t *GRPCTransport) RemovePeer(id uint64) {
	t.mu.Lock()
	p := t.mu.peers[id]
	if p != nil {
		delete(t.mu.peers, id)
		t.publishLocked()
	}
	t.mu.Unlock()
	if p != nil {
		p.stop()
	}
}

// Refuse refuses node id from now on: every stream it opens to this node
// is ended at its first frame (PermissionDenied, counted as
// RejectRemoved), and this node stops sending to it (RemovePeer). For a
// node removed from the cluster: it may come back with its old identity
// and data, and must not take part. It cannot be undone.
func (t *GRPCTransport) Refuse(id uint64) {
	t.mu.Lock()
	old := t.refused.Load()
	if old == nil || !(*old)[id] {
		m := map[uint64]bool{id: true}
		if old != nil {
			for n := range *old {
				m[n] = true
			}
		}
		t.refused.Store(&m)
	}
	t.mu.Unlock()
	t.RemovePeer(id)
}

// isRefused reports whether Refuse refused node id.
func (t *GRPCTransport) isRefused(id uint64) bool {
	m := t.refused.Load()
	return m != nil && (*m)[id]
}

// publishLocked publishes a copy of mu.peers for the lock-free readers.
func (t *GRPCTransport) publishLocked() {
	m := make(map[uint64]*grpcPeer, len(t.mu.peers))
	for id, p := range t.mu.peers {
		m[id] = p
	}
	t.peers.Store(&m)
}

func (t *GRPCTransport) peer(id uint64) *grpcPeer { return (*t.peers.Load())[id] }

// Send implements Transport. It takes no lock but a peer's leaf lock for a
// heartbeat, and never waits.
func (t *GRPCTransport) Send(batch []Envelope) {
	peers := *t.peers.Load()
	var p *grpcPeer
	for i := range batch {
		e := &batch[i]
		if p == nil || p.id != e.Msg.To {
			p = peers[e.Msg.To]
			if p == nil {
				t.metrics.dropped.WithLabelValues(strconv.FormatUint(e.Msg.To, 10), DropUnknownPeer).Inc()
				continue
			}
		}
		switch {
		case IsHeartbeat(&e.Msg):
			p.queueHeartbeat(e)
		case e.Msg.Type == raftpb.MsgSnap:
			select {
			case p.snapQ <- *e:
				p.reclaimIfStopped()
			default:
				p.drop(p.m.dropQueueFull, 1)
				p.noteSnapFailure(e.Group)
				p.reclaimIfStopped()
			}
		default:
			select {
			case p.raftQ <- *e:
				p.reclaimIfStopped()
			default:
				p.drop(p.m.dropQueueFull, 1)
			}
		}
	}
}

// FlushHeartbeats implements Transport.
func (t *GRPCTransport) FlushHeartbeats(ping bool) {
	for _, p := range *t.peers.Load() {
		p.flushHeartbeats(ping)
	}
}

// SendMust queues payload for node to on the must-deliver lane, waiting for
// room while the lane is full, until ctx is done. It holds no lock while it
// waits, and the wait blocks neither the receive path nor the droppable
// lanes. A nil return means queued: the lane retries until the peer acks,
// the peer is removed, or the transport is closed. The transport takes
// ownership of payload.
func (t *GRPCTransport) SendMust(ctx context.Context, to, group uint64, payload []byte) error {
	if len(payload) > t.cfg.MaxMessageSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(payload), t.cfg.MaxMessageSize)
	}
	if t.handler.Load() == nil {
		return ErrNotStarted
	}
	if t.ctx.Err() != nil {
		return ErrClosed
	}
	p := t.peer(to)
	if p == nil {
		return fmt.Errorf("%w: %d", ErrUnknownPeer, to)
	}
	select {
	case p.mustQ <- mustMsg{group: group, payload: payload}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-p.ctx.Done():
		if t.ctx.Err() != nil {
			return ErrClosed
		}
		return fmt.Errorf("%w: %d removed", ErrUnknownPeer, to)
	}
}

// Stats implements Transport.
func (t *GRPCTransport) Stats() []PeerStats {
	peers := *t.peers.Load()
	out := make([]PeerStats, 0, len(peers))
	for _, p := range peers {
		s := PeerStats{
			From:     t.id,
			To:       p.id,
			QueueLen: len(p.raftQ),
			Sent:     p.sent.Load(),
			Dropped:  p.dropped.Load(),
			RTT:      time.Duration(p.rtt.Load()),
		}
		if l := p.lastContact.Load(); l != 0 {
			s.LastContact = time.Unix(0, l)
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b PeerStats) int { return cmp.Compare(a.To, b.To) })
	return out
}

// Rejected returns how many incoming frames this node has rejected.
func (t *GRPCTransport) Rejected() uint64 { return t.rejectedTotal.Load() }

func (t *GRPCTransport) dropLogLoop() {
	tick := phase.NewTicker(t.cfg.DropLogInterval)
	defer tick.Stop()
	logged := make(map[*grpcPeer]uint64)
	var rejected uint64
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
			tick.Next()
		}
		peers := *t.peers.Load()
		for p := range logged {
			if peers[p.id] != p {
				delete(logged, p)
			}
		}
		for _, p := range peers {
			d := p.dropped.Load()
			if delta := d - logged[p]; delta > 0 {
				t.cfg.Logger.Warn("transport: dropped messages", "to", p.id, "dropped", delta,
					"total", d, "queue_len", len(p.raftQ), "interval", t.cfg.DropLogInterval)
			}
			logged[p] = d
		}
		if r := t.rejectedTotal.Load(); r != rejected {
			t.cfg.Logger.Warn("transport: rejected incoming frames", "rejected", r-rejected, "total", r)
			rejected = r
		}
	}
}

// callGate lets Close wait for Handler calls made from server stream
// handlers (which run on gRPC's goroutines, not ours) and refuse new ones.
type callGate struct {
	mu struct {
		sync.Mutex
		closed   bool
		inflight int
		drained  chan struct{}
	}
}

func (g *callGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.closed {
		return false
	}
	g.mu.inflight++
	return true
}

func (g *callGate) leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.mu.inflight--
	if g.mu.closed && g.mu.inflight == 0 && g.mu.drained != nil {
		close(g.mu.drained)
		g.mu.drained = nil
	}
}

func (g *callGate) close() {
	g.mu.Lock()
	g.mu.closed = true
	var wait chan struct{}
	if g.mu.inflight > 0 {
		wait = make(chan struct{})
		g.mu.drained = wait
	}
	g.mu.Unlock()
	if wait != nil {
		<-wait
	}
}
