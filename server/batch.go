package server

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// maxBatchResults bounds the answers sent in one BatchResponse.
const maxBatchResults = 1024

// batchOpTimeout bounds an op of a Batch stream that takes its unary path:
// the Go client's default RequestTimeout, past which nobody waits for it.
const batchOpTimeout = 30 * time.Second

// maxBatchInFlight bounds the ops of one Batch stream in flight at once.
// Past it the handler stops taking requests, so the stream's receive stalls
// and gRPC flow control pushes back on the client, instead of one client
// queueing any number of proposals.
const maxBatchInFlight = 4096

// Batch serves a stream of write batches. Each op gets the answer its
// unary RPC would give (same checks, forwarding, proposal, metrics).
//
// A put or delete of a group this node leads is proposed with
// ProposeFunc: its outcome is queued by the engine's worker, and sendLoop
// answers everything queued at once in one message. So the writes that one
// engine cycle applies go back in one message per stream, with no
// goroutine per op. Every other op (another node leads, no leader yet, or a
// check fails) runs its unary path on its own goroutine, which waits for a
// leader or forwards (route.go), and queues its answer the same way. So
// does an op whose proposal raft refused unappended because leadership
// moved (a transfer): it is routed again, never answered "dropped".
//
// Goroutines: the handler's (receives, starts ops), recvLoop (one Recv at a
// time, so that the handler can also watch for shutdown), sendLoop (the
// only sender on the stream), and one per op on the unary path. When the
// client closes its side, the handler answers every op in flight first
// (engine proposals end within the engine's request timeout); when the
// stream fails or the node drains, answers still to come are dropped.
func (k *kvService) Batch(stream api.KV_BatchServer) error {
	sctx := stream.Context()
	// Ops run on a context that ends with the stream but carries none of
	// its gRPC values: trailers set by the unary paths (leader hints) must
	// not land on the shared stream; each answer carries its own hint.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopAfter := context.AfterFunc(sctx, cancel)
	defer stopAfter()

	q := &batchQueue{ready: make(chan struct{}, 1)}
	stopSend := make(chan struct{})
	sendDone := make(chan error, 1)
	go func() { sendDone <- k.sendLoop(stream, q, stopSend) }()

	reqs := make(chan *api.BatchRequest)
	recvErr := make(chan error, 1)
	go func() { // recvLoop
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-sctx.Done():
				recvErr <- sctx.Err()
				return
			}
		}
	}()

	var answered sync.WaitGroup // every op, until its answer is queued
	var unary opGroup           // ops on the unary path (bounded by ctx)
	inflight := make(chan struct{}, maxBatchInFlight)
	done := func(d batchDone) {
		q.push(d)
		<-inflight // never blocks: the op holds a token
		answered.Done()
	}
	// viaUnary runs op's unary path on a goroutine of its own. Called by
	// the handler, and by engine workers (from a ProposeFunc callback, which
	// must not block: spawning does not).
	viaUnary := func(op *api.BatchOp) {
		if !unary.spawn(func() {
			// Bounded like a client's request, so that an op cannot hold
			// its token forever (a forward without a session to a frozen
			// node, say).
			octx, cancel := context.WithTimeout(ctx, batchOpTimeout)
			defer cancel()
			done(batchDone{res: k.batchOp(octx, op)})
		}) {
			// The stream is over: nobody reads the answer.
			done(batchDone{res: &api.BatchResult{Id: op.Id, Code: uint32(codes.Canceled)}})
		}
	}
	var err error
loop:
	for {
		select {
		case req := <-reqs:
			for _, op := range req.Ops {
				select {
				case inflight <- struct{}{}:
				case <-ctx.Done():
					err = ctx.Err()
					break loop
				case <-k.s.draining:
					err = status.Error(codes.Unavailable, "server: node shutting down; retry on another node")
					break loop
				}
				answered.Add(1)
				if err := k.s.check(sctx, batchOpRequest(op)); err != nil {
					res := &api.BatchResult{Id: op.Id}
					k.setError(res, 0, err)
					done(batchDone{res: res})
					continue
				}
				if !k.proposeLocal(op, done, viaUnary) {
					viaUnary(op)
				}
			}
		case err = <-recvErr:
			if errors.Is(err, io.EOF) {
				err = nil // the client closed its side: answer what is in flight
			}
			break loop
		case <-k.s.draining:
			err = status.Error(codes.Unavailable, "server: node shutting down; retry on another node")
			break loop
		}
	}
	if err == nil {
		answered.Wait()
	} else {
		cancel()
		q.close()
	}
	unary.closeAndWait()
	close(stopSend)
	if serr := <-sendDone; err == nil {
		err = serr
	}
	return err
}

