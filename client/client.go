// Package client is the Go client of a Flotilla cluster.
//
// A Client learns the cluster map (nodes, their client addresses, group
// count and leaders) from any endpoint it is given, hashes each key to its
// group and sends the request to the group's leader, caching leaders and
// following the hints servers return. Every node accepts every request, so
// a stale cache costs a hop, never correctness.
//
// Retries. Reads, and requests the server reports as not done
// (FailedPrecondition), are retried until the context ends or the attempts
// run out. Writes (Put, Delete, CompareAndSwap) are retried only while they
// certainly were not applied; after an ambiguous failure (a lost
// connection, a leader change after the write was appended) they return
// ErrAmbiguous and the caller decides. Resending a put that may have
// applied is not safe: if a concurrent writer's put landed between the two
// copies, the second copy would bring the old value back.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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
	// ErrUnavailable: no node could serve the request within the attempts
	// allowed (the cluster is down, partitioned, or electing).
	ErrUnavailable = errors.New("client: cluster unavailable")
	// ErrAmbiguous: a CompareAndSwap may or may not have been applied.
	ErrAmbiguous = errors.New("client: outcome unknown")
	// ErrInvalidArgument: the request is malformed (empty or oversized
	// key, oversized value, bad limit). Retrying cannot help.
	ErrInvalidArgument = errors.New("client: invalid argument")
	// ErrGroupNotFound: the request named a group the cluster does not
	// have.
	ErrGroupNotFound = errors.New("client: group not found")
	// ErrKeyNotFound: Get found no value for the key.
	ErrKeyNotFound = errors.New("client: key not found")
	// ErrLeaseNotFound: a Put or CompareAndSwap WithLease named a lease
	// the key's group does not have (expired, revoked, or never granted
	// there). Nothing was written.
	ErrLeaseNotFound = errors.New("client: lease not found")
	// ErrNotLeader: the node asked could not serve the request for its
	// group and named (or could not name) the leader. Retried internally;
	// seen only wrapped in ErrUnavailable.
	ErrNotLeader = errors.New("client: not leader")
)

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// Endpoints are client addresses (host:port) of some nodes; one that
	// answers is enough. Required.
	Endpoints []string
	// DialTimeout bounds learning the cluster map in New. Default 5s.
	DialTimeout time.Duration
	// AttemptTimeout bounds one attempt of a request when the caller's
	// context has a later deadline or none. Default 5s.
	AttemptTimeout time.Duration
	// MaxAttempts bounds the attempts of one request. Default 10; at
	// least 1.
	MaxAttempts int
	// BackoffBase is the wait after the first failed attempt; it doubles
	// up to BackoffMax. Defaults 20ms and 1s.
	BackoffBase, BackoffMax time.Duration
	// Logger receives debug logs of retries. Default: discard.
	Logger *slog.Logger
	// Dialer, if set, opens the client's connections instead of the
	// default TCP dialer (proxies, tests that cut a client off).
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// DisableBatch sends every Put and Delete as its own unary RPC
	// instead of over the node's Batch stream (batch.go).
	DisableBatch bool
}

// Option changes a Config.
type Option func(*Config)

// WithDialTimeout sets Config.DialTimeout.
func WithDialTimeout(d time.Duration) Option { return func(c *Config) { c.DialTimeout = d } }

// WithAttemptTimeout sets Config.AttemptTimeout.
func WithAttemptTimeout(d time.Duration) Option { return func(c *Config) { c.AttemptTimeout = d } }

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
	Key      []byte
	Value    []byte
	Revision uint64
	Group    uint64
}

// Client talks to one cluster. Safe for concurrent use; Close it when
// done.
type Client struct {
	cfg   Config
	log   *slog.Logger
	batch batchers

	mu struct {
		sync.Mutex
		closed    bool
		clusterID uint64
		groups    int
		addrs     map[uint64]string // node ID → client address
		leaders   map[uint64]uint64 // group → leader node
		conns     map[string]*grpc.ClientConn
		next      int                 // round robin over endpoints when no leader is known
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
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 5 * time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 10
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 20 * time.Millisecond
	}
	if cfg.BackoffMax < cfg.BackoffBase {
		cfg.BackoffMax = max(time.Second, cfg.BackoffBase)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{cfg: cfg, log: cfg.Logger}
	c.mu.addrs = make(map[uint64]string)
	c.mu.leaders = make(map[uint64]uint64)
	c.mu.conns = make(map[string]*grpc.ClientConn)
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if err := c.refresh(dctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

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
	for l := range leases {
		l.halt(ErrClosed)
	}
	c.batch.close()
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
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(64<<20),
			grpc.MaxCallSendMsgSize(kv.MaxValueSize+kv.MaxKeySize+64<<10)),
	}
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
	for _, a := range c.mu.addrs {
		if a != "" {
			out = append(out, a)
		}
	}
	return out
}

// refresh learns the cluster map from the first candidate that answers.
func (c *Client) refresh(ctx context.Context) error {
	var errs []error
	for _, addr := range c.candidates() {
		cc, err := c.conn(addr)
		if err != nil {
			return err
		}
		actx, cancel := context.WithTimeout(ctx, c.cfg.AttemptTimeout)
		m, err := api.NewClusterClient(cc).ClusterMap(actx, &api.ClusterMapRequest{})
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", addr, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		c.apply(m)
		return nil
	}
	return fmt.Errorf("%w: no endpoint answered: %w", ErrUnavailable, errors.Join(errs...))
}

func (c *Client) apply(m *api.ClusterMapResponse) {
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
		if g.Leader != 0 {
			c.mu.leaders[g.Id] = g.Leader
		} else {
			delete(c.mu.leaders, g.Id)
		}
	}
}

// ClusterMap asks one node for the cluster map and updates the client's
// view with it.
func (c *Client) ClusterMap(ctx context.Context) (*api.ClusterMapResponse, error) {
	var out *api.ClusterMapResponse
	err := c.do(ctx, 0, true, func(ctx context.Context, cc *grpc.ClientConn, opts ...grpc.CallOption) (uint64, error) {
		m, err := api.NewClusterClient(cc).ClusterMap(ctx, &api.ClusterMapRequest{}, opts...)
		if err == nil {
			c.apply(m)
			out = m
		}
		return 0, err
	})
	return out, err
}

// Groups returns the cluster's number of data groups.
func (c *Client) Groups() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.groups
}

// GroupOf returns the group that holds key.
func (c *Client) GroupOf(key []byte) uint64 { return kv.GroupOf(key, c.Groups()) }

// target returns the address for a request to group g (0: any node) on
// attempt n: the cached leader first, then the endpoints round robin.
func (c *Client) target(g uint64, attempt int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g != 0 && attempt%3 != 2 {
		if l := c.mu.leaders[g]; l != 0 {
			if a := c.mu.addrs[l]; a != "" {
				return a
			}
		}
	}
	if g == 0 && attempt < len(c.cfg.Endpoints) {
		// Cluster-wide questions go to the endpoints the caller named
		// first, in order: their answer is what the caller asked for.
		return c.cfg.Endpoints[attempt]
	}
	all := append([]string(nil), c.cfg.Endpoints...)
	for _, id := range sortedKeys(c.mu.addrs) {
		all = append(all, c.mu.addrs[id])
	}
	c.mu.next++
	return all[c.mu.next%len(all)]
}

func sortedKeys(m map[uint64]string) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func (c *Client) noteLeader(g, leader uint64) {
	if g == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if leader == 0 {
		delete(c.mu.leaders, g)
	} else {
		c.mu.leaders[g] = leader
	}
}
