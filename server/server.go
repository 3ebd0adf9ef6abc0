// Package server runs one Flotilla node: it wires the multiraft Host, the
// gRPC peer transport and one KV state machine per group, and serves the
// client API (gRPC), node discovery (gRPC, on the peer address) and the
// operator's HTTP endpoints.
//
// Goroutines. Each is a named loop started in Start and stopped in Shutdown
// or Stop:
//
//	serveLoop(peer)    serves the peer gRPC server (raft transport, Peer)
//	serveLoop(client)  serves the client gRPC server (KV, Cluster)
//	serveLoop(http)    serves HTTP
//	discoveryLoop      asks every peer for its addresses and leaders
//	gossipLoop         joins the gossip membership to the nodes it misses
//	                   and spreads this node's meta (gossip.go;
//	                   memberlist's own goroutines run beside it)
//	balanceLoop        hands leaderships away while this node leads more
//	                   than its share
//	evacuateLoop       moves the replicas of the ranges it leads off nodes
//	                   dead for --dead-after or decommissioning (dead.go)
//	rebalanceLoop      on the meta range's leader, evens out the members'
//	                   replica counts (rebalance.go; --rebalance-interval)
//	watchLoop          stops the node when the Host fails
//	leaseLoop          takes over the leases of groups this node comes to
//	                   lead and proposes the expiry of overdue ones
//	leaderWatchLoop    wakes requests waiting for their group's leader
//	                   (route.go)
//	rangeLoop          the ranges' work: split hooks, splits, the split
//	                   queue and meta repair (internal/ranges, Store.Run)
//	authLoop           rereads the user and role tables and the nodes'
//	                   membership records (authservice.go)
//	certReloadLoop     reloads changed certificate files (security.go)
//
// Lock order: Server.peers.mu, Server.fwd.mu, Server.authLoad.mu,
// Server.badTokens.mu, Server.membersMu, Server.incs.mu, Server.dirMu, Server.supersededAt, the lease loop's groupSet.mu, deadMoves.mu,
// leaderWatch.mu and a Batch
// stream's batchQueue.mu and opGroup.mu are leaves; none is held across an
// RPC, a raft call or any other blocking step.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"

	"github.com/flotilla/flotilla/api"
	"github.com/flotilla/flotilla/election"
	"github.com/flotilla/flotilla/internal/auth"
	"github.com/flotilla/flotilla/internal/gossip"
	"github.com/flotilla/flotilla/internal/ranges"
	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// Server is one running node. Create it with New, then Start; stop it with
