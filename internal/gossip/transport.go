// Package gossip carries the nodes' gossip membership (hashicorp/memberlist,
// SWIM) over their peer connections. Transport is a
// memberlist.NodeAwareTransport whose packets and streams travel as gRPC
// streams of the Gossip service (api/flotilla.proto) on the connections the
// server already holds to every node, so gossip has the raft transport's TLS
// and its address, and the network's faults: a firewall rule that cuts a
// link cuts both. (The raft transport's in-process fault hooks,
// transport.Faults, do not reach gossip.)
//
// Seed 003 (docs/failures.md) is the rule of the send path:
//   - Packets (probes, acks, gossip) may be lost: memberlist expects that of
//     UDP, and repeats what matters. Each destination has a bounded queue
//     drained by its own loop; a packet that finds the queue full is dropped
//     and counted (Stats.Dropped), and the sender never waits. A destination
//     that stops reading (a black hole, a frozen node) fills only its own
//     queue.
//   - Streams (state syncs, fallback probes) must deliver: their writes wait
//     for gRPC flow control, on memberlist's goroutine, with no lock held,
//     bounded by the deadline memberlist sets on the connection.
//
// Lock order: Transport.mu is a leaf, held only to find or add a
// destination's queue; streamConn.mu is a leaf, held only to set or fire a
// deadline. No lock is held across a send, a receive or a channel operation
// that can wait.
//
// Goroutines: one sendLoop per destination packets were sent to, started by
// WriteToAddress (goLoop), ended by Shutdown, which waits for them. The
// gRPC handlers (Packets, Stream) run on the gRPC server's goroutines.
package gossip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla/flotilla/api"
)

// Config configures a Transport.
type Config struct {
	// Addr is this node's gossip address: its peer address, "host:port".
	// The host must be an IP or resolve to one. Required.
	Addr string
	// Conn returns the connection to the node memberlist names name (at
	// addr; name may be empty for a node memberlist knows only by address,
	// as in a join), false if there is none. It is called on memberlist's
	// and the send loops' goroutines with no lock of the Transport held,
	// and must not block. The Transport does not close what it returns.
	Conn func(name, addr string) (*grpc.ClientConn, bool)
	// Check authorizes an incoming Packets or Stream call by its context
	// (with TLS: the caller's certificate); an error refuses it and is
	// returned to the caller as is. Nil: every call is let in. Called on
	// the gRPC server's goroutine.
	Check func(ctx context.Context) error
	// QueueLen is how many packets wait for one destination before the
	// next is dropped. Default 256 (memberlist sends a few packets per
	// probe interval to each node; 256 is seconds of them); 1..65536.
	QueueLen int
	// Logger receives the transport's rare events. Default slog.Default().
	Logger *slog.Logger
}

// ErrConfig is returned by New and StartMembers for a bad config.
var ErrConfig = errors.New("gossip: invalid config")

// ErrNoRoute is returned when memberlist addresses a node the server has no
// connection to.
var ErrNoRoute = errors.New("gossip: no connection to that node")

// Stats counts what the Transport did. Every field only grows.
type Stats struct {
	// Sent: packets handed to a destination's stream.
	Sent uint64
	// Dropped: packets dropped because their destination's queue was
	// full (seed 003: the sender does not wait).
	Dropped uint64
	// Failed: packets lost with their destination's stream (it could not
	// be opened, or broke), or sent to a node with no connection.
	Failed uint64
	// DroppedIn: packets received while memberlist was behind
	// (its inbox full).
	DroppedIn uint64
}

// Transport is a memberlist.NodeAwareTransport over gRPC. It is also the
// Gossip service's server: register it with api.RegisterGossipServer on the
// peer server.
type Transport struct {
	api.UnimplementedGossipServer
	cfg  Config
	ip   net.IP
	port int

	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	ctx      context.Context // canceled by Shutdown: ends every stream this side opened
	cancel   context.CancelFunc
	wg       sync.WaitGroup // the send loops

	mu struct {
		sync.Mutex
		// senders: one per destination (memberlist's node name, else
		// its address) packets were sent to. Invariant: no sender is
		// added once closed is set.
		senders map[string]*sender
		closed  bool
	}

	// paused: every packet is dropped and every stream refused, both ways
	// (Pause).
	paused atomic.Bool

	sent, dropped, failed, droppedIn atomic.Uint64
}

// sender is one destination's packet queue, drained by its sendLoop.
type sender struct {
	name, addr string
	q          chan []byte
}

var _ memberlist.NodeAwareTransport = (*Transport)(nil)

