package election_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/client"
	"github.com/flotilla/flotilla/internal/testutil"
	"github.com/flotilla/flotilla/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testutil.LeakOptions()...) }

const (
	tick          = 20 * time.Millisecond
	electionTicks = 10
	// electionTimeout is the raft election timeout of the test clusters.
	electionTimeout = electionTicks * tick
)

// cluster is 3 in-process nodes on 127.0.0.1/.2/.3 talking real gRPC.
type cluster struct {
	t       *testing.T
	dir     string
	groups  int
	initial map[uint64]string
	nodes   map[uint64]*server.Server
}

func startCluster(t *testing.T, groups int) *cluster {
	t.Helper()
	c := &cluster{t: t, dir: t.TempDir(), groups: groups, initial: map[uint64]string{}, nodes: map[uint64]*server.Server{}}
	peers := map[uint64]net.Listener{}
	for id := uint64(1); id <= 3; id++ {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", id))
		if err != nil {
			l, err = net.Listen("tcp", "127.0.0.1:0")
		}
		if err != nil {
			t.Fatal(err)
		}
		peers[id] = l
		c.initial[id] = l.Addr().String()
	}
	for id := uint64(1); id <= 3; id++ {
		c.start(id, peers[id])
	}
	t.Cleanup(c.stopAll)
	c.waitLeaders()
	return c
}

func (c *cluster) start(id uint64, peer net.Listener) {
	c.t.Helper()
	host, _, _ := net.SplitHostPort(c.initial[id])
	s, err := server.New(server.Config{
		Insecure:          true,
		NodeID:            id,
		DataDir:           filepath.Join(c.dir, fmt.Sprint(id)),
		PeerAddr:          c.initial[id],
		PeerListener:      peer,
		ClientAddr:        net.JoinHostPort(host, "0"),
		HTTPAddr:          net.JoinHostPort(host, "0"),
		InitialCluster:    c.initial,
		Groups:            c.groups,
		TickInterval:      tick,
		ElectionTicks:     electionTicks,
		DiscoveryInterval: 100 * time.Millisecond,
		BalanceInterval:   -1,
		DisableSync:       true,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		if peer != nil {
			peer.Close()
		}
		c.t.Fatal(err)
	}
	s.Start()
	c.nodes[id] = s
}

func (c *cluster) stop(id uint64) {
	c.t.Helper()
	if err := c.nodes[id].Stop(); err != nil {
		c.t.Errorf("stop node %d: %v", id, err)
	}
	delete(c.nodes, id)
}

func (c *cluster) stopAll() {
	for id := range c.nodes {
		c.stop(id)
	}
}

func (c *cluster) waitLeaders() {
	c.t.Helper()
	waitFor(c.t, 20*time.Second, "every group led", func() error {
		for id, s := range c.nodes {
			for _, st := range s.Host().Status() {
				if st.Leader == 0 || c.nodes[st.Leader] == nil {
					return fmt.Errorf("node %d sees group %d led by %d", id, st.ID, st.Leader)
				}
			}
		}
		return nil
	})
}

// leaderOf returns the node leading group g as the running nodes agree.
func (c *cluster) leaderOf(g uint64) uint64 {
	for _, s := range c.nodes {
		if st, err := s.Host().GroupStatus(g); err == nil && st.Role == "StateLeader" {
			return s.NodeID()
		}
	}
	return 0
}

func (c *cluster) endpoints() []string {
	var eps []string
	for id := uint64(1); id <= 3; id++ {
		if s := c.nodes[id]; s != nil {
			eps = append(eps, s.ClientAddr())
		}
	}
	return eps
}

// client returns a client of the cluster; with bh set its connections
// can be black-holed.
func (c *cluster) client(bh *blackhole) *client.Client {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := client.Config{Endpoints: c.endpoints(), AttemptTimeout: time.Second, BackoffMax: 100 * time.Millisecond}
	if bh != nil {
		cfg.Dialer = bh.dial
	}
	cl, err := client.New(ctx, cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// waitFor is testutil.WaitFor.
var waitFor = testutil.WaitFor

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// blackhole cuts a client off silently: while on, what the client writes
// is swallowed and what it would read is discarded, with no error and no
// RST, as a dropped link does. heal turns it off and closes the spoiled
// connections, so the client dials fresh ones.
type blackhole struct {
	on    atomic.Bool
	mu    sync.Mutex
	conns []net.Conn
}

func (b *blackhole) dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.conns = append(b.conns, c)
	b.mu.Unlock()
	return &bhConn{Conn: c, b: b}, nil
}

func (b *blackhole) cut() { b.on.Store(true) }

func (b *blackhole) heal() {
	b.mu.Lock()
	conns := b.conns
	b.conns = nil
	b.mu.Unlock()
	b.on.Store(false)
	for _, c := range conns {
		c.Close()
	}
}

type bhConn struct {
	net.Conn
	b *blackhole
}

func (c *bhConn) Write(p []byte) (int, error) {
	if c.b.on.Load() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *bhConn) Read(p []byte) (int, error) {
	for {
		n, err := c.Conn.Read(p)
		if err != nil || !c.b.on.Load() {
			return n, err
		}
	}
}
