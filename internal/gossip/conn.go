package gossip

import (
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// maxChunk bounds the bytes of one GossipChunk: a state sync of a large
// cluster is written in pieces, each a gRPC message.
const maxChunk = 32 << 10

// streamConn is one side of a Gossip.Stream call as the net.Conn memberlist
// reads and writes. Reads and writes are memberlist's, one goroutine at a
// time each (as with a TCP connection); a write waits for gRPC flow control
// with no lock held (seed 003: a stream must deliver).
//
// Deadlines: one for reads and writes alike (memberlist sets them
// together). When it passes, the call is aborted, so a read or write waiting
// on it returns, and every later one fails with os.ErrDeadlineExceeded:
// memberlist closes a connection after any timeout, so nothing is lost by
// not resuming one.
type streamConn struct {
	local, remote addr
	send          func([]byte) error
	recv          func() ([]byte, error)
	// abort ends the call now (a deadline passed); finish ends it after
	// what was written (Close). Both may be called more than once and
	// from any goroutine.
	abort, finish func()

	rbuf []byte // read but not yet returned; the reading goroutine's own

	mu struct {
		sync.Mutex
		timer   *time.Timer
		gen     uint64 // of the deadline set last: a timer of an older one does nothing
		expired bool
		closed  bool
	}
}

var _ net.Conn = (*streamConn)(nil)

func newStreamConn(local, remote string, send func([]byte) error, recv func() ([]byte, error)) *streamConn {
	return &streamConn{local: addr(local), remote: addr(remote), send: send, recv: recv}
}

// failure returns the error a read or write should report now, nil if
// the call is still usable.
func (c *streamConn) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.mu.closed:
		return net.ErrClosed
	case c.mu.expired:
		return os.ErrDeadlineExceeded
	}
	return nil
}

// Read returns the bytes the other side wrote, in order; io.EOF once it
// closed its side.
func (c *streamConn) Read(p []byte) (int, error) {
	for len(c.rbuf) == 0 {
		if err := c.failure(); err != nil {
			return 0, err
		}
		b, err := c.recv()
		if err != nil {
			if ferr := c.failure(); ferr != nil {
				return 0, ferr
			}
			if err == io.EOF {
				return 0, io.EOF
			}
			return 0, &net.OpError{Op: "read", Net: c.local.Network(), Addr: c.remote, Err: err}
		}
		c.rbuf = b
	}
	n := copy(p, c.rbuf)
	c.rbuf = c.rbuf[n:]
	return n, nil
}

// Write sends p, in chunks of at most maxChunk bytes; it returns when gRPC
// took them all, or on the first failure.
func (c *streamConn) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if err := c.failure(); err != nil {
			return n, err
		}
		k := min(len(p)-n, maxChunk)
		if err := c.send(append([]byte(nil), p[n:n+k]...)); err != nil {
			if ferr := c.failure(); ferr != nil {
				return n, ferr
			}
			return n, &net.OpError{Op: "write", Net: c.local.Network(), Addr: c.remote, Err: err}
		}
		n += k
	}
	return n, nil
}

// Close ends the call after what was written. Safe to call more than once.
func (c *streamConn) Close() error {
	c.mu.Lock()
	if c.mu.timer != nil {
		c.mu.timer.Stop()
	}
	c.mu.closed = true
	c.mu.Unlock()
	c.finish()
	return nil
}

func (c *streamConn) LocalAddr() net.Addr  { return c.local }
func (c *streamConn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets the deadline of reads and writes (see streamConn); the
// zero time clears it.
func (c *streamConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed || c.mu.expired {
		return nil
	}
	if c.mu.timer != nil {
		c.mu.timer.Stop()
		c.mu.timer = nil
	}
	c.mu.gen++
	if t.IsZero() {
		return nil
	}
	gen := c.mu.gen
	c.mu.timer = time.AfterFunc(time.Until(t), func() { c.expire(gen) })
	return nil
}

// SetReadDeadline and SetWriteDeadline set the one deadline (SetDeadline).
func (c *streamConn) SetReadDeadline(t time.Time) error  { return c.SetDeadline(t) }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return c.SetDeadline(t) }

// expire is the deadline's timer: it marks the call expired, then aborts
// it with no lock held.
func (c *streamConn) expire(gen uint64) {
	c.mu.Lock()
	if c.mu.closed || gen != c.mu.gen {
		c.mu.Unlock()
		return
	}
	c.mu.expired = true
	c.mu.Unlock()
	c.abort()
}
