package transport

// Redialling a peer that comes back.
//
// While a peer is down, each lane toward it backs off (laneBackoff, up to
// BackoffMax); gRPC's own connect backoff stays under connectBackoffMax
// (NewGRPC). Left alone, a peer that restarts would wait out what is left
// of its lanes' backoff before this node sends it anything. Evidence that
// the peer is up ends the lanes' waits at once (resetBackoff):
//
//   - inbound: the first accepted frame of any stream the peer opens to this
//     node (serveStream calls peerUp);
//   - probe: while a lane toward the peer backs off and the connection is not
//     ready, probeLoop dials the peer every ProbeInterval and reads the first
//     frame a gRPC server sends unasked (its HTTP/2 SETTINGS);
//   - the connection coming back by itself (gRPC's own retry) while a lane
//     still backs off, as seen by probeLoop.
//
// A reset neither blocks nor touches a loop's state. It swaps in a new reset
// channel and closes the old one (an atomic swap and a close, no lock).
// Each lane's loop notices the reset itself (laneBackoff.left; waitBackoff
// wakes on the close) and reopens with WaitForReady, so that its first
// attempt waits for gRPC's reconnect (at most connectBackoffMax away)
// instead of failing fast and backing off again.
//
// A probe does not reset a peer whose connection is up: lanes that back off
// over a working connection (frames rejected, acks missing from a paused
// peer) keep their backoff.
//
// Lock order: no lock of its own, none taken. Goroutines: probeLoop, one per
// peer (see the inventory in grpc.go).

import (
	"context"
	"io"
	"net"
	"time"

	"google.golang.org/grpc/connectivity"
)

// resetSwitches turn parts of the backoff reset off, for tests that show
// what goes wrong without them. Zero (everything on) outside tests; set
// before Start.
type resetSwitches struct {
	inbound bool // an inbound stream does not reset
	probe   bool // no probeLoop
	lanes   bool // a reset leaves the lanes' backoff alone
}

// http2FrameSettings is the type of an HTTP/2 SETTINGS frame (RFC 9113
// 6.5), the first frame a gRPC server sends on a new connection.
const http2FrameSettings = 0x4

// peerUp is called by serveStream on the first accepted frame of a stream
// from node from: the peer is up, so any backoff toward it is over.
func (t *GRPCTransport) peerUp(from uint64) {
	if t.resetOff.inbound {
		return
	}
	if p := t.peer(from); p != nil && (p.lanesBackingOff() || !p.connReady()) {
		p.resetBackoff("inbound stream")
	}
}

// resetBackoff ends the backoff of every lane toward p. Safe from any
// goroutine; it takes no lock of ours and does not block.
func (p *grpcPeer) resetBackoff(why string) {
	if !p.t.resetOff.lanes {
		next := make(chan struct{})
		close(*p.resets.Swap(&next))
	}
	p.t.cfg.Logger.Debug("transport: peer is up, backoff reset", "to", p.id, "why", why)
}

// lanesBackingOff reports whether a lane toward p waits out its backoff.
func (p *grpcPeer) lanesBackingOff() bool {
	now := time.Now().UnixNano()
	for i := range p.backoffUntil {
		if p.backoffUntil[i].Load() > now {
			return true
		}
	}
	return false
}

func (p *grpcPeer) connReady() bool { return p.conn.GetState() == connectivity.Ready }

// backoffLeft is how long lane still waits before its next attempt (tests).
func (p *grpcPeer) backoffLeft(lane frameKind) time.Duration {
	u := p.backoffUntil[lane].Load()
	if u == 0 {
		return 0
	}
	return max(0, time.Until(time.Unix(0, u)))
}

// probeLoop sleeps until a lane toward p fails, then runs probeStep once
// per ProbeInterval until it reports the spell over.
func (p *grpcPeer) probeLoop() {
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.probeWake:
		}
		down := !p.connReady()
		for {
			if !p.waitFor(p.t.cfg.ProbeInterval) {
				return
			}
			if p.probeStep(&down) {
				break
			}
		}
	}
}

// probeStep is one step of probeLoop; *down records whether the connection
// has been seen down in this spell. While a lane backs off: a connection
// that is down gets probed, and the backoff reset if the peer answers; a
// connection that is up resets the backoff if it was seen down (it came
// back), and otherwise ends the spell with the backoff intact (the lanes
// back off for reasons a probe cannot disprove). It reports whether the
// spell is over.
func (p *grpcPeer) probeStep(down *bool) bool {
	if !p.lanesBackingOff() {
		return true
	}
	if p.connReady() {
		if *down {
			p.resetBackoff("connection back")
		}
		return true
	}
	*down = true
	if p.probe(min(p.t.cfg.DialTimeout, p.t.cfg.ProbeInterval)) {
		p.resetBackoff("probe")
		return true
	}
	return false
}

// probe reports whether a gRPC server answers at p.addr within d: it dials
// from the local peer host and reads the header of the first frame the
// server sends unasked, its HTTP/2 SETTINGS (with TLS: that the server
// completes the TLS handshake). A kernel that completes the
// handshake for a process that is paused, or not serving yet, does not
// count. The server sees the connection end before the client preface, which
// it treats as a health check and does not log.
func (p *grpcPeer) probe(d time.Duration) bool {
	ctx, cancel := context.WithTimeout(p.ctx, d)
	defer cancel()
	c, err := p.t.dial(ctx, p.addr)
	if err != nil {
		return false
	}
	stop := context.AfterFunc(ctx, func() { _ = c.Close() }) // ends the read at d or stop
	defer func() {
		stop()
		_ = c.Close()
	}()
	return p.probeGreeting(ctx, c)
}

// readSettings reports whether the first frame read from c is an HTTP/2
// SETTINGS frame, then half-closes c.
func readSettings(c net.Conn) bool {
	var h [9]byte // length (3), type, flags, stream ID (4)
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return false
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	return h[3] == http2FrameSettings
}
