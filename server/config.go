package server

import (
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// Sentinel errors. Check them with errors.Is.
var (
	// ErrConfig wraps every refusal of a Config.
	ErrConfig = errors.New("server: invalid config")
	// ErrOtherCluster: the data directory belongs to another cluster or
	// another node.
	ErrOtherCluster = errors.New("server: data directory belongs to another cluster")
	// ErrStopped: the server is stopped.
	ErrStopped = errors.New("server: stopped")
)

// Defaults of the range settings.
const (
	// DefaultRangeMaxBytes is --range-max-bytes' default.
	DefaultRangeMaxBytes = 64 << 20
	// DefaultRangeSplitLoad is --range-split-load's default, in requests
	// per second.
	DefaultRangeSplitLoad = 2500
)

// Limits.
const (
	// MaxGroups is the most data groups a cluster may have.
	MaxGroups = 100000
	// MaxNodes is the most nodes --initial-cluster may list.
	MaxNodes = 1000
)

// Config configures one node. Zero values take the documented defaults.
type Config struct {
	// NodeID is this node's ID. With InitialCluster it is required and
	// must appear there. With Join it is the ID asked for (it must be
	// free: never used in the cluster), or 0 to take the one the cluster
	// gives; required with TLS (the node's certificate names it). A joined
	// node's later starts take it from the data directory.
	NodeID uint64
	// DataDir holds the node's Pebble database and meta file. Created if
	// missing. Required.
	DataDir string
	// PeerAddr is the host:port other nodes reach this node's raft
	// transport at; it must equal this node's InitialCluster entry, or for
	// a joined node the address it joined with. Its
	// host is also the source address of outbound peer connections.
	// Required.
	PeerAddr string
	// ClientAddr is where the gRPC client API listens. Required.
	ClientAddr string
	// HTTPAddr is where /metrics, /healthz, /readyz, /debug/raft and
	// /debug/pprof are served. Required.
	HTTPAddr string
	// InitialCluster maps every node ID of the cluster to its peer address.
	// With Groups it defines the cluster: its ID is derived from both, and
	// a data directory written under another ID is refused. Required;
	// parse --initial-cluster with ParseInitialCluster. Exactly one of
	// InitialCluster and Join.
	InitialCluster map[uint64]string
	// Join lists peer addresses (host:port) of nodes of a running cluster
	// that this node asks to admit it (`--join`; join.go), in turn, for up
	// to two minutes. It takes the cluster's ID, groups and replicas from
	// the answer, and starts with no replica. A data directory that
	// already belongs to a node (a restart) is used as it is, without
	// asking. Groups and Replicas, if set, must be the cluster's.
	Join []string
	// Groups is the number of ranges a new cluster starts with (IDs
	// 1..Groups, cutting the hex keyspace evenly: kv.InitialSplits).
	// Required with InitialCluster; limits 1..MaxGroups. Ranges split and
	// merge from there.
	Groups int
	// Replicas is how many voters each range of a new cluster has, on as
	// many distinct nodes (all of them when the cluster has fewer).
	// Default 3; 1, 3, 5 or 7 (an even count survives no more failures
	// than the odd one below it, and costs a replica more). Part of the
	// cluster's identity with InitialCluster and Groups: every node must
	// be started with the same.
	Replicas int

	// RangeMaxBytes: a range whose data passes it splits in two. Default
	// 64 MiB; limits 4 KiB..64 GiB; negative disables size-based splits.
	RangeMaxBytes int64
	// RangeMinBytes: two neighbouring ranges whose data is below it, and
	// that are cold, merge. Default RangeMaxBytes/4; 0 or more, below
	// RangeMaxBytes; negative disables merges.
	RangeMinBytes int64
	// RangeSplitLoad: a range that serves more requests per second than
	// this for two ticks of the range queue (500ms each) splits where its
	// load halves. Default 2500; negative disables load-based splits.
	RangeSplitLoad float64
	// HistoryRetention: how much history of its writes each range keeps,
	// for reads at past revisions and watches (kv.Retention: a count of
	// revisions, or an age of 1s or more). Zero value: the last
	// kv.DefaultHistoryRevisions (10,000) revisions; kv.NoHistory keeps
	// none.
	HistoryRetention kv.Retention
	// RangeTick is how often the node looks at its ranges: load samples,
	// splits and merges, meta repair. Default 500ms; limits 10ms..1m.
	RangeTick time.Duration

	// TickInterval is the raft tick. Default 100ms; limits 1ms..10s.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks. Default 10.
	ElectionTicks int
	// HeartbeatTicks is the heartbeat interval in ticks. Default 1.
	HeartbeatTicks int
	// BalanceInterval is how often the node checks whether it leads more
	// than its share of groups and hands some away. Default 2s; negative
	// disables balancing.
	BalanceInterval time.Duration
	// BalanceSettle is how long the set of live nodes must stay the same
	// before the node hands leaderships away: a node that died or froze,
	// or came back, moves no other group's leader for this long (its own
	// groups fail over by themselves). Default 10s; 0 or more.
	BalanceSettle time.Duration
	// DeadAfter is how long a node must stay unreachable before it is
	// dead: each range this node leads that has a replica on a dead node
	// moves that replica to a live node (up-replication; evacuateLoop). A node
	// that returns sooner keeps its replicas and catches up. Default 5m;
	// 1s..24h, or negative: never (no up-replication).
	DeadAfter time.Duration
	// RebalanceInterval is how often the node that leads the meta range
	// checks the replica counts of the live members and, while two differ
	// by 2 or more, moves one replica from the node holding the most to
	// the one holding the fewest; with the counts even, it evens out the
	// bytes the members hold (pickBytes) (rebalanceLoop; one move at a
	// time in the cluster): so a node that joins takes its share. Nodes marked drained
	// (`flotilla node drain`) are left out. Default
	// DefaultRebalanceInterval (1s); 100ms..1h; negative: off.
	RebalanceInterval time.Duration
	// MoveCatchUp is how long a replica move waits for the new replica to
	// catch up before it undoes its addition, and how long a new replica
	// left by a move cut short may wait before the range's leader
	// finishes or undoes it. Default 1m; 1s..1h.
	MoveCatchUp time.Duration
	// DiscoveryInterval is how often the node asks its peers for their
	// addresses and leaders. Default 1s; limits 10ms..1m.
	DiscoveryInterval time.Duration
	// BootstrapCheckWait bounds a bootstrapping node's ask of the other
	// nodes of InitialCluster whether they know it under another data
	// directory (incarnation.go): a node that has not answered by then (down,
	// or starting too: one that listens but does not serve yet keeps the
	// asker waiting it all) counts as knowing nothing. Default 3s; limits
	// 10ms..1m.
	BootstrapCheckWait time.Duration
	// GossipInterval is the gossip membership's probe interval
	// (internal/gossip, SWIM): node liveness, which drives the allocator
	// and the clients' view, is as fresh as this. A node that stops
	// answering is counted down after its suspicion times out: 4
	// intervals with 3 nodes; with 4 or more it starts at 24 (more past
	// 10 nodes) and shrinks to 4 as other nodes confirm it. Default 1s;
	// limits 10ms..1m.
	GossipInterval time.Duration
	// DisableQuiesce keeps every range ticking and heartbeating even when
	// idle (multiraft Config.Quiesce, on by default: an idle range costs
	// nothing per tick).
	DisableQuiesce bool
	// DisableSync turns off fsync of raft writes: only for demos and tests.
	DisableSync bool
	// Workers is the number of raft scheduler workers (multiraft
	// Config.Workers). 0: the engine's default.
	Workers int
	// SnapshotEntries is how many applied entries of a range trigger a
	// snapshot and the truncation of its log (multiraft
	// Config.SnapshotEntries): a replica further behind than that catches
	// up by snapshot. Entries; 0: the engine's default (10000); at least
	// 10.
	SnapshotEntries uint64

	// CertsDir holds the cluster's CA certificate (ca.crt) and this node's
	// certificate and key (node-<ID>.crt, node-<ID>.key: flotilla cert
	// create-node). With it every listener serves mutual TLS, a peer must
	// present the certificate of the node it claims to be, and clients are
	// authorised by their roles (docs/security.md). Exactly one of CertsDir
	// and Insecure is required.
	CertsDir string
	// Insecure serves every listener in plaintext and authorises every
	// request: for a trusted network only (tests, the demo on loopback).
	Insecure bool
	// CertReloadInterval is how often the certificate files are checked for
	// change; a changed set that loads and verifies is used by every later
	// handshake (a bad one is logged and the old set kept). Default 10s;
	// limits 10ms..1h.
	CertReloadInterval time.Duration
	// AuthRefresh is how often the node reloads the user and role tables
	// from the meta range: the longest a change of them takes to reach
	// this node. Default 1s; limits 10ms..1m.
	AuthRefresh time.Duration
	// SnapshotRate bounds the snapshot data this node sends (replica
	// moves, replicas catching up), in bytes per second over all its
	// peers, so that moves do not starve the foreground writes. Default
	// DefaultSnapshotRate (64 MiB/s); at least 1 MiB/s; negative: no bound.
	SnapshotRate int64
	// MaxSnapshotsInFlight bounds the snapshots this node sends at once,
	// over all its peers. Default 2; 1..64.
	MaxSnapshotsInFlight int
	// CompactionDuty is the share of the wall time a storage compaction
	// runs while no other waits; it pauses the rest, leaving the CPU to
	// the ranges (storage.PebbleOptions.CompactionDuty). 0 means
	// storage.DefaultCompactionDuty (0.1); else storage.MinCompactionDuty
	// (0.05) to 1; 1 runs compactions unpaced.
	CompactionDuty float64
	// MaxConnStreams bounds the requests (gRPC streams) one connection to
	// the client listener may have in flight; a client past it waits on its
	// side, so a flood from one connection slows that connection only.
	// Default 1024; limits 1..1<<20.
	MaxConnStreams int

	// PeerListener, ClientListener and HTTPListener, if set, are used
	// instead of listening on the corresponding address (the demo and tests
	// listen on port 0 first to learn free ports). The server closes them.
	PeerListener, ClientListener, HTTPListener net.Listener

	// Logger receives the node's logs. Default slog.Default().
	Logger *slog.Logger
}

// ParseInitialCluster parses "1=host:port,2=host:port,...". IDs must be
// positive and distinct, addresses valid host:port and distinct.
func ParseInitialCluster(s string) (map[uint64]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("%w: --initial-cluster is empty; want 1=HOST:PORT,2=HOST:PORT,...", ErrConfig)
	}
	out := make(map[uint64]string)
	seen := make(map[string]uint64)
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		id, addr, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("%w: --initial-cluster entry %q: want ID=HOST:PORT", ErrConfig, part)
		}
		n, err := strconv.ParseUint(strings.TrimSpace(id), 10, 64)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%w: --initial-cluster entry %q: node ID must be a positive integer", ErrConfig, part)
		}
		addr = strings.TrimSpace(addr)
		if err := checkHostPort(addr); err != nil {
			return nil, fmt.Errorf("%w: --initial-cluster entry %q: %v", ErrConfig, part, err)
		}
		if _, dup := out[n]; dup {
			return nil, fmt.Errorf("%w: --initial-cluster lists node %d twice", ErrConfig, n)
		}
		if other, dup := seen[addr]; dup {
			return nil, fmt.Errorf("%w: --initial-cluster gives nodes %d and %d the same address %s", ErrConfig, other, n, addr)
		}
		out[n], seen[addr] = addr, n
	}
	if len(out) > MaxNodes {
		return nil, fmt.Errorf("%w: --initial-cluster lists %d nodes, at most %d", ErrConfig, len(out), MaxNodes)
	}
	return out, nil
}

