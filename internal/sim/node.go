package sim

import (
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flotilla/flotilla/internal/ranges"
	"github.com/flotilla/flotilla/kv"
	"github.com/flotilla/flotilla/multiraft"
	"github.com/flotilla/flotilla/storage"
)

// failPoints are the engine's persistence boundaries the nemesis may crash
// a node at.
var failPoints = []string{
	multiraft.FailBeforePersist,
	multiraft.FailAfterPersist,
	multiraft.FailBeforeSend,
	multiraft.FailBeforeApply,
	multiraft.FailAfterApply,
}

// node is one simulated process: a Host over a storage.Mem (raft state)
// and a Pebble database on a crashable in-memory file system (kv state).
// The store and file system survive crashes, minus what was not synced.
// Owned by the simulation goroutine.
type node struct {
	s  *sim
	id uint64

	up  bool
	inc uint64 // incarnation, bumped by every crash
	// rangeTicks counts the Store's ticks (rangeTickLoop).
	rangeTicks int
	// paused: frozen by FaultPause; held are the deliveries that reached
	// it meanwhile, made when it resumes.
	paused    bool
	held      []func()
	tickEvery time.Duration
	// late: its next tick is the first since it resumed (TickLate).
	late bool
	// runningSince: when the node last resumed or started (checkFailover).
	runningSince time.Duration
	// downSince: when the node last crashed or paused; deadUntil: how
	// long, once back, it still counts dead (sim.dead).
	downSince, deadUntil time.Duration

	host  *multiraft.Host
	tr    *simTransport
	store *storage.Mem
	fs    *vfs.MemFS
	db    *pebble.DB
	// ranges are the node's range replicas in the running incarnation.
	ranges *ranges.Store
	// bootstrapped: the node wrote its initial ranges (in its first
	// incarnation; a restart starts what the database holds), or joined
	// with none (FaultJoin).
	bootstrapped bool
	// removed: decommissioned and stopped for good (removeLeaving); it
	// never restarts.
	removed bool

	// armed is the failure point this node dies at, after armedHits more
	// passes; "" when none.
	armed     string
	armedHits int
}

// simMinBytes is ranges.Config.MinBytes in a run with the split load
// splitLoad: the merge queue runs where load splits do.
func simMinBytes(splitLoad float64) int64 {
	if splitLoad == 0 {
		return 0
	}
	return 1 << 20
}

// simLoadHalfLife is ranges.Config.LoadHalfLife in a run with the split
// load splitLoad: short where the merge queue runs, so that ranges cool
// in the workload's lull; else the default (0).
func simLoadHalfLife(splitLoad float64) time.Duration {
	if splitLoad == 0 {
		return 0
	}
	return 100 * time.Millisecond
}

// simMoveCatchUp is ranges.Config.MoveCatchUp in the simulation.
const simMoveCatchUp = 500 * time.Millisecond

func newNode(s *sim, id uint64) *node {
	return &node{s: s, id: id, store: storage.NewMem(), fs: vfs.NewCrashableMem()}
}

// pebbleLogger discards Pebble's logs; a fatal one panics, which the run
// reports as a violation.
type pebbleLogger struct{ node uint64 }

func (pebbleLogger) Infof(string, ...any)  {}
func (pebbleLogger) Errorf(string, ...any) {}
func (l pebbleLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("sim: pebble fatal on node %d: "+format, append([]any{l.node}, args...)...))
}

