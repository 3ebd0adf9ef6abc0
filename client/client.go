// Package client is the Go client of a Flotilla cluster.
//
// A Client learns the cluster map (nodes, their client addresses, group
// count and leaders) from any endpoint it is given, hashes each key to its
// group and sends the request to the group's leader, caching leaders (by
// term) and learning them from every answer. Every node accepts every
// request, so a stale cache costs a hop, never correctness.
//
// Exactly once. Every write belongs to the client's session (a random ID
// drawn by New) and carries a sequence number; the group applies a write
// once however often it arrives and answers a repeat with the first result
// (kv/session.go). So the client retries writes, like reads, on timeouts,
// leader changes and lost connections, for as long as the caller's context
// allows (Config.RequestTimeout when it has no deadline). ErrAmbiguous
// remains only when that deadline ends with a write's outcome unknown.
//
// One slow node costs only itself (failure.go). An attempt that has had no
// answer for longer than the node usually takes (its hedge delay, derived
// from the latencies it answered with) is hedged: the same request goes to
// another node, which routes it to the group's live leader, and the first
// answer wins. A node that stops answering is marked suspect: requests go
// around it and a background probe lets it back in once it answers again.
// gRPC keepalives close connections to nodes that vanished.
package client

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/kv"
)

// Sentinel errors. Check them with errors.Is; returned errors wrap them
// with detail.
var (
	// ErrClosed: the client is closed.
	ErrClosed = errors.New("client: closed")
	// ErrNoEndpoints: Config.Endpoints is empty.
	ErrNoEndpoints = errors.New("client: no endpoints")
	// ErrUnavailable: no node could serve the request before its deadline
	// or within the attempts allowed (the cluster is down, partitioned, or
	// electing). A write that ends so was certainly not applied; one that
	// may have been ends with ErrAmbiguous instead.
	ErrUnavailable = errors.New("client: cluster unavailable")
	// ErrAmbiguous: the request's deadline ended (or the client closed)
	// while a write's outcome was unknown: it may or may not have been
	// applied, and an attempt already in a log may still apply later. (A
	// copy that arrives after a later write of the session to the same
	// group is refused: the group's floor has passed it.)
	ErrAmbiguous = errors.New("client: outcome unknown")
	// ErrInvalidArgument: the request is malformed (empty or oversized
	// key, oversized value, bad limit). Retrying cannot help.
	ErrInvalidArgument = errors.New("client: invalid argument")
	// ErrRangeChanged: a request's range does not hold its key or span
	// (it split or merged): look the ranges up again. DeleteRange handles
	// it by itself.
	ErrRangeChanged = errors.New("client: range changed")
	// ErrGroupNotFound: the request named a group the cluster does not
	// have.
	ErrGroupNotFound = errors.New("client: group not found")
	// ErrKeyNotFound: Get found no value for the key.
	ErrKeyNotFound = errors.New("client: key not found")
	// ErrLeaseNotFound: a Put or CompareAndSwap WithLease named a lease
	// the key's group does not have (expired, revoked, or never granted
	// there). Nothing was written.
	ErrLeaseNotFound = errors.New("client: lease not found")
	// ErrTxnSpansRanges: the keys of a transaction lie in more than one
	// range (the message names them); nothing was applied. It wraps in
	// ErrInvalidArgument too.
	ErrTxnSpansRanges = errors.New("client: transaction spans ranges")
	// ErrCompacted: a read or watch asked for a revision whose history is
	// no longer kept; the message says from which revision on it is. A
	// watcher must start again from a fresh read.
	ErrCompacted = errors.New("client: revision compacted")
	// ErrFutureRevision: a read asked for a revision its range has not
	// reached.
	ErrFutureRevision = errors.New("client: revision not reached")
	// ErrNotLeader: the node asked could not serve the request for its
	// group and named (or could not name) the leader. Retried internally;
	// seen only wrapped in ErrUnavailable.
	ErrNotLeader = errors.New("client: not leader")
	// ErrPermissionDenied: the caller's roles do not grant what the request
	// needs; the message names the missing permission. Nothing was written.
	ErrPermissionDenied = errors.New("client: permission denied")
	// ErrUnauthenticated: the cluster could not tell who the client is (no
	// certificate and no token, an unknown token), or the two sides'
	// certificates do not verify (another CA, not a node's certificate).
	ErrUnauthenticated = errors.New("client: unauthenticated")
)

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// Endpoints are client addresses (host:port) of some nodes; one that
	// answers is enough. Required.
	Endpoints []string
	// DialTimeout bounds learning the cluster map in New. Default 5s.
	DialTimeout time.Duration
	// RequestTimeout bounds a request whose context has no deadline, from
	// its first attempt to its answer, retries and hedges included.
	// Default 30s. A write is never retried later than kv.SessionTTL/2
	// after its first attempt, whatever the context (its session must
	// outlive its retries).
	RequestTimeout time.Duration
	// AttemptTimeout caps one attempt on one node. Default 5s. An attempt
	// that is merely slow is hedged long before (HedgeDelayMin).
	AttemptTimeout time.Duration
	// HedgeDelayMin and HedgeDelayMax bound a node's hedge delay: how long
	// an attempt waits for that node's answer before the same request is
	// also sent to another node. The delay is the node's smoothed latency
	// plus four times its deviation (as TCP's retransmission timeout), so
	// a healthy node's slow tail is rarely hedged. Defaults 50ms and 1s.
	HedgeDelayMin, HedgeDelayMax time.Duration
	// MaxAttempts bounds the attempts of one request (hedges included);
	// 0, the default, bounds them by the request's deadline only.
	MaxAttempts int
	// BackoffBase is the wait before retrying after a failed attempt when
	// no other attempt is outstanding; it doubles up to BackoffMax, and is
	// skipped when the answer named another leader. Defaults 10ms and
	// 250ms.
	BackoffBase, BackoffMax time.Duration
	// ProbeInterval is how often a suspect node (one that stopped
	// answering) is probed; it is used again once a probe answers.
	// Default 100ms; each probe is bounded by AttemptTimeout.
	ProbeInterval time.Duration
	// KeepaliveTime and KeepaliveTimeout: gRPC keepalive pings on every
	// connection, so that a connection to a node that vanished without a
	// reset is closed. Defaults 10s (gRPC's minimum) and 3s.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// DisableFailover turns off hedging, node suspicion and probes: one
	// attempt at a time, the next only after the last went unanswered for
	// AttemptTimeout (or failed). The client before failover detection
	// behaved so; tests use it as the naive control.
	DisableFailover bool
	// Logger receives debug logs of retries. Default: discard.
	Logger *slog.Logger
	// Dialer, if set, opens the client's connections instead of the
	// default TCP dialer (proxies, tests that cut a client off).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// TLS, if set, secures every connection (LoadTLS builds it from a
	// certs directory). Nil: plaintext, for a cluster started with
	// --insecure.
	TLS *tls.Config
	// Token, if set, authenticates the client as the user it was issued to
	// (flotilla user add prints it), for a client without a certificate of
	// its own. It is sent with every request, and only over TLS.
	Token string
	// DisableBatch sends every Put and Delete as its own unary RPC
	// instead of over the node's Batch stream (batch.go).
	DisableBatch bool
}