// New returns a Transport for cfg.
func New(cfg Config) (*Transport, error) {
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.QueueLen < 1 || cfg.QueueLen > 1<<16 {
		return nil, fmt.Errorf("%w: queue length %d outside 1..65536", ErrConfig, cfg.QueueLen)
	}
	if cfg.Conn == nil {
		return nil, fmt.Errorf("%w: no Conn", ErrConfig)
	}
	host, sport, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("%w: address %q: %v", ErrConfig, cfg.Addr, err)
	}
	port, err := strconv.Atoi(sport)
	if err != nil || port <= 0 || port > 65535 {
		return nil, fmt.Errorf("%w: address %q: bad port", ErrConfig, cfg.Addr)
	}
	ip := net.ParseIP(host)
	if ip == nil {
		ips, err := net.LookupIP(host)
		if err != nil || len(ips) == 0 {
			return nil, fmt.Errorf("%w: address %q: host resolves to no IP (%v)", ErrConfig, cfg.Addr, err)
		}
		ip = ips[0]
	}
	if ip.IsUnspecified() {
		return nil, fmt.Errorf("%w: address %q: the gossip address is advertised, and cannot be unspecified", ErrConfig, cfg.Addr)
	}
	t := &Transport{
		cfg:      cfg,
		ip:       ip,
		port:     port,
		packetCh: make(chan *memberlist.Packet, 1024),
		streamCh: make(chan net.Conn),
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.mu.senders = map[string]*sender{}
	return t, nil
}

// Stats returns the Transport's counts.
func (t *Transport) Stats() Stats {
	return Stats{Sent: t.sent.Load(), Dropped: t.dropped.Load(), Failed: t.failed.Load(), DroppedIn: t.droppedIn.Load()}
}

// Pause makes the Transport, while on, drop every packet it is given or
// receives (counted in Failed) and refuse every stream both ways, as for a
// node stopped with SIGSTOP: for Server.Freeze, the demo and tests. (On a
// frozen server the freezer holds the calls that arrive, so what reaches
// it then is read after the thaw.)
func (t *Transport) Pause(on bool) { t.paused.Store(on) }

// errPaused refuses a stream while the Transport is paused.
var errPaused = errors.New("gossip: paused")

// FinalAdvertiseAddr returns this node's gossip address, whatever memberlist
// was configured with: it is the peer address.
func (t *Transport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	return t.ip, t.port, nil
}

// WriteTo sends a packet to the node at addr (memberlist.Transport).
func (t *Transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress queues a packet for a.Name (else a.Addr) and returns at
// once: it is dropped and counted if that destination's queue is full. It
// returns an error only after Shutdown. b is copied; memberlist keeps it.
func (t *Transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	key := a.Name
	if key == "" {
		key = a.Addr
	}
	if t.paused.Load() {
		t.failed.Add(1)
		return time.Now(), nil
	}
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		return time.Time{}, net.ErrClosed
	}
	s := t.mu.senders[key]
	if s == nil {
		s = &sender{name: a.Name, addr: a.Addr, q: make(chan []byte, t.cfg.QueueLen)}
		t.mu.senders[key] = s
		t.goLoop("gossip-send-"+key, func() { t.sendLoop(s) })
	}
	t.mu.Unlock()
	select {
	case s.q <- append([]byte(nil), b...):
	default:
		t.dropped.Add(1)
	}
	return time.Now(), nil
}

// goLoop starts one of the Transport's loops, labelled for pprof. Callers
// hold mu with closed unset, so Shutdown's wait sees every loop.
func (t *Transport) goLoop(name string, fn func()) {
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		pprof.Do(context.Background(), pprof.Labels("flotilla.gossip", name), func(context.Context) { fn() })
	}()
}

// sendLoop drains one destination's queue onto a Packets stream, opened on
// the first packet and again after it breaks. A packet that cannot be sent
// is lost (counted in Failed): memberlist treats packets as UDP.
func (t *Transport) sendLoop(s *sender) {
	var st api.Gossip_PacketsClient
	var cancel context.CancelFunc
	defer func() {
		if cancel != nil {
			cancel()
		}
	}()
	for {
		var b []byte
		select {
		case <-t.ctx.Done():
			return
		case b = <-s.q:
		}
		if st == nil {
			cc, ok := t.cfg.Conn(s.name, s.addr)
			if !ok {
				t.failed.Add(1)
				continue
			}
			ctx, c := context.WithCancel(t.ctx)
			// Not WaitForReady: a node that is down fails the open at
			// once, and its packets are lost as UDP's would be.
			var err error
			if st, err = api.NewGossipClient(cc).Packets(ctx); err != nil {
				c()
				st = nil
				t.failed.Add(1)
				continue
			}
			cancel = c
		}
		if err := st.Send(&api.GossipPacket{From: t.cfg.Addr, Data: b}); err != nil {
			cancel()
			st, cancel = nil, nil
			t.failed.Add(1)
			continue
		}
		t.sent.Add(1)
	}
}

