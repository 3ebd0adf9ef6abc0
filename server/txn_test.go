package server

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// Transactions through every node (a follower forwards to the leader):
// create-if-absent succeeds once, then reads; keys carry their create
// revision and version; a transaction over two ranges, or with an unknown
// compare, is refused with nothing applied.
func TestTxnEveryNode(t *testing.T) {
	c := startCluster(t, 3, 4) // ranges cut at "40", "80", "c0"
	ctx := ctxT(t)
	for _, s := range c.nodes {
		kvc := rawKV(t, s.ClientAddr())
		key := []byte(fmt.Sprintf("1/n%d", s.NodeID()))
		other := append(append([]byte(nil), key...), "/other"...)
		req := &api.TxnRequest{
			Compares: []*api.Compare{{Key: key, Target: api.Compare_CREATE, Result: api.Compare_EQUAL}},
			Success:  []*api.TxnOp{{Kind: api.TxnOp_PUT, Key: key, Value: []byte("v1")}, {Kind: api.TxnOp_PUT, Key: other, Value: []byte("v1")}},
			Failure:  []*api.TxnOp{{Kind: api.TxnOp_GET, Key: key}, {Kind: api.TxnOp_SCAN, Key: key, End: append(append([]byte(nil), key...), 0xff)}},
		}
		first, err := kvc.Txn(ctx, req)
		if err != nil || !first.Succeeded || len(first.Responses) != 2 || first.Header.Group != 1 {
			t.Fatalf("node %d: first txn: %v %v", s.NodeID(), first, err)
		}
		second, err := kvc.Txn(ctx, req)
		if err != nil || second.Succeeded || len(second.Responses) != 2 {
			t.Fatalf("node %d: second txn: %v %v", s.NodeID(), second, err)
		}
		got := second.Responses[0]
		if !got.Found || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v1" || got.Kvs[0].CreateRevision != first.Revision ||
			got.Kvs[0].Version != 1 || got.Kvs[0].Revision != first.Revision {
			t.Fatalf("node %d: the else get: %v (first at revision %d)", s.NodeID(), got, first.Revision)
		}
		if scan := second.Responses[1]; len(scan.Kvs) != 2 || string(scan.Kvs[1].Key) != string(other) {
			t.Fatalf("node %d: the else scan: %v", s.NodeID(), scan)
		}
		if _, err := kvc.Put(ctx, &api.PutRequest{Key: key, Value: []byte("v2")}); err != nil {
			t.Fatal(err)
		}
		g, err := kvc.Get(ctx, &api.GetRequest{Key: key})
		if err != nil || g.Kv.Version != 2 || g.Kv.CreateRevision != first.Revision || g.Kv.Revision <= first.Revision {
			t.Fatalf("node %d: get after a second put: %v %v", s.NodeID(), g, err)
		}
	}
	kvc := rawKV(t, c.nodes[1].ClientAddr())
	_, err := kvc.Txn(ctx, &api.TxnRequest{Success: []*api.TxnOp{
		{Kind: api.TxnOp_PUT, Key: []byte("1/span"), Value: []byte("x")},
		{Kind: api.TxnOp_PUT, Key: []byte("9/span"), Value: []byte("x")},
	}})
	if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), MsgTxnSpansRanges) ||
		!strings.Contains(st.Message(), `1 ["", "40")`) || !strings.Contains(st.Message(), `3 ["80", "c0")`) {
		t.Fatalf("txn over ranges 1 and 3: %v", err)
	}
	if r, err := kvc.Get(ctx, &api.GetRequest{Key: []byte("1/span")}); err != nil || r.Found {
		t.Fatalf("1/span after the refused txn: %v %v", r, err)
	}
	_, err = kvc.Txn(ctx, &api.TxnRequest{Compares: []*api.Compare{{Key: []byte("1/a"), Target: api.Compare_TARGET_UNSPECIFIED, Result: api.Compare_EQUAL}}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "target") {
		t.Fatalf("txn with no compare target: %v", err)
	}
}
