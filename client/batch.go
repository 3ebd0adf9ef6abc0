package client

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// Batching. Put and Delete go over one KV.Batch stream per node
// connection instead of one unary RPC each: a sender goroutine takes
// whatever calls are waiting and sends them as one message, a receiver
// hands each answer to its caller. Under load this saves most of the
// per-request cost on both sides (HTTP/2 stream, headers, a write per
// answer); with one call at a time it is one message each way, like a
// unary RPC. Each call keeps its own outcome, retries and leader hint. A
// node that does not serve Batch (Unimplemented) gets unary RPCs.
//
// Calls are asynchronous (start): their outcome is handed to a callback,
// so that a request can hedge while a call is out (do.go) without a
// goroutine per call.

// maxBatchOps bounds the ops sent in one BatchRequest.
const maxBatchOps = 512

// batchers holds one batcher per connection. Lock order: batchers.mu is a
// leaf, taken after Client.mu is released.
type batchers struct {
	mu     sync.Mutex
	m      map[*grpc.ClientConn]*batcher
	closed bool
}

// get returns cc's batcher, starting it on first use; nil once closed.
func (bs *batchers) get(cc *grpc.ClientConn) *batcher {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if bs.closed {
		return nil
	}
	if b := bs.m[cc]; b != nil {
		return b
	}
	if bs.m == nil {
		bs.m = make(map[*grpc.ClientConn]*batcher)
	}
	b := &batcher{cc: cc, calls: make(chan *batchCall, maxBatchOps), stop: make(chan struct{}), done: make(chan struct{})}
	bs.m[cc] = b
	go b.sendLoop()
	return b
}

// close stops every batcher and waits for their senders. Calls in flight
// fail with Canceled.
func (bs *batchers) close() {
	bs.mu.Lock()
	bs.closed = true
	m := bs.m
	bs.m = nil
	bs.mu.Unlock()
	for _, b := range m {
		close(b.stop)
		<-b.done
	}
}

// batcher sends the calls of one connection over a Batch stream. Its
// sendLoop owns the current stream; a stream's recvLoop owns nothing but
// the stream's pending map (under its mutex).
type batcher struct {
	cc          *grpc.ClientConn
	calls       chan *batchCall
	stop, done  chan struct{}
	unsupported atomic.Bool
}

// batchCall is one op in flight. done is called exactly once, by the
// sender or the stream's receiver; it must not block.
type batchCall struct {
	op   *api.BatchOp
	done func(*api.BatchResult, error)
}

// finish hands a call its answer: the result, or the error status its
// unary RPC would have returned, with the leader hint.
func (c *batchCall) finish(r *api.BatchResult) {
	if r.Code != uint32(codes.OK) {
		c.done(nil, &hintError{st: status.New(codes.Code(r.Code), r.Message), leader: r.Leader})
		return
	}
	c.done(r, nil)
}

// batchStream is one open Batch stream.
type batchStream struct {
	s      api.KV_BatchClient
	cancel context.CancelFunc
	mu     sync.Mutex
	err    error // set once the stream failed; pending is then nil
	next   uint64
	pend   map[uint64]*batchCall
}

// start queues op; done gets its answer (the result, or the error its
// unary RPC would have returned) exactly once, from the sender or the
// stream's receiver, and must not block. It returns false, having done
// nothing, if the node does not serve Batch or its queue is full (a node
// whose stream stalls, say): use the unary RPC then. It never waits. op is
// marshalled later by sendLoop: neither it nor its byte slices may change
// afterwards, and each attempt needs an op of its own (sendLoop sets its
// Id).
func (b *batcher) start(op *api.BatchOp, done func(*api.BatchResult, error)) bool {
	if b.unsupported.Load() {
		return false
	}
	select {
	case <-b.stop:
		done(nil, status.Error(codes.Canceled, "client: closed"))
		return true
	default:
	}
	select {
	case b.calls <- &batchCall{op: op, done: done}:
		return true
	default:
		return false
	}
}

