package client

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// unaryOnly is a node that predates Batch: it serves Put but not Batch.
type unaryOnly struct {
	api.UnimplementedKVServer
	api.UnimplementedClusterServer
	addr string
	puts atomic.Int64
}

func (u *unaryOnly) ClusterMap(context.Context, *api.ClusterMapRequest) (*api.ClusterMapResponse, error) {
	return &api.ClusterMapResponse{ClusterId: 1, Groups: 1,
		Nodes:      []*api.NodeInfo{{Id: 1, ClientAddr: u.addr}},
		GroupInfos: []*api.GroupInfo{{Id: 1, Leader: 1}}}, nil
}

func (u *unaryOnly) Put(context.Context, *api.PutRequest) (*api.PutResponse, error) {
	n := u.puts.Add(1)
	return &api.PutResponse{Header: &api.Header{Group: 1, Leader: 1, Node: 1}, Revision: uint64(n)}, nil
}

// serve runs a gRPC server with what register adds on a loopback port,
// stopped with the test, and sets *addr to the port's address before it
// serves (a cluster map may name it).
func serve(t *testing.T, addr *string, register func(*grpc.Server)) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	*addr = l.Addr().String()
	gs := grpc.NewServer()
	register(gs)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
}

// fakeNode serves srv (a KV and Cluster server) on a loopback port, sets
// *addr to the port's address (before serving: ClusterMap names it), and
// returns a client of it and a context, both ended with the test.
func fakeNode(t *testing.T, srv interface {
	api.KVServer
	api.ClusterServer
}, addr *string) (*Client, context.Context) {
	t.Helper()
	serve(t, addr, func(gs *grpc.Server) {
		api.RegisterKVServer(gs, srv)
		api.RegisterClusterServer(gs, srv)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	c, err := New(ctx, Config{Endpoints: []string{*addr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, ctx
}

// TestBatchFallsBackToUnary: against a node without Batch, Put uses the
// unary RPC and later calls skip the stream.
func TestBatchFallsBackToUnary(t *testing.T) {
	u := &unaryOnly{}
	c, ctx := fakeNode(t, u, &u.addr)
	for i := 1; i <= 3; i++ {
		rev, err := c.Put(ctx, []byte("k"), []byte("v"))
		if err != nil || rev != uint64(i) {
			t.Fatalf("put %d: rev %d, %v", i, rev, err)
		}
	}
	cc, err := c.conn(u.addr)
	if err != nil {
		t.Fatal(err)
	}
	if !c.batcher(cc).unsupported.Load() {
		t.Error("the batcher did not note that Batch is not served")
	}
}

// refusesAfterUnknown answers a first Put with an unknown outcome, then
// refuses the retry before proposing it (as a node does for a transaction
// whose keys a split put in two ranges meanwhile).
type refusesAfterUnknown struct {
	unaryOnly
}

func (r *refusesAfterUnknown) Put(context.Context, *api.PutRequest) (*api.PutResponse, error) {
	if r.puts.Add(1) == 1 {
		return nil, status.Error(codes.Aborted, "server: group 1: multiraft: proposal outcome unknown")
	}
	return nil, status.Error(codes.InvalidArgument, "kv: transaction spans ranges 1, 2")
}

// TestRefusalAfterUnknownOutcomeIsAmbiguous: a write whose first attempt
// may have applied ends ErrAmbiguous, not with the refusal of its retry,
// which says nothing of the first attempt.
func TestRefusalAfterUnknownOutcomeIsAmbiguous(t *testing.T) {
	u := &refusesAfterUnknown{}
	c, ctx := fakeNode(t, u, &u.addr)
	_, err := c.Put(ctx, []byte("k"), []byte("v"))
	if !errors.Is(err, ErrAmbiguous) || errors.Is(err, ErrInvalidArgument) || u.puts.Load() != 2 {
		t.Fatalf("after %d attempts: %v, want ErrAmbiguous (not ErrInvalidArgument)", u.puts.Load(), err)
	}
}

// joinedNode is node 1 of a cluster that node 2 joined after the client
// read its cluster map: node 1's map names node 2 (and its address) only
// once joined is set, and its answers then name node 2 as the leader of
// group 1. Node 2 (other) serves the Put itself.
type joinedNode struct {
	unaryOnly
	joined atomic.Bool
	other  *unaryOnly
}

func (j *joinedNode) ClusterMap(context.Context, *api.ClusterMapRequest) (*api.ClusterMapResponse, error) {
	m := &api.ClusterMapResponse{ClusterId: 1, Groups: 1,
		Nodes:      []*api.NodeInfo{{Id: 1, ClientAddr: j.addr}},
		GroupInfos: []*api.GroupInfo{{Id: 1, Leader: 1, Term: 1, Replicas: []uint64{1}, Generation: 1}}}
	if j.joined.Load() {
		m.Nodes = append(m.Nodes, &api.NodeInfo{Id: 2, ClientAddr: j.other.addr})
		g := m.GroupInfos[0]
		g.Leader, g.Term, g.Replicas, g.Generation = 2, 2, []uint64{1, 2}, 2
	}
	return m, nil
}

func (j *joinedNode) Put(context.Context, *api.PutRequest) (*api.PutResponse, error) {
	n := j.puts.Add(1)
	leader, term := uint64(1), uint64(1)
	if j.joined.Load() {
		leader, term = 2, 2 // node 1 forwarded it, as a node does
	}
	return &api.PutResponse{Header: &api.Header{Group: 1, Leader: leader, Node: 1, Term: term}, Revision: uint64(n)}, nil
}

// TestNewNodeAddressLearned: a client that read the cluster map before a
// node joined learns the new node's address once an answer names it as a
// leader (mapLoop), and then sends that range's requests to it instead of
// through the node that forwarded them. Without mapLoop it never does.
func TestNewNodeAddressLearned(t *testing.T) {
	n2 := &unaryOnly{}
	serve(t, &n2.addr, func(gs *grpc.Server) { api.RegisterKVServer(gs, n2) })

	n1 := &joinedNode{other: n2}
	c, ctx := fakeNode(t, n1, &n1.addr)
	if _, err := c.Put(ctx, []byte("k"), []byte("v")); err != nil || n1.puts.Load() != 1 {
		t.Fatalf("first put: %v, %d at node 1", err, n1.puts.Load())
	}
	n1.joined.Store(true)
	// Puts until one reaches node 2 (mapLoop runs beside them), or ctx
	// ends: without mapLoop none ever does.
	for n2.puts.Load() == 0 {
		if _, err := c.Put(ctx, []byte("k"), []byte("v")); err != nil {
			t.Fatalf("node 2 got no put; node 1 took %d: %v", n1.puts.Load(), err)
		}
	}
}

// refusingPair is two nodes that refuse every Put for permission. Node 1,
// the leader, holds its Put until node 2 has had one (the client's hedge),
// then answers with first.
type refusingPair struct {
	api.UnimplementedKVServer
	api.UnimplementedClusterServer
	addr, addr2 string
	first       error         // node 1's answer (nil: the write applied)
	hedged      chan struct{} // closed at node 2's first Put
	once        atomic.Bool
}

func (r *refusingPair) ClusterMap(context.Context, *api.ClusterMapRequest) (*api.ClusterMapResponse, error) {
	return &api.ClusterMapResponse{ClusterId: 1, Groups: 1,
		Nodes:      []*api.NodeInfo{{Id: 1, ClientAddr: r.addr}, {Id: 2, ClientAddr: r.addr2}},
		GroupInfos: []*api.GroupInfo{{Id: 1, Leader: 1, Term: 1, Replicas: []uint64{1, 2}, Generation: 1}}}, nil
}

var errDenied = status.Error(codes.PermissionDenied, `auth: permission denied: user "alice" has no write permission on key "k"`)

func (r *refusingPair) Put(ctx context.Context, _ *api.PutRequest) (*api.PutResponse, error) {
	select {
	case <-r.hedged:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if r.first != nil {
		return nil, r.first
	}
	return &api.PutResponse{Header: &api.Header{Group: 1, Leader: 1, Node: 1, Term: 1}, Revision: 7}, nil
}

// node2 is refusingPair's second node: it refuses at once.
type node2 struct {
	api.UnimplementedKVServer
	r *refusingPair
}

func (n node2) Put(context.Context, *api.PutRequest) (*api.PutResponse, error) {
	if n.r.once.CompareAndSwap(false, true) {
		close(n.r.hedged)
	}
	return nil, errDenied
}

// TestRefusalWhileHedgeOut: a write refused by one node while its hedge is
// still out at another waits for the hedge's answer. Refused there too (or
// not applied), the write ends with the refusal, not ErrAmbiguous (the CI
// failure of TestSecureRoles on a loaded machine); applied there, it
// succeeds; of unknown outcome there, it is ErrAmbiguous.
func TestRefusalWhileHedgeOut(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first error
		check func(rev uint64, err error) bool
	}{
		{"both refuse", errDenied, func(_ uint64, err error) bool {
			return errors.Is(err, ErrPermissionDenied) && !errors.Is(err, ErrAmbiguous)
		}},
		{"leader not leader", status.Error(codes.FailedPrecondition, "multiraft: not leader"), func(_ uint64, err error) bool {
			return errors.Is(err, ErrPermissionDenied) && !errors.Is(err, ErrAmbiguous)
		}},
		{"leader applies", nil, func(rev uint64, err error) bool { return err == nil && rev == 7 }},
		{"leader unknown", status.Error(codes.Aborted, "server: group 1: multiraft: proposal outcome unknown"), func(_ uint64, err error) bool {
			return errors.Is(err, ErrAmbiguous) && !errors.Is(err, ErrPermissionDenied)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &refusingPair{first: tc.first, hedged: make(chan struct{})}
			serve(t, &r.addr2, func(gs *grpc.Server) { api.RegisterKVServer(gs, node2{r: r}) })
			serve(t, &r.addr, func(gs *grpc.Server) {
				api.RegisterKVServer(gs, r)
				api.RegisterClusterServer(gs, r)
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := New(ctx, Config{Endpoints: []string{r.addr}, DisableBatch: true,
				HedgeDelayMin: time.Millisecond, HedgeDelayMax: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rev, err := c.Put(ctx, []byte("k"), []byte("v"))
			if !tc.check(rev, err) {
				t.Fatalf("rev %d, err %v", rev, err)
			}
		})
	}
}