func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %v", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("address %q: bad port", addr)
	}
	if host == "" {
		return fmt.Errorf("address %q: missing host", addr)
	}
	return nil
}

// FormatInitialCluster is the inverse of ParseInitialCluster, in ID order.
func FormatInitialCluster(m map[uint64]string) string {
	ids := sortedIDs(m)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf("%d=%s", id, m[id])
	}
	return strings.Join(parts, ",")
}

func sortedIDs(m map[uint64]string) []uint64 {
	ids := make([]uint64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// ClusterID derives the cluster's ID from its initial membership and group
// count: FNV-1a of the normalised --initial-cluster and the group count.
// Never 0.
//
// replicas is the replication factor (Config.Replicas); the default, 3,
// leaves the ID as it was before the factor could be chosen, so data
// directories written then still start.
func ClusterID(initial map[uint64]string, groups, replicas int) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "flotilla/v1;groups=%d;%s", groups, FormatInitialCluster(initial))
	if replicas != DefaultReplicas {
		fmt.Fprintf(h, ";replicas=%d", replicas)
	}
	if id := h.Sum64(); id != 0 {
		return id
	}
	return 1
}

func (c *Config) setDefaults() {
	if c.Replicas == 0 && len(c.Join) == 0 {
		c.Replicas = DefaultReplicas // a joining node takes the cluster's
	}
	if c.TickInterval == 0 {
		c.TickInterval = 100 * time.Millisecond
	}
	if c.ElectionTicks == 0 {
		c.ElectionTicks = 10
	}
	if c.HeartbeatTicks == 0 {
		c.HeartbeatTicks = 1
	}
	if c.BalanceInterval == 0 {
		c.BalanceInterval = 2 * time.Second
	}
	if c.BalanceSettle == 0 {
		c.BalanceSettle = 10 * time.Second
	}
	if c.BootstrapCheckWait == 0 {
		c.BootstrapCheckWait = 3 * time.Second
	}
	if c.DiscoveryInterval == 0 {
		c.DiscoveryInterval = time.Second
	}
	if c.GossipInterval == 0 {
		c.GossipInterval = time.Second
	}
	if c.DeadAfter == 0 {
		c.DeadAfter = DefaultDeadAfter
	}
	if c.RebalanceInterval == 0 {
		c.RebalanceInterval = DefaultRebalanceInterval
	}
	if c.MoveCatchUp == 0 {
		c.MoveCatchUp = time.Minute
	}
	if c.RangeMaxBytes == 0 {
		c.RangeMaxBytes = DefaultRangeMaxBytes
	}
	if c.RangeMinBytes == 0 && c.RangeMaxBytes > 0 {
		c.RangeMinBytes = c.RangeMaxBytes / 4
	}
	if c.RangeSplitLoad == 0 {
		c.RangeSplitLoad = DefaultRangeSplitLoad
	}
	if c.RangeTick == 0 {
		c.RangeTick = 500 * time.Millisecond
	}
	if c.HistoryRetention == (kv.Retention{}) {
		c.HistoryRetention = kv.Retention{Revisions: kv.DefaultHistoryRevisions}
	}
	if c.CertReloadInterval == 0 {
		c.CertReloadInterval = 10 * time.Second
	}
	if c.AuthRefresh == 0 {
		c.AuthRefresh = time.Second
	}
	if c.SnapshotRate == 0 {
		c.SnapshotRate = DefaultSnapshotRate
	}
	if c.MaxSnapshotsInFlight == 0 {
		c.MaxSnapshotsInFlight = transport.DefaultMaxSnapshotsInFlight
	}
	if c.MaxConnStreams == 0 {
		c.MaxConnStreams = 1024
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	if c.DataDir == "" {
		return bad("--data-dir is required")
	}
	if c.PeerListener == nil {
		if err := checkHostPort(c.PeerAddr); err != nil {
			return bad("--peer-addr: %v", err)
		}
	}
	if err := c.validateMembership(bad); err != nil {
		return err
	}
	if c.ClientListener == nil {
		if err := checkHostPort(c.ClientAddr); err != nil {
			return bad("--client-addr: %v", err)
		}
	}
	if c.HTTPListener == nil {
		if err := checkHostPort(c.HTTPAddr); err != nil {
			return bad("--http-addr: %v", err)
		}
	}
	if c.DiscoveryInterval < 10*time.Millisecond || c.DiscoveryInterval > time.Minute {
		return bad("discovery interval %v outside 10ms..1m", c.DiscoveryInterval)
	}
	if c.BootstrapCheckWait < 10*time.Millisecond || c.BootstrapCheckWait > time.Minute {
		return bad("bootstrap check wait %v outside 10ms..1m", c.BootstrapCheckWait)
	}
	if c.GossipInterval < 10*time.Millisecond || c.GossipInterval > time.Minute {
		return bad("gossip interval %v outside 10ms..1m", c.GossipInterval)
	}
	if c.MoveCatchUp < time.Second || c.MoveCatchUp > time.Hour {
		return bad("move catch-up %v outside 1s..1h", c.MoveCatchUp)
	}
	if c.RebalanceInterval > 0 && (c.RebalanceInterval < 100*time.Millisecond || c.RebalanceInterval > time.Hour) {
		return bad("--rebalance-interval %v outside 100ms..1h (off: 0 on the command line, negative in Config)", c.RebalanceInterval)
	}
	if c.DeadAfter > 0 && (c.DeadAfter < time.Second || c.DeadAfter > 24*time.Hour) {
		return bad("--dead-after %v outside 1s..24h (negative: never)", c.DeadAfter)
	}
	if c.RangeMaxBytes > 0 && (c.RangeMaxBytes < 4<<10 || c.RangeMaxBytes > 64<<30) {
		return bad("--range-max-bytes %d outside 4KiB..64GiB", c.RangeMaxBytes)
	}
	if c.RangeMaxBytes > 0 && c.RangeMinBytes >= c.RangeMaxBytes {
		return bad("--range-min-bytes %d must be below --range-max-bytes %d", c.RangeMinBytes, c.RangeMaxBytes)
	}
	if c.RangeTick < 10*time.Millisecond || c.RangeTick > time.Minute {
		return bad("range tick %v outside 10ms..1m", c.RangeTick)
	}
	if (c.CertsDir == "") == !c.Insecure {
		if c.Insecure {
			return bad("--certs-dir and --insecure exclude each other")
		}
		return bad("no --certs-dir: give the directory of the cluster's certificates (flotilla cert), or --insecure to serve plaintext to anyone who can connect")
	}
	if c.CertReloadInterval < 10*time.Millisecond || c.CertReloadInterval > time.Hour {
		return bad("certificate reload interval %v outside 10ms..1h", c.CertReloadInterval)
	}
	if c.AuthRefresh < 10*time.Millisecond || c.AuthRefresh > time.Minute {
		return bad("auth refresh %v outside 10ms..1m", c.AuthRefresh)
	}
	if c.SnapshotRate > 0 && c.SnapshotRate < 1<<20 {
		return bad("--snapshot-rate %d B/s under 1MiB (negative: no bound)", c.SnapshotRate)
	}
	if c.CompactionDuty != 0 && !(c.CompactionDuty >= storage.MinCompactionDuty && c.CompactionDuty <= 1) {
		return bad("--compaction-duty %v outside %v..1", c.CompactionDuty, storage.MinCompactionDuty)
	}
	if c.MaxSnapshotsInFlight < 1 || c.MaxSnapshotsInFlight > 64 {
		return bad("--snapshots-in-flight %d outside 1..64", c.MaxSnapshotsInFlight)
	}
	if c.MaxConnStreams < 1 || c.MaxConnStreams > 1<<20 {
		return bad("--max-conn-streams %d outside 1..%d", c.MaxConnStreams, 1<<20)
	}
	return nil
}

// validateMembership checks how the node finds its cluster: as one of
// --initial-cluster, or by --join.
func (c *Config) validateMembership(bad func(string, ...any) error) error {
	if len(c.Join) > 0 {
		if len(c.InitialCluster) > 0 {
			return bad("--join and --initial-cluster exclude each other (--initial-cluster bootstraps a new cluster; --join enters a running one)")
		}
		for _, a := range c.Join {
			if err := checkHostPort(a); err != nil {
				return bad("--join: %v", err)
			}
		}
		if c.NodeID == 0 && !c.Insecure {
			return bad("--join with --certs-dir needs --id: the ID the node's certificate names")
		}
		if c.Groups != 0 && (c.Groups < 1 || c.Groups > MaxGroups) {
			return bad("--groups %d outside 1..%d", c.Groups, MaxGroups)
		}
		return c.validateReplicas(bad, true)
	}
	if c.NodeID == 0 {
		return bad("--id must be a positive integer")
	}
	if len(c.InitialCluster) == 0 {
		return bad("--initial-cluster or --join is required")
	}
	self, ok := c.InitialCluster[c.NodeID]
	if !ok {
		return bad("--id %d is not in --initial-cluster %s (a node joining a running cluster starts with --join)", c.NodeID, FormatInitialCluster(c.InitialCluster))
	}
	if c.PeerAddr != self {
		return bad("--peer-addr %q differs from node %d's entry %q in --initial-cluster", c.PeerAddr, c.NodeID, self)
	}
	if c.Groups < 1 || c.Groups > MaxGroups {
		return bad("--groups %d outside 1..%d", c.Groups, MaxGroups)
	}
	return c.validateReplicas(bad, false)
}

func (c *Config) validateReplicas(bad func(string, ...any) error, zeroOK bool) error {
	switch {
	case c.Replicas == 0 && zeroOK:
	case c.Replicas == 1, c.Replicas == 3, c.Replicas == 5, c.Replicas == 7:
	default:
		return bad("--replicas %d: want 1, 3, 5 or 7", c.Replicas)
	}
	return nil
}

// DefaultSnapshotRate is the default of Config.SnapshotRate
// (--snapshot-rate): 64 MiB/s, a quarter to a half of what one SSD
// writes, so that snapshots leave room for the writes of the ranges.
const DefaultSnapshotRate = 64 << 20

// DefaultRebalanceInterval is the default of Config.RebalanceInterval
// (--rebalance-interval). An idle, balanced cluster pays nothing for it: a
// pass over a view that has not changed since a pass that did nothing is
// skipped (settledLoop).
const DefaultRebalanceInterval = time.Second

// DefaultDeadAfter is the default of Config.DeadAfter (--dead-after).
const DefaultDeadAfter = 5 * time.Minute

// DefaultReplicas is the default of Config.Replicas.
const DefaultReplicas = 3

// Replicas returns the nodes holding group g in a cluster of nodes with
// replication factor factor: every node of a cluster of up to factor
// nodes, otherwise factor consecutive nodes in ID order starting at node
// index (g-1) mod n. The first is the group's preferred leader, so
// preferred leaders spread evenly over the nodes.
func Replicas(g uint64, nodes []uint64, factor int) []uint64 {
	n := len(nodes)
	if n == 0 || g == 0 || factor < 1 {
		return nil
	}
	r := min(n, factor)
	start := int((g - 1) % uint64(n))
	out := make([]uint64, r)
	for i := range r {
		out[i] = nodes[(start+i)%n]
	}
	return out
}
