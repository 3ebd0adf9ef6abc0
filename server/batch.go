package server

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// maxBatchResults bounds the answers sent in one BatchResponse.
const maxBatchResults = 1024

// maxBatchInFlight bounds the ops of one Batch stream in flight at once.
// Past it the handler stops taking requests, so the stream's receive stalls
// and gRPC flow control pushes back on the client, instead of one client
// queueing any number of proposals and goroutines.
const maxBatchInFlight = 4096

// Batch serves a stream of write batches. Each op runs as its own unary
// request would (same checks, forwarding, proposal and metrics), on its
// own goroutine, so ops of one batch propose together and complete
// independently. Answers are sent as they complete, whatever is ready at
// once in one message.
//
// Goroutines: the handler's (receives, starts ops), recvLoop (one Recv at a
// time, so that the handler can also watch for shutdown), sendLoop (the
// only sender on the stream), and one per op in flight. The handler
// returns once every op it started has answered (or been dropped with the
// stream): ops are bounded by the engine's request timeout and by the
// stream's context.
func (k *kvService) Batch(stream api.KV_BatchServer) error {
	sctx := stream.Context()
	// Ops run on a context that ends with the stream but carries none of
	// its gRPC values: trailers set by the unary paths (leader hints) must
	// not land on the shared stream; each answer carries its own hint.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopAfter := context.AfterFunc(sctx, cancel)
	defer stopAfter()

	results := make(chan *api.BatchResult, maxBatchResults)
	sendDone := make(chan error, 1)
	go func() { sendDone <- k.sendLoop(stream, results) }()

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

	var ops sync.WaitGroup
	var err error
	inflight := make(chan struct{}, maxBatchInFlight)
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
				ops.Add(1)
				go func() {
					defer ops.Done()
					results <- k.batchOp(ctx, op)
					<-inflight
				}()
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
	ops.Wait()
	close(results)
	if serr := <-sendDone; err == nil {
		err = serr
	}
	return err
}

// sendLoop sends results until the channel is closed, several to a message
// when more than one is ready. After a failed Send it keeps draining, so
// that no op blocks, and returns the error.
func (k *kvService) sendLoop(stream api.KV_BatchServer, results <-chan *api.BatchResult) error {
	var err error
	for r := range results {
		if err != nil {
			continue
		}
		resp := &api.BatchResponse{Results: make([]*api.BatchResult, 1, 8)}
		resp.Results[0] = r
	drain:
		for len(resp.Results) < maxBatchResults {
			select {
			case r, ok := <-results:
				if !ok {
					break drain
				}
				resp.Results = append(resp.Results, r)
			default:
				break drain
			}
		}
		err = stream.Send(resp)
	}
	return err
}

// batchOp runs one op and returns its answer.
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
	default:
		err = status.Error(codes.Unimplemented, "server: unknown batch op")
	}
	if err != nil {
		st := status.Convert(err)
		res.Code, res.Message = uint32(st.Code()), st.Message()
		if kv.CheckKey(key) == nil {
			res.Leader = k.s.leaderOf(kv.GroupOf(key, k.s.cfg.Groups))
		}
	}
	return res
}