// PacketCh returns the packets received (memberlist.Transport).
func (t *Transport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

// StreamCh returns the streams other nodes opened (memberlist.Transport).
func (t *Transport) StreamCh() <-chan net.Conn { return t.streamCh }

// DialTimeout opens a stream to the node at addr (memberlist.Transport).
func (t *Transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

// closeLinger is how long a stream this side closed may still deliver
// what was written before it: past memberlist's stream timeout (2 probe
// intervals, at least 1s) for probe intervals up to 15s.
const closeLinger = 30 * time.Second

// DialAddressTimeout opens a stream to a.Name (else a.Addr), waiting up to
// timeout for the connection to be ready, with no lock held. The returned
// net.Conn is the caller's to close.
func (t *Transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.paused.Load() {
		return nil, errPaused
	}
	if t.ctx.Err() != nil {
		// Shut down: memberlist's last probe outlives its Shutdown, and
		// must not get a connection looked up (or dialled) for it.
		return nil, net.ErrClosed
	}
	cc, ok := t.cfg.Conn(a.Name, a.Addr)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNoRoute, a.String())
	}
	ctx, cancel := context.WithCancel(t.ctx)
	timer := time.AfterFunc(timeout, cancel)
	st, err := api.NewGossipClient(cc).Stream(ctx, grpc.WaitForReady(true))
	if err == nil {
		err = st.Send(&api.GossipChunk{From: t.cfg.Addr})
	}
	if !timer.Stop() && err == nil {
		err = context.DeadlineExceeded
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("gossip: open a stream to %s: %w", a.String(), err)
	}
	c := newStreamConn(t.cfg.Addr, a.Addr,
		func(b []byte) error { return st.Send(&api.GossipChunk{Data: b}) },
		func() ([]byte, error) {
			m, err := st.Recv()
			return m.GetData(), err
		})
	c.abort = cancel
	c.finish = func() {
		// What was written still goes: the call ends when the other side
		// closes, or after closeLinger (its watcher in gRPC lives until
		// the context ends). Shutdown ends it at once.
		_ = st.CloseSend()
		time.AfterFunc(closeLinger, cancel)
	}
	return c, nil
}

// Packets receives one node's packets (the Gossip service).
func (t *Transport) Packets(st api.Gossip_PacketsServer) error {
	if t.cfg.Check != nil {
		if err := t.cfg.Check(st.Context()); err != nil {
			return err
		}
	}
	for {
		m, err := st.Recv()
		if err != nil {
			return nil // the sender went away or the stream ended
		}
		if t.paused.Load() {
			t.failed.Add(1)
			continue
		}
		p := &memberlist.Packet{Buf: m.Data, From: addr(m.From), Timestamp: time.Now()}
		select {
		case t.packetCh <- p:
		case <-t.ctx.Done():
			return nil
		default:
			t.droppedIn.Add(1)
		}
	}
}

// Stream hands a stream another node opened to memberlist, and holds it
// open until memberlist closes it, its deadline passes or the Transport
// shuts down (the Gossip service).
func (t *Transport) Stream(st api.Gossip_StreamServer) error {
	if t.cfg.Check != nil {
		if err := t.cfg.Check(st.Context()); err != nil {
			return err
		}
	}
	first, err := st.Recv()
	if err != nil {
		return err
	}
	if t.paused.Load() {
		return errPaused
	}
	end := make(chan struct{})
	var once sync.Once
	var aborted atomic.Bool
	stop := func() { once.Do(func() { close(end) }) }
	c := newStreamConn(t.cfg.Addr, first.From,
		func(b []byte) error { return st.Send(&api.GossipChunk{Data: b}) },
		func() ([]byte, error) {
			m, err := st.Recv()
			return m.GetData(), err
		})
	// An abort (the deadline passed) ends the call with an error, so the
	// other side does not take what it read for a whole answer.
	c.abort = func() { aborted.Store(true); stop() }
	c.finish = stop
	select {
	case t.streamCh <- c:
	case <-t.ctx.Done():
		return nil
	case <-st.Context().Done():
		return nil
	}
	select {
	case <-end:
		if aborted.Load() {
			return status.Error(codes.DeadlineExceeded, "gossip: the stream's deadline passed")
		}
	case <-t.ctx.Done():
	case <-st.Context().Done():
	}
	return nil
}

// Shutdown stops the send loops and ends the streams this side opened, and
// waits for the loops (memberlist.Transport). Streams other nodes opened
// end with their gRPC calls: the peer server's Stop ends those.
func (t *Transport) Shutdown() error {
	t.mu.Lock()
	t.mu.closed = true
	t.mu.Unlock()
	t.cancel()
	t.wg.Wait()
	return nil
}

// addr is a gossip address as a net.Addr.
type addr string

func (a addr) Network() string { return "flotilla-gossip" }
func (a addr) String() string  { return string(a) }
