package client

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNewNeedsEndpoints(t *testing.T) {
	if _, err := New(context.Background(), Config{}); !errors.Is(err, ErrNoEndpoints) {
		t.Fatalf("got %v, want ErrNoEndpoints", err)
	}
	if _, err := New(context.Background(), Config{Endpoints: []string{" "}}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("got %v, want ErrInvalidArgument", err)
	}
}

func TestNewUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = New(context.Background(), Config{Endpoints: []string{addr}}, WithDialTimeout(500*time.Millisecond))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		code codes.Code
		kind outcome
		is   error
	}{
		{codes.InvalidArgument, fatal, ErrInvalidArgument},
		{codes.NotFound, fatal, ErrGroupNotFound},
		{codes.FailedPrecondition, retry, ErrNotLeader},
		{codes.Aborted, ambiguous, ErrAmbiguous},
		{codes.Unavailable, unreachable, nil},
	} {
		kind, err := classify(status.Error(tc.code, "x"))
		if kind != tc.kind || (tc.is != nil && !errors.Is(err, tc.is)) {
			t.Errorf("%v: got %v %v", tc.code, kind, err)
		}
	}
	if !notSent(status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp: connect: connection refused"`)) {
		t.Error("a refused dial counts as sent")
	}
	if notSent(status.Error(codes.Unavailable, "error reading from server: EOF")) {
		t.Error("a broken stream counts as not sent")
	}
	// Connection failures, as gRPC words them: a certificate refused by
	// either side is final, a connection the network broke is not.
	for msg, refused := range map[string]bool{
		// The client refuses the node's certificate (another CA).
		`connection error: desc = "transport: authentication handshake failed: certs: peer certificate \"node.2\": x509: certificate signed by unknown authority"`: true,
		// The node refuses the client's certificate: under TLS 1.3 its
		// alert arrives after the client's handshake, on the first read.
		`connection error: desc = "error reading server preface: remote error: tls: bad certificate"`:      true,
		`connection error: desc = "error reading server preface: remote error: tls: certificate required"`: true,
		`connection error: desc = "error reading server preface: EOF"`:                                     false,
		`connection error: desc = "transport: authentication handshake failed: EOF"`:                       false,
		`write tcp 127.0.0.1:36844->127.0.0.1:34939: write: broken pipe`:                                   false,
	} {
		kind, err := classify(status.Error(codes.Unavailable, msg))
		if refused && (kind != fatal || !errors.Is(err, ErrUnauthenticated)) {
			t.Errorf("%s: %v %v; want fatal ErrUnauthenticated", msg, kind, err)
		}
		if !refused && kind != unreachable {
			t.Errorf("%s: %v %v; want unreachable", msg, kind, err)
		}
	}
}

// TestClusterMapDownNodesSuspect: a node the cluster map says is not alive
// (the servers' gossip counts it down) becomes suspect, so requests go
// around it; unless it answered the client since the map was asked for.
// A node the map says is alive is left as it is; a probe's answer, and the
// map of a node that counts a minority alive, mark nothing.
func TestClusterMapDownNodesSuspect(t *testing.T) {
	c := &Client{}
	c.health.init()
	c.mu.addrs = map[uint64]string{}
	c.mu.leaders = map[uint64]leaderInfo{}
	asked := time.Now()
	c.health.answered("n3", asked.Add(time.Millisecond)) // answered since: stays
	m := &api.ClusterMapResponse{Nodes: []*api.NodeInfo{
		{Id: 1, ClientAddr: "n1", Alive: true},
		{Id: 2, ClientAddr: "n2", Alive: false},
		{Id: 3, ClientAddr: "n3", Alive: false},
		{Id: 4, ClientAddr: "n4", Alive: true},
		{Id: 5, ClientAddr: "n5", Alive: true},
		{Id: 6, ClientAddr: "n6", Membership: api.NodeRemoved},
	}}
	c.apply(m, asked, false) // a probe's answer marks nothing
	if got := c.Suspects(); len(got) != 0 {
		t.Fatalf("suspects %v after a probe's answer, want none", got)
	}
	c.apply(m, asked, true) // n2 and the removed n6
	want := []string{"n2", "n6"}
	if got := c.Suspects(); !slices.Equal(sorted(got), want) {
		t.Fatalf("suspects %v, want %v", got, want)
	}
	// A map whose node counts a minority alive (it is the one cut off)
	// marks nothing.
	c.apply(&api.ClusterMapResponse{Nodes: []*api.NodeInfo{
		{Id: 1, ClientAddr: "n1", Alive: true},
		{Id: 4, ClientAddr: "n4", Alive: false},
		{Id: 5, ClientAddr: "n5", Alive: false},
	}}, asked, true)
	if got := c.Suspects(); !slices.Equal(sorted(got), want) {
		t.Fatalf("suspects %v after a minority's map, want %v", got, want)
	}
	if c.mu.addrs[2] != "n2" {
		t.Fatalf("the down node's address was not kept: %v", c.mu.addrs)
	}
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}
