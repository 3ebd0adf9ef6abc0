package transport

// The client streams of the gRPC transport's lanes: opening them, writes
// and reads bounded by a deadline, the accounting that counts what a dead
// stream lost exactly once (settle), and the backoff between attempts to
// reopen a failed lane.
//
// Lock order: stream.mu is a leaf: nothing else is taken while it is held,
// and it is never held across a blocking step. The goroutine inventory and
// the ownership rules (a lane's stream and backoff belong to its loop) are
// at the top of grpc.go.

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// laneBackoff spaces out attempts to reopen a failed lane: the wait doubles
// from BackoffBase to BackoffMax, jittered by ±20%. Owned by one loop: no
// other goroutine reads or writes its fields.
//
// A reset of the peer's backoff (grpcPeer.resetBackoff, when the peer has
// shown it is up) ends the wait. The reset closes the channel that resets
// points to and stores a new one; the loop notices the change the next time
// it calls left (and waitBackoff wakes on the close), drops its wait and
// sets redial, so that the next open waits for the connection instead of
// failing fast while gRPC reconnects. Only a reset after the lane's last
// success counts. The loop publishes the end of its wait in pub, for the
// probe and for tests.
type laneBackoff struct {
	base, max time.Duration
	cur       time.Duration
	until     time.Time
	redial    bool // a reset ended the wait; cleared by the next outcome

	resets *atomic.Pointer[chan struct{}] // the peer's reset signal
	seen   *chan struct{}                 // *resets as of the last success or noticed reset
	pub    *atomic.Int64                  // until in unix nanos; 0: not waiting
	wake   chan struct{}                  // the peer's probeWake, poked by fail
}

func (p *grpcPeer) newBackoff(lane frameKind) laneBackoff {
	return laneBackoff{
		base:   p.t.cfg.BackoffBase,
		max:    p.t.cfg.BackoffMax,
		resets: &p.resets,
		seen:   p.resets.Load(),
		pub:    &p.backoffUntil[lane],
		wake:   p.probeWake,
	}
}

func (b *laneBackoff) fail() {
	if b.cur == 0 {
		b.cur = b.base
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	j := time.Duration(float64(b.cur) * (0.8 + 0.4*rand.Float64()))
	b.until = time.Now().Add(j)
	b.redial = false
	b.pub.Store(b.until.UnixNano())
	poke(b.wake)
}

func (b *laneBackoff) ok() {
	b.seen = b.resets.Load()
	if b.cur != 0 {
		b.cur, b.until, b.redial = 0, time.Time{}, false
		b.pub.Store(0)
	}
}

// left is how long until the next attempt is allowed: 0 once the wait is
// over or the peer's backoff has been reset since the lane last looked.
func (b *laneBackoff) left() time.Duration {
	if r := b.resets.Load(); r != b.seen {
		b.seen = r
		if b.cur != 0 {
			b.cur, b.until, b.redial = 0, time.Time{}, true
			b.pub.Store(0)
		}
		return 0
	}
	return time.Until(b.until)
}

// waitBackoff waits until bo allows the next attempt, which a reset of the
// peer's backoff ends at once; false if the peer stopped.
func (p *grpcPeer) waitBackoff(bo *laneBackoff) bool {
	for {
		d := bo.left()
		if d <= 0 {
			return p.ctx.Err() == nil
		}
		// bo.seen is the signal current when left looked: the next reset
		// closes exactly this channel, so none is missed.
		p.waitReset(d, *bo.seen)
	}
}

// waitReset waits d, until reset is closed, or until the peer stops.
func (p *grpcPeer) waitReset(d time.Duration, reset <-chan struct{}) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
	case <-reset:
	case <-p.ctx.Done():
	}
}

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

// openStream opens a stream of desc's lane within DialTimeout. With
// waitReady (the first attempt after a reset of the backoff) it waits for
// the connection to come up instead of failing at once while gRPC is still
// reconnecting.
func (p *grpcPeer) openStream(desc *grpc.StreamDesc, waitReady bool) (*stream, error) {
	ctx, cancel := context.WithCancel(p.ctx)
	timer := time.AfterFunc(p.t.cfg.DialTimeout, cancel)
	cs, err := p.conn.NewStream(ctx, desc, "/"+peerServiceName+"/"+desc.StreamName, grpc.WaitForReady(waitReady))
	if !timer.Stop() {
		cancel()
		return nil, errOpenTimeout
	}
	if err != nil {
		cancel()
		return nil, err
	}
	p.opened.Add(1)
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
