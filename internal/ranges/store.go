// Package ranges keeps a node's ranges: the replicas of the ranges the
// node holds, each a raft group on the node's multiraft Host with a kv
// StateMachine, found by key. It starts them from what the node's database
// holds, bootstraps a new cluster's initial ranges, and answers which local
// replica holds a key.
//
// The range model and its protocols are in docs/design.md ("The range
// model").
package ranges

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
	"go.etcd.io/raft/v3/raftpb"
)

// ErrConfig wraps every refusal of a Config.
var ErrConfig = errors.New("ranges: invalid config")

// Config configures a Store.
type Config struct {
	// NodeID is this node's ID. Required.
	NodeID uint64
	// DB is the node's Pebble database, shared with the Host's storage.
	// Required; the caller closes it after the Host stopped.
	DB *pebble.DB
	// Host runs the ranges' raft groups. Required.
	Host *multiraft.Host
	// Options are given to every kv.StateMachine the Store creates (a
	// shared hold budget, say). A hook among them (kv.WithLeaseHook)
	// makes every replica carry a copy of the Store's hooks (kv.WithHooks)
	// of its own: give the lease hook as LeaseHook.
	Options []kv.Option
	// LeaseHook, if set, is every state machine's lease hook
	// (kv.WithLeaseHook).
	LeaseHook func(id uint64)
	// MovedAway, if set, is called on the Store's loop with the
	// descriptor that took a replica off this node (a move), as the Store
	// removes it: the node can still tell where the range went (the
	// server's range cache holds no range with a replica here). It must
	// not block.
	MovedAway func(d kv.Descriptor)
	// Wrap, if set, wraps each state machine before it is handed to the
	// Host (the simulation records what replicas apply).
	Wrap func(*kv.StateMachine) multiraft.StateMachine
	// Env connects the Store to the rest of the node (env.go). Required
	// for splits, merges and replica creation; without it the Store only
	// starts and finds replicas.
	Env Env

	// MaxBytes: a range whose data passes it splits. 0 splits no range
	// by size. The server's default is 64 MiB (--range-max-bytes).
	MaxBytes int64
	// MinBytes: neighbouring ranges both below it may merge. 0 merges
	// none.
	MinBytes int64
	// Placeable reports whether a replica may be added on node: false for
	// a node the allocator moves replicas off (drained, leaving, dead). A
	// merge of neighbours on different nodes moves the left range's
	// replicas onto the right range's nodes first, and waits instead
	// while one of those is not placeable. Called on the Store's loop:
	// it must not block. nil: every node is.
	Placeable func(node uint64) bool
	// Dead reports whether node takes part no more: down for longer than
	// the cluster waits for a node's return (the server's --dead-after),
	// or leaving the cluster (decommissioning) or removed, up or down. A
	// merge counts it down as PeerDown does (also where this node has not
	// heard from it since it started: PeerDown then says nothing), and a
	// frozen range's merge leaves it out (alignForMerge). Called on the
	// Store's loop: it must not block. nil: none is.
	Dead func(node uint64) bool
	// SubsetMerge reports whether every node of nodes runs a build whose
	// state machine accepts a merge of a left range whose replicas are a
	// subset of its frozen right neighbour's (kv.StateMachineVersion 1 or
	// later): only then does a merge left unfinished take place on the
	// left range's replicas alone, leaving out the frozen range's replica
	// on a node that takes none (finishMerges). Called on the Store's
	// loop: it must not block. nil: never (a frozen range with a replica
	// on a node gone for good stays frozen until the node is back).
	SubsetMerge func(nodes []uint64) bool
	// SplitLoad: a range that serves more requests per second than this
	// (smoothed) for SplitLoadTicks ticks in a row splits by load. 0 turns
	// load-based splitting off.
	SplitLoad float64
	// SplitLoadTicks: how many ticks in a row a range must be over
	// SplitLoad. Default 2.
	SplitLoadTicks int
	// LoadHalfLife: how fast a range's load (Load: what the merge queue
	// calls cold, and the load nodes report) follows a change, as the
	// half-life of its smoothing. Not negative; 0: the default, 2s. The
	// simulation shortens it, so that ranges cool within its runs.
	LoadHalfLife time.Duration
	// MergeCooldownTicks: a range merges no sooner than this many ticks
	// after it split (or was made by a split), so that a split by load is
	// not undone while its load settles. Not negative; 0: the default, 20
	// (10 s at the server's 500ms tick).
	MergeCooldownTicks int
	// CampaignRetry: how long a node that campaigned for a range a split
	// made waits for a leader before it campaigns again. Default 200ms;
	// a few raft ticks.
	CampaignRetry time.Duration
	// Replicas is the replication factor: a learner left by a move cut
	// short is promoted only while its range has fewer voters
	// (finishLearners), else removed. 0: no bound.
	Replicas int
	// MoveCatchUp: how long a replica move waits for its learner to catch
	// up before it removes it again, and how long a learner no move here
	// owns may stay before the range's leader finishes it
	// (finishLearners). Default 1m.
	MoveCatchUp time.Duration
	// MetaRepairTicks: every this many ticks the leader of each range
	// checks that the meta index holds its descriptor. Default 5; negative
	// turns the repair off.
	MetaRepairTicks int
	// LoseMetaUpdates makes the Store skip every meta index update and
	// repair: a planted bug for the simulation, which must catch it.
	LoseMetaUpdates bool
	// SkipMergeWait makes a merge skip its wait for the right-hand range's
	// replicas to apply the freeze: a planted bug for the simulation.
	SkipMergeWait bool
	// FailPoint, if set, is called between the steps of a split and a
	// merge with the step's name (FailSplitAllocated, ...); an error ends
	// the operation there, as if the node died (the simulation then
	// crashes it). Nil in production. Called on the Store's loop; must not
	// block.
	FailPoint func(name string) error

	// Fatal is called when the Store cannot go on (a range made by a split
	// cannot start): the node must stop. Default: log and panic.
	Fatal func(error)
	// Logger receives the Store's logs. Default slog.Default().
	Logger *slog.Logger
}