func (cfg *Config) setDefaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.DialTimeout, 5*time.Second)
	def(&cfg.RequestTimeout, 30*time.Second)
	def(&cfg.AttemptTimeout, 5*time.Second)
	def(&cfg.HedgeDelayMin, 50*time.Millisecond)
	def(&cfg.HedgeDelayMax, time.Second)
	cfg.HedgeDelayMax = max(cfg.HedgeDelayMax, cfg.HedgeDelayMin)
	def(&cfg.BackoffBase, 10*time.Millisecond)
	def(&cfg.BackoffMax, 250*time.Millisecond)
	cfg.BackoffMax = max(cfg.BackoffMax, cfg.BackoffBase)
	def(&cfg.ProbeInterval, 100*time.Millisecond)
	def(&cfg.KeepaliveTime, 10*time.Second)
	def(&cfg.KeepaliveTimeout, 3*time.Second)
	if cfg.MaxAttempts < 0 {
		cfg.MaxAttempts = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
}

// Option changes a Config.
type Option func(*Config)

// WithDialTimeout sets Config.DialTimeout.
func WithDialTimeout(d time.Duration) Option { return func(c *Config) { c.DialTimeout = d } }

// WithAttemptTimeout sets Config.AttemptTimeout.
func WithAttemptTimeout(d time.Duration) Option { return func(c *Config) { c.AttemptTimeout = d } }