// Shutdown (graceful) or Stop. Its methods are safe for concurrent use.
type Server struct {
	cfg       Config
	log       *slog.Logger
	clusterID uint64
	// infoBase: random per start, so that the versions of this node's
	// groups in discovery answers (groupsVersion) are not those of its
	// previous life, which its peers may still hold.
	infoBase uint64
	reg      *prometheus.Registry
	metrics  *serverMetrics

	store  *storage.Pebble
	tr     *transport.GRPCTransport
	host   *multiraft.Host
	ranges *ranges.Store // the local replicas of ranges
	// rangesReady is ranges once it exists, for the Host's hooks, which
	// may run before (the transport starts with the Host).
	rangesReady atomic.Pointer[ranges.Store]
	// dead is the set of nodes evacuateLoop found dead on its last pass (nil
	// map: none); read by nodeInfos, placeable and the range store
	// (ranges.Config.Dead).
	dead atomic.Pointer[map[uint64]bool]
	// gossipTr and gossip: the gossip membership (gossip.go), set by New.
	gossipTr *gossip.Transport
	gossip   *gossip.Members
	// members holds the nodes decommissioning or removed, with their
	// state, as last read from the meta range (decommission.go); nil map:
	// none. Replaced whole under membersMu (a leaf), read without it.
	members   atomic.Pointer[map[uint64]string]
	membersMu sync.Mutex
	// membersSeen: when this node first knew each node in members to be
	// leaving (membershipSettled). Guarded by membersMu.
	membersSeen map[uint64]time.Time
	// incarnation is this data directory's (incarnation.go); incs, the
	// nodes' as last read from the meta range.
	incarnation uint64
	incs        incarnations
	// dir is the node directory (directory.go): every node and its peer
	// address. Replaced whole under dirMu (a leaf), read without it.
	dir   atomic.Pointer[nodeDir]
	dirMu sync.Mutex
	// dirClosed: closeAll closed the directory's connections; no more
	// are added. Guarded by dirMu.
	dirClosed bool
	// dirMeta is this node's meta file as written (without Nodes), and
	// dirPersisted the joined nodes it last wrote into it: owned by New,
	// then by authLoop (persistNodes).
	dirMeta      meta
	dirPersisted map[uint64]string
	// drained holds the nodes marked drained, as last read from the meta
	// range (drained.go); nil map: none. Replaced whole, read without a
	// lock.
	drained atomic.Pointer[map[uint64]bool]
	// cache holds the descriptors of ranges this node learned from the
	// meta index, to route requests for keys it holds no replica of.
	cache kv.RangeCache

	lessor *election.Lessor // lease deadlines of the groups this node leads
	// leaseExp is the lease loop's expiry state; the ranges' lease hook
	// feeds it (kv.WithLeaseHook).
	leaseExp *leaseExpiry

	sec     *security                   // TLS material (security.go)
	authTab atomic.Pointer[auth.Tables] // users and roles last loaded (authservice.go)
	// authLoad single-flights the rereads a refusal forces (recheckAuth).
	authLoad struct {
		sync.Mutex
		running           chan struct{} // closed when the reread in progress ends; nil if none
		started, finished uint64        // rereads started; the last one finished
		linGen            uint64        // linearizable loads stored (a plain load older than one is dropped)
	}
	authAt atomic.Int64 // unix nanos when tables were last stored
	// badTokens remembers tokens the tables named nobody in, with the
	// tables that said so, so that repeating an unknown token forces no
	// reread until the tables change (authz.go). A leaf lock.
	badTokens struct {
		sync.Mutex
		m map[[32]byte]*auth.Tables
	}

	peerLis, clientLis, httpLis net.Listener
	peerSrv, clientSrv          *grpc.Server
	httpSrv                     *http.Server

	ctx       context.Context // cancelled when the loops must stop (with stopc)
	cancel    context.CancelFunc
	leaders   *leaderWatch  // wakes requests waiting for a leader (route.go)
	freezer   freezer       // holds requests while frozen (freeze.go)
	stopc     chan struct{} // closed when the loops must stop
	draining  chan struct{} // closed when Shutdown begins: Batch streams end
	stopOnce  sync.Once
	done      chan struct{} // closed when fully stopped
	wg        sync.WaitGroup
	shutting  atomic.Bool
	serveErr  atomic.Pointer[error]
	closeOnce sync.Once

	peers struct {
		sync.Mutex
		views map[uint64]*peerView
	}
	// supersededAt: when each peer's report was last searched for
	// replicas here its ranges superseded (notHeld, supersededDue). A
	// leaf, taken by the discovery loop only.
	supersededAt struct {
		sync.Mutex
		last map[uint64]time.Time
	}
	fwd struct {
		sync.Mutex
		conns map[string]*grpc.ClientConn
	}

	// watchIgnoreLeaders: watches go on whether their ranges have a leader
	// here or not. The naive watch of TestWatchLeavesCutOffNode's negative
	// control; set only by tests, before Start.
	watchIgnoreLeaders bool
}