func (c *Config) validate() error {
	switch {
	case c.NodeID == 0:
		return fmt.Errorf("%w: node ID 0", ErrConfig)
	case c.DB == nil || c.Host == nil:
		return fmt.Errorf("%w: DB and Host are required", ErrConfig)
	case c.MaxBytes < 0 || c.MinBytes < 0 || c.SplitLoad < 0:
		return fmt.Errorf("%w: negative size or load threshold", ErrConfig)
	case c.LoadHalfLife < 0:
		return fmt.Errorf("%w: negative load half-life %v", ErrConfig, c.LoadHalfLife)
	case c.MergeCooldownTicks < 0:
		return fmt.Errorf("%w: negative merge cooldown of %d ticks", ErrConfig, c.MergeCooldownTicks)
	case c.MaxBytes > 0 && c.MinBytes >= c.MaxBytes:
		return fmt.Errorf("%w: range min bytes %d not below max bytes %d", ErrConfig, c.MinBytes, c.MaxBytes)
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.SplitLoadTicks == 0 {
		c.SplitLoadTicks = 2
	}
	if c.MetaRepairTicks == 0 {
		c.MetaRepairTicks = 5
	}
	if c.LoadHalfLife == 0 {
		c.LoadHalfLife = 2 * time.Second
	}
	if c.MergeCooldownTicks == 0 {
		c.MergeCooldownTicks = 20
	}
	if c.CampaignRetry == 0 {
		c.CampaignRetry = 200 * time.Millisecond
	}
	if c.MoveCatchUp == 0 {
		c.MoveCatchUp = time.Minute
	}
}

// Replica is this node's replica of one range.
type Replica struct {
	ID uint64
	SM *kv.StateMachine

	// Owned by the Store's loop: the split queue's state (queueState),
	// the load sample (load.go; written under load.mu), and what the
	// periodic scans last found (scanState).
	q    *queueState
	load *loadStat
	scan scanState
	// walked: the replica is in Store.walk.
	walked bool
	// size is the split queue's last measurement of the range's data on
	// this node, plus one; 0: not measured here. Written on the Store's
	// loop, and only while this node leads the range; read by any
	// goroutine (Size).
	size atomic.Uint64
}

// Size returns the last measurement of the range's data (its keys' and
// values' bytes) that this node made while it led the range, and whether
// there is one. The split queue measures a range it leads when it starts
// leading it, after each split, merge or move (a new descriptor
// generation), and once MaxBytes/8 bytes have been put since; so the size
// may lag the range's by that much. Deletes are not counted: a range
// emptied by deletes keeps its size until one of the above. A replica
// this node no longer leads keeps its last size (only the leader's is
// reported: server describeGroups). Safe for any goroutine.
func (r *Replica) Size() (uint64, bool) {
	n := r.size.Load()
	return n - 1, n > 0
}

// touched is every state machine's activity hook: range id applied or
// answered something. Called on the replica's worker; it does not block.
func (s *Store) touched(id uint64) {
	s.active.Lock()
	s.active.ids = append(s.active.ids, id)
	s.active.Unlock()
}

// Descriptor returns the replica's descriptor as applied here; false for a
// replica that waits for its first snapshot.
func (r *Replica) Descriptor() (*kv.Descriptor, bool) { return r.SM.Descriptor() }

// Store is one node's set of range replicas. Safe for concurrent use.
//
// Work that hooks and callbacks hand over runs on the Store's loop, one
// task at a time (env.go): Run in the server, RunPending in the
// simulation.
//
// Lock order: indexMu before mu; mu, active, tasks.mu and load.mu are leaves; none is held across a
// call into the Host or the Env.
type Store struct {
	cfg Config
	log *slog.Logger
	env Env
	// hooks are every replica's state machine hooks (kv.WithHooks); set
	// by Open, read-only after.
	hooks *kv.Hooks

	mu struct {
		sync.RWMutex
		replicas map[uint64]*Replica
		// busy: ranges splitting or merging from this node.
		busy map[uint64]bool
		// announced: ranges a split here made, whose replicas are not
		// started yet (onSplit does): their spans are held here already
		// (holding), though no replica serves them yet.
		announced map[uint64]kv.Descriptor
		// leftRefused: ranges UnknownGroup refused for what they left
		// here (leftBlockers), logged once.
		leftRefused map[uint64]bool
		// removing: ranges whose replica here is being removed, with
		// their spans, until its state is deleted: UnknownGroup starts no
		// replica of them, nor of a range over part of their spans,
		// meanwhile (the deletion would take its state with it).
		removing map[uint64]kv.Descriptor
	}
	tasks   tasks
	metrics storeMetrics
	// Owned by the loop.
	ticks uint64
	// mergeScan, repairScan, splitScan: where the next window of the
	// merge scan, the repair scans and the split checks starts in Replicas
	// (window).
	mergeScan, repairScan, splitScan int
	// mergeScans counts the scans of a range's data the merge queue made
	// (mergeBytes); read by tests.
	mergeScans int
	queue      map[uint64]*queueState
	revoking   map[[2]uint64]bool // (owner range, lease) revocations under way
	// order is every replica by ascending ID (Replicas), replaced under
	// mu.Lock whenever one starts or goes; readers take no lock.
	order atomic.Pointer[[]*Replica]
	// removals counts the replicas destroyed (Removals).
	removals atomic.Uint64
	// sized counts the measurements that changed a replica's Size
	// (SizesVersion).
	sized atomic.Uint64
	// index is the initialized replicas sorted by the start of their span,
	// rebuilt whenever a descriptor changes (copy on write); readers take
	// no lock. It may lag a change by a moment: Lookup checks what it finds.
	index atomic.Pointer[[]*Replica]
	// indexMu serializes rebuilds of index (reindex); held across mu.
	indexMu sync.Mutex
	// active: the ranges whose replicas applied or answered something
	// since the loop last looked (kv.WithActivityHook); mu is a leaf.
	active struct {
		sync.Mutex
		ids []uint64
	}
	// walk is the replicas the tick looks at (queue.go), owned by the
	// loop: those active lately, until their load decayed to nothing.
	walk []*Replica

	load loadTracker
}

// Open returns the Store of the node and starts a replica of every range
// the database has state for.
func Open(cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Store{cfg: cfg, log: cfg.Logger, env: cfg.Env}
	s.hooks = &kv.Hooks{
		Descriptor: s.descriptorChanged,
		Leases:     cfg.LeaseHook,
		Active:     s.touched,
		Split: func(left, right kv.Descriptor, committed bool) {
			if !committed {
				s.announce(right)
				return
			}
			s.enqueue(func() { s.onSplit(left, right) })
		},
		SnapshotGate: s.acceptSnapshot,
	}
	s.tasks.wake = make(chan struct{}, 1)
	s.mu.replicas = make(map[uint64]*Replica)
	s.mu.busy = make(map[uint64]bool)
	s.mu.announced = make(map[uint64]kv.Descriptor)
	s.mu.leftRefused = make(map[uint64]bool)
	s.mu.removing = make(map[uint64]kv.Descriptor)
	s.index.Store(&[]*Replica{})
	s.order.Store(&[]*Replica{})
	// Replicas merged into another range whose removal a stop cut short:
	// remove them now.
	merged, err := kv.MergedReplicas(cfg.DB)
	if err != nil {
		return nil, fmt.Errorf("ranges: list merged replicas: %w", err)
	}
	for _, id := range merged {
		b := cfg.Host.Store().NewBatch()
		b.DeleteGroup(id)
		err := b.Commit(true)
		b.Close()
		if err == nil {
			err = kv.DestroyReplica(cfg.DB, id)
		}
		if err != nil {
			return nil, fmt.Errorf("ranges: remove merged replica of range %d: %w", id, err)
		}
	}
	ds, err := kv.LocalDescriptors(cfg.DB)
	if err != nil {
		return nil, fmt.Errorf("ranges: list local ranges: %w", err)
	}
	if ds, err = s.finishRemovals(ds); err != nil {
		return nil, err
	}
	starts := make([]replicaStart, len(ds))
	for i := range ds {
		starts[i] = replicaStart{id: ds[i].ID, members: ds[i].Replicas}
	}
	pending, err := s.pendingRestores(ds)
	if err != nil {
		return nil, err
	}
	starts = append(starts, pending...)
	if _, err := s.startReplicas(starts); err != nil {
		return nil, err
	}
	s.started()
	return s, nil
}

// finishRemovals finishes the removals of moved replicas that a stop cut
// short: a replica of ds whose tombstone is at least as new as its
// descriptor (destroyMoved writes it first), or whose descriptor leaves
// this node out (it applied its removal), loses its raft state but its
// term and vote, and its own state, as destroyMoved would have done. It
// returns the rest of ds. Started instead, the replica would have its
// raft log made up again from its state machine's applied index, at a
// term no leader used, and a commit index that misleads its leader (the
// simulation found a leader stuck sending it the same entries).
func (s *Store) finishRemovals(ds []kv.Descriptor) ([]kv.Descriptor, error) {
	var out []kv.Descriptor
	type removed struct {
		d   *kv.Descriptor
		gen uint64
	}
	var gone []removed
	for i := range ds {
		d := &ds[i]
		tomb, ok, err := kv.Tombstone(s.cfg.DB, d.ID)
		if err != nil {
			return nil, fmt.Errorf("ranges: tombstone of range %d: %w", d.ID, err)
		}
		switch {
		case ok && tomb >= d.Generation:
			gone = append(gone, removed{d, tomb})
		case !d.HasReplica(s.cfg.NodeID):
			// It applied its own removal (the descriptor is synced with
			// it) and the node stopped before destroyMoved wrote the
			// tombstone.
			gone = append(gone, removed{d, d.Generation})
		default:
			out = append(out, *d)
		}
	}
	for _, g := range gone {
		d := g.d
		s.log.Info("finishing the removal of a moved replica", "group", d.ID, "desc", d.String(), "removed_by", g.gen)
		if err := kv.WriteTombstone(s.cfg.DB, d.ID, g.gen); err != nil {
			return nil, fmt.Errorf("ranges: record the removal of range %d's replica: %w", d.ID, err)
		}
		if err := s.dropRaftState(d.ID); err != nil {
			return nil, err
		}
		keep := slices.ContainsFunc(out, func(o kv.Descriptor) bool { return o.Overlaps(d.Start, d.End) })
		if err := kv.DestroyMovedReplica(s.cfg.DB, d, g.gen, keep); err != nil {
			return nil, fmt.Errorf("ranges: remove the moved replica of range %d: %w", d.ID, err)
		}
	}
	return out, nil
}

// dropRaftState deletes range id's raft state here but its term and vote
// (multiraft.Host.RemoveReplicaAsync), for a replica that is not running.
func (s *Store) dropRaftState(id uint64) error {
	st := s.cfg.Host.Store()
	gs, err := st.Load(id)
	if err != nil {
		return fmt.Errorf("ranges: load raft state of range %d: %w", id, err)
	}
	b := st.NewBatch()
	defer b.Close()
	b.DeleteGroup(id)
	if hs := gs.HardState; hs.Term != 0 || hs.Vote != 0 {
		b.SetHardState(id, raftpb.HardState{Term: hs.Term, Vote: hs.Vote})
	}
	if err := b.Commit(true); err != nil {
		return fmt.Errorf("ranges: delete raft state of range %d: %w", id, err)
	}
	return nil
}

// pendingRestores returns the ranges whose raft state here holds a
// snapshot that names this node but that have no descriptor here (ds):
// raft recorded the snapshot, and the node stopped before the range's
// restore of it was durable. They start with the others, and restore it
// then, unless a range of a generation at least theirs holds part of
// their span. Left unstarted until their leader's next message
// (UnknownGroup), they held no span meanwhile, a newer range was started
// over part of theirs, and their restore and replay then wrote their
// older keys over its own (the simulation, seed 290 with two catch-ups
// at once: see leftBlockers).
func (s *Store) pendingRestores(ds []kv.Descriptor) ([]replicaStart, error) {
	store := s.cfg.Host.Store()
	groups, err := store.Groups()
	if err != nil {
		return nil, fmt.Errorf("ranges: list raft groups: %w", err)
	}
	have := make(map[uint64]bool, len(ds))
	for i := range ds {
		have[ds[i].ID] = true
	}
	var out []replicaStart
	for _, g := range groups {
		if have[g] {
			continue
		}
		st, err := store.Load(g)
		if err != nil {
			return nil, fmt.Errorf("ranges: load raft state of range %d: %w", g, err)
		}
		if len(st.Snapshot.Data) == 0 {
			continue
		}
		d, err := kv.SnapshotDescriptor(st.Snapshot.Data)
		if err != nil || d.ID != g || !d.HasReplica(s.cfg.NodeID) {
			continue
		}
		if tomb, ok, err := kv.Tombstone(s.cfg.DB, g); err != nil {
			return nil, fmt.Errorf("ranges: tombstone of range %d: %w", g, err)
		} else if ok && d.Generation <= tomb {
			// A snapshot of the range from before this node's replica
			// was removed: never restored (UnknownGroup's rule), and
			// gone, so that a replica moved back starts empty.
			s.log.Info("dropping a removed replica's snapshot", "group", g, "desc", d.String(), "removed_by", tomb)
			if err := s.dropRaftState(g); err != nil {
				return nil, err
			}
			continue
		}
		// Its restore is not gated (multiraft.SnapshotGate gates received
		// snapshots): if a range here of its generation or a later one
		// holds part of its span, the restore would write older keys over
		// that range's, and it stays unstarted (UnknownGroup refuses it
		// too: leftBlockers). A range of an earlier generation over its
		// span (one that has not applied the splits it came from) does
		// not stop it: it started so before, through UnknownGroup, and
		// the simulation's seed 290 needs it to start (left unstarted,
		// the ranges split off later hold its span, and it never starts).
		if i := slices.IndexFunc(ds, func(o kv.Descriptor) bool {
			return o.Overlaps(d.Start, d.End) && o.Generation >= d.Generation
		}); i >= 0 {
			s.log.Warn("not starting a range whose raft state holds a snapshot over another range's span",
				"group", g, "desc", d.String(), "overlaps", ds[i].String())
			continue
		}
		s.log.Info("starting a range to restore the snapshot its raft state holds", "group", g, "desc", d.String())
		out = append(out, replicaStart{id: g})
	}
	return out, nil
}

// Bootstrap creates the replicas this node holds of a new cluster's
// initial ranges, all (which must tile the keyspace) in key order, and
// starts them. It does nothing for a range that already has state here.
func (s *Store) Bootstrap(all []kv.Descriptor) error {
	var mine []kv.Descriptor
	for i := range all {
		d := &all[i]
		if !d.HasReplica(s.cfg.NodeID) {
			continue
		}
		if _, ok := s.Get(d.ID); ok {
			continue
		}
		mine = append(mine, *d)
	}
	if err := kv.BootstrapMany(s.cfg.DB, mine, all); err != nil {
		return fmt.Errorf("ranges: bootstrap %d ranges: %w", len(mine), err)
	}
	starts := make([]replicaStart, len(mine))
	for i := range mine {
		// The first replica is the preferred leader, which campaigns
		// as it starts (paced by the Host); the others wait for it
		// quiesced.
		starts[i] = replicaStart{id: mine[i].ID, members: mine[i].Replicas, leader: mine[i].Replicas[0]}
	}
	if _, err := s.startReplicas(starts); err != nil {
		return err
	}
	// The meta index of every initial range is part of the meta range's
	// initial state, the same on each of its replicas (kv.BootstrapMany):
	// found right by construction, it is not read back until
	// metaRecheckTicks from now. Reading it back, 10,000 ranges in turn,
	// was most of an idle node's CPU for the minute after a start
	// (BENCHMARKS.md, "Quiescence: the idle floor").
	for i := range mine {
		if r, ok := s.Get(mine[i].ID); ok {
			r.scan.metaGen, r.scan.metaAt = mine[i].Generation, s.ticks
		}
	}
	// The bootstrap's batches are large: Pebble keeps each in memory, as
	// a flushable batch, until a flush, and a node that writes little
	// after its start would hold them for long (they showed in the heap
	// profiles of 10,000 idle ranges). Flushed once, here, if there was
	// anything to write.
	if len(mine) > 0 {
		if err := s.cfg.DB.Flush(); err != nil {
			return fmt.Errorf("ranges: bootstrap %d ranges: flush: %w", len(mine), err)
		}
	}
	s.started()
	return nil
}

// InitialRanges returns the descriptors of a new cluster of n ranges
// (kv.InitialSplits) whose replicas are given by replicas.
func InitialRanges(n int, replicas func(id uint64) []uint64) []kv.Descriptor {
	splits := kv.InitialSplits(n)
	out := make([]kv.Descriptor, 0, n)
	var start []byte
	for i := 0; i < n; i++ {
		var end []byte
		if i < len(splits) {
			end = splits[i]
		}
		id := uint64(i + 1)
		out = append(out, kv.Descriptor{ID: id, Start: start, End: end, Replicas: replicas(id), Generation: 1, Sticky: i > 0})
		start = end
	}
	return out
}

// start opens range id's state machine and starts its group: with
// members, a range that has state here (or the initial state of a split);
// without, an empty replica that waits for a snapshot.
func (s *Store) start(id uint64, members []uint64) (*Replica, error) {
	return s.startWith(replicaStart{id: id, members: members})
}

// startWith is start for rs.
func (s *Store) startWith(rs0 replicaStart) (*Replica, error) {
	id := rs0.id
	rs, err := s.startReplicas([]replicaStart{rs0})
	if err != nil {
		return nil, err
	}
	// A range made here by a split may supersede a replica that merged
	// away before this node applied the merge (blockers).
	s.enqueue(func() { s.reconcile(id) })
	s.reindex()
	return rs[0], nil
}

// started follows the start of many replicas at once (startReplica, by
// Open and Bootstrap): one reindex, and a reconcile of each replica whose
// span another's shares. Per replica, as start does, this was cubic in
// the replicas: 10,000 initial ranges did not finish starting in minutes.
// A replica that shares no key with another supersedes nothing and is
// superseded by nothing (supersedes), so only the shared ones need one.
func (s *Store) started() {
	for _, c := range s.reindex() {
		for _, r := range c {
			id := r.ID
			s.enqueue(func() { s.reconcile(id) })
		}
	}
}

// replicaStart names a replica to start: start's arguments.
type replicaStart struct {
	id      uint64
	members []uint64
	leader  uint64 // multiraft.GroupStart.Leader
	noVote  bool   // multiraft.GroupStart.NoVoteWhileEmpty
}

// startReplicas is start for each of rs without the reindex and reconcile
// that follow it; the Host starts their groups together
// (multiraft.Host.StartGroups: one sync for the new ones).
func (s *Store) startReplicas(rs []replicaStart) ([]*Replica, error) {
	out := make([]*Replica, len(rs))
	gs := make([]multiraft.GroupStart, len(rs))
	for i, st := range rs {
		id, members := st.id, st.members
		opts := append(slices.Clone(s.cfg.Options), kv.WithHooks(s.hooks))
		sm, err := kv.New(s.cfg.DB, id, opts...)
		if err != nil {
			return nil, err
		}
		if d, ok := sm.Descriptor(); ok && members == nil {
			// It has state after all: a split here made it (and its hook
			// has not started it yet). Start it as the split would.
			members = d.Replicas
		}
		var wrapped multiraft.StateMachine = sm
		if s.cfg.Wrap != nil {
			wrapped = s.cfg.Wrap(sm)
		}
		out[i] = &Replica{ID: id, SM: sm}
		gs[i] = multiraft.GroupStart{ID: id, Members: members, SM: wrapped, Leader: st.leader, NoVoteWhileEmpty: st.noVote}
	}
	// Known to the Store (Lookup) only once the Host runs them: a request
	// routed to one before would find no group.
	if err := s.cfg.Host.StartGroups(gs); err != nil {
		if len(gs) == 1 {
			return nil, fmt.Errorf("ranges: start range %d: %w", gs[0].ID, err)
		}
		return nil, fmt.Errorf("ranges: start %d ranges: %w", len(gs), err)
	}
	s.mu.Lock()
	for _, r := range out {
		s.mu.replicas[r.ID] = r
	}
	s.reorderLocked()
	s.mu.Unlock()
	return out, nil
}

// reorderLocked rebuilds order from mu.replicas. s.mu must be held for
// writing.
func (s *Store) reorderLocked() {
	order := make([]*Replica, 0, len(s.mu.replicas))
	for _, r := range s.mu.replicas {
		order = append(order, r)
	}
	slices.SortFunc(order, func(a, b *Replica) int { return cmp.Compare(a.ID, b.ID) })
	s.order.Store(&order)
}

// descriptorChanged is every state machine's descriptor hook: a replica's
// span changed (or it was initialized). Called on the replica's worker; it
// must not block.
func (s *Store) descriptorChanged(id uint64) {
	s.reindex()
	s.enqueue(func() { s.reconcile(id) })
}

// reindex rebuilds the index of initialized replicas by span. A replica
// another replica here supersedes (blockers) is left out: it merged away,
// and is being removed. It returns the groups of replicas whose spans
// share keys (overlaps), each of two or more.
//
// It takes O(n log n) in the replicas: sorted by start, the replicas fall
// into runs whose spans chain together by shared keys, and only within a
// run of two or more can one supersede another (supersedes needs a shared
// key). Runs are short: a split or merge not applied here yet.
func (s *Store) reindex() (overlaps [][]*Replica) {
	// Serialized, so that of two rebuilds racing (descriptor hooks run on
	// the replicas' workers) the later one's view is the one stored.
	s.indexMu.Lock()
	defer s.indexMu.Unlock()
	all := s.initialized()
	slices.SortFunc(all, func(a, b spanned) int {
		if c := bytes.Compare(a.d.Start, b.d.Start); c != 0 {
			return c
		}
		return cmp.Compare(a.r.ID, b.r.ID)
	})
	idx := make([]*Replica, 0, len(all))
	for i := 0; i < len(all); {
		// all[i:j] is a run: each span starts before the furthest end
		// of those before it in the run.
		end, j := all[i].d.End, i+1
		for ; j < len(all) && (len(end) == 0 || bytes.Compare(all[j].d.Start, end) < 0); j++ {
			if len(all[j].d.End) == 0 || (len(end) != 0 && bytes.Compare(all[j].d.End, end) > 0) {
				end = all[j].d.End
			}
		}
		if j == i+1 {
			idx = append(idx, all[i].r)
			i = j
			continue
		}
		run := make([]*Replica, 0, j-i)
		for _, sp := range all[i:j] {
			run = append(run, sp.r)
		}
		for _, r := range run {
			if s.supersededIn(r, run) == nil {
				idx = append(idx, r)
			}
		}
		overlaps = append(overlaps, run)
		i = j
	}
	s.index.Store(&idx)
	return overlaps
}

// supersededIn returns the replica of all whose descriptor supersedes r
// (blockers), if any: r is then obsolete here (merged away).
func (s *Store) supersededIn(r *Replica, all []*Replica) *Replica {
	for _, o := range all {
		if od, ok := o.Descriptor(); ok && o != r && replicaSupersedes(od, r) {
			return o
		}
	}
	return nil
}

// reconcile removes the replicas here that range id's replica supersedes
// (blockers): a range merged into it, or one its snapshot subsumed
// (acceptSnapshot). Runs on the loop.
func (s *Store) reconcile(id uint64) {
	owner, ok := s.Get(id)
	if !ok {
		return
	}
	od, ok := owner.Descriptor()
	if !ok {
		return
	}
	if !od.HasReplica(s.cfg.NodeID) {
		// This replica applied its own removal (a replica move).
		s.destroyMoved(owner, fmt.Sprintf("removed from the range (%v)", od), od)
		return
	}
	all := s.holding(nil, nil)
	// Only a replica that shares a key with od can be superseded by it;
	// and only a frozen one is kept for a merge. Both in ID order (the
	// simulation replays it), without sorting every replica: this runs
	// for each range a split or merge touches, at 10,000 ranges too.
	var overlap, frozen []*Replica
	for _, h := range all {
		if h.r == nil || h.id == id {
			continue
		}
		if h.desc.Overlaps(od.Start, od.End) {
			overlap = append(overlap, h.r)
		}
		if h.frozen {
			frozen = append(frozen, h.r)
		}
	}
	byID := func(a, b *Replica) int { return cmp.Compare(a.ID, b.ID) }
	slices.SortFunc(overlap, byID)
	slices.SortFunc(frozen, byID)
	for _, r := range overlap {
		if replicaSupersededHere(id, od, r, all) {
			s.destroySuperseded(r, od, fmt.Sprintf("range %d supersedes it (%v)", id, od))
		}
	}
	// A frozen replica kept for a merge here (mergePending) goes once no
	// replica here may apply that merge any more: the change that made
	// it so may be another range's (the merger's snapshot past it).
	for _, r := range frozen {
		for _, h := range all {
			if h.r != nil && h.id != r.ID && replicaSupersededHere(h.id, h.desc, r, all) {
				s.destroySuperseded(r, h.desc, fmt.Sprintf("range %d supersedes it (%v)", h.id, h.desc))
				break
			}
		}
	}
}

// Removals counts the replicas removed from this node so far: a reader
// that keeps what it knows of only the ranges this node does not hold
// (the server's views of its peers) sees from it that the set shrank, and
// that it must learn again of the ranges it lost. Safe from any goroutine.
func (s *Store) Removals() uint64 { return s.removals.Load() }

// SizesVersion moves whenever a replica's Size changes: a reader that
// reported the sizes (the server's discovery answers) knows from it that
// they are stale. Safe from any goroutine.
func (s *Store) SizesVersion() uint64 { return s.sized.Load() }

// destroy removes replica r from the node: it stops applying, the Host
// removes its group and raft state, then its own state is deleted (not the
// data of its span, which the range that holds it now owns).
func (s *Store) destroy(r *Replica, why string) {
	s.remove(r, why, false, func() error { return kv.DestroyReplica(s.cfg.DB, r.ID) })
}

// destroySuperseded is destroy for a replica another range here supersedes
// (reconcile): its range merged away, and its ID never holds data again.
// It first leaves a tombstone of the superseding generation, so that a
// stale message of the range (a peer that had not applied the merge yet)
// does not start an empty replica of it here again (UnknownGroup), which
// no snapshot would ever fill: the simulation found one waiting for ever
// after its node's replica of the merged range moved away.
func (s *Store) destroySuperseded(r *Replica, by *kv.Descriptor, why string) {
	// The superseding descriptor's generation: above every generation
	// range r ever had, also those this replica, behind, never applied (a
	// merge's generation is above both ranges'; kv applyMerge).
	removedBy := by.Generation
	if d, ok := r.Descriptor(); ok {
		removedBy = max(removedBy, d.Generation)
	}
	gen, tomb, err := kv.Tombstone(s.cfg.DB, r.ID)
	if err == nil && (!tomb || gen < removedBy) {
		err = kv.WriteTombstone(s.cfg.DB, r.ID, removedBy)
	}
	if err != nil {
		s.fatal(fmt.Errorf("ranges: record the removal of range %d's replica: %w", r.ID, err))
		return
	}
	s.destroy(r, why)
}

// destroyMoved removes replica r, which left this node (a replica move)
// by the descriptor by, as destroy does, and its span's data too unless a
// range here holds part of it by then; it leaves a tombstone
// (kv.DestroyMovedReplica) that UnknownGroup heeds.
func (s *Store) destroyMoved(r *Replica, why string, by *kv.Descriptor) {
	removedBy := by.Generation
	d, ok := r.Descriptor()
	if !ok {
		s.destroy(r, why)
		return
	}
	span := d.Clone()
	// The tombstone first: a stop between the raft state's removal and
	// the state machine's must not start the replica again (Open).
	if err := kv.WriteTombstone(s.cfg.DB, r.ID, removedBy); err != nil {
		s.fatal(fmt.Errorf("ranges: record the removal of range %d's replica: %w", r.ID, err))
		return
	}
	s.metrics.movedAway.Add(1)
	if s.cfg.MovedAway != nil {
		s.cfg.MovedAway(by.Clone())
	}
	s.remove(r, why, true, func() error {
		return kv.DestroyMovedReplica(s.cfg.DB, &span, removedBy, len(s.holding(span.Start, span.End)) > 0)
	})
}

// remove takes replica r out of the Store and the Host, then runs clean
// (on the loop) to delete its state. mayReturn: the range may come back
// to this node (a replica move), and the Host keeps the replica's term
// and vote (multiraft.Host.RemoveReplicaAsync).
func (s *Store) remove(r *Replica, why string, mayReturn bool, clean func() error) {
	s.mu.Lock()
	if s.mu.replicas[r.ID] != r {
		s.mu.Unlock()
		return
	}
	delete(s.mu.replicas, r.ID)
	var span kv.Descriptor
	if d, ok := r.Descriptor(); ok {
		span = d.Clone()
	}
	s.mu.removing[r.ID] = span
	s.reorderLocked()
	s.removals.Add(1)
	s.mu.Unlock()
	s.reindex()
	r.SM.Destroy()
	s.log.Info("removing replica", "group", r.ID, "why", why)
	removeAsync := s.cfg.Host.RemoveGroupAsync
	if mayReturn {
		removeAsync = s.cfg.Host.RemoveReplicaAsync
	}
	done, err := removeAsync(r.ID)
	if err != nil {
		s.log.Warn("remove replica", "group", r.ID, "err", err)
		s.mu.Lock()
		delete(s.mu.removing, r.ID)
		s.mu.Unlock()
		return
	}
	s.afterDone(done, func() {
		if err := clean(); err != nil {
			s.fatal(fmt.Errorf("ranges: delete the state of range %d's removed replica: %w", r.ID, err))
		}
		s.mu.Lock()
		delete(s.mu.removing, r.ID)
		s.mu.Unlock()
	})
}

// afterDone runs fn on the loop once done is closed (afterRecv).
func (s *Store) afterDone(done <-chan struct{}, fn func()) {
	afterRecv(s, done, func(struct{}) { fn() })
}

// afterRecv runs fn on s's loop with what ch delivers (or its zero value
// once ch is closed), looking every CampaignRetry: the loop must not wait
// on the Host (in the simulation it drives the Host itself).
func afterRecv[T any](s *Store, ch <-chan T, fn func(T)) {
	select {
	case v := <-ch:
		fn(v)
	default:
		if s.env == nil {
			go func() {
				v := <-ch
				s.enqueue(func() { fn(v) })
			}()
			return
		}
		s.env.After(s.cfg.CampaignRetry, func() { s.enqueue(func() { afterRecv(s, ch, fn) }) })
	}
}

// Lookup returns the local replica whose span holds key, as applied here;
// nil if none does.
func (s *Store) Lookup(key []byte) *Replica {
	idx := *s.index.Load()
	i, _ := slices.BinarySearchFunc(idx, key, func(r *Replica, k []byte) int {
		d, _ := r.SM.Descriptor()
		if bytes.Compare(d.Start, k) <= 0 {
			return -1
		}
		return 1
	})
	if i > 0 {
		if d, _ := idx[i-1].SM.Descriptor(); d.Contains(key) {
			return idx[i-1]
		}
	}
	// The index lags a descriptor change: look at every replica, and take
	// the latest generation that holds the key.
	s.mu.RLock()
	defer s.mu.RUnlock()
	var best *Replica
	var gen uint64
	for _, r := range s.mu.replicas {
		if d, ok := r.SM.Descriptor(); ok && d.Contains(key) && (best == nil || d.Generation > gen) {
			best, gen = r, d.Generation
		}
	}
	return best
}

// Get returns the local replica of range id.
func (s *Store) Get(id uint64) (*Replica, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.mu.replicas[id]
	return r, ok
}

// Replicas returns every local replica, by ascending range ID. The slice
// is shared: the caller must not modify it.
func (s *Store) Replicas() []*Replica {
	return *s.order.Load()
}

// Overlapping returns the local initialized replicas whose spans intersect
// [start, end), in key order.
func (s *Store) Overlapping(start, end []byte) []*Replica {
	var out []*Replica
	for _, r := range *s.index.Load() {
		if d, ok := r.SM.Descriptor(); ok && d.Overlaps(start, end) {
			out = append(out, r)
		}
	}
	return out
}

// Covering is Overlapping from every replica rather than the index, which
// lags a descriptor change (a split's right half, a merge) by up to a turn
// of the Store's loop: in key order, and of two replicas that start at one
// key the later generation first. For watches, which must find every part
// of their span; it walks every replica.
func (s *Store) Covering(start, end []byte) []*Replica {
	var found []spanned
	for _, sp := range s.initialized() {
		if sp.d.Overlaps(start, end) {
			found = append(found, sp)
		}
	}
	slices.SortFunc(found, func(a, b spanned) int {
		if c := bytes.Compare(a.d.Start, b.d.Start); c != 0 {
			return c
		}
		return cmp.Compare(b.d.Generation, a.d.Generation)
	})
	out := make([]*Replica, len(found))
	for i, f := range found {
		out[i] = f.r
	}
	return out
}

// spanned is a replica with its descriptor.
type spanned struct {
	r *Replica
	d *kv.Descriptor
}

// initialized returns the initialized replicas with their descriptors, in
// no set order.
func (s *Store) initialized() []spanned {
	s.mu.RLock()
	defer s.mu.RUnlock()
	all := make([]spanned, 0, len(s.mu.replicas))
	for _, r := range s.mu.replicas {
		if d, ok := r.SM.Descriptor(); ok {
			all = append(all, spanned{r, d})
		}
	}
	return all
}

// fatal reports an error the node cannot go on from.
func (s *Store) fatal(err error) {
	if s.cfg.Fatal != nil {
		s.cfg.Fatal(err)
		return
	}
	s.log.Error("ranges: fatal", "err", err)
	panic(err)
}

// acceptSnapshot is every replica's snapshot gate (kv.WithSnapshotGate):
// range id may take a snapshot of span d only if no other initialized
// replica here holds any of d's span. Such a replica is one of a range
// that d's range split from and that has not applied the split here yet:
// it still holds (and may still write) keys the snapshot brings, so the
// snapshot waits until it applied the split (from its log, or from a
// snapshot of its own that shrinks it). Called on id's worker.
func (s *Store) acceptSnapshot(id uint64, d *kv.Descriptor) bool {
	if s.removingOverlaps(d) {
		s.log.Debug("snapshot refused for now: a replica being removed here holds part of its span", "group", id, "snapshot", d.String())
		return false
	}
	if b := s.blockers(id, d); len(b) > 0 {
		s.log.Debug("snapshot refused for now: another local replica holds part of its span",
			"group", id, "snapshot", d.String(), "holder", b[0].id)
		return false
	}
	return true
}

// holder is a range whose span a replica here holds: a started replica's
// (r set), or one a split here announced and has not started yet.
type holder struct {
	id     uint64
	desc   *kv.Descriptor
	frozen bool
	r      *Replica
}

// blockers returns the ranges here, other than range id, that hold part of
// span d and that d's range has not superseded. A range here is superseded
// by d (a later generation that shares a key with it) when it merged away:
// d holds all of its span (it merged into d's range, directly or before
// d's range split), or it is frozen (a frozen range only merges, so a
// later descriptor of one of its keys means the merge happened). Either
// way the merge waited for this replica to apply its freeze, so it writes
// nothing more; reconcile removes it once a replica here has superseded
// it. Any other range here still holds (and may still write) part of d's
// span: it has not applied a split that d's range came from, or has not
// started the range such a split made, and d's state must wait.
func (s *Store) blockers(id uint64, d *kv.Descriptor) []holder {
	var out []holder
	all := s.holding(nil, nil)
	for _, h := range s.holding(d.Start, d.End) {
		if h.id != id && !supersededHere(id, d, h.desc, h.frozen, all) {
			out = append(out, h)
		}
	}
	return out
}

// supersedes reports whether descriptor d supersedes a replica with
// descriptor rd, frozen or not, which shares a key with it (see blockers).
func supersedes(d, rd *kv.Descriptor, frozen bool) bool {
	if rd.Generation >= d.Generation || !d.Overlaps(rd.Start, rd.End) {
		return false
	}
	return frozen || d.ContainsSpan(rd.Start, rd.End)
}

// supersededHere is supersedes on this node (all: holding(nil, nil)) for
// range id's descriptor d, but for one case: a frozen replica whose merge a
// replica here may still apply from its log (mergePending) is kept. That
// merge reads it (kv applyMerge), and the merged range holds its span until
// it applies the splits that d's range came from: until then d's state
// waits, as for any range that has not applied a split of d's span yet.
func supersededHere(id uint64, d, rd *kv.Descriptor, frozen bool, all []holder) bool {
	return supersedes(d, rd, frozen) && !(frozen && mergePending(id, d, rd, all))
}

// mergePending reports whether a replica here (all), other than range id's,
// may still merge the frozen range of descriptor rd, which d supersedes:
// one that ends where rd starts (a frozen range merges into the range that
// ends where it starts) and has not applied that merge (pastMerge). One
// that d supersedes too is left out (it merged away as well, and applies
// nothing more), but for one frozen itself, whose own merge into its left
// neighbour may still be pending: that neighbour then merges rd.
func mergePending(id uint64, d, rd *kv.Descriptor, all []holder) bool {
	for _, o := range all {
		if o.id == id || o.id == rd.ID || len(o.desc.End) == 0 || !bytes.Equal(o.desc.End, rd.Start) {
			continue
		}
		if !pastMerge(o.desc, d, rd, all) && !supersededHere(id, d, o.desc, o.frozen, all) {
			return true
		}
	}
	return false
}

// pastMerge reports whether descriptor o, which ends where the frozen
// range of descriptor rd starts, is as of or after rd's merge. Every
// descriptor that shares a key with rd and has a later generation (d, and
// any such one here) is as of or after the merge (a frozen range only
// merges), so its generation is at least the merged one, which is above
// that of every descriptor of the range that ends where rd starts as of
// before the merge (generations only grow along a key's ranges). So o is
// past the merge if its generation is no lower than such a descriptor's.
// (If no such descriptor here is old enough to tell, o is taken to be
// before it: the replica waits for its range to catch up, which only
// delays.)
func pastMerge(o, d, rd *kv.Descriptor, all []holder) bool {
	if o.Generation >= d.Generation {
		return true
	}
	for _, h := range all {
		if h.id != rd.ID && h.desc.Generation > rd.Generation && h.desc.Generation <= o.Generation && h.desc.Overlaps(rd.Start, rd.End) {
			return true
		}
	}
	return false
}

// replicaSupersededHere is supersededHere for a started replica r.
func replicaSupersededHere(id uint64, d *kv.Descriptor, r *Replica, all []holder) bool {
	rd, ok := r.Descriptor()
	if !ok {
		return false
	}
	_, _, frozen := r.SM.Frozen()
	return supersededHere(id, d, rd, frozen, all)
}

// replicaSupersedes is supersedes for a started replica.
func replicaSupersedes(d *kv.Descriptor, r *Replica) bool {
	rd, ok := r.Descriptor()
	if !ok {
		return false
	}
	_, _, frozen := r.SM.Frozen()
	return supersedes(d, rd, frozen)
}

// holding returns the ranges whose spans a replica here holds, or a split
// here announced, that intersect [start, end), stale ones included.
func (s *Store) holding(start, end []byte) []holder {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []holder
	for _, r := range s.mu.replicas {
		if d, ok := r.SM.Descriptor(); ok && d.Overlaps(start, end) {
			_, _, frozen := r.SM.Frozen()
			out = append(out, holder{id: r.ID, desc: d, frozen: frozen, r: r})
		}
	}
	for id, d := range s.mu.announced {
		if _, started := s.mu.replicas[id]; !started && d.Overlaps(start, end) {
			out = append(out, holder{id: id, desc: &d})
		}
	}
	return out
}

// announce records that a split here is about to make range d (kv's
// split hook, before the split commits; on the worker: it must not
// block).
func (s *Store) announce(d kv.Descriptor) {
	s.mu.Lock()
	s.mu.announced[d.ID] = d
	s.mu.Unlock()
}

// leftBlockers returns the ranges here (replicas, and splits announced)
// that hold part of the span of
// what range id left on this node's disk, not running (a crash came
// between raft's record of a snapshot or entries and the range's own
// descriptor): its descriptor, or the snapshot its raft state still has
// to restore. Started, the replica would restore that state and apply its
// log from there, writing into that older, wider span, over a newer
// range's keys. The simulation found it (seed 290 with two catch-ups at
// once): a node back from a crash started range 7 for a snapshot, then
// range 4 from its raft state at the index before 4 split 7 off, and range
// 4's replay of writes of its old span overwrote range 7's newer values.
// A replica refused so is never started here while the other range holds
// the span (nothing discards what it left: this node may have
// acknowledged entries of that log): its range stays a replica short
// here, never wrong. Errors reading what it left count as nothing left.
func (s *Store) leftBlockers(id uint64) []holder {
	var out []holder
	if ld, ok, err := kv.LocalDescriptor(s.cfg.DB, id); err == nil && ok {
		out = append(out, s.blockers(id, &ld)...)
	}
	if st, err := s.cfg.Host.Store().Load(id); err == nil && len(st.Snapshot.Data) > 0 {
		if sd, err := kv.SnapshotDescriptor(st.Snapshot.Data); err == nil {
			out = append(out, s.blockers(id, &sd)...)
		}
	}
	return out
}

// isRemoving reports whether range id's replica here is being removed.
func (s *Store) isRemoving(id uint64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.mu.removing[id]
	return ok
}

// removingOverlaps reports whether a replica being removed here held any
// of d's span.
func (s *Store) removingOverlaps(d *kv.Descriptor) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, rd := range s.mu.removing {
		if rd.ID != 0 && rd.Overlaps(d.Start, d.End) {
			return true
		}
	}
	return false
}