func (b *batcher) sendLoop() {
	defer close(b.done)
	var st *batchStream
	defer func() {
		if st != nil {
			st.cancel()
		}
		// Calls queued but never sent fail.
		for {
			select {
			case c := <-b.calls:
				c.done(nil, status.Error(codes.Canceled, "client: closed"))
			default:
				return
			}
		}
	}()
	calls := make([]*batchCall, 0, 64)
	for {
		calls = calls[:0]
		select {
		case c := <-b.calls:
			calls = append(calls, c)
		case <-b.stop:
			return
		}
		// Let callers that were woken together (by one answer message)
		// queue their next calls before the drain, so that they leave in
		// one message: without this the sender runs first and sends
		// about one call per message.
		runtime.Gosched()
	drain:
		for len(calls) < maxBatchOps {
			select {
			case c := <-b.calls:
				calls = append(calls, c)
			default:
				break drain
			}
		}
		if st == nil {
			var err error
			if st, err = b.open(); err != nil {
				for _, c := range calls {
					c.done(nil, err)
				}
				clear(calls)
				continue
			}
		}
		req := &api.BatchRequest{Ops: make([]*api.BatchOp, len(calls))}
		st.mu.Lock()
		err := st.err
		if err == nil {
			for i, c := range calls {
				st.next++
				c.op.Id = st.next
				st.pend[st.next] = c
				req.Ops[i] = c.op
			}
		}
		st.mu.Unlock()
		if err != nil {
			for _, c := range calls {
				c.done(nil, err)
			}
			st.cancel()
			st = nil
			continue
		}
		if err := st.s.Send(req); err != nil {
			// The stream is broken; its recvLoop fails what is pending
			// with the stream's status.
			st.cancel()
			st = nil
		}
		clear(calls)
	}
}

// open opens a stream and starts its receiver.
func (b *batcher) open() (*batchStream, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := api.NewKVClient(b.cc).Batch(ctx)
	if err != nil {
		cancel()
		return nil, b.noteErr(err)
	}
	st := &batchStream{s: s, cancel: cancel, pend: make(map[uint64]*batchCall)}
	go st.recvLoop(b)
	return st, nil
}

// noteErr remembers that the node does not serve Batch, and turns that
// answer into a refusal the request retries (its next attempts take the
// unary RPC: start returns false from now on).
func (b *batcher) noteErr(err error) error {
	if status.Code(err) == codes.Unimplemented {
		b.unsupported.Store(true)
		return status.Error(codes.FailedPrecondition, "client: node does not serve Batch; not applied, retrying without it")
	}
	return err
}

func (st *batchStream) recvLoop(b *batcher) {
	for {
		resp, err := st.s.Recv()
		if err != nil {
			if err == context.Canceled || status.Code(err) == codes.OK {
				err = status.Error(codes.Unavailable, "client: batch stream closed")
			}
			err = b.noteErr(err)
			st.mu.Lock()
			st.err = err
			pend := st.pend
			st.pend = nil
			st.mu.Unlock()
			for _, c := range pend {
				c.done(nil, err)
			}
			st.cancel()
			return
		}
		// Take the calls under the lock; run their callbacks without it.
		ready := resp.Results[:0]
		calls := make([]*batchCall, 0, len(resp.Results))
		st.mu.Lock()
		for _, r := range resp.Results {
			if c := st.pend[r.Id]; c != nil {
				delete(st.pend, r.Id)
				ready = append(ready, r)
				calls = append(calls, c)
			}
		}
		st.mu.Unlock()
		for i, c := range calls {
			c.finish(ready[i])
		}
	}
}

// hintError is a failed batch op: the gRPC status its unary RPC would have
// returned, and the leader hint that RPC's trailer would have carried.
type hintError struct {
	st     *status.Status
	leader uint64
}

func (e *hintError) Error() string              { return e.st.Err().Error() }
func (e *hintError) GRPCStatus() *status.Status { return e.st }

// batchHint returns the leader hint of a failed batch op, 0 if none.
func batchHint(err error) uint64 {
	var he *hintError
	if errors.As(err, &he) {
		return he.leader
	}
	return 0
}

// batcher returns cc's batcher, nil when batching is off or the client is
// closed.
func (c *Client) batcher(cc *grpc.ClientConn) *batcher {
	if c.cfg.DisableBatch {
		return nil
	}
	return c.batch.get(cc)
}