// WithRequestTimeout sets Config.RequestTimeout.
func WithRequestTimeout(d time.Duration) Option { return func(c *Config) { c.RequestTimeout = d } }

// WithMaxAttempts sets Config.MaxAttempts.
func WithMaxAttempts(n int) Option { return func(c *Config) { c.MaxAttempts = n } }

// WithBackoff sets Config.BackoffBase and BackoffMax.
func WithBackoff(base, max time.Duration) Option {
	return func(c *Config) { c.BackoffBase, c.BackoffMax = base, max }
}

// WithLogger sets Config.Logger.
func WithLogger(l *slog.Logger) Option { return func(c *Config) { c.Logger = l } }

// KeyValue is a key with its value and the group revision that wrote it.
// The caller owns the slices.
type KeyValue struct {
	Key   []byte
	Value []byte
	// Revision is the range revision of the write that set Value (its mod
	// revision); CreateRevision, that of the put that created the key;
	// Version, the puts since (1 for the creating put). CompareAndSwap's
	// current value carries Revision only (the others are 0).
	Revision       uint64
	Group          uint64
	CreateRevision uint64
	Version        uint64
}

// keyValue is kv as the API gave it.
func keyValue(kv *api.KeyValue) KeyValue {
	return KeyValue{Key: kv.GetKey(), Value: kv.GetValue(), Revision: kv.GetRevision(), Group: kv.GetGroup(),
		CreateRevision: kv.GetCreateRevision(), Version: kv.GetVersion()}
}

// leaderInfo is a group's leader as the client knows it, and the term it
// was heard of in (0: unknown).
type leaderInfo struct{ id, term uint64 }

// Client talks to one cluster. Safe for concurrent use; Close it when
// done.
//
// Goroutines: probeLoop (failure.go), mapLoop with at most one mapRead,
// one sender per Batch stream and one
// receiver per open stream (batch.go), a keep-alive loop per Lease, and
// one goroutine per unary attempt in flight.
//
// Lock order: Client.mu, session.mu, health.mu and batchers.mu are leaves,
// never held across an RPC or a channel operation that can wait.
type Client struct {
	cfg     Config
	log     *slog.Logger
	batch   batchers
	session session
	health  health
	// ranges caches range descriptors: where keys are (kv.RangeCache);
	// lookups (capacity 1) lets one lookup of the meta index run at a time.
	ranges  kv.RangeCache
	lookups chan struct{}
	// unknownNode (capacity 1) wakes mapLoop: a leader hint named a node
	// whose address the client does not know (one that joined since the
	// client last read the cluster map).
	unknownNode chan struct{}
	stop        chan struct{} // closed by Close
	loops       sync.WaitGroup
	hedges      atomic.Uint64 // attempts sent as hedges

	mu struct {
		sync.Mutex
		closed    bool
		clusterID uint64
		groups    int
		addrs     map[uint64]string // node ID → client address
		leaders   map[uint64]leaderInfo
		conns     map[string]*grpc.ClientConn
		next      int                 // round robin over nodes when no leader is known
		leases    map[*Lease]struct{} // leases whose keep-alives run
	}
}

