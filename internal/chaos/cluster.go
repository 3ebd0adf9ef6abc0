package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/flotilla/flotilla/internal/mrtest"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/transport"
)

// Sentinel errors. Check them with errors.Is: returned errors wrap them with
// detail.
var (
	// ErrConfig: a Config or ProcConfig field is outside its limits.
	ErrConfig = errors.New("chaos: invalid config")
	// ErrTermChanged: a group's term moved while it should not have.
	ErrTermChanged = errors.New("chaos: term changed")
	// ErrLeaderChanged: a group's leader changed while it should not have.
	ErrLeaderChanged = errors.New("chaos: leader changed")
	// ErrNotLed: some group had no leader that a majority agrees on within
	// the bound.
	ErrNotLed = errors.New("chaos: group not led")
	// ErrLostWrite: an acknowledged write is missing or has another value.
	ErrLostWrite = errors.New("chaos: acknowledged write lost")
	// ErrNoLeader: a write found no leader to go to. The Load retries.
	ErrNoLeader = errors.New("chaos: no leader known")
	// ErrStuck: the cluster did not reach a wanted state within the bound.
	ErrStuck = errors.New("chaos: condition not reached")
)

// Defaults and limits of Config.
const (
	DefaultNodes         = 3
	MaxNodes             = 9
	DefaultGroups        = 64
	DefaultTickInterval  = 20 * time.Millisecond
	DefaultElectionTicks = 10
	DefaultNaiveQueue    = 8
	DefaultClusterID     = 0xF107
)

