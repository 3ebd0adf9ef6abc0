package transport

// The gRPC peer transport.
//
// Lock order (acquire left before right, never the reverse):
//
//	GRPCTransport.mu < grpcPeer.mu
//	callGate.mu, Faults.mu: leaves, never held with another lock
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
//
// Ownership. Queued messages belong to the transport from Send until written
// or dropped. A lane's stream and backoff state belong to its loop alone.
// Counters are atomics, read by Stats and the drop logger.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
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
	dialOps []grpc.DialOption

	lis net.Listener // own listener, or nil when registered on cfg.Server
	srv *grpc.Server // own server, or nil

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine started by goLoop

	handler atomic.Pointer[handlers]
	peers   atomic.Pointer[map[uint64]*grpcPeer] // read-only copy of mu.peers
	gate    callGate                             // Handler calls from server handlers

	rejectedTotal atomic.Uint64

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
	}
	srcAddr := c.PeerAddr
	if srcAddr == "" {
		srcAddr = c.ListenAddr
	}
	if srcAddr != "" {
		if t.localIP, err = sourceIP(srcAddr); err != nil {
			return nil, fmt.Errorf("%w: source address from %q: %v", ErrBadConfig, srcAddr, err)
		}
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.mu.peers = make(map[uint64]*grpcPeer)
	t.peers.Store(&map[uint64]*grpcPeer{})
	t.dialOps = []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(t.dial),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                c.KeepaliveTime,
			Timeout:             c.KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  c.BackoffBase,
				Multiplier: 2,
				Jitter:     0.2,
				MaxDelay:   c.BackoffMax,
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
	if c.ListenAddr != "" {
		lis, err := net.Listen("tcp", c.ListenAddr)
		if err != nil {
			t.cancel()
			return nil, fmt.Errorf("transport: listen on %s: %w", c.ListenAddr, err)
		}
		t.lis = lis
		t.srv = grpc.NewServer(ServerOptions(c)...)
		t.srv.RegisterService(&peerServiceDesc, t)
	} else {
		c.Server.RegisterService(&peerServiceDesc, t)
	}
	return t, nil
}

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
	if t.mu.closed {
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

// reclaimIfStopped handles a race with AddPeer and RemovePeer: Send may
// have loaded the peer map just before p was replaced, and queued after p's
// loops drained their queues and exited. Whatever is left then is dropped
// and counted here, and a lost snapshot is reported failed, or raft would
// wait for its outcome forever. Never blocks.
func (p *grpcPeer) reclaimIfStopped() {
	if p.ctx.Err() == nil {
		return
	}
	for {
		select {
		case <-p.raftQ:
			p.drop(p.m.dropClosed, 1)
		case e := <-p.snapQ:
			p.drop(p.m.dropClosed, 1)
			p.reportSnapshot(e.Group, false)
		default:
			p.reportSnapFailures()
			return
		}
	}
}

// FlushHeartbeats implements Transport.
func (t *GRPCTransport) FlushHeartbeats() {
	for _, p := range *t.peers.Load() {
		p.flushHeartbeats()
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
	tick := time.NewTicker(t.cfg.DropLogInterval)
	defer tick.Stop()
	logged := make(map[*grpcPeer]uint64)
	var rejected uint64
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-tick.C:
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

// grpcPeer is one peer node: its connection, its lane queues and loops.
type grpcPeer struct {
	t     *GRPCTransport
	id    uint64
	addr  string
	conn  *grpc.ClientConn
	ctx   context.Context // cancelled by stop
	stopF context.CancelFunc
	m     peerMetrics

	raftQ    chan Envelope
	snapQ    chan Envelope
	mustQ    chan mustMsg
	hbWake   chan struct{} // capacity 1
	snapWake chan struct{} // capacity 1

	sent        atomic.Uint64
	dropped     atomic.Uint64
	lastContact atomic.Int64 // unix nanos
	rtt         atomic.Int64 // nanos

	mu struct {
		sync.Mutex
		hbPending  []Envelope // queued since the last flush
		hbReady    []Envelope // flushed, not yet taken by heartbeatLoop
		hbSpare    []Envelope // a drained buffer for reuse
		snapFailed []uint64   // groups whose snapshot was dropped by Send
	}
}

func (t *GRPCTransport) newPeerLocked(id uint64, addr string) (*grpcPeer, error) {
	conn, err := grpc.NewClient("passthrough:///"+addr, t.dialOps...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(t.ctx)
	return &grpcPeer{
		t:        t,
		id:       id,
		addr:     addr,
		conn:     conn,
		ctx:      ctx,
		stopF:    cancel,
		m:        t.metrics.forPeer(id),
		raftQ:    make(chan Envelope, t.cfg.QueueCap),
		snapQ:    make(chan Envelope, t.cfg.SnapshotQueueCap),
		mustQ:    make(chan mustMsg, t.cfg.MustQueueCap),
		hbWake:   make(chan struct{}, 1),
		snapWake: make(chan struct{}, 1),
	}, nil
}

// startLocked starts the peer's lane loops. Caller holds t.mu.
func (p *grpcPeer) startLocked() {
	p.t.goLoop("raftSendLoop", p.raftSendLoop)
	p.t.goLoop("heartbeatLoop", p.heartbeatLoop)
	p.t.goLoop("snapshotLoop", p.snapshotLoop)
	p.t.goLoop("mustLoop", p.mustLoop)
}

// stop cancels the peer's loops and closes its connection. It does not wait:
// the loops drain their queues (counting drops) and exit on their own, and
// Close waits for them.
func (p *grpcPeer) stop() {
	p.stopF()
	_ = p.conn.Close()
}

func (p *grpcPeer) drop(c interface{ Add(float64) }, n int) {
	p.dropped.Add(uint64(n))
	c.Add(float64(n))
}

func (p *grpcPeer) queueHeartbeat(e *Envelope) {
	p.mu.Lock()
	if len(p.mu.hbPending) >= p.t.cfg.MaxPendingHeartbeats {
		p.mu.Unlock()
		p.drop(p.m.dropQueueFull, 1)
		return
	}
	p.mu.hbPending = append(p.mu.hbPending, *e)
	p.mu.Unlock()
}

func (p *grpcPeer) flushHeartbeats() {
	p.mu.Lock()
	if len(p.mu.hbPending) == 0 {
		p.mu.Unlock()
		return
	}
	stale := len(p.mu.hbReady)
	if stale > 0 {
		// The previous batch was never taken: the lane is stuck. The new
		// heartbeats supersede it.
		clear(p.mu.hbReady)
		p.mu.hbReady, p.mu.hbPending = p.mu.hbPending, p.mu.hbReady[:0]
	} else {
		p.mu.hbReady, p.mu.hbPending = p.mu.hbPending, p.mu.hbSpare
		p.mu.hbSpare = nil
	}
	p.mu.Unlock()
	if stale > 0 {
		p.drop(p.m.dropQueueFull, stale)
	}
	poke(p.hbWake)
}

func (p *grpcPeer) noteSnapFailure(group uint64) {
	p.mu.Lock()
	p.mu.snapFailed = append(p.mu.snapFailed, group)
	p.mu.Unlock()
	poke(p.snapWake)
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (p *grpcPeer) handlers() *handlers { return p.t.handler.Load() }

// reportUnreachable tells the Handler that p could not be reached. Called
// from p's loops with no lock held.
func (p *grpcPeer) reportUnreachable() {
	p.m.unreachable.Inc()
	if h := p.handlers(); h != nil {
		h.h.ReportUnreachable(p.id)
	}
}

func (p *grpcPeer) reportSnapshot(group uint64, ok bool) {
	if ok {
		p.m.snapOK.Inc()
	} else {
		p.m.snapFailed.Inc()
	}
	if h := p.handlers(); h != nil {
		h.h.ReportSnapshot(group, p.id, ok)
	}
}

func (p *grpcPeer) contact() { p.lastContact.Store(time.Now().UnixNano()) }

func (p *grpcPeer) newFrame(k frameKind) *frame {
	return &frame{kind: k, clusterID: p.t.cfg.ClusterID, from: p.t.id, to: p.id}
}

// waitFor waits d or until the peer stops; false if it stopped.
func (p *grpcPeer) waitFor(d time.Duration) bool {
	if d <= 0 {
		return p.ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-p.ctx.Done():
		return false
	}
}

// laneBackoff spaces out attempts to reopen a failed lane: the wait doubles
// from BackoffBase to BackoffMax, jittered by ±20%. Owned by one loop.
type laneBackoff struct {
	base, max time.Duration
	cur       time.Duration
	until     time.Time
}

func (p *grpcPeer) newBackoff() laneBackoff {
	return laneBackoff{base: p.t.cfg.BackoffBase, max: p.t.cfg.BackoffMax}
}

func (b *laneBackoff) fail() {
	if b.cur == 0 {
		b.cur = b.base
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	j := time.Duration(float64(b.cur) * (0.8 + 0.4*rand.Float64()))
	b.until = time.Now().Add(j)
}

func (b *laneBackoff) ok() { b.cur, b.until = 0, time.Time{} }

// left is how long until the next attempt is allowed.
func (b *laneBackoff) left() time.Duration { return time.Until(b.until) }

// Errors of the client side of a stream.
var (
	errWriteTimeout = errors.New("transport: write deadline exceeded")
	errAckTimeout   = errors.New("transport: ack deadline exceeded")
	errOpenTimeout  = errors.New("transport: stream open deadline exceeded")
	errBadAck       = errors.New("transport: bad ack")
)

// stream is one open client stream of a lane, owned by the lane's loop. On
// the raft and heartbeat lanes an ackLoop reads the peer's acks; the two
// share the accounting under mu so that every message written on a stream
// that dies unacked is counted as dropped exactly once.
type stream struct {
	cs     grpc.ClientStream
	cancel context.CancelFunc
	timer  *time.Timer // cancels the stream when a write or read overruns

	lastSeq      atomic.Uint64
	unackedSince atomic.Int64  // unix nanos since when writes wait for acks with no ack; 0: none
	done         chan struct{} // closed when the ackLoop ends; nil: no ackLoop
	endErr       error         // why the ackLoop ended; read after done

	mu struct {
		sync.Mutex
		written, acked uint64 // messages, cumulative on this stream
		settled        bool   // the stream's losses have been counted
		lossCounter    prometheus.Counter
	}
}

func (p *grpcPeer) openStream(desc *grpc.StreamDesc) (*stream, error) {
	ctx, cancel := context.WithCancel(p.ctx)
	timer := time.AfterFunc(p.t.cfg.DialTimeout, cancel)
	cs, err := p.conn.NewStream(ctx, desc, "/"+peerServiceName+"/"+desc.StreamName)
	if !timer.Stop() {
		cancel()
		return nil, errOpenTimeout
	}
	if err != nil {
		cancel()
		return nil, err
	}
	return &stream{cs: cs, cancel: cancel, timer: timer}, nil
}

// send writes f, cancelling the stream if the write takes longer than d: a
// stream whose peer stopped reading blocks in flow control forever. io.EOF
// means the server ended the stream; its status is read by whoever reads.
func (s *stream) send(f *frame, d time.Duration) error {
	s.timer.Reset(d)
	err := s.cs.SendMsg(f)
	if !s.timer.Stop() {
		return errWriteTimeout
	}
	return err
}

// recv reads into f, cancelling the stream after d. Only for streams
// without an ackLoop.
func (s *stream) recv(f *frame, d time.Duration) error {
	s.timer.Reset(d)
	err := s.cs.RecvMsg(f)
	if !s.timer.Stop() {
		return errAckTimeout
	}
	return err
}

// sendRecv writes f on a stream without an ackLoop; on io.EOF it reads the
// status the server ended the stream with.
func (s *stream) sendRecv(f *frame, d time.Duration) error {
	err := s.send(f, d)
	if err == io.EOF {
		if err = s.recv(&frame{}, d); err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	}
	return err
}

func (s *stream) close() {
	s.timer.Stop()
	s.cancel()
}

// dead reports whether the stream's ackLoop has ended.
func (s *stream) dead() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// endError waits (at most d) for the ackLoop to end and returns why it did.
func (s *stream) endError(d time.Duration) error {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-s.done:
	case <-tm.C:
		s.cancel()
		<-s.done
	}
	return s.endErr
}

// addWritten records n messages written. If the stream was already settled
// (its ackLoop ended), the n are lost: it returns the counter they count in.
func (s *stream) addWritten(n int) (lost prometheus.Counter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.settled {
		return s.mu.lossCounter
	}
	s.mu.written += uint64(n)
	return nil
}

// settle counts the stream's unacked messages, plus extra (a frame whose
// write failed), as dropped, once; later calls count only their extra, in
// the same counter. The first call reports the peer unreachable unless the
// peer rejected the frames or is being removed.
func (p *grpcPeer) settle(s *stream, lane string, extra int, err error) {
	c := p.m.dropUnreachable
	switch {
	case p.ctx.Err() != nil:
		c = p.m.dropClosed
	case isRejection(err):
		c = p.m.dropRejected
	}
	s.mu.Lock()
	first := !s.mu.settled
	lost := uint64(extra)
	if first {
		s.mu.settled = true
		s.mu.lossCounter = c
		lost += s.mu.written - s.mu.acked
	} else {
		c = s.mu.lossCounter
	}
	s.mu.Unlock()
	p.drop(c, int(lost))
	if !first {
		return
	}
	switch c {
	case p.m.dropRejected:
		p.t.cfg.Logger.Warn("transport: peer rejected frames", "to", p.id, "lane", lane, "err", err)
	case p.m.dropUnreachable:
		p.t.cfg.Logger.Debug("transport: stream failed", "to", p.id, "lane", lane, "err", err)
		p.reportUnreachable()
	}
}

// isRejection reports whether err is the peer refusing our frames.
func isRejection(err error) bool {
	st, ok := status.FromError(err)
	return ok && strings.HasPrefix(st.Message(), ErrRejected.Error())
}

// failStream ends *s after a failed write of n messages.
func (p *grpcPeer) failStream(lane string, s **stream, bo *laneBackoff, n int, err error) {
	st := *s
	*s = nil
	bo.fail()
	if err == io.EOF {
		// The server ended the stream; the ackLoop reads its status.
		err = st.endError(p.t.cfg.WriteTimeout)
	}
	st.close()
	p.settle(st, lane, n, err)
}

// writeBatch writes f (a raft or heartbeat frame) on its lane, opening the
// stream (and its ackLoop) first if need be. It reports whether f was
// written.
func (p *grpcPeer) writeBatch(desc *grpc.StreamDesc, s **stream, bo *laneBackoff, f *frame) bool {
	n := len(f.envs)
	drop, delay := p.t.faults.state().egress(p.id)
	if delay > 0 && !p.waitFor(delay) {
		p.drop(p.m.dropClosed, n)
		return false
	}
	if drop {
		p.drop(p.m.dropFault, n)
		return false
	}
	if *s != nil {
		st := *s
		since := st.unackedSince.Load()
		switch {
		case st.dead():
			*s = nil
			st.close()
			bo.fail()
			p.settle(st, desc.StreamName, 0, st.endErr)
		case since != 0 && time.Since(time.Unix(0, since)) > p.t.cfg.WriteTimeout:
			// A black hole swallows writes without complaint until flow
			// control stops them: the missing acks give it away sooner.
			p.failStream(desc.StreamName, s, bo, 0, errAckTimeout)
		}
	}
	if *s == nil {
		if bo.left() > 0 {
			p.drop(p.m.dropUnreachable, n)
			p.reportUnreachable()
			return false
		}
		st, err := p.openStream(desc)
		if err != nil {
			bo.fail()
			p.drop(p.m.dropUnreachable, n)
			p.t.cfg.Logger.Debug("transport: cannot open stream", "to", p.id, "lane", desc.StreamName, "err", err)
			p.reportUnreachable()
			return false
		}
		st.done = make(chan struct{})
		p.t.goLoop("ackLoop", func() { p.ackLoop(st, f.kind) })
		*s = st
	}
	f.seq++
	f.stamp = p.t.nanotime()
	(*s).lastSeq.Store(f.seq)
	(*s).unackedSince.CompareAndSwap(0, time.Now().UnixNano())
	if err := (*s).send(f, p.t.cfg.WriteTimeout); err != nil {
		p.failStream(desc.StreamName, s, bo, n, err)
		return false
	}
	if c := (*s).addWritten(n); c != nil {
		p.drop(c, n)
		return false
	}
	bo.ok()
	p.sent.Add(uint64(n))
	p.m.sent.Add(float64(n))
	p.m.sentBytes.Add(float64(f.encodedSize()))
	p.contact()
	return true
}

// appendEnv adds e to f if it fits in *budget bytes (a frame always takes
// its first message). It returns false if e did not fit; e is left to the
// caller. A message over MaxMessageSize is dropped and counted.
func (p *grpcPeer) appendEnv(f *frame, e *Envelope, budget *int) bool {
	sz := e.Msg.Size()
	if sz > p.t.cfg.MaxMessageSize {
		p.drop(p.m.dropTooLarge, 1)
		return true
	}
	need := sz + 2*10
	if len(f.envs) > 0 && need > *budget {
		return false
	}
	*budget -= need
	f.envs = append(f.envs, *e)
	f.sizes = append(f.sizes, sz)
	return true
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func resetEnvs(f *frame) {
	clear(f.envs)
	f.envs = f.envs[:0]
	f.sizes = f.sizes[:0]
}

// raftSendLoop drains the raft lane: everything queued goes out in one frame
// per write (up to MaxFrameSize).
func (p *grpcPeer) raftSendLoop() {
	var s *stream
	defer func() {
		if s != nil {
			s.close()
		}
	}()
	bo := p.newBackoff()
	f := p.newFrame(kindRaft)
	var next Envelope
	have := false
	for {
		if !have {
			select {
			case <-p.ctx.Done():
				p.drop(p.m.dropClosed, len(p.raftQ))
				return
			case next = <-p.raftQ:
			}
		}
		have = false
		budget := p.t.cfg.MaxFrameSize - frameSlack
		p.appendEnv(f, &next, &budget)
	fill:
		for {
			select {
			case next = <-p.raftQ:
				if !p.appendEnv(f, &next, &budget) {
					have = true
					break fill
				}
			default:
				break fill
			}
		}
		if len(f.envs) > 0 {
			p.writeBatch(&raftStreamDesc, &s, &bo, f)
		}
		resetEnvs(f)
	}
}

// heartbeatLoop writes each flushed heartbeat batch as one frame on the
// heartbeat stream, which nothing else uses. The peer acks every frame; a
// frame unacked for WriteTimeout marks the stream dead (see writeBatch).
func (p *grpcPeer) heartbeatLoop() {
	var s *stream
	defer func() {
		if s != nil {
			s.close()
		}
	}()
	bo := p.newBackoff()
	f := p.newFrame(kindHeartbeat)
	for {
		select {
		case <-p.ctx.Done():
			p.mu.Lock()
			n := len(p.mu.hbReady) + len(p.mu.hbPending)
			p.mu.Unlock()
			p.drop(p.m.dropClosed, n)
			return
		case <-p.hbWake:
		}
		p.mu.Lock()
		batch := p.mu.hbReady
		p.mu.hbReady = nil
		p.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		for i := 0; i < len(batch); {
			budget := p.t.cfg.MaxFrameSize - frameSlack
			for i < len(batch) && p.appendEnv(f, &batch[i], &budget) {
				i++
			}
			n := len(f.envs)
			if n > 0 && p.writeBatch(&heartbeatStreamDesc, &s, &bo, f) {
				p.m.hbBatches.Inc()
				p.m.hbCoalesced.Add(float64(n))
			}
			resetEnvs(f)
		}
		clear(batch)
		p.mu.Lock()
		p.mu.hbSpare = batch[:0]
		p.mu.Unlock()
	}
}

// ackLoop reads the acks of one raft or heartbeat stream until it ends, then
// counts what the stream lost. Acks on the heartbeat lane measure the RTT.
func (p *grpcPeer) ackLoop(s *stream, lane frameKind) {
	defer close(s.done)
	ack := &frame{}
	for {
		if err := s.cs.RecvMsg(ack); err != nil {
			s.endErr = err
			if err == io.EOF {
				s.endErr = io.ErrUnexpectedEOF
			}
			p.settle(s, lane.String(), 0, s.endErr)
			return
		}
		if err := p.checkAck(ack); err != nil {
			p.t.cfg.Logger.Warn("transport: bad ack", "to", p.id, "lane", lane, "err", err)
			s.cancel()
			s.endErr = err
			p.settle(s, lane.String(), 0, err)
			return
		}
		s.mu.Lock()
		s.mu.acked = max(s.mu.acked, ack.count)
		s.mu.Unlock()
		// unackedSince measures how long the stream has gone without
		// progress while writes are outstanding.
		if ack.seq >= s.lastSeq.Load() {
			s.unackedSince.Store(0)
		} else {
			s.unackedSince.Store(time.Now().UnixNano())
		}
		if lane == kindHeartbeat {
			if now := p.t.nanotime(); ack.stamp <= now {
				p.rtt.Store(int64(now - ack.stamp))
			}
		}
		p.contact()
	}
}

// checkAck decodes and checks an ack from p.
func (p *grpcPeer) checkAck(ack *frame) error {
	r, err := ack.decodeHeader()
	if err == nil {
		err = ack.decodeBody(r, 0)
	}
	if err != nil {
		return err
	}
	if ack.kind != kindAck || ack.clusterID != p.t.cfg.ClusterID || ack.to != p.t.id || ack.from != p.id {
		p.t.reject(RejectWrongNode)
		return fmt.Errorf("%w: %v from %d to %d cluster %d", errBadAck, ack.kind, ack.from, ack.to, ack.clusterID)
	}
	return nil
}

// snapshotLoop sends snapshots one at a time, each on a stream of its own,
// and reports every outcome.
func (p *grpcPeer) snapshotLoop() {
	bo := p.newBackoff()
	for {
		select {
		case <-p.ctx.Done():
			for {
				select {
				case e := <-p.snapQ:
					p.drop(p.m.dropClosed, 1)
					p.reportSnapshot(e.Group, false)
				default:
					p.reportSnapFailures()
					return
				}
			}
		case <-p.snapWake:
			p.reportSnapFailures()
		case e := <-p.snapQ:
			ok := p.sendSnapshot(&bo, &e)
			p.reportSnapshot(e.Group, ok)
		}
	}
}

func (p *grpcPeer) reportSnapFailures() {
	p.mu.Lock()
	groups := p.mu.snapFailed
	p.mu.snapFailed = nil
	p.mu.Unlock()
	for _, g := range groups {
		p.reportSnapshot(g, false)
	}
}

func (p *grpcPeer) sendSnapshot(bo *laneBackoff, e *Envelope) bool {
	drop, delay := p.t.faults.state().egress(p.id)
	if delay > 0 && !p.waitFor(delay) {
		p.drop(p.m.dropClosed, 1)
		return false
	}
	if drop {
		p.drop(p.m.dropFault, 1)
		return false
	}
	if bo.left() > 0 {
		p.drop(p.m.dropUnreachable, 1)
		p.reportUnreachable()
		return false
	}
	data, err := e.Msg.Marshal()
	if err != nil || int64(len(data)) > p.t.cfg.MaxSnapshotSize {
		p.drop(p.m.dropTooLarge, 1)
		return false
	}
	s, err := p.openStream(&snapshotStreamDesc)
	if err != nil {
		bo.fail()
		p.drop(p.m.dropUnreachable, 1)
		p.reportUnreachable()
		return false
	}
	defer s.close()
	f := p.newFrame(kindSnapshot)
	f.group, f.total = e.Group, uint64(len(data))
	chunk := p.t.cfg.SnapshotChunkSize
	var bytes int
	for off := 0; off < len(data); off += chunk {
		f.offset = uint64(off)
		f.chunk = data[off:min(off+chunk, len(data))]
		// gRPC flow control holds the write until the receiver has room; the
		// deadline bounds that wait per chunk.
		if err := s.sendRecv(f, p.t.cfg.WriteTimeout); err != nil {
			p.failSnapshot(bo, err)
			return false
		}
		bytes += len(f.chunk)
	}
	if err := s.cs.CloseSend(); err != nil {
		p.failSnapshot(bo, err)
		return false
	}
	ack := &frame{}
	if err := s.recv(ack, p.t.cfg.WriteTimeout); err != nil {
		p.failSnapshot(bo, err)
		return false
	}
	if err := p.checkAck(ack); err != nil {
		p.failSnapshot(bo, err)
		return false
	}
	bo.ok()
	p.sent.Add(1)
	p.m.sent.Inc()
	p.m.sentBytes.Add(float64(bytes))
	p.contact()
	return true
}

func (p *grpcPeer) failSnapshot(bo *laneBackoff, err error) {
	bo.fail()
	if isRejection(err) {
		p.drop(p.m.dropRejected, 1)
		p.t.cfg.Logger.Warn("transport: peer rejected snapshot", "to", p.id, "err", err)
		return
	}
	p.drop(p.m.dropUnreachable, 1)
	p.reportUnreachable()
}

// mustLoop sends must-deliver messages: it drains what is queued into one
// frame, writes it, waits for the peer's ack and retries (after backoff, on a
// new stream) until it gets one. Nothing is dropped while the peer exists.
func (p *grpcPeer) mustLoop() {
	var s *stream
	defer func() {
		if s != nil {
			s.close()
		}
	}()
	bo := p.newBackoff()
	f := p.newFrame(kindMust)
	ack := &frame{}
	var pending []mustMsg
	var carry mustMsg // taken from the queue, did not fit the last frame
	haveCarry := false
	for {
		if len(pending) == 0 {
			if haveCarry {
				pending, haveCarry = append(pending, carry), false
			} else {
				select {
				case <-p.ctx.Done():
					p.drop(p.m.dropClosed, len(p.mustQ))
					return
				case m := <-p.mustQ:
					pending = append(pending, m)
				}
			}
			budget := p.t.cfg.MaxFrameSize - frameSlack - len(pending[0].payload)
		fill:
			for {
				select {
				case m := <-p.mustQ:
					if need := len(m.payload) + 2*10; need > budget {
						carry, haveCarry = m, true
						break fill
					} else {
						budget -= need
					}
					pending = append(pending, m)
				default:
					break fill
				}
			}
		}
		if p.ctx.Err() != nil {
			p.drop(p.m.dropClosed, len(pending)+len(p.mustQ)+b2i(haveCarry))
			return
		}
		st := p.t.faults.state()
		drop, delay := st.egress(p.id)
		if drop {
			// Must-deliver messages are never dropped: wait for the fault
			// to change.
			select {
			case <-st.changed:
			case <-p.ctx.Done():
			}
			continue
		}
		if delay > 0 && !p.waitFor(delay) {
			continue
		}
		if s == nil {
			if !p.waitFor(bo.left()) {
				continue
			}
			var err error
			if s, err = p.openStream(&mustStreamDesc); err != nil {
				s = nil
				bo.fail()
				p.reportUnreachable()
				continue
			}
		}
		f.must = pending
		f.seq++
		err := s.sendRecv(f, p.t.cfg.WriteTimeout)
		if err == nil {
			err = s.recv(ack, p.t.cfg.WriteTimeout)
		}
		if err == nil {
			if err = p.checkAck(ack); err == nil && ack.seq != f.seq {
				err = fmt.Errorf("%w: seq %d, want %d", errBadAck, ack.seq, f.seq)
			}
		}
		f.must = nil
		if err != nil {
			s.close()
			s = nil
			bo.fail()
			if isRejection(err) {
				p.t.cfg.Logger.Warn("transport: peer rejected must-deliver frame", "to", p.id, "err", err)
			} else {
				p.reportUnreachable()
			}
			continue
		}
		bo.ok()
		n := len(pending)
		p.sent.Add(uint64(n))
		p.m.sent.Add(float64(n))
		p.m.mustDelivered.Add(float64(n))
		p.contact()
		clear(pending)
		pending = pending[:0]
	}
}