// New returns a client after learning the cluster map from one of the
// endpoints. ctx bounds that first contact together with DialTimeout.
func New(ctx context.Context, cfg Config, opts ...Option) (*Client, error) {
	for _, o := range opts {
		o(&cfg)
	}
	if len(cfg.Endpoints) == 0 {
		return nil, ErrNoEndpoints
	}
	for _, e := range cfg.Endpoints {
		if strings.TrimSpace(e) == "" {
			return nil, fmt.Errorf("%w: empty endpoint in %q", ErrInvalidArgument, cfg.Endpoints)
		}
	}
	cfg.setDefaults()
	c := &Client{cfg: cfg, log: cfg.Logger, stop: make(chan struct{})}
	c.session.init(newSessionID())
	c.lookups = make(chan struct{}, 1)
	c.unknownNode = make(chan struct{}, 1)
	c.health.init()
	c.mu.addrs = make(map[uint64]string)
	c.mu.leaders = make(map[uint64]leaderInfo)
	c.mu.conns = make(map[string]*grpc.ClientConn)
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if err := c.refresh(dctx); err != nil {
		c.Close()
		return nil, err
	}
	c.loops.Add(1)
	go c.mapLoop()
	if !cfg.DisableFailover {
		c.loops.Add(1)
		go c.probeLoop()
	}
	return c, nil
}

// mapRefreshEvery bounds how often mapLoop reads the cluster map: a hint
// that names a node no map gives an address for (a removed node's, in a
// stale answer) costs one read a second, not one per request; and while
// reads leave a leader without an address, the bound doubles, up to
// mapRefreshMax (each read asks every node it knows, and the answer lists
// every range).
const (
	mapRefreshEvery = time.Second
	mapRefreshMax   = 32 * time.Second
)

// mapLoop reads the cluster map again when a leader hint names a node
// whose address the client does not know (unknownNode), at most once per
// mapRefreshEvery (longer while reads leave one unknown), until Close.
// Why: the client learns addresses from the cluster map, which it read
// once, in New; a node that joined later was never used, and the requests
// for the ranges it led went to another node that forwarded them, for as
// long as the client lived (one extra hop and the forwarder's CPU for
// every such request).
func (c *Client) mapLoop() {
	defer c.loops.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var last time.Time
	every := mapRefreshEvery
	for {
		select {
		case <-c.stop:
			return
		case <-c.unknownNode:
		}
		if wait := every - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-c.stop:
				t.Stop()
				return
			case <-t.C:
			}
		}
		last = time.Now()
		// The read runs beside the loop, which ends it at Close: Close
		// waits for the loop, and must not wait out an attempt timeout.
		rctx, rcancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
		done := make(chan struct{})
		go func() { // mapRead: one at a time, joined below
			defer close(done)
			if err := c.refresh(rctx); err != nil {
				c.log.Debug("client: reading the cluster map for a new node's address", "err", err)
			}
		}()
		select {
		case <-done:
		case <-c.stop:
		}
		rcancel()
		<-done
		if c.leaderWithoutAddr() {
			every = min(2*every, mapRefreshMax)
		} else {
			every = mapRefreshEvery
		}
	}
}

// leaderWithoutAddr reports whether a cached leader is a node whose
// address the client does not know.
func (c *Client) leaderWithoutAddr() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.mu.leaders {
		if c.mu.addrs[l.id] == "" {
			return true
		}
	}
	return false
}

// newSessionID draws the client's session ID: random, never 0.
func newSessionID() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(fmt.Sprintf("client: no randomness for a session ID: %v", err))
		}
		if id := binary.BigEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

// Hedges returns how many attempts the client sent as hedges: an earlier
// attempt of the same request had gone unanswered for its node's hedge
// delay.
func (c *Client) Hedges() uint64 { return c.hedges.Load() }

// Session returns the ID of the client's session: every write it sends
// carries it.
func (c *Client) Session() uint64 { return c.session.id }

// Close releases the client's connections. Requests in flight fail.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.mu.closed {
		c.mu.Unlock()
		return nil
	}
	c.mu.closed = true
	conns := c.mu.conns
	c.mu.conns = nil
	leases := c.mu.leases
	c.mu.leases = nil
	c.mu.Unlock()
	close(c.stop)
	for l := range leases {
		l.halt(ErrClosed)
	}
	c.batch.close()
	c.loops.Wait()
	for _, cc := range conns {
		cc.Close()
	}
	return nil
}