// Config configures an in-process Cluster. Zero fields take the defaults.
type Config struct {
	// Nodes is the number of nodes. Node i listens on 127.0.0.i (every
	// 127/8 address works on Linux loopback). Default 3; limits 1..9.
	Nodes int
	// Groups is the number of raft groups (IDs 1..Groups), each with a
	// replica on every node. Default 64; limits 1..100000.
	Groups int
	// Dir is the directory under which node i keeps its Pebble store
	// (Dir/node-i). Required.
	Dir string
	// TickInterval is the raft tick. Default 20ms; limits 1ms..1s.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks. Default 10; limits
	// 2..1000. Raft randomizes each timeout in [ElectionTicks,
	// 2*ElectionTicks).
	ElectionTicks int
	// DisableSync turns off fsync of raft writes (tests only).
	DisableSync bool
	// Naive runs every node on NaiveTransport, the serial blocking sender.
	Naive bool
	// Quiesce lets idle groups quiesce (multiraft.Config.Quiesce).
	Quiesce bool
	// IdleGroups is how many of the groups (the last ones) the tests'
	// load leaves alone (LoadGroups), so that they go idle and, with
	// Quiesce, quiesce. Default 0; less than Groups.
	IdleGroups int
	// NaiveQueue is the must-deliver lane capacity of a naive node, in
	// messages: how many unacknowledged messages to one peer make Send
	// block. Default 8; limits 1..4096.
	NaiveQueue int
	// WriteTimeout is the gRPC transport's write and ack deadline (see
	// transport.GRPCConfig). Default 1s. Naive nodes always use the
	// longest allowed (5m): the naive sender has no deadline.
	WriteTimeout time.Duration
	// Logger receives the nodes' logs. Default: discarded.
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.Nodes == 0 {
		c.Nodes = DefaultNodes
	}
	if c.Groups == 0 {
		c.Groups = DefaultGroups
	}
	if c.TickInterval == 0 {
		c.TickInterval = DefaultTickInterval
	}
	if c.ElectionTicks == 0 {
		c.ElectionTicks = DefaultElectionTicks
	}
	if c.NaiveQueue == 0 {
		c.NaiveQueue = DefaultNaiveQueue
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	switch {
	case c.Nodes < 1 || c.Nodes > MaxNodes:
		return fmt.Errorf("%w: Nodes %d outside 1..%d", ErrConfig, c.Nodes, MaxNodes)
	case c.Groups < 1 || c.Groups > 100000:
		return fmt.Errorf("%w: Groups %d outside 1..100000", ErrConfig, c.Groups)
	case c.IdleGroups < 0 || c.IdleGroups >= c.Groups:
		return fmt.Errorf("%w: IdleGroups %d outside 0..Groups-1", ErrConfig, c.IdleGroups)
	case c.Dir == "":
		return fmt.Errorf("%w: Dir is required", ErrConfig)
	case c.TickInterval < time.Millisecond || c.TickInterval > time.Second:
		return fmt.Errorf("%w: TickInterval %v outside 1ms..1s", ErrConfig, c.TickInterval)
	case c.ElectionTicks < 2 || c.ElectionTicks > 1000:
		return fmt.Errorf("%w: ElectionTicks %d outside 2..1000", ErrConfig, c.ElectionTicks)
	case c.NaiveQueue < 1 || c.NaiveQueue > 4096:
		return fmt.Errorf("%w: NaiveQueue %d outside 1..4096", ErrConfig, c.NaiveQueue)
	}
	return nil
}

// Node is one node of an in-process Cluster. Its fields are set by
// NewCluster and read-only afterwards.
type Node struct {
	// ID is the node ID, 1..Config.Nodes.
	ID uint64
	// Addr is the peer address (127.0.0.ID:port).
	Addr string
	// Host is the node's multiraft engine.
	Host *multiraft.Host
	// GRPC is the node's gRPC transport (under the NaiveTransport on a
	// naive node). Its Faults are the fault hooks.
	GRPC *transport.GRPCTransport
	// Naive is the naive sender wrapping GRPC, nil unless Config.Naive.
	Naive *NaiveTransport

	kvs map[uint64]*mrtest.KV
}

// Faults returns the node's transport fault hooks.
func (n *Node) Faults() *transport.Faults { return n.GRPC.Faults() }

// Cluster is an in-process cluster: Config.Nodes multiraft Hosts over gRPC
// on loopback, each running a replica of every group. Create it with
// NewCluster and Close it. Methods are safe for concurrent use.
type Cluster struct {
	cfg   Config
	nodes []*Node // index ID-1
	log   *slog.Logger

	mu struct {
		sync.Mutex
		broken map[[2]uint64]bool // links pointed at a dead address
		closed bool
	}
}

// NewCluster starts a cluster: it creates every node's transport and Host,
// connects them, and starts every group on every node. Groups have no
// leader yet: use PlaceLeaders or WaitLed.
func NewCluster(cfg Config) (c *Cluster, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c = &Cluster{cfg: cfg, log: cfg.Logger}
	c.mu.broken = make(map[[2]uint64]bool)
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	for i := 1; i <= cfg.Nodes; i++ {
		host := fmt.Sprintf("127.0.0.%d", i)
		gc := transport.GRPCConfig{
			NodeID:       uint64(i),
			ClusterID:    DefaultClusterID,
			ListenAddr:   net.JoinHostPort(host, "0"),
			Logger:       cfg.Logger,
			WriteTimeout: cfg.WriteTimeout,
			DialTimeout:  time.Second,
			BackoffBase:  10 * time.Millisecond,
			BackoffMax:   200 * time.Millisecond,
		}
		if cfg.Naive {
			gc.MustQueueCap = cfg.NaiveQueue
			gc.WriteTimeout = 5 * time.Minute
		}
		g, err := transport.NewGRPC(gc)
		if err != nil {
			return c, fmt.Errorf("chaos: node %d transport: %w", i, err)
		}
		n := &Node{ID: uint64(i), Addr: g.Addr(), GRPC: g, kvs: make(map[uint64]*mrtest.KV)}
		if cfg.Naive {
			n.Naive = NewNaive(g)
		}
		c.nodes = append(c.nodes, n)
	}
	for _, n := range c.nodes {
		for _, p := range c.nodes {
			if p != n {
				n.GRPC.AddPeer(p.ID, p.Addr)
			}
		}
	}
	members := c.IDs()
	for _, n := range c.nodes {
		var tr transport.Transport = n.GRPC
		if n.Naive != nil {
			tr = n.Naive
		}
		h, err := multiraft.NewHost(multiraft.Config{
			NodeID:        n.ID,
			DataDir:       filepath.Join(cfg.Dir, fmt.Sprintf("node-%d", n.ID)),
			Transport:     tr,
			TickInterval:  cfg.TickInterval,
			ElectionTicks: cfg.ElectionTicks,
			DisableSync:   cfg.DisableSync,
			Quiesce:       cfg.Quiesce,
			Logger:        cfg.Logger,
		})
		if err != nil {
			return c, fmt.Errorf("chaos: node %d host: %w", n.ID, err)
		}
		n.Host = h
		for g := uint64(1); g <= uint64(cfg.Groups); g++ {
			kv := mrtest.NewKV()
			if err := h.StartGroup(g, members, kv); err != nil {
				return c, fmt.Errorf("chaos: node %d group %d: %w", n.ID, g, err)
			}
			n.kvs[g] = kv
		}
	}
	return c, nil
}

// Config returns the cluster's configuration, defaults filled in.
func (c *Cluster) Config() Config { return c.cfg }

// Node returns node id (1-based); it panics on an unknown ID.
func (c *Cluster) Node(id uint64) *Node { return c.nodes[id-1] }

// Nodes returns every node, by ID.
func (c *Cluster) Nodes() []*Node { return c.nodes }

// IDs returns the node IDs, ascending.
func (c *Cluster) IDs() []uint64 {
	ids := make([]uint64, len(c.nodes))
	for i, n := range c.nodes {
		ids[i] = n.ID
	}
	return ids
}

// Groups returns the group IDs, ascending.
func (c *Cluster) Groups() []uint64 {
	gs := make([]uint64, c.cfg.Groups)
	for i := range gs {
		gs[i] = uint64(i + 1)
	}
	return gs
}

// LoadGroups returns the group IDs a load should write to: all but the
// IdleGroups last ones.
func (c *Cluster) LoadGroups() []uint64 { return c.Groups()[:c.cfg.Groups-c.cfg.IdleGroups] }

// ElectionTimeout is the configured election timeout (TickInterval *
// ElectionTicks). Raft randomizes each follower's timeout in [1, 2) times
// it, so MaxElectionTimeout is the longest a follower waits.
func (c *Cluster) ElectionTimeout() time.Duration {
	return c.cfg.TickInterval * time.Duration(c.cfg.ElectionTicks)
}

// MaxElectionTimeout is twice ElectionTimeout: the longest randomized
// election timeout.
func (c *Cluster) MaxElectionTimeout() time.Duration { return 2 * c.ElectionTimeout() }

// View returns every group's leader and term as every node sees them.
func (c *Cluster) View() View {
	v := View{Groups: make(map[uint64]GroupView), PerNode: make(map[uint64]map[uint64]Replica)}
	for _, n := range c.nodes {
		m := make(map[uint64]Replica)
		for _, st := range n.Host.Status() {
			m[st.ID] = Replica{Leader: st.Leader, Term: st.Term, IsLeader: st.Role == "StateLeader", Commit: st.Commit}
		}
		v.PerNode[n.ID] = m
	}
	v.summarize()
	return v
}

// PlaceLeaders makes node lead every group: it campaigns on node for groups
// that have no leader yet and asks the current leader of the others to
// transfer leadership, until every node sees node as the leader of every
// group at the same term. It fails with ErrStuck when ctx ends first.
func (c *Cluster) PlaceLeaders(ctx context.Context, node uint64) error {
	target := c.Node(node)
	var wg sync.WaitGroup
	defer wg.Wait()
	inflight := make(map[uint64]chan struct{})
	tk := time.NewTicker(c.cfg.TickInterval)
	defer tk.Stop()
	campaigned := make(map[uint64]time.Time)
	for {
		v := c.View()
		missing := 0
		for _, g := range c.Groups() {
			if v.agreed(g, node, c.IDs()) {
				continue
			}
			missing++
			if ch, ok := inflight[g]; ok {
				select {
				case <-ch:
					delete(inflight, g)
				default:
					continue
				}
			}
			gv := v.Groups[g]
			switch {
			case gv.Leader != 0 && gv.Leader != node:
				done := make(chan struct{})
				inflight[g] = done
				from := c.Node(gv.Leader).Host
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer close(done)
					tctx, cancel := context.WithTimeout(ctx, 2*c.MaxElectionTimeout())
					defer cancel()
					_ = from.TransferLeadership(tctx, g, node)
				}()
			case gv.Leader == 0 && time.Since(campaigned[g]) > c.MaxElectionTimeout():
				campaigned[g] = time.Now()
				_ = target.Host.Campaign(g)
			}
		}
		if missing == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: node %d does not lead %d groups: %v", ErrStuck, node, missing, ctx.Err())
		case <-tk.C:
		}
	}
}

