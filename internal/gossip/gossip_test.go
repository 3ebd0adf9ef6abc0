package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flotilla/flotilla/api"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// node is one gossip node of a test: a gRPC server on loopback serving
// its Transport (or a stand-in), and its connections to the others.
type node struct {
	name string
	lis  net.Listener
	srv  *grpc.Server
	tr   *Transport
	mem  *Members
}

// cluster holds the test's nodes and the connections between them.
type cluster struct {
	t      *testing.T
	mu     sync.Mutex
	addrs  map[string]string // name → address
	conns  map[string]*grpc.ClientConn
	closed bool
}

func newCluster(t *testing.T) *cluster {
	c := &cluster{t: t, addrs: map[string]string{}, conns: map[string]*grpc.ClientConn{}}
	t.Cleanup(func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.closed = true // a late caller (memberlist's last probe) dials nothing
		for _, cc := range c.conns {
			cc.Close()
		}
	})
	return c
}

// listen reserves an address for name.
func (c *cluster) listen(name string) net.Listener {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.addrs[name] = lis.Addr().String()
	c.mu.Unlock()
	return lis
}

// conn is every Transport's Config.Conn: one connection per destination,
// dialled lazily.
func (c *cluster) conn(name, addr string) (*grpc.ClientConn, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, false
	}
	if name == "" {
		for n, a := range c.addrs {
			if a == addr {
				name = n
			}
		}
	}
	if cc := c.conns[name]; cc != nil {
		return cc, true
	}
	a, ok := c.addrs[name]
	if !ok {
		return nil, false
	}
	cc, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, false
	}
	c.conns[name] = cc
	return cc, true
}

// serve starts a node's gRPC server with srv as its Gossip service.
func (c *cluster) serve(name string, lis net.Listener, srv api.GossipServer) *grpc.Server {
	s := grpc.NewServer()
	api.RegisterGossipServer(s, srv)
	go s.Serve(lis)
	c.t.Cleanup(s.Stop)
	return s
}

// transport starts a node with a real Transport.
func (c *cluster) transport(name string, queue int) *node {
	lis := c.listen(name)
	tr, err := New(Config{Addr: lis.Addr().String(), Conn: c.conn, QueueLen: queue})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { tr.Shutdown() })
	n := &node{name: name, lis: lis, tr: tr}
	n.srv = c.serve(name, lis, tr)
	return n
}

// blackHole is a Gossip service that takes calls and reads nothing: its
// senders' flow-control windows fill and stay full, as with a peer
// frozen or black-holed after the connection was made.
type blackHole struct {
	api.UnimplementedGossipServer
	calls atomic.Int64
}

func (b *blackHole) Packets(st api.Gossip_PacketsServer) error {
	b.calls.Add(1)
	<-st.Context().Done()
	return nil
}

func (b *blackHole) Stream(st api.Gossip_StreamServer) error {
	b.calls.Add(1)
	<-st.Context().Done()
	return nil
}

// count counts the packets a Transport receives, until stop.
func count(tr *Transport, stop <-chan struct{}) *atomic.Int64 {
	var n atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-tr.PacketCh():
				n.Add(1)
			}
		}
	}()
	return &n
}

// holeAndHealthy starts a black hole ("hole") and a healthy node ("b")
// whose received packets are counted until the test ends.
func holeAndHealthy(t *testing.T) (c *cluster, hole *blackHole, holeSrv *grpc.Server, got *atomic.Int64) {
	c = newCluster(t)
	hole = &blackHole{}
	holeSrv = c.serve("hole", c.listen("hole"), hole)
	b := c.transport("b", 0)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	return c, hole, holeSrv, count(b.tr, stop)
}

// naiveSender is seed 003's send path: one lock over every destination's
// stream, held while a packet waits for room in its destination's window.
type naiveSender struct {
	c       *cluster
	mu      sync.Mutex
	streams map[string]api.Gossip_PacketsClient
	ctx     context.Context
}

func (n *naiveSender) send(b []byte, to string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.streams[to]
	if st == nil {
		cc, _ := n.c.conn(to, "")
		var err error
		if st, err = api.NewGossipClient(cc).Packets(n.ctx); err != nil {
			return
		}
		n.streams[to] = st
	}
	_ = st.Send(&api.GossipPacket{From: "naive", Data: b})
}