// peerView is what this node last learned from one peer.
type peerView struct {
	info *api.NodeInfo
	// groups are the peer's replicas of the ranges this node held none of
	// when they were stored: every reader looks at the local replica of a
	// range first, and a copy per peer of every range held here too was
	// about 0.5 KiB of each replica's heap (two peers, BENCHMARKS.md,
	// "Quiescence: memory per idle replica").
	groups []*api.GroupInfo
	// sizes are the sizes of the ranges the peer leads and measured
	// (GroupInfo.Sized), held here or not: the rebalancer weighs them
	// (rangeSizes). One map entry per range the peer leads, where a copy
	// of every report was 0.5 KiB per replica.
	sizes map[uint64]uint64
	// removals is the range store's Removals when groups were stored: once
	// this node lost a replica, the next round asks for everything again
	// (that range may be among those left out).
	removals uint64
	// version is the peer's version of groups (InfoResponse.version); 0:
	// ask for all of them.
	version uint64
	// unchanged counts the answers in a row that said groups were
	// unchanged.
	unchanged int
	lastOK    time.Time
	ok        bool
	// failCode is the gRPC code of the last answer's error, already
	// logged (another code is logged again); codes.OK after an answer.
	failCode codes.Code
}

// New checks cfg and the data directory, opens storage, creates the
// transport and the Host and starts (or restarts) this node's replicas.
// Nothing is served until Start. On error everything opened is closed.
func New(cfg Config) (s *Server, err error) {
	cfg.setDefaults()
	if cfg.PeerListener != nil && cfg.PeerAddr == "" {
		cfg.PeerAddr = cfg.PeerListener.Addr().String()
	}
	if cfg.ClientListener != nil {
		cfg.ClientAddr = cfg.ClientListener.Addr().String()
	}
	if cfg.HTTPListener != nil {
		cfg.HTTPAddr = cfg.HTTPListener.Addr().String()
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s = &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.NodeID),
		infoBase:  rand.Uint64(),
		reg:       prometheus.NewRegistry(),
		stopc:     make(chan struct{}),
		draining:  make(chan struct{}),
		done:      make(chan struct{}),
		peerLis:   cfg.PeerListener,
		clientLis: cfg.ClientListener,
		httpLis:   cfg.HTTPListener,
		lessor:    election.NewLessor(nil),
		leaders:   newLeaderWatch(),
	}
	s.leaseExp = s.newLeaseExpiry()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.peers.views = make(map[uint64]*peerView)
	s.fwd.conns = make(map[string]*grpc.ClientConn)
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.metrics = newServerMetrics(s.reg)

	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return s, fmt.Errorf("server: data dir: %w", err)
	}
	if s.sec, err = newSecurity(&s.cfg); err != nil {
		return s, err
	}
	bootstrap, known, err := s.identify()
	if err != nil {
		return s, err
	}
	cfg = s.cfg // identify settles the node ID and the cluster's flags
	s.log = cfg.Logger.With("node", cfg.NodeID)
	if bootstrap {
		// A node whose data directory was lost must not vote again
		// under its ID (incarnation.go). Asked before this node opens
		// its storage (a refused start leaves the directory empty) and
		// listens (another node bootstrapping at once is refused a
		// connection, not kept waiting).
		if err := s.checkIncarnation(); err != nil {
			return s, err
		}
	}
	s.dir.Store(newNodeDir(map[uint64]string{cfg.NodeID: cfg.PeerAddr}, nil))
	if s.store, err = storage.OpenPebble(cfg.DataDir, storage.PebbleOptions{CompactionDuty: cfg.CompactionDuty}); err != nil {
		return s, err
	}
	s.reg.MustRegister(storageCollector{stats: s.store.Stats})
	if err := s.listen(); err != nil {
		return s, err
	}

	// Received snapshots are written here (transport/snapshot.go).
	snapDir := filepath.Join(cfg.DataDir, "snapshots")
	if err := os.MkdirAll(snapDir, 0o755); err != nil {
		return s, fmt.Errorf("server: snapshot dir: %w", err)
	}
	tcfg := transport.GRPCConfig{
		NodeID:      cfg.NodeID,
		ClusterID:   s.clusterID,
		PeerAddr:    cfg.PeerAddr,
		SnapshotDir: snapDir,
		// No bound below 0 (the transport's 0).
		SnapshotRate:         max(cfg.SnapshotRate, 0),
		MaxSnapshotsInFlight: cfg.MaxSnapshotsInFlight,
		TLS:                  s.sec.peerTLS(),
		CheckPeer:            s.sec.checkPeer(s.isNode),
		Registerer:           s.reg,
		Logger:               s.log,
	}
	s.peerSrv = grpc.NewServer(append(transport.ServerOptions(tcfg), s.sec.peerServerOption(),
		grpc.ChainUnaryInterceptor(s.freezer.unary, s.sec.peerMember(s.isNode)), grpc.ChainStreamInterceptor(s.freezer.stream))...)
	tcfg.Server = s.peerSrv
	if s.tr, err = transport.NewGRPC(tcfg); err != nil {
		return s, fmt.Errorf("server: transport: %w", err)
	}
	api.RegisterPeerServer(s.peerSrv, &peerService{s: s})
	if err := s.newGossip(); err != nil {
		return s, err
	}
	if _, err := s.addNodes(known); err != nil {
		return s, err
	}

	host, err := multiraft.NewHost(multiraft.Config{
		NodeID:          cfg.NodeID,
		Store:           s.store,
		Transport:       s.tr,
		TickInterval:    cfg.TickInterval,
		ElectionTicks:   cfg.ElectionTicks,
		HeartbeatTicks:  cfg.HeartbeatTicks,
		DisableSync:     cfg.DisableSync,
		Workers:         cfg.Workers,
		SnapshotEntries: cfg.SnapshotEntries,
		// Writes reach raft on the leader only (route.go): a follower
		// fails a stray proposal at once instead of forwarding it to a
		// leader that may drop it unseen, which made a write ambiguous.
		DisableProposalForwarding: true,
		Quiesce:                   !cfg.DisableQuiesce,
		// Announced by Start, once the node serves: its peers do not
		// count it live while it starts its ranges.
		Unannounced: true,
		UnknownGroup: func(g, from uint64) {
			if st := s.rangesReady.Load(); st != nil {
				st.UnknownGroup(g, from)
			}
		},
		Logger:     s.log,
		Registerer: s.reg,
	})
	if err != nil {
		return s, fmt.Errorf("server: %w", err)
	}
	s.host = host
	if err := s.startRanges(bootstrap); err != nil {
		return s, err
	}
	// Received snapshots a stop cut short, or that no range took, go;
	// one a range's raft state names stays: that range restores it when it
	// starts (now, or when the range is started later: ranges.Store
	// UnknownGroup). Nothing arrives before Start.
	if err := transport.CleanSnapshotDir(snapDir, func(group uint64, path string) bool {
		stored, ok := multiraft.StoredSnapshotFile(s.store, group)
		return ok && (stored == "" || filepath.Base(stored) == filepath.Base(path))
	}); err != nil {
		return s, fmt.Errorf("server: snapshot dir: %w", err)
	}
	if bootstrap {
		if err := writeHexFile(cfg.DataDir, incarnationFile, s.incarnation); err != nil {
			return s, err
		}
		if err := writeMeta(cfg.DataDir, s.dirMeta); err != nil {
			return s, err
		}
	}

	s.clientSrv = grpc.NewServer(
		grpc.MaxRecvMsgSize(kv.MaxValueSize+kv.MaxKeySize+64<<10),
		grpc.MaxSendMsgSize(64<<20),
		// Clients ping every 10s (their keepalive finds a frozen node's
		// connection dead); allow it even between calls.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// Per connection: a client past it waits on its own side (a flood
		// from one connection slows that connection only).
		grpc.MaxConcurrentStreams(uint32(cfg.MaxConnStreams)),
		s.sec.clientServerOption(),
		grpc.ChainUnaryInterceptor(s.freezer.unary, s.authUnary), grpc.ChainStreamInterceptor(s.freezer.stream, s.authStream),
	)
	api.RegisterKVServer(s.clientSrv, &kvService{s: s})
	api.RegisterAuthServer(s.clientSrv, &authService{s: s})
	api.RegisterClusterServer(s.clientSrv, &clusterService{s: s})
	api.RegisterElectionServer(s.clientSrv, &electionService{s: s})
	s.httpSrv = &http.Server{Handler: s.sec.httpGuard(s.httpHandler()), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	s.httpLis = s.sec.httpListener(s.httpLis)
	if err := s.startGossip(); err != nil {
		return s, err
	}
	return s, nil
}