// start opens the node's databases and starts its Host and groups.
func (n *node) start() error {
	s := n.s
	db, err := pebble.Open("kv", &pebble.Options{FS: n.fs, Logger: pebbleLogger{node: n.id}})
	if err != nil {
		return fmt.Errorf("sim: node %d: open pebble: %w", n.id, err)
	}
	n.db = db
	n.tr = s.net.transport(n)
	h, err := multiraft.NewHost(multiraft.Config{
		NodeID:             n.id,
		Store:              n.store,
		Transport:          n.tr,
		Manual:             true,
		ElectionTicks:      s.cfg.ElectionTicks,
		HeartbeatTicks:     s.cfg.HeartbeatTicks,
		SnapshotEntries:    s.cfg.SnapshotEntries,
		CompactionOverhead: s.cfg.SnapshotEntries / 2,
		DisableSync:        s.cfg.Bug == BugAckBeforeSync,
		// Idle ranges quiesce, under every fault (multiraft/quiesce.go).
		Quiesce:                 true,
		QuiesceIgnoringLiveness: s.cfg.Bug == BugQuiesceIgnoreLiveness,
		// Odd seeds run with a 4 KiB entry cache, so that raft reads most
		// of its entries back from the store (entrycache.go) under every
		// fault; even seeds with the default, where it rarely does.
		EntryCacheBytes: int64(s.cfg.Seed%2) * 4 << 10,
		// Config.MaxCatchUps (seed 290 at 2 found the bug that
		// ranges.Store.pendingRestores mends).
		MaxCatchUps: s.maxCatchUps(),
		// As the server: announced once the node's ranges are started
		// (below), so hellos and pings wait for them under every fault.
		Unannounced: true,
		Logger:      s.logger.With("node", n.id),
		FailPoint:   n.failPoint,
		UnknownGroup: func(g, from uint64) {
			if n.ranges != nil {
				n.ranges.UnknownGroup(g, from)
			}
		},
	})
	if err != nil {
		db.Close()
		n.db = nil
		return fmt.Errorf("sim: node %d: %w", n.id, err)
	}
	n.host = h
	var opts []kv.Option
	switch s.cfg.Bug {
	case BugNoDedup:
		opts = append(opts, kv.WithoutDedup())
	case BugSplitBothServe:
		opts = append(opts, kv.WithoutSpanChecks())
	case BugMoveUncoupled:
		opts = append(opts, kv.WithoutMembershipRecord())
	}
	st, err := ranges.Open(ranges.Config{
		NodeID:  n.id,
		DB:      db,
		Host:    h,
		Options: opts,
		Wrap: func(sm *kv.StateMachine) multiraft.StateMachine {
			return &recSM{StateMachine: sm, s: s, node: n.id, group: sm.RangeID()}
		},
		Env:       simEnv{n},
		SplitLoad: s.splitLoad,
		Placeable: n.placeable,
		// Every node of the simulation runs this build.
		SubsetMerge: func([]uint64) bool { return true },
		Dead:        s.dead,
		// The merge queue runs where load splits do: the workload's
		// lull (sim.lullAt) cools the ranges they made. Every range of
		// the simulation is far below 1 MiB; a short load half-life
		// and cooldown let them cool and merge within a run.
		MinBytes:           simMinBytes(s.splitLoad),
		LoadHalfLife:       simLoadHalfLife(s.splitLoad),
		MergeCooldownTicks: 5,
		CampaignRetry:      2 * s.cfg.TickInterval,
		// Short, so that moves roll back and learners left by moves cut
		// short are finished (finishLearners) within a run's faults.
		MoveCatchUp: simMoveCatchUp,
		// The nodes of the run as this incarnation starts: after a join
		// or a decommission, nodes started before keep the count of then
		// (finishLearners and Move's guards are looser or stricter by one
		// until they restart).
		Replicas:        len(s.ids),
		LoseMetaUpdates: s.cfg.Bug == BugLoseMetaUpdate,
		SkipMergeWait:   s.cfg.Bug == BugMergeNoWait,
		FailPoint:       n.failPoint,
		Fatal: func(err error) {
			s.violation("node %d: ranges failed: %v", n.id, err)
		},
		Logger: s.logger.With("node", n.id),
	})
	if err == nil && !n.bootstrapped {
		err = st.Bootstrap(ranges.InitialRanges(s.cfg.Groups, func(uint64) []uint64 { return s.ids }))
		n.bootstrapped = err == nil
	}
	if err != nil {
		// A replica that cannot restart from what it persisted is a
		// finding (for example, state lost to a planted bug).
		s.violation("node %d cannot start its ranges at %v: %v", n.id, s.now, err)
		h.Stop()
		n.tr.Close()
		db.Close()
		n.host, n.db = nil, nil
		return nil
	}
	n.ranges = st
	h.Announce()
	n.up = true
	n.backUp()
	n.drain()
	return nil
}

// backUp notes that the node runs again: if it was down long enough to
// count dead, it counts so for simDeadLag more (sim.dead).
func (n *node) backUp() {
	if n.s.now-n.downSince >= simDeadAfter && n.downSince > 0 {
		n.deadUntil = n.s.now + simDeadLag
	}
}