// TestSeed003GossipBlackHoleDropsNotBlocks: one destination that reads
// nothing (a black hole) must not slow the packets to the others. The
// sender sends 5,000 1 KiB packets to the black hole and, between them,
// 1,000 to a healthy node: every send must return, every packet to the
// healthy node must arrive, and the black hole's surplus must be dropped
// and counted. The naive control (one lock held while a packet waits for
// room) must fail it: once the black hole's window is full, the healthy
// node receives nothing more and a send to it does not return.
func TestSeed003GossipBlackHoleDropsNotBlocks(t *testing.T) {
	const toHole, every = 5000, 5
	pkt := bytes.Repeat([]byte{7}, 1024)
	send := func(send func([]byte, string)) (done chan struct{}) {
		done = make(chan struct{})
		go func() {
			defer close(done)
			for i := range toHole {
				send(pkt, "hole")
				if i%every == 0 {
					send(pkt, "b")
				}
			}
		}()
		return done
	}

	t.Run("transport", func(t *testing.T) {
		c, hole, _, got := holeAndHealthy(t)
		a := c.transport("a", 4096)
		done := send(func(p []byte, to string) {
			if _, err := a.tr.WriteToAddress(p, memberlist.Address{Name: to}); err != nil {
				t.Error(err)
			}
		})
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("sends blocked behind the black hole")
		}
		want := int64(toHole / every)
		deadline := time.Now().Add(10 * time.Second)
		for got.Load() < want && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got.Load() != want {
			t.Fatalf("healthy node received %d packets, want %d", got.Load(), want)
		}
		st := a.tr.Stats()
		if st.Dropped == 0 {
			t.Fatalf("no packet to the black hole dropped: %+v", st)
		}
		if hole.calls.Load() == 0 {
			t.Fatal("the black hole was never reached")
		}
		t.Logf("stats %+v", st)
	})

	t.Run("naive", func(t *testing.T) {
		c, _, holeSrv, got := holeAndHealthy(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		n := &naiveSender{c: c, streams: map[string]api.Gossip_PacketsClient{}, ctx: ctx}
		done := send(n.send)
		select {
		case <-done:
			t.Fatal("the naive sender finished: the black hole did not block it")
		case <-time.After(2 * time.Second):
		}
		if got.Load() >= toHole/every {
			t.Fatalf("healthy node received all %d packets behind a blocked sender", got.Load())
		}
		one := make(chan struct{})
		go func() { n.send(pkt, "b"); close(one) }()
		select {
		case <-one:
			t.Fatal("a send to the healthy node returned while the lock waits on the black hole")
		case <-time.After(500 * time.Millisecond):
		}
		// Unblock: the black hole goes away, its stream fails, the lock
		// is released.
		cancel()
		holeSrv.Stop()
		<-done
		<-one
	})
}

// TestStreamWaitsThenTimesOut: a stream write waits for flow control with
// no lock of the Transport held (packets and Stats go on beside it), and
// ends with os.ErrDeadlineExceeded when memberlist's deadline passes.
func TestStreamWaitsThenTimesOut(t *testing.T) {
	c, _, _, got := holeAndHealthy(t)
	a := c.transport("a", 0)

	conn, err := a.tr.DialAddressTimeout(memberlist.Address{Name: "hole"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(make([]byte, 8<<20)) // past any window
		werr <- err
	}()
	for i := range 20 {
		if _, err := a.tr.WriteToAddress([]byte{byte(i)}, memberlist.Address{Name: "b"}); err != nil {
			t.Fatal(err)
		}
		_ = a.tr.Stats()
	}
	deadline := time.Now().Add(5 * time.Second)
	for got.Load() < 20 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got.Load() != 20 {
		t.Fatalf("packets beside a waiting stream write: %d of 20 arrived", got.Load())
	}
	select {
	case err := <-werr:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write to a black hole ended with %v, want os.ErrDeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write to a black hole outlived its deadline")
	}
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after the deadline: %v, want os.ErrDeadlineExceeded", err)
	}
}