func (s *Server) listen() error {
	var err error
	if s.peerLis == nil {
		if s.peerLis, err = net.Listen("tcp", s.cfg.PeerAddr); err != nil {
			return fmt.Errorf("server: --peer-addr: %w", err)
		}
	}
	if s.clientLis == nil {
		if s.clientLis, err = net.Listen("tcp", s.cfg.ClientAddr); err != nil {
			return fmt.Errorf("server: --client-addr: %w", err)
		}
	}
	if s.httpLis == nil {
		if s.httpLis, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
			return fmt.Errorf("server: --http-addr: %w", err)
		}
	}
	return nil
}

// holdBytes bounds the applied writes a node holds in memory before
// writing them to Pebble (kv.HoldBudget): 64 MiB.
const holdBytes = 64 << 20

// startRanges starts the local replica of every range this node holds. A
// new node (fresh: its data directory was just made) first bootstraps its
// replicas of the cluster's initial ranges (ranges.InitialRanges), and the
// preferred leader of each campaigns as its Host starts it (paced:
// multiraft.Config.MaxStartCampaigns) so that leaders start spread over
// the nodes. After a restart the node starts what its database holds:
// the ranges splits and merges made are not the initial ones.
func (s *Server) startRanges(fresh bool) error {
	cfg := ranges.Config{
		NodeID: s.cfg.NodeID,
		DB:     s.store.DB(),
		Host:   s.host,
		// One budget for the node's held writes (kv/dirty.go), whatever
		// the number of ranges.
		// The lease loop syncs only the groups whose lease table changed.
		Options:   []kv.Option{kv.WithHoldBudget(kv.NewHoldBudget(holdBytes)), kv.WithHistory(s.cfg.HistoryRetention)},
		LeaseHook: s.leaseExp.leasesChanged,
		// The cache holds the ranges with no replica here (startRanges):
		// one that leaves goes in it.
		MovedAway: func(d kv.Descriptor) { s.cache.Insert(d) },
		Env:       rangeEnv{s},
		MaxBytes:  max(s.cfg.RangeMaxBytes, 0),
		MinBytes:  max(s.cfg.RangeMinBytes, 0),
		Placeable: s.placeable,
		Dead: func(n uint64) bool {
			// A node leaving or removed counts so too: evacuateLoop
			// never finds a leaving node dead (its replicas are the
			// decommission's), and one down would hold a frozen range
			// for good (the review of this change).
			p := s.dead.Load()
			return (p != nil && (*p)[n]) || s.membership(n) != ""
		},
		// Subset merges (kv.StateMachineVersion 1): only with every
		// replica's node on a build that accepts them.
		SubsetMerge: func(nodes []uint64) bool { return s.runsVersion(nodes, 1) },
		SplitLoad:   max(s.cfg.RangeSplitLoad, 0),
		// Two raft ticks: the other replicas apply the split by then.
		CampaignRetry: 2 * s.cfg.TickInterval,
		MoveCatchUp:   s.cfg.MoveCatchUp,
		Replicas:      s.cfg.Replicas,
		Fatal: func(err error) {
			s.serveErr.CompareAndSwap(nil, &err)
			s.log.Error("ranges failed, stopping", "err", err)
			s.halt()
		},
		Logger: s.log,
	}
	if cfg.MaxBytes == 0 {
		cfg.MinBytes = 0
	}
	st, err := ranges.Open(cfg)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	s.ranges = st
	s.rangesReady.Store(st)
	if !fresh {
		return nil
	}
	initial := ranges.InitialRanges(s.cfg.Groups, func(id uint64) []uint64 {
		return Replicas(id, sortedIDs(s.cfg.InitialCluster), s.cfg.Replicas)
	})
	if err := st.Bootstrap(initial); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	// Each range's first replica campaigns as its Host starts it
	// (multiraft.GroupStart.Leader; paced: startcampaign.go). The cache
	// holds the ranges with no replica here: the others are found at their
	// replica first (rangeOf, descriptor). Cached too, they were 0.18 KiB
	// of each replica's memory at 10,000 ranges (BENCHMARKS.md,
	// "Quiescence: the idle floor and memory, later").
	elsewhere := slices.DeleteFunc(initial, func(d kv.Descriptor) bool { return d.HasReplica(s.cfg.NodeID) })
	s.cache.Insert(elsewhere...)
	return nil
}