// WaitLed polls until every group has a leader that a majority of the
// nodes in among (all nodes if empty) see at its term, and returns the
// view; ErrNotLed if that takes longer than bound.
func (c *Cluster) WaitLed(ctx context.Context, bound time.Duration, among ...uint64) (View, error) {
	if len(among) == 0 {
		among = c.IDs()
	}
	return pollLed(ctx, bound, c.cfg.TickInterval, func(context.Context) (View, error) { return c.View(), nil },
		func(v View) []uint64 { return v.Unled(among) })
}

func pollLed(ctx context.Context, bound, every time.Duration, view func(context.Context) (View, error), unled func(View) []uint64) (View, error) {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	tk := time.NewTicker(every)
	defer tk.Stop()
	var last []uint64
	var lastErr error
	for {
		v, err := view(ctx)
		if err == nil {
			if last = unled(v); len(last) == 0 {
				return v, nil
			}
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("%w: within %v, %d groups unled (first %v), last error %v",
				ErrNotLed, bound, len(last), head(last, 5), lastErr)
		case <-tk.C:
		}
	}
}

func head[T any](s []T, n int) []T {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Put writes key=value to group through the node that claims the group's
// leadership at the highest term (a stale leader that cannot hear the
// others is passed over, as a client would after a timeout), and waits
// until it is applied there: the acknowledgement. It implements Writer.
func (c *Cluster) Put(ctx context.Context, group uint64, key, value string) error {
	var leader *Node
	var term uint64
	for _, n := range c.nodes {
		if st, err := n.Host.GroupStatus(group); err == nil && st.Role == "StateLeader" && st.Term > term {
			leader, term = n, st.Term
		}
	}
	if leader == nil {
		return ErrNoLeader
	}
	_, err := leader.Host.Propose(ctx, group, []byte("set "+key+" "+value))
	return err
}

// CheckAcked checks that every write in ws is on every node: for each node
// and group it makes a linearizable read (which waits until the node has
// applied everything committed before it), then looks every key up in the
// node's state machine. It returns an error wrapping ErrLostWrite that
// names the first lost writes.
func (c *Cluster) CheckAcked(ctx context.Context, ws []Write) error {
	byGroup := make(map[uint64][]Write)
	for _, w := range ws {
		byGroup[w.Group] = append(byGroup[w.Group], w)
	}
	var lost []string
	for _, n := range c.nodes {
		for g, gws := range byGroup {
			if err := readBarrier(ctx, n.Host, g, c.ElectionTimeout()); err != nil {
				return fmt.Errorf("chaos: node %d group %d read: %w", n.ID, g, err)
			}
			for _, w := range gws {
				if got := n.kvs[g].Get(w.Key); got != w.Value {
					lost = append(lost, fmt.Sprintf("node %d group %d %s=%q (want %q)", n.ID, g, w.Key, got, w.Value))
				}
			}
		}
	}
	if len(lost) > 0 {
		return fmt.Errorf("%w: %d of %d checks, first %v", ErrLostWrite, len(lost), len(ws)*len(c.nodes), head(lost, 5))
	}
	return nil
}

// readBarrier makes a linearizable read of group on h, retrying the
// retryable errors until ctx ends.
func readBarrier(ctx context.Context, h *multiraft.Host, group uint64, every time.Duration) error {
	for {
		_, err := h.Read(ctx, group, nil)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, multiraft.ErrNoLeader), errors.Is(err, multiraft.ErrLeaderChanged), errors.Is(err, multiraft.ErrTimeout):
		default:
			return err
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// BreakLink opens the circuit from node from to node to: from's transport
// is pointed at an address where nothing listens, so every dial is refused
// and the transport reports the peer unreachable (the circuit breaker of
// seed 000). Messages from to to from still flow. RestoreLink undoes it.
func (c *Cluster) BreakLink(from, to uint64) error {
	dead, err := deadAddr(fmt.Sprintf("127.0.0.%d", to))
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.mu.broken[[2]uint64{from, to}] = true
	c.mu.Unlock()
	c.Node(from).GRPC.AddPeer(to, dead)
	return nil
}

// RestoreLink points from's transport back at to's real address.
func (c *Cluster) RestoreLink(from, to uint64) {
	c.mu.Lock()
	delete(c.mu.broken, [2]uint64{from, to})
	c.mu.Unlock()
	c.Node(from).GRPC.AddPeer(to, c.Node(to).Addr)
}

// deadAddr returns host:port where nothing listens: the port was free a
// moment ago, and connecting to it is refused.
func deadAddr(host string) (string, error) {
	addrs, err := deadAddrs(host, 1)
	if err != nil {
		return "", err
	}
	return addrs[0], nil
}

// deadAddrs returns n distinct host:port addresses where nothing listens:
// their listeners are all open at once, then closed. (Picked one at a
// time, a port freed could be handed out again: a node got the same port
// for --client-addr and --http-addr, and failed to start, in a run of
// TestProcPauseAndKill.)
func deadAddrs(host string, n int) ([]string, error) {
	var out []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("chaos: find a dead address on %s: %w", host, err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// HealAll removes every fault: transport hooks and broken links.
func (c *Cluster) HealAll() {
	c.mu.Lock()
	var links [][2]uint64
	for l := range c.mu.broken {
		links = append(links, l)
	}
	c.mu.Unlock()
	for _, l := range links {
		c.RestoreLink(l[0], l[1])
	}
	for _, n := range c.nodes {
		n.Faults().Heal()
	}
}

// Close heals every fault, stops every Host, then closes every transport.
// Naive senders are aborted first so that a Host blocked in Send can stop.
// Safe to call more than once.
func (c *Cluster) Close() {
	c.mu.Lock()
	if c.mu.closed {
		c.mu.Unlock()
		return
	}
	c.mu.closed = true
	c.mu.Unlock()
	for _, n := range c.nodes {
		if n.GRPC != nil {
			n.Faults().Heal()
		}
		if n.Naive != nil {
			n.Naive.Abort()
		}
	}
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		if n.Host != nil {
			wg.Add(1)
			go func() { defer wg.Done(); n.Host.Stop() }()
		}
	}
	wg.Wait()
	for _, n := range c.nodes {
		switch {
		case n.Naive != nil:
			_ = n.Naive.Close()
		case n.GRPC != nil:
			_ = n.GRPC.Close()
		}
	}
}