// conn returns the connection to addr, creating it (without connecting:
// grpc.NewClient is lazy, so this never blocks under the lock).
func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.closed {
		return nil, ErrClosed
	}
	if cc := c.mu.conns[addr]; cc != nil {
		return cc, nil
	}
	opts := append(c.cfg.transportCredentials(),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(64<<20),
			grpc.MaxCallSendMsgSize(kv.MaxValueSize+kv.MaxKeySize+64<<10)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                c.cfg.KeepaliveTime,
			Timeout:             c.cfg.KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
	)
	if c.cfg.Dialer != nil {
		opts = append(opts, grpc.WithContextDialer(c.cfg.Dialer))
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: endpoint %q: %v", ErrInvalidArgument, addr, err)
	}
	c.mu.conns[addr] = cc
	return cc, nil
}

// candidates returns the addresses to try for refreshing the map: the
// configured endpoints, then every known node.
func (c *Client) candidates() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]string(nil), c.cfg.Endpoints...)
	for _, id := range sortedKeys(c.mu.addrs) {
		if a := c.mu.addrs[id]; a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// refresh learns the cluster map from the first candidate that answers.
// It asks them all at once: one frozen endpoint must not hold New up for
// an attempt timeout.
func (c *Client) refresh(ctx context.Context) error {
	cands := c.candidates()
	asked := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
	defer cancel() // the slower answers are not needed
	type result struct {
		m   *api.ClusterMapResponse
		err error
	}
	results := make(chan result, len(cands))
	for _, addr := range cands {
		cc, err := c.conn(addr)
		if err != nil {
			return err
		}
		go func() {
			m, err := api.NewClusterClient(cc).ClusterMap(ctx, &api.ClusterMapRequest{})
			if err != nil {
				err = fmt.Errorf("%s: %w", addr, err)
			}
			results <- result{m, err}
		}()
	}
	var errs []error
	for range cands {
		r := <-results
		if r.err == nil {
			c.apply(r.m, asked, true)
			return nil
		}
		errs = append(errs, r.err)
		if o, err := classify(errors.Unwrap(r.err)); o == fatal &&
			(errors.Is(err, ErrUnauthenticated) || errors.Is(err, ErrPermissionDenied)) {
			// No retry mends a refused certificate or token.
			return fmt.Errorf("%w (%v)", err, r.err)
		}
	}
	return fmt.Errorf("%w: no endpoint answered: %w", ErrUnavailable, errors.Join(errs...))
}

// apply takes a node's cluster map, asked for at asked: addresses, and the
// leaders it names in terms at least as recent as the client's (a node
// that was frozen answers with what it believed before). A node the map
// says is not alive (the cluster's gossip membership counts it down)
// becomes suspect, unless it answered this client since asked: requests
// go around it at once instead of each waiting out a hedge delay first,
// and the probes clear it when it answers. marks is false for a probe's
// answer (the node probed was suspect: its view is the likeliest to be
// stale, just thawed or cut off), and a map whose node counts fewer than
// a majority of the members alive marks nothing (it is the one cut off).
func (c *Client) apply(m *api.ClusterMapResponse, asked time.Time, marks bool) {
	if marks && aliveMajority(m.Nodes) {
		for _, n := range m.Nodes {
			if !n.Alive && n.ClientAddr != "" {
				c.health.slow(n.ClientAddr, asked)
			}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mu.clusterID = m.ClusterId
	c.mu.groups = int(m.Groups)
	for _, n := range m.Nodes {
		if n.ClientAddr != "" {
			c.mu.addrs[n.Id] = n.ClientAddr
		}
	}
	for _, g := range m.GroupInfos {
		c.noteLeaderLocked(g.Id, g.Leader, g.Term)
		if len(g.Replicas) > 0 && g.Generation > 0 {
			c.ranges.Insert(kv.Descriptor{ID: g.Id, Start: g.Start, End: g.End, Replicas: g.Replicas, Generation: g.Generation})
		}
	}
}

// aliveMajority reports whether a cluster map counts more than half of its
// members (the nodes not removed) alive.
func aliveMajority(nodes []*api.NodeInfo) bool {
	members, alive := 0, 0
	for _, n := range nodes {
		if n.Membership == api.NodeRemoved {
			continue
		}
		members++
		if n.Alive {
			alive++
		}
	}
	return 2*alive > members
}

// ClusterMap asks one node for the cluster map and updates the client's
// view with it.
func (c *Client) ClusterMap(ctx context.Context) (*api.ClusterMapResponse, error) {
	asked := time.Now()
	v, err := c.do(ctx, 0, false, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			m, err := api.NewClusterClient(cc).ClusterMap(ctx, &api.ClusterMapRequest{}, opts...)
			return m, nil, err
		})
	})
	if err != nil {
		return nil, err
	}
	m := v.(*api.ClusterMapResponse)
	c.apply(m, asked, true)
	return m, nil
}