// simDeadAfter is the simulation's --dead-after: a node crashed or paused
// this long counts dead (sim.dead), as a server's evacuateLoop finds it.
// Short, so that a node's pause or crash in a run outlasts it now and
// then (ranges' subset merges leave such a node out). simDeadLag: how
// long a dead node that came back still counts dead, as a server's does
// until gossip and evacuateLoop's next pass see it (a second or two).
const (
	simDeadAfter = 200 * time.Millisecond
	simDeadLag   = time.Second
)

// dead is every node's ranges.Config.Dead: decommissioned (leaving, or
// stopped for good), or crashed or paused for simDeadAfter (a dead node
// that comes back is placed again: the moves give it replicas, replicate
// after healing).
func (s *sim) dead(id uint64) bool {
	if slices.Contains(s.gone, id) || id == s.leaving {
		return true // as a server's Dead: removed, or leaving
	}
	if int(id) >= len(s.nodes) || s.nodes[id] == nil {
		return false
	}
	m := s.nodes[id]
	return ((!m.up || m.paused) && s.now-m.downSince >= simDeadAfter) || s.now < m.deadUntil
}

// placeable is the node's ranges.Config.Placeable, as the server's: a
// merge moves no replica onto the node being decommissioned, one gone, or
// one this node finds down (it waits, ErrBusy).
func (n *node) placeable(id uint64) bool {
	s := n.s
	return id != s.leaving && !slices.Contains(s.gone, id) && (n.host == nil || !n.host.PeerDown(id))
}

// failPoint is the node's multiraft.Config.FailPoint.
func (n *node) failPoint(name string) error {
	if n.armed != name {
		return nil
	}
	if n.armedHits > 0 {
		n.armedHits--
		return nil
	}
	n.armed = ""
	n.s.res.FailPoints++
	n.s.record("failpoint-fire", n.id)
	if slices.Contains(storeFailPoints, name) {
		// The Store stops the operation there; the node dies with it.
		inc := n.inc
		n.s.after(0, func() {
			if n.inc == inc && n.up {
				n.crash("failpoint " + name)
				n.scheduleRestart()
			}
		})
	}
	return ErrCrashPoint
}

// tickLoop ticks the node and schedules the next tick.
func (n *node) tickLoop() {
	if n.up && !n.paused {
		if n.late {
			// Its first tick after a pause: a real node's ticker fires
			// late then (multiraft.Config.LivenessStretch).
			n.late = false
			n.host.TickLate()
		} else {
			n.host.Tick()
		}
		n.drain()
	}
	n.s.after(n.tickEvery, n.tickLoop)
}

// drain runs the Host's cycles and the Store's tasks until neither has
// anything left to do, then checks its leaders.
func (n *node) drain() {
	if !n.up || n.paused {
		return
	}
	for i := 0; i < 10000; i++ {
		worked := n.host.Process()
		if n.up && n.ranges != nil && n.host.Err() == nil {
			worked += n.ranges.RunPending()
		}
		if worked == 0 || !n.up {
			break
		}
	}
	if !n.up {
		return
	}
	if n.host.Err() == nil {
		n.s.noteLeaders(n)
	}
}

// pause freezes the node (FaultPause): no ticks, no processing; messages
// to it wait in held.
func (n *node) pause() {
	n.s.record("pause", n.id)
	n.s.res.Pauses++
	n.paused = true
	n.downSince = n.s.now
}

// resume thaws the node: it gets what arrived meanwhile, in order, then
// runs.
func (n *node) resume() {
	if !n.paused {
		return
	}
	n.s.record("resume", n.id, uint64(len(n.held)))
	n.paused = false
	n.late = true
	n.runningSince = n.s.now
	n.backUp()
	held := n.held
	n.held = nil
	for _, deliver := range held {
		if n.up {
			deliver()
		}
	}
	n.drain()
}

