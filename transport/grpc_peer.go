package transport

// The peer of the gRPC transport: one grpcPeer per peer node, with its
// connection, its lane queues, the heartbeat coalescer that fills the
// heartbeat lane, and the feedback (unreachable, snapshot outcome) it
// reports to the Handler.
//
// Lock order: grpcPeer.mu comes after GRPCTransport.mu (see grpc.go) and is
// otherwise a leaf: nothing else is taken while it is held, and it is never
// held across a blocking step. The goroutine inventory and the ownership
// rules are at the top of grpc.go.

import (
	"context"
	"crypto/tls"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// grpcPeer is one peer node: its connection, its lane queues and loops.
type grpcPeer struct {
	t    *GRPCTransport
	id   uint64
	addr string
	conn *grpc.ClientConn
	// tlsCfg secures the connection and the probes (nil: plaintext).
	tlsCfg *tls.Config
	ctx    context.Context // cancelled by stop
	stopF  context.CancelFunc
	m      peerMetrics
	// opened counts the streams opened to the peer, on every lane (tests).
	opened atomic.Uint64

	raftQ     chan Envelope
	snapQ     chan Envelope
	mustQ     chan mustMsg
	hbWake    chan struct{} // capacity 1
	snapWake  chan struct{} // capacity 1
	probeWake chan struct{} // capacity 1; poked by a lane's backoff when it fails

	// resets is the reset signal of the lanes' backoff (see laneBackoff and
	// resetBackoff): a channel that is closed, and replaced, by each reset.
	resets atomic.Pointer[chan struct{}]
	// backoffUntil holds, per lane (indexed by frameKind), the end of the
	// lane's backoff in unix nanos, 0 when it is not waiting; written only by
	// the lane's loop.
	backoffUntil [kindMust + 1]atomic.Int64

	sent        atomic.Uint64
	dropped     atomic.Uint64
	lastContact atomic.Int64 // unix nanos
	rtt         atomic.Int64 // nanos

	mu struct {
		sync.Mutex
		hbPending  []Envelope // queued since the last flush
		hbReady    []Envelope // flushed, not yet taken by heartbeatLoop
		hbSpare    []Envelope // a drained buffer for reuse
		ping       bool       // an empty frame is due (flushHeartbeats)
		snapFailed []uint64   // groups whose snapshot was dropped by Send
	}
}

func (t *GRPCTransport) newPeerLocked(id uint64, addr string) (*grpcPeer, error) {
	var tlsCfg *tls.Config
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())
	if t.cfg.TLS != nil {
		tlsCfg = t.cfg.TLS(id)
		creds = grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, append(t.dialOps, creds)...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(t.ctx)
	p := &grpcPeer{
		t:         t,
		id:        id,
		addr:      addr,
		conn:      conn,
		tlsCfg:    tlsCfg,
		ctx:       ctx,
		stopF:     cancel,
		m:         t.metrics.forPeer(id),
		raftQ:     make(chan Envelope, t.cfg.QueueCap),
		snapQ:     make(chan Envelope, t.cfg.SnapshotQueueCap),
		mustQ:     make(chan mustMsg, t.cfg.MustQueueCap),
		hbWake:    make(chan struct{}, 1),
		snapWake:  make(chan struct{}, 1),
		probeWake: make(chan struct{}, 1),
	}
	reset := make(chan struct{})
	p.resets.Store(&reset)
	return p, nil
}

// startLocked starts the peer's lane loops. Caller holds t.mu.
func (p *grpcPeer) startLocked() {
	p.t.goLoop("raftSendLoop", p.raftSendLoop)
	p.t.goLoop("heartbeatLoop", p.heartbeatLoop)
	p.t.goLoop("snapshotLoop", p.snapshotLoop)
	p.t.goLoop("mustLoop", p.mustLoop)
	if !p.t.resetOff.probe {
		p.t.goLoop("probeLoop", p.probeLoop)
	}
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

func (p *grpcPeer) flushHeartbeats(ping bool) {
	p.mu.Lock()
	if len(p.mu.hbPending) == 0 {
		// Nothing to coalesce: if asked, the lane carries an empty frame,
		// a ping, so that the peer hears from this node even when no
		// group here leads (Transport.FlushHeartbeats).
		if !ping {
			p.mu.Unlock()
			return
		}
		if cap(p.mu.hbPending) > idleKeep {
			p.mu.hbPending = nil // idle: let go of a burst's buffer
		}
		p.mu.ping = true
		p.mu.Unlock()
		poke(p.hbWake)
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

func (p *grpcPeer) reportSnapFailures() {
	p.mu.Lock()
	groups := p.mu.snapFailed
	p.mu.snapFailed = nil
	p.mu.Unlock()
	for _, g := range groups {
		p.reportSnapshot(g, false)
	}
}