// Groups returns the cluster's number of data groups.
func (c *Client) Groups() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.groups
}

// GroupOf returns the range that holds key as the client's range cache
// has it (0: not cached; RangeOf asks the cluster).
func (c *Client) GroupOf(key []byte) uint64 {
	if d, ok := c.ranges.Lookup(key); ok {
		return d.ID
	}
	return 0
}

// RangeOf returns the range that holds key, from the client's range cache
// or else from the cluster's meta index.
func (c *Client) RangeOf(ctx context.Context, key []byte) (kv.Descriptor, error) {
	if d, ok := c.ranges.Lookup(key); ok {
		return d, nil
	}
	// One lookup at a time: the requests that missed together (a range
	// evicted under load) wait for it instead of each asking the cluster.
	select {
	case c.lookups <- struct{}{}:
	case <-ctx.Done():
		return kv.Descriptor{}, ctx.Err()
	}
	defer func() { <-c.lookups }()
	if d, ok := c.ranges.Lookup(key); ok {
		return d, nil
	}
	if err := c.lookupRanges(ctx, key); err != nil {
		return kv.Descriptor{}, err
	}
	if d, ok := c.ranges.Lookup(key); ok {
		return d, nil
	}
	return kv.Descriptor{}, fmt.Errorf("%w: the meta index has no range for %q", ErrUnavailable, key)
}

// rangeOf returns the range of key for routing a request: 0 if it cannot
// be learned now (any node routes the request by its key anyway).
func (c *Client) rangeOf(ctx context.Context, key []byte) uint64 {
	d, err := c.RangeOf(ctx, key)
	if err != nil {
		c.log.Debug("client: range lookup failed", "key", key, "err", err)
		return 0
	}
	return d.ID
}

// descriptorOf returns the range of key from the cache or the cluster.
func (c *Client) descriptorOf(ctx context.Context, key []byte) (kv.Descriptor, bool) {
	d, err := c.RangeOf(ctx, key)
	return d, err == nil
}

// rangePrefetch is how many descriptors one lookup asks for.
const rangePrefetch = 64

// lookupRanges reads descriptors from the meta index, from the range that
// holds key on, into the cache.
func (c *Client) lookupRanges(ctx context.Context, key []byte) error {
	rs, _, err := c.Ranges(ctx, key, rangePrefetch, false)
	if err != nil {
		return err
	}
	for _, r := range rs {
		c.ranges.Insert(kv.Descriptor{ID: r.Id, Start: r.Start, End: r.End, Replicas: r.Replicas, Generation: r.Generation})
		c.noteLeader(r.Id, r.Leader, r.Term, 0)
	}
	return nil
}

// Ranges returns up to limit ranges (0: 1000) in key order from the one
// that holds key, as the meta index records them, with their leaders, and
// with stats their sizes and loads; more says there are ranges after them.
func (c *Client) Ranges(ctx context.Context, key []byte, limit int, stats bool) ([]*api.RangeInfo, bool, error) {
	v, err := c.do(ctx, 0, false, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewClusterClient(cc).Ranges(ctx, &api.RangesRequest{Key: key, Limit: uint32(limit), Stats: stats}, opts...)
			return r, nil, err
		})
	})
	if err != nil {
		return nil, false, err
	}
	r := v.(*api.RangesResponse)
	return r.Ranges, r.More, nil
}

// target returns the address for attempt n of a request to group g (0:
// any node), for the streams (keep-alives, observers) that pick their own
// node: the cached leader, else the nodes in turn, suspects last.
func (c *Client) target(g uint64, n int) string {
	var avoid []string
	if n%3 == 2 {
		// Every third attempt goes around the cached leader, in case the
		// cache is wrong and nothing says so.
		avoid = []string{c.leaderAddr(g)}
	}
	if a := c.pick(g, n, nil, avoid); a != "" {
		return a
	}
	return c.cfg.Endpoints[n%len(c.cfg.Endpoints)]
}