// Start serves the peer, client and HTTP listeners and starts the
// background loops. It returns at once.
func (s *Server) Start() {
	s.goLoop(func() { s.serveLoop("peer", func() error { return s.peerSrv.Serve(s.peerLis) }) })
	s.goLoop(func() { s.serveLoop("client", func() error { return s.clientSrv.Serve(s.clientLis) }) })
	s.goLoop(func() { s.serveLoop("http", func() error { return s.httpSrv.Serve(s.httpLis) }) })
	s.host.Announce()
	s.goLoop(s.discoveryLoop)
	s.goLoop(s.gossipLoop)
	if s.cfg.BalanceInterval > 0 {
		s.goLoop(s.balanceLoop)
	}
	s.goLoop(s.evacuateLoop)
	if s.cfg.RebalanceInterval > 0 {
		s.goLoop(s.rebalanceLoop)
	}
	s.goLoop(s.watchLoop)
	s.goLoop(s.leaseLoop)
	s.goLoop(s.leaderWatchLoop)
	s.goLoop(func() { s.ranges.Run(s.stopc, s.cfg.RangeTick) }) // rangeLoop
	s.goLoop(s.authLoop)
	s.goLoop(func() { s.sec.run(s.stopc, s.cfg.CertReloadInterval) }) // certReloadLoop
	s.log.Info("node started", "cluster", fmt.Sprintf("%x", s.clusterID), "initial_ranges", s.cfg.Groups,
		"local_ranges", len(s.ranges.Replicas()), "peer_addr", s.cfg.PeerAddr, "client_addr", s.cfg.ClientAddr,
		"http_addr", s.cfg.HTTPAddr)
}