// proposeLocal proposes a put or delete of a group this node leads, with an
// outcome callback that calls done, or reroute if raft refused the proposal
// unappended (leadership moved meanwhile). It returns false, having done
// nothing, for any op that must take its unary path (another node leads,
// no leader yet, or a check that fails there with the unary error).
func (k *kvService) proposeLocal(op *api.BatchOp, done func(batchDone), reroute func(*api.BatchOp)) bool {
	var cmd kv.Command
	var lease uint64
	var spans [][2][]byte // a transaction's: all in the key's range
	kind := batchPut
	switch o := op.Op.(type) {
	case *api.BatchOp_Put:
		cmd = withSession(kv.Command{Op: kv.OpPut, Key: o.Put.GetKey(), Value: o.Put.GetValue(), Lease: o.Put.GetLease()}, o.Put.GetSession())
		lease = o.Put.GetLease()
	case *api.BatchOp_Delete:
		cmd = withSession(kv.Command{Op: kv.OpDelete, Key: o.Delete.GetKey()}, o.Delete.GetSession())
		kind = batchDelete
	case *api.BatchOp_Txn:
		t, err := TxnFromAPI(o.Txn)
		if err != nil {
			return false
		}
		if spans = t.Spans(); len(spans) == 0 {
			return false
		}
		cmd = withSession(kv.TxnCommand(t), o.Txn.GetSession())
		kind = batchTxn
	default:
		return false
	}
	key := cmd.Key
	if kind == batchTxn {
		key = spans[0][0]
	}
	if kv.CheckKey(key) != nil {
		return false
	}
	r := k.s.ranges.Lookup(key)
	if r == nil {
		return false
	}
	if kind == batchTxn {
		d, ok := r.Descriptor()
		if !ok {
			return false
		}
		for _, sp := range spans {
			if !d.ContainsSpan(sp[0], sp[1]) {
				return false // the unary path names the ranges, or routes it
			}
		}
	}
	g := r.ID
	if l, _, _ := k.s.host.Leader(g); l != k.s.cfg.NodeID {
		return false
	}
	b, err := encode(cmd)
	if err != nil {
		return false
	}
	id := op.Id
	k.s.host.ProposeFunc(g, b, func(out []byte, err error) {
		if err != nil && leaderMoved(err) {
			k.s.metrics.reroutes.Inc()
			reroute(op)
			return
		}
		if err == nil {
			if res, derr := kv.DecodeResult(out); derr == nil && res.KeyMismatch {
				// The range split or merged under the write (nothing was
				// written): the unary path routes it by key again.
				k.s.metrics.reroutes.Inc()
				reroute(op)
				return
			}
		}
		done(batchDone{id: id, g: g, kind: kind, lease: lease, out: out, err: err})
	})
	return true
}

// opGroup runs a stream's unary-path ops on goroutines of their own, and
// lets the stream's handler stop new ones and wait for the running ones.
// mu is a leaf, held only to start a goroutine.
type opGroup struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// spawn runs fn on a new goroutine, or returns false once closed.
func (o *opGroup) spawn(fn func()) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return false
	}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		fn()
	}()
	return true
}

// closeAndWait refuses new goroutines and waits for the running ones.
func (o *opGroup) closeAndWait() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	o.wg.Wait()
}

// batchDone is one op's outcome: a finished answer (res), or the engine's
// outcome of a local put, delete or transaction, turned into an answer by
// sendLoop.
type batchDone struct {
	res   *api.BatchResult
	id, g uint64
	kind  batchKind
	lease uint64
	out   []byte
	err   error
}

// batchKind is the kind of a batch op proposed locally.
type batchKind uint8

const (
	batchPut batchKind = iota
	batchDelete
	batchTxn
)

// batchQueue hands outcomes to a stream's sendLoop. push is called by
// engine workers and op goroutines and never blocks; mu is a leaf.
type batchQueue struct {
	mu struct {
		sync.Mutex
		done   []batchDone
		closed bool // the stream ended: drop what comes
	}
	ready chan struct{} // capacity 1: wakes sendLoop
}