// pick chooses the node for an attempt of a request to group g (0: any
// node), n being the request's attempt count: the cached leader, unless it
// is suspect, busy (an attempt of this request is outstanding there) or to
// be avoided (it failed this request); else the nodes in turn, healthy ones
// before avoided ones before suspect ones. Cluster-wide questions (g 0) go
// to the endpoints the caller named first, in order. "" if every node is
// busy.
func (c *Client) pick(g uint64, n int, busy, avoid []string) string {
	ok := func(a string, allowAvoided, allowSuspect bool) bool {
		return a != "" && !slices.Contains(busy, a) && (allowAvoided || !slices.Contains(avoid, a)) &&
			(allowSuspect || !c.health.suspect(a))
	}
	if g != 0 {
		if a := c.leaderAddr(g); ok(a, false, false) {
			return a
		}
	} else if n < len(c.cfg.Endpoints) && ok(c.cfg.Endpoints[n], false, false) {
		return c.cfg.Endpoints[n]
	}
	all := c.candidates()
	c.mu.Lock()
	c.mu.next++
	start := c.mu.next
	c.mu.Unlock()
	for pass := 0; pass < 3; pass++ {
		for i := range all {
			if a := all[(start+i)%len(all)]; ok(a, pass >= 1, pass >= 2) {
				return a
			}
		}
	}
	return ""
}

// leaderAddr returns the client address of group g's cached leader, "" if
// none is known.
func (c *Client) leaderAddr(g uint64) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l := c.mu.leaders[g]; l.id != 0 {
		return c.mu.addrs[l.id]
	}
	return ""
}

// nodeOf returns the ID of the node at client address addr (0: unknown).
func (c *Client) nodeOf(addr string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, a := range c.mu.addrs {
		if a == addr {
			return id
		}
	}
	return 0
}

func sortedKeys(m map[uint64]string) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, cmp.Compare)
	return out
}

// noteLeader learns group g's leader from an answer of node from (0:
// unknown): with its term, it replaces a leader of an older term, and
// leader 0 forgets the cached leader of that term or older. A hint without
// a term (a refusal's trailer) replaces the cache only when it has no
// leader, or its leader is the node that just refused: otherwise a node
// with a stale view could displace a newer leader.
func (c *Client) noteLeader(g, leader, term, from uint64) {
	if g == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if term == 0 {
		if cur := c.mu.leaders[g]; leader != 0 && (cur.id == 0 || cur.id == from) {
			c.mu.leaders[g] = leaderInfo{id: leader, term: cur.term}
			c.needAddrLocked(leader)
		}
		return
	}
	c.noteLeaderLocked(g, leader, term)
}

func (c *Client) noteLeaderLocked(g, leader, term uint64) {
	cur := c.mu.leaders[g]
	switch {
	case term == 0 || term < cur.term:
		return // older news, or nothing to order it by
	case leader == 0:
		delete(c.mu.leaders, g)
	default:
		c.mu.leaders[g] = leaderInfo{id: leader, term: term}
		c.needAddrLocked(leader)
	}
}

// needAddrLocked wakes mapLoop if the client knows no address for node
// id. It does not block.
func (c *Client) needAddrLocked(id uint64) {
	if c.mu.addrs[id] == "" {
		select {
		case c.unknownNode <- struct{}{}:
		default:
		}
	}
}

// Split splits the range that holds key at key and returns both halves.
func (c *Client) Split(ctx context.Context, key []byte) (left, right *api.RangeInfo, err error) {
	if err := kv.CheckKey(key); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	key = bytes.Clone(key)
	v, err := c.do(ctx, c.rangeOf(ctx, key), false, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewClusterClient(cc).Split(ctx, &api.SplitRequest{Key: key}, opts...)
			return r, nil, err
		})
	})
	if err != nil {
		return nil, nil, err
	}
	r := v.(*api.SplitResponse)
	for _, ri := range []*api.RangeInfo{r.Left, r.Right} {
		c.ranges.Insert(kv.Descriptor{ID: ri.Id, Start: ri.Start, End: ri.End, Replicas: ri.Replicas, Generation: ri.Generation})
	}
	return r.Left, r.Right, nil
}