func (s *Server) goLoop(fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

// serveLoop runs one listener's server until it is stopped. A serve error
// other than a requested stop stops the node.
func (s *Server) serveLoop(name string, serve func() error) {
	err := serve()
	if err == nil || errors.Is(err, grpc.ErrServerStopped) || errors.Is(err, http.ErrServerClosed) || s.isStopping() {
		return
	}
	err = fmt.Errorf("server: serve %s: %w", name, err)
	s.serveErr.CompareAndSwap(nil, &err)
	s.log.Error("listener failed, stopping", "listener", name, "err", err)
	s.halt()
}

// watchLoop stops the node when the Host fails on its own (a storage or
// state machine error).
func (s *Server) watchLoop() {
	select {
	case <-s.stopc:
	case <-s.host.Done():
		if err := s.host.Err(); err != nil {
			s.serveErr.CompareAndSwap(nil, &err)
			s.log.Error("raft host failed, stopping", "err", err)
		}
		s.halt()
	}
}

func (s *Server) isStopping() bool {
	select {
	case <-s.stopc:
		return true
	default:
		return false
	}
}

func (s *Server) halt() {
	s.stopOnce.Do(func() {
		close(s.stopc)
		s.cancel()
	})
}

// Stopping is closed when the node begins to stop on its own (a failed
// listener or Host) or because Stop or Shutdown was called.
func (s *Server) Stopping() <-chan struct{} { return s.stopc }

// Err returns the error that made the node stop on its own, if any.
func (s *Server) Err() error {
	if e := s.serveErr.Load(); e != nil {
		return *e
	}
	return nil
}

// Shutdown stops the node gracefully: it hands the leadership of its
// groups to other live replicas (bounded by ctx), stops taking client
// requests, then stops raft, the transport and storage (flushed).
func (s *Server) Shutdown(ctx context.Context) error {
	if s.shutting.CompareAndSwap(false, true) {
		s.transferAll(ctx)
		close(s.draining) // long-lived Batch streams would hold GracefulStop
		stopped := make(chan struct{})
		go func() {
			s.clientSrv.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-ctx.Done():
			s.clientSrv.Stop()
			<-stopped
		}
	}
	return s.Stop()
}

// Stop stops the node at once, without moving leadership. Safe to call
// more than once; later calls wait for the first.
func (s *Server) Stop() error {
	s.shutting.Store(true)
	s.halt()
	var err error
	s.closeOnce.Do(func() {
		err = s.closeAll()
		close(s.done)
	})
	<-s.done
	return err
}

// closeAll releases everything New opened, in dependency order.
func (s *Server) closeAll() error {
	s.halt()
	if s.clientSrv != nil {
		s.clientSrv.Stop()
	}
	if s.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.httpSrv.Shutdown(ctx)
		cancel()
	}
	if s.host != nil {
		s.host.Stop()
	}
	if s.gossip != nil {
		s.gossip.Shutdown() // and its transport
	} else if s.gossipTr != nil {
		_ = s.gossipTr.Shutdown()
	}
	if s.peerSrv != nil {
		s.peerSrv.Stop()
	}
	if s.tr != nil {
		_ = s.tr.Close()
	}
	s.wg.Wait()
	// A handler still running (the servers do not wait for them) may add
	// nodes: it closes what it dialled once dirClosed is set.
	s.dirMu.Lock()
	s.dirClosed = true
	d := s.dir.Load()
	s.dirMu.Unlock()
	if d != nil {
		for _, c := range d.conns {
			c.Close()
		}
	}
	s.fwd.Lock()
	conns := s.fwd.conns
	s.fwd.conns = map[string]*grpc.ClientConn{}
	s.fwd.Unlock()
	for _, c := range conns {
		c.Close()
	}
	for _, l := range []net.Listener{s.peerLis, s.clientLis, s.httpLis} {
		if l != nil {
			l.Close()
		}
	}
	var err error
	if s.store != nil {
		if ferr := s.store.DB().Flush(); ferr != nil {
			err = fmt.Errorf("server: flush storage: %w", ferr)
		}
		if cerr := s.store.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("server: close storage: %w", cerr)
		}
	}
	return err
}

// Done is closed once the node has fully stopped.
func (s *Server) Done() <-chan struct{} { return s.done }

// NodeID returns this node's ID.
func (s *Server) NodeID() uint64 { return s.cfg.NodeID }

// ClusterID returns the cluster's ID.
func (s *Server) ClusterID() uint64 { return s.clusterID }

// ClientAddr returns the address the client API listens on.
func (s *Server) ClientAddr() string { return s.clientLis.Addr().String() }

// HTTPAddr returns the address HTTP listens on.
func (s *Server) HTTPAddr() string { return s.httpLis.Addr().String() }

// PeerAddr returns this node's peer address.
func (s *Server) PeerAddr() string { return s.cfg.PeerAddr }

// Host returns the node's raft host.
func (s *Server) Host() *multiraft.Host { return s.host }

// Faults returns the transport's fault hooks (demo and tests).
func (s *Server) Faults() *transport.Faults { return s.tr.Faults() }

// Registry returns the node's metrics registry.
func (s *Server) Registry() *prometheus.Registry { return s.reg }