func (q *batchQueue) push(d batchDone) {
	q.mu.Lock()
	if q.mu.closed {
		q.mu.Unlock()
		return
	}
	q.mu.done = append(q.mu.done, d)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take swaps the queued outcomes with buf (emptied) and returns them.
func (q *batchQueue) take(buf []batchDone) []batchDone {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.mu.done
	q.mu.done = buf[:0]
	return out
}

func (q *batchQueue) close() {
	q.mu.Lock()
	q.mu.closed = true
	q.mu.Unlock()
}

// sendLoop answers what is queued, all of it in one message (up to
// maxBatchResults each), until stop is closed and the queue is empty.
// After a failed Send it keeps taking (and dropping) outcomes and returns
// the error.
func (k *kvService) sendLoop(stream api.KV_BatchServer, q *batchQueue, stop <-chan struct{}) error {
	var err error
	var spare []batchDone
	send := func() {
		all := q.take(spare)
		for ds := all; len(ds) > 0 && err == nil; {
			n := min(len(ds), maxBatchResults)
			resp := &api.BatchResponse{Results: make([]*api.BatchResult, n)}
			for i := range n {
				resp.Results[i] = k.answer(ds[i])
			}
			err = stream.Send(resp)
			ds = ds[n:]
		}
		clear(all)
		spare = all[:0]
	}
	for {
		select {
		case <-q.ready:
			send()
		case <-stop:
			send()
			return err
		}
	}
}

// answer turns an outcome into the op's answer, as its unary RPC would
// (same response, error status and count).
func (k *kvService) answer(d batchDone) *api.BatchResult {
	if d.res != nil {
		return d.res
	}
	res := &api.BatchResult{Id: d.id}
	r, err := k.s.outcome(context.Background(), d.g, d.out, d.err)
	switch d.kind {
	case batchPut:
		var resp *api.PutResponse
		if resp, err = k.putAnswer(d.g, d.lease, r, err); err == nil {
			res.Response = &api.BatchResult_Put{Put: resp}
		}
	case batchTxn:
		var resp *api.TxnResponse
		if resp, err = k.txnAnswer(d.g, r, err); err == nil {
			res.Response = &api.BatchResult_Txn{Txn: resp}
		}
	default:
		var resp *api.DeleteResponse
		if resp, err = k.deleteAnswer(d.g, r, err); err == nil {
			res.Response = &api.BatchResult_Delete{Delete: resp}
		}
	}
	if err != nil {
		k.setError(res, d.g, err)
	}
	return res
}

// setError puts err's status into res, with group g's leader as the hint
// (g 0: no hint).
func (k *kvService) setError(res *api.BatchResult, g uint64, err error) {
	st := status.Convert(err)
	res.Code, res.Message = uint32(st.Code()), st.Message()
	if g != 0 {
		res.Leader = k.s.leaderOf(g)
	}
}

// batchOp runs one op on its unary path and returns its answer.
func (k *kvService) batchOp(ctx context.Context, op *api.BatchOp) *api.BatchResult {
	res := &api.BatchResult{Id: op.Id}
	var key []byte
	var err error
	switch o := op.Op.(type) {
	case *api.BatchOp_Put:
		key = o.Put.GetKey()
		var resp *api.PutResponse
		if resp, err = k.Put(ctx, o.Put); err == nil {
			res.Response = &api.BatchResult_Put{Put: resp}
		}
	case *api.BatchOp_Delete:
		key = o.Delete.GetKey()
		var resp *api.DeleteResponse
		if resp, err = k.Delete(ctx, o.Delete); err == nil {
			res.Response = &api.BatchResult_Delete{Delete: resp}
		}
	case *api.BatchOp_Txn:
		if t, terr := TxnFromAPI(o.Txn); terr == nil {
			if spans := t.Spans(); len(spans) > 0 {
				key = spans[0][0]
			}
		}
		var resp *api.TxnResponse
		if resp, err = k.Txn(ctx, o.Txn); err == nil {
			res.Response = &api.BatchResult_Txn{Txn: resp}
		}
	default:
		err = status.Error(codes.Unimplemented, "server: unknown batch op")
	}
	if err != nil {
		var g uint64
		if kv.CheckKey(key) == nil {
			if r := k.s.ranges.Lookup(key); r != nil {
				g = r.ID
			}
		}
		k.setError(res, g, err)
	}
	return res
}

// batchOpRequest returns the request an op carries, for its permission
// check (needOf).
func batchOpRequest(op *api.BatchOp) any {
	switch o := op.Op.(type) {
	case *api.BatchOp_Put:
		return o.Put
	case *api.BatchOp_Delete:
		return o.Delete
	case *api.BatchOp_Txn:
		return o.Txn
	}
	return nil
}