// Move moves the replica of the range that holds key from node from to
// node to, and returns the range with its new replicas. from 0 only adds
// a replica on to; to 0 only removes the one on from. It returns once the
// move is done: the new replica caught up and votes, and the old one is
// out. ErrInvalidArgument for a node outside the cluster or no node.
func (c *Client) Move(ctx context.Context, key []byte, from, to uint64) (*api.RangeInfo, error) {
	if err := kv.CheckKey(key); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if from == to {
		return nil, fmt.Errorf("%w: a move from node %d to node %d", ErrInvalidArgument, from, to)
	}
	key = bytes.Clone(key)
	v, err := c.do(ctx, c.rangeOf(ctx, key), false, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewClusterClient(cc).Move(ctx, &api.MoveRequest{Key: key, From: from, To: to}, opts...)
			return r, nil, err
		})
	})
	if err != nil {
		return nil, err
	}
	m := v.(*api.MoveResponse).Range
	c.ranges.Insert(kv.Descriptor{ID: m.Id, Start: m.Start, End: m.End, Replicas: m.Replicas, Learners: m.Learners, Generation: m.Generation})
	return m, nil
}

// Decommission starts, or follows, the decommissioning of node: it answers
// the node's state (api.NodeDecommissioning, then api.NodeRemoved) and how
// many replicas the meta index still lists on it. Call it until the state
// is removed; each call is idempotent. A node outside the cluster is
// ErrInvalidArgument.
func (c *Client) Decommission(ctx context.Context, node uint64) (state string, replicas int, err error) {
	if node == 0 {
		return "", 0, fmt.Errorf("%w: node 0", ErrInvalidArgument)
	}
	v, err := c.do(ctx, 0, false, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewClusterClient(cc).Decommission(ctx, &api.DecommissionRequest{Node: node}, opts...)
			return r, nil, err
		})
	})
	if err != nil {
		return "", 0, err
	}
	r := v.(*api.DecommissionResponse)
	return r.State, int(r.Replicas), nil
}

// SetDrained marks node drained, or clears the mark: while it is marked,
// the rebalancer moves no replica onto it and no leadership goes to it
// (`flotilla node drain`, `flotilla node undrain`). It returns every node
// marked drained after the change, and settle: every node has read the
// mark that long after the answer (wait it before moving replicas off). A
// node outside the cluster is ErrInvalidArgument.
func (c *Client) SetDrained(ctx context.Context, node uint64, drained bool) (nodes []uint64, settle time.Duration, err error) {
	if node == 0 {
		return nil, 0, fmt.Errorf("%w: node 0", ErrInvalidArgument)
	}
	v, err := c.do(ctx, 0, false, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewClusterClient(cc).SetDrained(ctx, &api.SetDrainedRequest{Node: node, Drained: drained}, opts...)
			return r, nil, err
		})
	})
	if err != nil {
		return nil, 0, err
	}
	r := v.(*api.SetDrainedResponse)
	return r.Drained, time.Duration(r.SettleMs) * time.Millisecond, nil
}

// Merge merges the range that holds key with the range after it and
// returns the merged range.
func (c *Client) Merge(ctx context.Context, key []byte) (*api.RangeInfo, error) {
	key = bytes.Clone(key)
	v, err := c.do(ctx, c.rangeOf(ctx, key), false, func(at attempt, cc *grpc.ClientConn, done func(answer)) {
		unary(at, done, func(ctx context.Context, opts ...grpc.CallOption) (any, *api.Header, error) {
			r, err := api.NewClusterClient(cc).Merge(ctx, &api.MergeRequest{Key: key}, opts...)
			return r, nil, err
		})
	})
	if err != nil {
		return nil, err
	}
	m := v.(*api.MergeResponse).Merged
	c.ranges.Insert(kv.Descriptor{ID: m.Id, Start: m.Start, End: m.End, Replicas: m.Replicas, Generation: m.Generation})
	return m, nil
}
