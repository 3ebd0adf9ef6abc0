package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/testutil"
)

// TestBatchStream drives the Batch RPC by hand: each op gets its own
// answer and code, as its unary RPC would, and closing the send side ends
// the stream once everything is answered.
func TestBatchStream(t *testing.T) {
	c := startCluster(t, 3, 4)
	ctx := ctxT(t)
	stream, err := rawKV(t, c.nodes[1].ClientAddr()).Batch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key, other := []byte("batch-a"), []byte("0batch-b")
	wrong := initialRange(4, other)%4 + 1
	ops := []*api.BatchOp{
		{Id: 1, Op: &api.BatchOp_Put{Put: &api.PutRequest{Key: key, Value: []byte("1")}}},
		{Id: 2, Op: &api.BatchOp_Put{Put: &api.PutRequest{Key: nil, Value: []byte("x")}}},
		{Id: 3, Op: &api.BatchOp_Put{Put: &api.PutRequest{Key: other, Value: []byte("3"), Group: wrong}}},
		{Id: 4, Op: &api.BatchOp_Delete{Delete: &api.DeleteRequest{Key: []byte("batch-absent")}}},
		{Id: 5},
	}
	if err := stream.Send(&api.BatchRequest{Ops: ops}); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]*api.BatchResult{}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.Results {
			got[r.Id] = r
		}
	}
	// Op 3 names the wrong range: the node routes it by its key anyway.
	want := map[uint64]codes.Code{1: codes.OK, 2: codes.InvalidArgument, 3: codes.OK, 4: codes.OK, 5: codes.Unimplemented}
	if len(got) != len(want) {
		t.Fatalf("got %d answers, want %d: %v", len(got), len(want), got)
	}
	for id, code := range want {
		if r := got[id]; codes.Code(r.GetCode()) != code {
			t.Errorf("op %d: code %v (%q), want %v", id, codes.Code(r.GetCode()), r.GetMessage(), code)
		}
	}
	if p := got[1].GetPut(); p == nil || p.Revision == 0 || p.Header.GetGroup() != initialRange(4, key) {
		t.Errorf("put answer %v", got[1])
	}
	if d := got[4].GetDelete(); d == nil || d.Deleted {
		t.Errorf("delete answer %v", got[4])
	}
	r, err := rawKV(t, c.nodes[2].ClientAddr()).Get(ctx, &api.GetRequest{Key: key})
	if err != nil || !r.Found || string(r.Kv.Value) != "1" {
		t.Fatalf("get after batch put: %v %v", r, err)
	}
	if p := got[3].GetPut(); p.GetHeader().GetGroup() != initialRange(4, other) {
		t.Errorf("put with a wrong range claim answered by range %d, not the key's %d", p.GetHeader().GetGroup(), initialRange(4, other))
	}
	r, err = rawKV(t, c.nodes[3].ClientAddr()).Get(ctx, &api.GetRequest{Key: other})
	if err != nil || !r.Found || string(r.Kv.Value) != "3" {
		t.Fatalf("get after a put with a wrong range claim: %v %v", r, err)
	}
}

// TestClientBatchesConcurrentWrites writes from many goroutines through
// one client (Batch streams) and through one without batching, and reads
// every key back.
func TestClientBatchesConcurrentWrites(t *testing.T) {
	c := startCluster(t, 3, 4)
	ctx := ctxT(t)
	batched := c.client()
	unary, err := client.New(ctx, client.Config{Endpoints: c.endpoints(), DisableBatch: true})
	if err != nil {
		t.Fatal(err)
	}
	defer unary.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := batched
			if i%4 == 0 {
				cl = unary
			}
			for j := range 10 {
				key := fmt.Appendf(nil, "cb-%d-%d", i, j)
				if _, err := cl.Put(ctx, key, key); err != nil {
					errs <- fmt.Errorf("put %s: %w", key, err)
					return
				}
			}
			if ok, err := cl.Delete(ctx, fmt.Appendf(nil, "cb-%d-0", i)); err != nil || !ok {
				errs <- fmt.Errorf("delete cb-%d-0: %v %v", i, ok, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range 64 {
		for j := range 10 {
			key := fmt.Appendf(nil, "cb-%d-%d", i, j)
			kv, err := batched.Get(ctx, key)
			if j == 0 {
				if !errors.Is(err, client.ErrKeyNotFound) {
					t.Errorf("get %s after delete: %v %v", key, kv, err)
				}
				continue
			}
			if err != nil || string(kv.Value) != string(key) {
				t.Errorf("get %s: %q %v", key, kv.Value, err)
			}
		}
	}
}

// TestShutdownEndsBatchStreams: an idle Batch stream does not hold a
// graceful shutdown; it ends with Unavailable, which clients retry
// elsewhere.
func TestShutdownEndsBatchStreams(t *testing.T) {
	c := startCluster(t, 3, 4)
	ctx := ctxT(t)
	stream, err := rawKV(t, c.nodes[3].ClientAddr()).Batch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&api.BatchRequest{Ops: []*api.BatchOp{{Id: 1, Op: &api.BatchOp_Put{Put: &api.PutRequest{Key: []byte("sd"), Value: []byte("v")}}}}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || resp.Results[0].Code != 0 {
		t.Fatalf("first answer: %v %v", resp, err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.nodes[3].Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if sctx.Err() != nil {
		t.Fatal("shutdown ran out its grace: the Batch stream held it")
	}
	delete(c.nodes, 3)
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("stream after shutdown: %v, want Unavailable", err)
	}
}

// TestFollowerForwardsWritesToLeader: a write sent to a follower, unary or
// over a Batch stream, is proposed on the leader (the answer's header names
// the node that proposed it), so a leader that drops it does so visibly:
// followers do not forward proposals through raft.
func TestFollowerForwardsWritesToLeader(t *testing.T) {
	c := startCluster(t, 3, 4)
	ctx := ctxT(t)
	key := []byte("fwd-a")
	g := initialRange(4, key)
	var leader, follower uint64
	testutil.WaitFor(t, 10*time.Second, "a leader of the key's group", func() error {
		l, _, _ := c.nodes[1].host.Leader(g)
		if l == 0 {
			return fmt.Errorf("group %d has no leader", g)
		}
		leader = l
		return nil
	})
	for id := range c.nodes {
		if id != leader {
			follower = id
			break
		}
	}
	r, err := rawKV(t, c.nodes[follower].ClientAddr()).Put(ctx, &api.PutRequest{Key: key, Value: []byte("1")})
	if err != nil {
		t.Fatal(err)
	}
	if r.Header.GetNode() != leader {
		t.Fatalf("unary put via follower %d answered by node %d, want the leader %d", follower, r.Header.GetNode(), leader)
	}
	stream, err := rawKV(t, c.nodes[follower].ClientAddr()).Batch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&api.BatchRequest{Ops: []*api.BatchOp{{Id: 1, Op: &api.BatchOp_Put{Put: &api.PutRequest{Key: key, Value: []byte("2")}}}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseSend()
	if len(resp.Results) != 1 || resp.Results[0].GetCode() != 0 {
		t.Fatalf("batch put via follower: %v", resp.Results)
	}
	if n := resp.Results[0].GetPut().GetHeader().GetNode(); n != leader {
		t.Fatalf("batch put via follower %d answered by node %d, want the leader %d", follower, n, leader)
	}
}
