package transport

import (
	"sync"
	"time"

	"google.golang.org/grpc"
)

// maxAckInterval bounds the wait of an ack on the raft lane; see ackPacer.
const maxAckInterval = 2 * time.Millisecond

// ackPacer sends the acks of one raft-lane stream, at most one per
// interval, each for every frame delivered so far.
//
// Why: acks are cumulative (the sender keeps the highest count and seq), so
// one ack can stand for every frame since the last. Acking each frame was a
// third of a node's socket writes under `bench put`, and each write on the
// receiving side wakes the sender's ackLoop too. The first ack after a
// quiet spell leaves at once; the ones after it wait out the interval,
// which stays far below WriteTimeout (the sender's deadline for acks).
// The heartbeat lane acks each heartbeat batch (its stamps measure RTT)
// and pings at most every pingAckInterval.
//
// note is called by the stream's handler; loop, the only sender on the
// stream, runs until stop, which the handler calls before it returns, or
// until the transport closes.
type ackPacer struct {
	t        *GRPCTransport
	ss       grpc.ServerStream
	interval time.Duration
	wake     chan struct{} // capacity 1: a note since loop last looked
	quit     chan struct{}
	done     chan struct{}
	// closing ends loop when the transport closes, so that Close, which
	// waits for every goLoop, does not wait for a stream that a gRPC
	// server it does not own keeps open.
	closing <-chan struct{}

	mu struct {
		sync.Mutex
		to, seq, stamp, count uint64 // the latest ack to send
		sent                  uint64 // seq of the last ack sent
		err                   error  // the failed send; loop has exited
	}
}

// startAckPacer starts the pacer of stream ss.
func (t *GRPCTransport) startAckPacer(ss grpc.ServerStream) *ackPacer {
	a := &ackPacer{
		t: t, ss: ss,
		interval: min(maxAckInterval, t.cfg.WriteTimeout/8),
		wake:     make(chan struct{}, 1),
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	if t.ctx != nil {
		a.closing = t.ctx.Done()
	}
	t.goLoop("ackPacer", a.loop)
	return a
}

// note records that frame seq (stamped stamp) brought the stream's
// delivered messages to count. It never blocks; it returns the error of a
// failed ack, after which the stream is done for.
func (a *ackPacer) note(to, seq, stamp, count uint64) error {
	a.mu.Lock()
	a.mu.to, a.mu.seq, a.mu.stamp, a.mu.count = to, seq, stamp, count
	err := a.mu.err
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return err
}

// stop sends what is still unacked and ends loop.
func (a *ackPacer) stop() {
	close(a.quit)
	<-a.done
}

func (a *ackPacer) loop() {
	defer close(a.done)
	pace := time.NewTimer(a.interval)
	defer pace.Stop()
	for {
		select {
		case <-a.wake:
		case <-a.quit:
			a.flush()
			return
		case <-a.closing:
			return
		}
		if !a.flush() {
			return
		}
		pace.Reset(a.interval)
		select {
		case <-pace.C:
		case <-a.quit:
			a.flush()
			return
		case <-a.closing:
			return
		}
	}
}

// flush sends the latest ack unless it was sent; false if the send failed.
func (a *ackPacer) flush() bool {
	a.mu.Lock()
	to, seq, stamp, count := a.mu.to, a.mu.seq, a.mu.stamp, a.mu.count
	fresh := seq != a.mu.sent && a.mu.err == nil
	a.mu.Unlock()
	if !fresh {
		return true
	}
	err := a.t.sendAck(a.ss, to, seq, stamp, count)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.mu.err = err
		return false
	}
	a.mu.sent = seq
	return true
}