// TestStreamCarriesBytes: what one side writes the other reads, in order,
// across chunk boundaries, and a close ends the other side's reads; a
// deadline passing ends them with an error.
func TestStreamCarriesBytes(t *testing.T) {
	c := newCluster(t)
	a := c.transport("a", 0)
	b := c.transport("b", 0)
	msg := make([]byte, 3*maxChunk+17)
	for i := range msg {
		msg[i] = byte(i * 31)
	}
	conn, err := a.tr.DialAddressTimeout(memberlist.Address{Name: "b"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	srv := <-b.tr.StreamCh()
	if srv.RemoteAddr().String() != a.tr.cfg.Addr {
		t.Fatalf("stream from %s, want %s", srv.RemoteAddr(), a.tr.cfg.Addr)
	}
	go func() { conn.Write(msg); conn.Close() }()
	got, err := io.ReadAll(srv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(msg))
	}
	srv.Close()

	// The other way: the answering side writes and closes.
	conn, err = a.tr.DialAddressTimeout(memberlist.Address{Name: "b"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	srv = <-b.tr.StreamCh()
	go func() { srv.Write(msg); srv.Close() }()
	if got, err = io.ReadAll(conn); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes (%v), not the %d written", len(got), err, len(msg))
	}

	// A deadline that passes on the answering side is an error for the
	// dialler, not an end: what it read is not a whole answer.
	conn, err = a.tr.DialAddressTimeout(memberlist.Address{Name: "b"}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	srv = <-b.tr.StreamCh()
	srv.Write([]byte("partial"))
	srv.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if got, err = io.ReadAll(conn); err == nil {
		t.Fatalf("read %q and a clean end from a side whose deadline passed", got)
	}
}

// TestMembersLiveness: three nodes' memberlists over Transports find each
// other from one seed each, spread their meta, count a stopped node down,
// and count it live again once it comes back and joins.
func TestMembersLiveness(t *testing.T) {
	c := newCluster(t)
	const interval = 100 * time.Millisecond
	start := func(id uint64, lis net.Listener) *node {
		name := fmt.Sprint(id)
		if lis == nil {
			lis = c.listen(name)
		}
		tr, err := New(Config{Addr: lis.Addr().String(), Conn: c.conn})
		if err != nil {
			t.Fatal(err)
		}
		m, err := StartMembers(MembersConfig{NodeID: id, ClusterID: 9, Transport: tr, ProbeInterval: interval,
			Allow: func(id uint64) bool { return id <= 3 }}, Meta{ClientAddr: fmt.Sprintf("client-%d", id), Replicas: int(id)})
		if err != nil {
			t.Fatal(err)
		}
		n := &node{name: name, lis: lis, tr: tr, mem: m}
		n.srv = grpc.NewServer()
		api.RegisterGossipServer(n.srv, tr)
		go n.srv.Serve(lis)
		return n
	}
	stopNode := func(n *node) {
		n.mem.Shutdown()
		n.srv.Stop()
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out: %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	nodes := []*node{start(1, nil), start(2, nil), start(3, nil)}
	defer func() {
		for _, n := range nodes {
			if n != nil {
				stopNode(n)
			}
		}
	}()
	// Each joins only node 1: gossip spreads the rest.
	nodes[1].mem.Join(map[uint64]string{1: c.addrs["1"]})
	nodes[2].mem.Join(map[uint64]string{1: c.addrs["1"]})
	allLive := func(on *node, ids ...uint64) func() bool {
		return func() bool {
			live := on.mem.Live()
			for _, id := range ids {
				if !live[id] {
					return false
				}
			}
			return true
		}
	}
	waitFor("every node live everywhere", func() bool {
		return allLive(nodes[0], 2, 3)() && allLive(nodes[1], 1, 3)() && allLive(nodes[2], 1, 2)()
	})
	if m := nodes[1].mem.Nodes()[3].Meta; m.ClientAddr != "client-3" || m.Replicas != 3 {
		t.Fatalf("node 2 holds node 3's meta as %+v", m)
	}
	// A meta change spreads.
	if err := nodes[2].mem.SetMeta(Meta{ClientAddr: "client-3", Replicas: 30}, time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor("node 3's new meta at node 1", func() bool { return nodes[0].mem.Nodes()[3].Meta.Replicas == 30 })

	// Node 3 stops: the others count it down.
	lis3 := nodes[2].lis
	stopNode(nodes[2])
	nodes[2] = nil
	waitFor("node 3 down at nodes 1 and 2", func() bool {
		return !nodes[0].mem.Live()[3] && !nodes[1].mem.Live()[3]
	})
	if !nodes[0].mem.Live()[2] {
		t.Fatal("node 2 counted down with node 3")
	}

	// It comes back at the same address and joins one node: live again.
	l, err := net.Listen("tcp", lis3.Addr().String())
	if err != nil {
		t.Skipf("cannot listen again on %s: %v", lis3.Addr(), err)
	}
	c.mu.Lock()
	if cc := c.conns["3"]; cc != nil {
		cc.Close()
		delete(c.conns, "3")
	}
	c.mu.Unlock()
	nodes[2] = start(3, l)
	nodes[2].mem.Join(map[uint64]string{2: c.addrs["2"]})
	waitFor("node 3 live again at nodes 1 and 2", func() bool {
		return allLive(nodes[0], 3)() && allLive(nodes[1], 3)()
	})
}

// TestMembersRefuseOthers: a node Allow refuses is not a member, though it
// joins; and a node of another cluster (another label) is not heard.
func TestMembersRefuseOthers(t *testing.T) {
	c := newCluster(t)
	start := func(id, cluster uint64) *Members {
		name := fmt.Sprint(id)
		lis := c.listen(name)
		tr, err := New(Config{Addr: lis.Addr().String(), Conn: c.conn})
		if err != nil {
			t.Fatal(err)
		}
		m, err := StartMembers(MembersConfig{NodeID: id, ClusterID: cluster, Transport: tr, ProbeInterval: 50 * time.Millisecond,
			Allow: func(id uint64) bool { return id != 3 }}, Meta{})
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		api.RegisterGossipServer(srv, tr)
		go srv.Serve(lis)
		t.Cleanup(func() { m.Shutdown(); srv.Stop() })
		return m
	}
	m1 := start(1, 7)
	m2 := start(2, 7)
	m3 := start(3, 7) // not allowed
	m4 := start(4, 8) // another cluster
	if n := m2.Join(map[uint64]string{1: c.addrs["1"]}); n != 1 {
		t.Fatalf("node 2 joined %d nodes, want 1", n)
	}
	m3.Join(map[uint64]string{1: c.addrs["1"]})
	if n := m4.Join(map[uint64]string{1: c.addrs["1"]}); n != 0 {
		t.Fatalf("a node of another cluster joined %d nodes", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !m1.Live()[2] {
		if time.Now().After(deadline) {
			t.Fatal("node 2 never live at node 1")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if live := m1.Live(); live[3] || live[4] {
		t.Fatalf("node 1 counts %v live: 3 is refused, 4 is of another cluster", live)
	}
}

// TestConfigErrors: bad configs are refused with ErrConfig.
func TestConfigErrors(t *testing.T) {
	conn := func(string, string) (*grpc.ClientConn, bool) { return nil, false }
	for _, cfg := range []Config{
		{Addr: "127.0.0.1:1"},
		{Addr: "127.0.0.1", Conn: conn},
		{Addr: "0.0.0.0:7000", Conn: conn},
		{Addr: "127.0.0.1:0", Conn: conn},
		{Addr: "127.0.0.1:1", Conn: conn, QueueLen: -1},
	} {
		if _, err := New(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
	tr, err := New(Config{Addr: "127.0.0.1:1", Conn: conn})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown()
	for _, mc := range []MembersConfig{
		{Transport: tr},
		{NodeID: 1},
		{NodeID: 1, Transport: tr, ProbeInterval: time.Millisecond},
	} {
		if _, err := StartMembers(mc, Meta{}); !errors.Is(err, ErrConfig) {
			t.Errorf("StartMembers(%+v) = %v, want ErrConfig", mc, err)
		}
	}
}