// crash kills the node: the Host stops where it is (pending requests fail
// with ErrStopped), the raft store loses its unsynced writes, and Pebble's
// file system is replaced by a crash clone holding only what was synced.
func (n *node) crash(why string) {
	if !n.up {
		return
	}
	s := n.s
	s.record("crash", n.id, uint64(len(why)))
	s.res.Crashes++
	n.up = false
	if !n.paused {
		n.downSince = s.now // (a paused node has been down since its pause)
	}
	n.paused, n.held = false, nil
	n.inc++
	s.res.Failovers += int(n.host.Failovers())
	s.res.Quiesces += int(n.host.Quiesces())
	s.res.Wakes += int(n.host.Wakes())
	s.res.SnapshotsRefused += int(n.host.SnapshotsRefused())
	s.res.EmptyReplicas += int(n.ranges.EmptyReplicas())
	s.res.MovedAway += int(n.ranges.MovedAway())
	s.res.Leftovers += int(n.ranges.Leftovers())
	s.res.MergeAligns += int(n.ranges.MergeAligns())
	s.res.AutoMerges += int(n.ranges.AutoMerges())
	s.res.MergeHandOns += int(n.ranges.MergeHandOns())
	s.res.SubsetMerges += int(n.ranges.SubsetMerges())
	n.host.Stop()
	n.tr.Close()
	n.store.Crash()
	crashed := n.fs.CrashClone(vfs.CrashCloneCfg{})
	if err := n.db.Close(); err != nil {
		s.violation("node %d: close pebble: %v", n.id, err)
	}
	n.fs = crashed
	n.host, n.tr, n.db, n.ranges = nil, nil, nil, nil
}

// restart starts a crashed node again.
func (n *node) restart() {
	if n.up || n.removed {
		return
	}
	n.s.record("restart", n.id)
	if err := n.start(); err != nil {
		n.s.violation("node %d restart: %v", n.id, err)
	}
}

// scheduleRestart restarts the node after a seeded downtime, unless it was
// restarted (and maybe crashed again) meanwhile.
func (n *node) scheduleRestart() {
	inc := n.inc
	n.s.after(n.s.between(20*time.Millisecond, 1500*time.Millisecond), func() {
		if !n.up && n.inc == inc {
			n.restart()
		}
	})
}

// close releases the node for good at the end of the run.
func (n *node) close() {
	if n.host != nil {
		n.s.res.Failovers += int(n.host.Failovers())
		n.s.res.Quiesces += int(n.host.Quiesces())
		n.s.res.Wakes += int(n.host.Wakes())
		n.s.res.SnapshotsRefused += int(n.host.SnapshotsRefused())
		if n.ranges != nil {
			n.s.res.EmptyReplicas += int(n.ranges.EmptyReplicas())
			n.s.res.MovedAway += int(n.ranges.MovedAway())
			n.s.res.Leftovers += int(n.ranges.Leftovers())
			n.s.res.MergeAligns += int(n.ranges.MergeAligns())
			n.s.res.AutoMerges += int(n.ranges.AutoMerges())
			n.s.res.MergeHandOns += int(n.ranges.MergeHandOns())
			n.s.res.SubsetMerges += int(n.ranges.SubsetMerges())
		}
		n.host.Stop()
		n.host = nil
	}
	if n.tr != nil {
		n.tr.Close()
		n.tr = nil
	}
	if n.db != nil {
		n.db.Close()
		n.db = nil
	}
	n.up = false
}

// recSM wraps the kv state machine and tells the simulation what each
// replica applied, to check that no log position is applied with two
// commands.
type recSM struct {
	*kv.StateMachine
	s     *sim
	node  uint64
	group uint64
}

// Sync implements multiraft.Syncer, unless the planted bug skips it.
func (r *recSM) Sync() error {
	if r.s.cfg.Bug == BugTruncateUnsynced {
		return nil
	}
	return r.StateMachine.Sync()
}

// Apply implements multiraft.StateMachine.
func (r *recSM) Apply(cmds []multiraft.Command) error {
	if err := r.StateMachine.Apply(cmds); err != nil {
		return err
	}
	// Commands packed into one entry share its index: each is identified
	// by the index and its place among them (one Apply call holds a whole
	// entry).
	var sub uint64
	for i := range cmds {
		if i > 0 && cmds[i].Index == cmds[i-1].Index {
			sub++
		} else {
			sub = 0
		}
		r.s.noteApply(r.node, r.group, cmds[i].Index, sub, cmds[i].Data, cmds[i].Result)
	}
	return nil
}