// UnknownGroup is the Host's multiraft.Config.UnknownGroup: raft messages
// came from node from for range id, which has no replica here. If from's
// replica of id lists this node and no replica here holds any of its span
// (but replicas it subsumed: blockers), nor any of the span of what the
// range left here (leftBlockers), and the range's replica here was not
// removed by a descriptor as new as from's (kv.Tombstone), an empty
// replica is started: it gets the range's state from a snapshot. (A node
// that has not applied a split yet still holds the new range's span and
// makes its replica itself when it applies it.) Never blocks.
func (s *Store) UnknownGroup(id, from uint64) {
	if s.env == nil {
		return
	}
	s.enqueue(func() {
		if _, ok := s.Get(id); ok || s.isRemoving(id) {
			return
		}
		s.env.PeerDescriptor(from, id, callback2(s, func(d kv.Descriptor, ok bool) {
			if !ok || !d.HasReplica(s.cfg.NodeID) {
				return
			}
			if _, ok := s.Get(id); ok || s.isRemoving(id) {
				return
			}
			if len(s.blockers(id, &d)) > 0 {
				return // a replica here still holds part of it: see above
			}
			gen, tomb, err := kv.Tombstone(s.cfg.DB, id)
			if err != nil || (tomb && d.Generation <= gen) {
				// Removed from here by a descriptor at least as new as
				// the one that asks for it: see kv.DestroyMovedReplica.
				return
			}
			if s.removingOverlaps(&d) {
				return // a replica removed from here still owns that span's data until it is deleted
			}
			if b := s.leftBlockers(id); len(b) > 0 {
				s.mu.Lock()
				first := !s.mu.leftRefused[id]
				s.mu.leftRefused[id] = true
				s.mu.Unlock()
				if first {
					s.log.Warn("not starting a replica whose state here overlaps another range's span: the range stays a replica short here",
						"group", id, "overlaps", b[0].id, "desc", b[0].desc.String())
				}
				return
			}
			s.log.Info("starting an empty replica for a snapshot", "group", id, "from", from, "desc", d.String())
			// Moved back here (a tombstone): no vote while empty.
			if _, err := s.startWith(replicaStart{id: id, noVote: tomb}); err != nil {
				s.log.Warn("start empty replica", "group", id, "err", err)
				return
			}
			s.metrics.emptyReplicas.Add(1)
		}))
	})
}
