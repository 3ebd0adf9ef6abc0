package multiraft

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/flotilla/flotilla/storage"
	"github.com/flotilla/flotilla/transport"
)

// Host runs the raft groups of one node. Create it with NewHost; all its
// methods are safe for concurrent use.
type Host struct {
	cfg      Config
	log      *slog.Logger
	store    storage.Store
	ownStore bool
	tr       transport.Transport
	sched    *scheduler
	hub      *eventHub
	metrics  *metrics

	keyBase uint64
	nextKey atomic.Uint64

	stopc    chan struct{}
	stopOnce sync.Once
	stopped  chan struct{}
	wg       sync.WaitGroup
	err      atomic.Pointer[error]
	manualW  *worker // the worker of Manual mode, used by Process

	mu struct {
		sync.RWMutex
		groups  map[uint64]*group
		ids     []uint64 // sorted group IDs, for deterministic ticking
		closing bool
	}
	feedback struct {
		sync.Mutex
		unreachable map[uint64]struct{}
	}
}

// worker is the scratch state of one scheduler worker. Owned by it.
type worker struct {
	batch   storage.Batch
	ids     []uint64
	readies []readyGroup
	early   []transport.Envelope
	late    []transport.Envelope
	cmds    []Command
	keys    []uint64
	events  []LeaderEvent
	again   []uint64
}

type readyGroup struct {
	g  *group
	rd raft.Ready
}

// NewHost validates cfg, opens the store and starts the Host's goroutines
// (none in Manual mode). Groups are started with StartGroup.
func NewHost(cfg Config) (*Host, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	h := &Host{
		cfg:     cfg,
		log:     cfg.Logger.With("node", cfg.NodeID),
		tr:      cfg.Transport,
		sched:   newScheduler(),
		hub:     newEventHub(1024),
		keyBase: rand.Uint64() &^ 0xffffffff,
		stopc:   make(chan struct{}),
		stopped: make(chan struct{}),
	}
	h.metrics = newMetrics(cfg.Registerer)
	h.metrics.registerHubMetrics(cfg.Registerer, h.hub)
	h.mu.groups = make(map[uint64]*group)
	h.feedback.unreachable = make(map[uint64]struct{})
	h.store = cfg.Store
	if h.store == nil {
		st, err := storage.OpenPebble(cfg.DataDir, storage.PebbleOptions{})
		if err != nil {
			return nil, err
		}
		h.store, h.ownStore = st, true
	}
	if err := h.tr.Start(h); err != nil {
		if h.ownStore {
			h.store.Close()
		}
		return nil, fmt.Errorf("multiraft: start transport: %w", err)
	}
	if cfg.Manual {
		h.manualW = h.newWorker()
		return h, nil
	}
	for i := 0; i < cfg.Workers; i++ {
		w := h.newWorker()
		h.wg.Add(1)
		go h.workerLoop(w)
	}
	h.wg.Add(1)
	go h.tickLoop()
	return h, nil
}

func (h *Host) newWorker() *worker { return &worker{batch: h.store.NewBatch()} }

// NodeID returns the Host's node ID.
func (h *Host) NodeID() uint64 { return h.cfg.NodeID }

// Store returns the store holding the raft logs.
func (h *Host) Store() storage.Store { return h.store }

// workerLoop takes groups that have work and processes them, one cycle at
// a time, until the Host stops.
func (h *Host) workerLoop(w *worker) {
	defer h.wg.Done()
	for {
		ids := h.sched.next(w.ids[:0], h.cfg.MaxGroupsPerCycle, true)
		if ids == nil {
			w.batch.Close()
			return
		}
		w.ids = ids
		h.processCycle(w, ids)
		h.sched.done(ids)
	}
}

// tickLoop ticks every group once per TickInterval.
func (h *Host) tickLoop() {
	defer h.wg.Done()
	t := time.NewTicker(h.cfg.TickInterval)
	defer t.Stop()
	var ids []uint64
	for {
		select {
		case <-h.stopc:
			return
		case <-t.C:
			ids = h.tick(ids[:0])
		}
	}
}

// Tick advances every group by one tick. Only in Manual mode; in automatic
// mode the Host ticks itself every TickInterval.
func (h *Host) Tick() {
	if !h.cfg.Manual {
		panic("multiraft: Tick outside Manual mode")
	}
	h.tick(nil)
}

// Process runs one cycle over every group that has work, on the caller's
// goroutine, and returns how many groups it processed. Only in Manual mode.
func (h *Host) Process() int {
	if !h.cfg.Manual {
		panic("multiraft: Process outside Manual mode")
	}
	if h.isStopped() {
		return 0
	}
	w := h.manualW
	ids := h.sched.next(w.ids[:0], 1<<30, false)
	w.ids = ids
	if len(ids) == 0 {
		return 0
	}
	h.processCycle(w, ids)
	h.sched.done(ids)
	return len(ids)
}

// tick sends the heartbeats coalesced during the last tick, hands pending
// transport feedback to the groups, and queues a tick for every group.
func (h *Host) tick(ids []uint64) []uint64 {
	h.tr.FlushHeartbeats()
	var unreachable []uint64
	h.feedback.Lock()
	for id := range h.feedback.unreachable {
		unreachable = append(unreachable, id)
		delete(h.feedback.unreachable, id)
	}
	h.feedback.Unlock()
	sort.Slice(unreachable, func(i, j int) bool { return unreachable[i] < unreachable[j] })

	h.mu.RLock()
	ids = append(ids, h.mu.ids...)
	for _, id := range ids {
		g := h.mu.groups[id]
		g.in.Lock()
		g.in.ticks++
		g.in.unreachable = append(g.in.unreachable, unreachable...)
		g.in.Unlock()
	}
	h.mu.RUnlock()
	h.sched.enqueueAll(ids)
	return ids
}

// processCycle runs one cycle for the groups a worker holds: step inputs,
// persist all Readys with one batch and one sync, send, apply, advance.
func (h *Host) processCycle(w *worker, ids []uint64) {
	w.readies = w.readies[:0]
	h.mu.RLock()
	for _, id := range ids {
		if g := h.mu.groups[id]; g != nil {
			w.readies = append(w.readies, readyGroup{g: g})
		}
	}
	h.mu.RUnlock()
	n := 0
	for _, r := range w.readies {
		r.g.handleInputs()
		if !r.g.stopped && r.g.rn.HasReady() {
			r.rd = r.g.rn.Ready()
			w.readies[n] = r
			n++
		}
	}
	w.readies = w.readies[:n]
	if n == 0 {
		return
	}

	// 1. Persist. A leader's appends leave before its own write (Raft
	// thesis 10.2.1); everything else waits for the sync, because votes and
	// acknowledgements promise durability.
	w.early, w.late = w.early[:0], w.late[:0]
	for i := range w.readies {
		g, rd := w.readies[i].g, &w.readies[i].rd
		g.noteState(rd)
		if !raft.IsEmptySnap(rd.Snapshot) {
			w.batch.SetSnapshot(g.id, rd.Snapshot)
			w.batch.SetConfState(g.id, rd.Snapshot.Metadata.ConfState, rd.Snapshot.Metadata.Index)
		}
		if len(rd.Entries) > 0 {
			w.batch.Append(g.id, rd.Entries, g.log.lastIndex())
		}
		if !raft.IsEmptyHardState(rd.HardState) {
			w.batch.SetHardState(g.id, rd.HardState)
		}
		for _, m := range rd.Messages {
			e := transport.Envelope{Group: g.id, Msg: m}
			if m.Type == raftpb.MsgApp || m.Type == raftpb.MsgSnap {
				w.early = append(w.early, e)
			} else {
				w.late = append(w.late, e)
			}
		}
	}
	if len(w.early) > 0 {
		h.tr.Send(w.early)
	}
	if !w.batch.Empty() {
		if h.failAt(FailBeforePersist) {
			return
		}
		if err := w.batch.Commit(!h.cfg.DisableSync); err != nil {
			h.fatal(fmt.Errorf("persist raft state: %w", err))
			return
		}
		h.metrics.syncs.Add(1)
		if h.failAt(FailAfterPersist) {
			return
		}
	}
	for i := range w.readies {
		g, rd := w.readies[i].g, &w.readies[i].rd
		if !raft.IsEmptySnap(rd.Snapshot) {
			g.log.applySnapshot(rd.Snapshot.Metadata)
		}
		g.log.append(rd.Entries)
		if !raft.IsEmptyHardState(rd.HardState) {
			g.log.hs = rd.HardState
		}
	}

	// 2. Send the rest. The transport never blocks.
	if len(w.late) > 0 {
		if h.failAt(FailBeforeSend) {
			return
		}
		h.tr.Send(w.late)
	}
	clear(w.early)
	clear(w.late)

	// 3. Apply, then advance.
	if h.failAt(FailBeforeApply) {
		return
	}
	w.events = w.events[:0]
	for i := range w.readies {
		g, rd := w.readies[i].g, &w.readies[i].rd
		ev, ok, alive := g.applyReady(rd, w)
		if !alive {
			return
		}
		if ok {
			w.events = append(w.events, ev)
		}
	}
	if !w.batch.Empty() {
		if err := w.batch.Commit(false); err != nil {
			h.fatal(fmt.Errorf("persist applied state: %w", err))
			return
		}
	}
	if h.failAt(FailAfterApply) {
		return
	}
	w.again = w.again[:0]
	for i := range w.readies {
		g := w.readies[i].g
		g.rn.Advance(w.readies[i].rd)
		if g.releaseAfterAdvance {
			g.releaseAfterAdvance = false
			g.releaseHeld()
		}
		if g.rn.HasReady() {
			w.again = append(w.again, g.id)
		}
		w.readies[i] = readyGroup{}
	}
	if len(w.again) > 0 {
		h.sched.enqueueAll(w.again)
	}
	if len(w.events) > 0 {
		h.metrics.leaderChanges.Add(float64(len(w.events)))
		h.hub.publish(w.events)
		// publish keeps no reference to the slice's backing array past the
		// call except through subscriber mailboxes, which copy.
		w.events = nil
	}
}

// StartGroup starts the replica of group id on this node with state
// machine sm. If the store has state for the group, the group restarts
// from it and members is ignored. Otherwise members (node IDs) is the
// group's initial membership; every initial member must be started with the
// same list. A node joining an existing group passes no members and waits
// for the leader to send it the log after ChangeMembership added it.
func (h *Host) StartGroup(id uint64, members []uint64, sm StateMachine) error {
	if id == 0 {
		return fmt.Errorf("%w: group ID 0", ErrInvalidRequest)
	}
	if sm == nil {
		return fmt.Errorf("%w: nil StateMachine", ErrInvalidRequest)
	}
	if h.isStopped() {
		return ErrStopped
	}
	h.mu.RLock()
	_, exists := h.mu.groups[id]
	closing := h.mu.closing
	h.mu.RUnlock()
	if closing {
		return ErrStopped
	}
	if exists {
		return fmt.Errorf("%w: %d", ErrGroupExists, id)
	}
	st, err := h.store.Load(id)
	if err != nil {
		return fmt.Errorf("multiraft: load group %d: %w", id, err)
	}
	fresh := raft.IsEmptyHardState(st.HardState) && len(st.Entries) == 0 &&
		raft.IsEmptySnap(st.Snapshot) && len(st.ConfState.Voters) == 0 && len(st.ConfState.Learners) == 0
	if fresh {
		st.ConfState = raftpb.ConfState{Voters: append([]uint64(nil), members...)}
		b := h.store.NewBatch()
		b.SetConfState(id, st.ConfState, 0)
		err := b.Commit(true)
		b.Close()
		if err != nil {
			return fmt.Errorf("multiraft: bootstrap group %d: %w", id, err)
		}
	}
	snapMeta := st.Snapshot.Metadata
	g := &group{
		id:        id,
		h:         h,
		sm:        sm,
		log:       newMemLog(snapMeta.Index, snapMeta.Term),
		snapIndex: snapMeta.Index,
		confIndex: max(st.ConfIndex, snapMeta.Index),
		proposals: make(map[uint64]*proposal),
		reads:     make(map[uint64]*readBatch),
	}
	g.log.hs = st.HardState
	g.log.cs = st.ConfState
	if st.ConfIndex < snapMeta.Index {
		g.log.cs = snapMeta.ConfState
	}
	g.log.append(st.Entries)
	g.log.snapshot = func() (raftpb.Snapshot, error) {
		s, err := g.snapshot()
		if err != nil {
			// The state machine could not read its own state: as on any
			// storage error on the raft path, stop loudly.
			h.fatal(fmt.Errorf("snapshot for a follower: %w", err))
			return raftpb.Snapshot{}, raft.ErrSnapshotTemporarilyUnavailable
		}
		return s, nil
	}
	applied := sm.AppliedIndex()
	if string(st.Snapshot.Data) == syncedState && applied < snapMeta.Index {
		// The state machine synced everything up to the truncation point
		// before it was written; what lies between its last command and
		// that point holds no command (empty entries, membership changes,
		// which the conf state has).
		if _, ok := sm.(Syncer); !ok {
			return fmt.Errorf("%w: group %d: the log was truncated for a state machine that syncs itself, and this one does not",
				ErrInvalidRequest, id)
		}
		applied = snapMeta.Index
	}
	if applied < snapMeta.Index {
		if err := sm.Restore(bytes.NewReader(st.Snapshot.Data), snapMeta.Index); err != nil {
			return fmt.Errorf("multiraft: group %d: restore snapshot at %d: %w", id, snapMeta.Index, err)
		}
		applied = snapMeta.Index
	}
	if applied > st.HardState.Commit && applied > snapMeta.Index {
		return fmt.Errorf("%w: group %d: state machine applied index %d is past the log's commit index %d",
			ErrInvalidRequest, id, applied, st.HardState.Commit)
	}
	g.applied = applied
	g.term, g.commit = st.HardState.Term, st.HardState.Commit
	// raft replays from the last persisted membership change, not from the
	// state machine's applied index: a change the state machine has passed
	// may not have reached the conf state before a crash. applyEntries
	// skips the commands the state machine already has.
	raftApplied := min(applied, max(g.confIndex, snapMeta.Index))
	rn, err := raft.NewRawNode(&raft.Config{
		ID:                        h.cfg.NodeID,
		ElectionTick:              h.cfg.ElectionTicks,
		HeartbeatTick:             h.cfg.HeartbeatTicks,
		Storage:                   g.log,
		Applied:                   raftApplied,
		MaxSizePerMsg:             h.cfg.MaxSizePerMsg,
		MaxCommittedSizePerReady:  h.cfg.MaxSizePerMsg * 4,
		MaxUncommittedEntriesSize: h.cfg.MaxUncommittedBytes,
		MaxInflightMsgs:           h.cfg.MaxInflightMsgs,
		CheckQuorum:               !h.cfg.DisableCheckQuorum,
		PreVote:                   !h.cfg.DisablePreVote,
		DisableProposalForwarding: h.cfg.DisableProposalForwarding,
		Logger:                    newRaftLogger(h.log.With("group", id)),
	})
	if err != nil {
		return fmt.Errorf("multiraft: group %d: %w", id, err)
	}
	g.rn = rn
	g.role = raft.StateFollower
	g.publishStatus()
	g.publishConf()

	h.mu.Lock()
	if h.mu.closing {
		h.mu.Unlock()
		return ErrStopped
	}
	if _, ok := h.mu.groups[id]; ok {
		h.mu.Unlock()
		return fmt.Errorf("%w: %d", ErrGroupExists, id)
	}
	h.mu.groups[id] = g
	i := sort.Search(len(h.mu.ids), func(i int) bool { return h.mu.ids[i] >= id })
	h.mu.ids = append(h.mu.ids, 0)
	copy(h.mu.ids[i+1:], h.mu.ids[i:])
	h.mu.ids[i] = id
	h.mu.Unlock()
	h.metrics.groupAdded(g.role)
	h.sched.enqueue(id)
	return nil
}

// StopGroup stops the local replica of group id, keeping its data, and
// waits until it stopped. Pending requests fail with ErrGroupRemoved.
func (h *Host) StopGroup(ctx context.Context, id uint64) error {
	return h.stopGroup(ctx, id, false)
}

// RemoveGroup stops the local replica of group id and deletes its raft
// state. The state machine's own data is the caller's to delete.
func (h *Host) RemoveGroup(ctx context.Context, id uint64) error {
	return h.stopGroup(ctx, id, true)
}

func (h *Host) stopGroup(ctx context.Context, id uint64, remove bool) error {
	g, err := h.lookup(id)
	if err != nil {
		return err
	}
	req := &stopReq{remove: remove, done: make(chan struct{})}
	g.in.Lock()
	if g.in.closed || g.in.stop != nil {
		g.in.Unlock()
		return fmt.Errorf("%w: %d", ErrGroupRemoved, id)
	}
	g.in.stop = req
	g.in.Unlock()
	h.sched.enqueue(id)
	select {
	case <-req.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-h.stopped:
		return ErrStopped
	}
}

// removeGroup forgets g. Called by g's owner from shutdown.
func (h *Host) removeGroup(g *group, remove bool) {
	h.mu.Lock()
	if h.mu.groups[g.id] == g {
		delete(h.mu.groups, g.id)
		i := sort.Search(len(h.mu.ids), func(i int) bool { return h.mu.ids[i] >= g.id })
		h.mu.ids = append(h.mu.ids[:i], h.mu.ids[i+1:]...)
	}
	h.mu.Unlock()
	h.metrics.groupRemoved(g.role)
	h.hub.forget(g.id)
	if remove {
		b := h.store.NewBatch()
		b.DeleteGroup(g.id)
		if err := b.Commit(!h.cfg.DisableSync); err != nil {
			h.fatal(fmt.Errorf("delete group %d: %w", g.id, err))
		}
		b.Close()
	}
}

func (h *Host) lookup(id uint64) (*group, error) {
	if h.isStopped() {
		return nil, h.stoppedErr()
	}
	h.mu.RLock()
	g := h.mu.groups[id]
	h.mu.RUnlock()
	if g == nil {
		return nil, fmt.Errorf("%w: %d", ErrGroupNotFound, id)
	}
	return g, nil
}

// Future is the result of an asynchronous proposal.
type Future struct{ p *proposal }

// Done is closed once the result is known.
func (f Future) Done() <-chan struct{} { return f.p.done }

// Result returns the state machine's result and error; valid once Done is
// closed. The caller owns the result.
func (f Future) Result() ([]byte, error) { return f.p.result, f.p.err }

// ProposeAsync proposes cmd to group and returns at once. The Future
// completes with the state machine's result once the command is applied on
// this node, or with ErrNoLeader, ErrDropped, ErrAmbiguous,
// ErrGroupRemoved or ErrStopped. cmd is copied.
func (h *Host) ProposeAsync(group uint64, cmd []byte) Future {
	data := make([]byte, 8+len(cmd))
	copy(data[8:], cmd)
	p := &proposal{data: data, done: make(chan struct{})}
	h.submit(group, p)
	return Future{p}
}

// ProposeFunc proposes cmd to group like ProposeAsync, but hands the
// outcome to done instead of a Future, which saves a goroutine and a
// channel per proposal for callers that gather many outcomes (a server
// answering a stream of writes). done is called exactly once, with the
// state machine's result (owned by done) or one of ProposeAsync's errors.
// It runs on a scheduler worker, or on the caller's goroutine before
// ProposeFunc returns when the proposal fails at once. It must not block
// and must not call the Host: the worker that runs it is applying the
// group (seed 001: the engine never waits on its consumer). cmd is copied.
func (h *Host) ProposeFunc(group uint64, cmd []byte, done func(result []byte, err error)) {
	data := make([]byte, 8+len(cmd))
	copy(data[8:], cmd)
	h.submit(group, &proposal{data: data, cb: done})
}

func (h *Host) submit(group uint64, p *proposal) {
	p.key = h.keyBase + h.nextKey.Add(1)
	if p.key == 0 { // 0 marks a packed entry
		p.key = h.keyBase + h.nextKey.Add(1)
	}
	if p.cc != nil {
		var ctx [8]byte
		binary.BigEndian.PutUint64(ctx[:], p.key)
		p.cc.Context = ctx[:]
	} else {
		binary.BigEndian.PutUint64(p.data, p.key)
	}
	g, err := h.lookup(group)
	if err != nil {
		p.finish(nil, err)
		return
	}
	g.in.Lock()
	if g.in.closed {
		g.in.Unlock()
		p.finish(nil, fmt.Errorf("%w: %d", ErrGroupRemoved, group))
		return
	}
	g.in.props = append(g.in.props, p)
	g.in.Unlock()
	h.sched.enqueue(group)
}

// Propose proposes cmd to group and waits for the state machine's result.
// It returns ctx's error if ctx ends first (the command may still apply),
// or one of the errors of ProposeAsync.
func (h *Host) Propose(ctx context.Context, group uint64, cmd []byte) ([]byte, error) {
	f := h.ProposeAsync(group, cmd)
	select {
	case <-f.p.done:
		return f.p.result, f.p.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ReadFuture is the result of an asynchronous read.
type ReadFuture struct {
	r     *readReq
	g     *group
	query []byte
}

// Done is closed once the read index is confirmed and applied locally (or
// the read failed).
func (f ReadFuture) Done() <-chan struct{} { return f.r.done }

// Result runs the query against the state machine; valid once Done is
// closed. Errors as Read.
func (f ReadFuture) Result() ([]byte, error) {
	if f.r.err != nil {
		return nil, f.r.err
	}
	return f.g.sm.Query(f.query)
}

// ReadAsync starts a linearizable read of group and returns at once; see
// Read.
func (h *Host) ReadAsync(group uint64, query []byte) ReadFuture {
	r := &readReq{done: make(chan struct{})}
	fail := func(err error) ReadFuture {
		r.err = err
		close(r.done)
		return ReadFuture{r: r}
	}
	g, err := h.lookup(group)
	if err != nil {
		return fail(err)
	}
	g.in.Lock()
	if g.in.closed {
		g.in.Unlock()
		return fail(fmt.Errorf("%w: %d", ErrGroupRemoved, group))
	}
	g.in.reads = append(g.in.reads, r)
	g.in.Unlock()
	h.sched.enqueue(group)
	return ReadFuture{r: r, g: g, query: query}
}

// Read answers query on group's state machine linearizably: it waits until
// this replica has applied everything committed before the call (ReadIndex,
// batched with the other reads of the group), then calls Query on the
// caller's goroutine. Errors: ctx's, ErrNoLeader, ErrLeaderChanged,
// ErrTimeout (all safe to retry), ErrGroupNotFound, ErrStopped, or Query's.
func (h *Host) Read(ctx context.Context, group uint64, query []byte) ([]byte, error) {
	f := h.ReadAsync(group, query)
	select {
	case <-f.Done():
		return f.Result()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// QueryLocal answers query from this replica's state without any check:
// a serializable, possibly stale read.
func (h *Host) QueryLocal(group uint64, query []byte) ([]byte, error) {
	g, err := h.lookup(group)
	if err != nil {
		return nil, err
	}
	return g.sm.Query(query)
}

// TransferLeadership asks the group's leader (which must be this node) to
// hand leadership to node to, and waits until this node sees to as leader.
// Errors: ctx's, ErrTimeout, ErrGroupNotFound, ErrGroupRemoved, ErrStopped.
func (h *Host) TransferLeadership(ctx context.Context, group, to uint64) error {
	g, err := h.lookup(group)
	if err != nil {
		return err
	}
	if to == 0 {
		return fmt.Errorf("%w: transfer to node 0", ErrInvalidRequest)
	}
	t := &transfer{to: to, done: make(chan error, 1)}
	g.in.Lock()
	if g.in.closed {
		g.in.Unlock()
		return fmt.Errorf("%w: %d", ErrGroupRemoved, group)
	}
	g.in.transfers = append(g.in.transfers, t)
	g.in.Unlock()
	h.sched.enqueue(group)
	select {
	case err := <-t.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ChangeKind is a kind of membership change.
type ChangeKind int

const (
	// AddVoter adds a voting member.
	AddVoter ChangeKind = iota
	// AddLearner adds a non-voting member that receives the log.
	AddLearner
	// PromoteLearner makes a learner a voter.
	PromoteLearner
	// RemoveMember removes a voter or learner.
	RemoveMember
)

// ChangeMembership proposes one membership change to group (a ConfChangeV2)
// and waits until it is applied on this node. Proposals that arrive while
// it is pending are held and proposed after it applies. Errors as Propose.
func (h *Host) ChangeMembership(ctx context.Context, group uint64, kind ChangeKind, node uint64) error {
	f := h.ChangeMembershipAsync(group, kind, node)
	select {
	case <-f.Done():
		_, err := f.Result()
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ChangeMembershipAsync is ChangeMembership without the wait.
func (h *Host) ChangeMembershipAsync(group uint64, kind ChangeKind, node uint64) Future {
	p := &proposal{done: make(chan struct{})}
	var t raftpb.ConfChangeType
	switch kind {
	case AddVoter, PromoteLearner:
		t = raftpb.ConfChangeAddNode
	case AddLearner:
		t = raftpb.ConfChangeAddLearnerNode
	case RemoveMember:
		t = raftpb.ConfChangeRemoveNode
	default:
		p.finish(nil, fmt.Errorf("%w: change kind %d", ErrInvalidRequest, kind))
		return Future{p}
	}
	if node == 0 {
		p.finish(nil, fmt.Errorf("%w: membership change for node 0", ErrInvalidRequest))
		return Future{p}
	}
	p.cc = &raftpb.ConfChangeV2{Changes: []raftpb.ConfChangeSingle{{Type: t, NodeID: node}}}
	h.submit(group, p)
	return Future{p}
}

// Campaign makes this node's replica of group start an election now,
// instead of waiting for its election timeout. Used to place leaders (the
// node spreads them at start) and by deterministic tests.
func (h *Host) Campaign(group uint64) error {
	g, err := h.lookup(group)
	if err != nil {
		return err
	}
	g.in.Lock()
	g.in.campaign = true
	g.in.Unlock()
	h.sched.enqueue(group)
	return nil
}

// ForgetLeader makes this node's follower replica of group forget its
// leader, so that it grants a pre-vote at once instead of waiting out the
// leader's lease. For when the leader is known to be gone (its process was
// killed) and by deterministic tests.
func (h *Host) ForgetLeader(group uint64) error {
	g, err := h.lookup(group)
	if err != nil {
		return err
	}
	g.in.Lock()
	g.in.forget = true
	g.in.Unlock()
	h.sched.enqueue(group)
	return nil
}

// EventsCollapsed counts leader events that slow subscribers did not see
// one by one (their mailbox was collapsed to the latest state per group).
func (h *Host) EventsCollapsed() uint64 { return h.hub.collapsed.Load() }

// Subscribe returns a subscription to leader changes of every group. Its
// first batch holds the current leader of every group that has one. The
// engine never waits for a subscriber: one that falls behind gets the
// latest state per group with Skipped set. Close it when done.
func (h *Host) Subscribe() *Subscription { return h.hub.subscribe() }

// GroupStatus describes one local replica.
type GroupStatus struct {
	ID       uint64
	Leader   uint64
	Term     uint64
	Commit   uint64
	Applied  uint64
	Role     string
	Voters   []uint64
	Learners []uint64
}

// Status returns the status of every local replica, by group ID.
func (h *Host) Status() []GroupStatus {
	h.mu.RLock()
	gs := make([]*group, 0, len(h.mu.ids))
	for _, id := range h.mu.ids {
		gs = append(gs, h.mu.groups[id])
	}
	h.mu.RUnlock()
	out := make([]GroupStatus, 0, len(gs))
	for _, g := range gs {
		out = append(out, g.status())
	}
	return out
}

// GroupStatus returns the status of one local replica.
func (h *Host) GroupStatus(id uint64) (GroupStatus, error) {
	g, err := h.lookup(id)
	if err != nil {
		return GroupStatus{}, err
	}
	return g.status(), nil
}

func (g *group) status() GroupStatus {
	s := GroupStatus{
		ID:      g.id,
		Leader:  g.st.lead.Load(),
		Term:    g.st.term.Load(),
		Commit:  g.st.commit.Load(),
		Applied: g.st.applied.Load(),
		Role:    raft.StateType(g.st.role.Load()).String(),
	}
	if v := g.st.voters.Load(); v != nil {
		s.Voters = *v
	}
	if l := g.st.learners.Load(); l != nil {
		s.Learners = *l
	}
	return s
}

// Leader returns the group's leader as this replica knows it (0 if none)
// and its term.
func (h *Host) Leader(group uint64) (leader, term uint64, err error) {
	g, err := h.lookup(group)
	if err != nil {
		return 0, 0, err
	}
	return g.st.lead.Load(), g.st.term.Load(), nil
}

// Groups returns the IDs of the local replicas, ascending.
func (h *Host) Groups() []uint64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return append([]uint64(nil), h.mu.ids...)
}

// HandleBatch implements transport.Handler: messages go to their groups'
// inboxes. Never blocks; a full inbox drops (raft retransmits).
func (h *Host) HandleBatch(from uint64, batch []transport.Envelope) {
	var ids []uint64
	var dropped int
	h.mu.RLock()
	var g *group
	for i := range batch {
		e := &batch[i]
		if g == nil || g.id != e.Group {
			if g != nil {
				g.in.Unlock()
			}
			g = h.mu.groups[e.Group]
			if g == nil {
				dropped++
				continue
			}
			g.in.Lock()
			if n := len(ids); n == 0 || ids[n-1] != g.id {
				ids = append(ids, g.id)
			}
		}
		if len(g.in.msgs) >= h.cfg.MaxInboxMsgs || g.in.closed {
			dropped++
			continue
		}
		g.in.msgs = append(g.in.msgs, e.Msg)
	}
	if g != nil {
		g.in.Unlock()
	}
	h.mu.RUnlock()
	if dropped > 0 {
		h.metrics.inboxDropped.Add(float64(dropped))
	}
	h.sched.enqueueAll(ids)
}

// ReportUnreachable implements transport.Handler. The report is recorded
// under a leaf lock and handed to every group on the next tick by the
// group's owner, never applied here (seed 000).
func (h *Host) ReportUnreachable(to uint64) {
	h.feedback.Lock()
	h.feedback.unreachable[to] = struct{}{}
	h.feedback.Unlock()
}

// ReportSnapshot implements transport.Handler: recorded in the group's
// inbox, applied by its owner.
func (h *Host) ReportSnapshot(group, to uint64, ok bool) {
	h.mu.RLock()
	g := h.mu.groups[group]
	if g != nil {
		g.in.Lock()
		g.in.snaps = append(g.in.snaps, snapReport{to: to, ok: ok})
		g.in.Unlock()
	}
	h.mu.RUnlock()
	if g != nil {
		h.sched.enqueue(group)
	}
}

func (h *Host) isStopped() bool {
	select {
	case <-h.stopc:
		return true
	default:
		return false
	}
}

func (h *Host) stoppedErr() error {
	if e := h.err.Load(); e != nil {
		return fmt.Errorf("%w: %w", ErrStopped, *e)
	}
	return ErrStopped
}

// Err returns the error that stopped the Host, if it failed.
func (h *Host) Err() error {
	if e := h.err.Load(); e != nil {
		return *e
	}
	return nil
}

// Done is closed once the Host has stopped, whether by Stop or a failure.
func (h *Host) Done() <-chan struct{} { return h.stopped }

// failAt calls Config.FailPoint at boundary name; on an error it stops the
// Host like fatal and reports true: the caller abandons the cycle.
func (h *Host) failAt(name string) bool {
	if h.cfg.FailPoint == nil {
		return false
	}
	if err := h.cfg.FailPoint(name); err != nil {
		h.fatal(fmt.Errorf("failpoint %s: %w", name, err))
		return true
	}
	return false
}

// fatal stops the Host loudly: a storage or state machine error on the raft
// path leaves a replica that can no longer be trusted.
func (h *Host) fatal(err error) {
	if h.err.CompareAndSwap(nil, &err) {
		h.log.Error("multiraft: fatal error, stopping host", "err", err)
	}
	h.halt()
	if !h.cfg.Manual {
		go h.Stop()
	}
}

func (h *Host) halt() {
	h.stopOnce.Do(func() {
		close(h.stopc)
		h.sched.stop()
	})
}

// Stop stops the Host: workers finish their cycle, pending requests fail
// with ErrStopped, subscriptions close, and the store is closed if the Host
// opened it. Safe to call more than once and from any goroutine but a
// StateMachine method.
func (h *Host) Stop() {
	h.halt()
	h.mu.Lock()
	if h.mu.closing {
		h.mu.Unlock()
		<-h.stopped
		return
	}
	h.mu.closing = true
	h.mu.Unlock()
	h.wg.Wait()
	if h.manualW != nil {
		h.manualW.batch.Close()
	}
	// No worker runs any more: this goroutine owns every group now.
	h.mu.RLock()
	gs := make([]*group, 0, len(h.mu.groups))
	for _, g := range h.mu.groups {
		gs = append(gs, g)
	}
	h.mu.RUnlock()
	for _, g := range gs {
		g.shutdown(h.stoppedErr(), false)
	}
	h.hub.closeAll()
	if h.ownStore {
		if err := h.store.Close(); err != nil {
			h.log.Error("close store", "err", err)
		}
	}
	close(h.stopped)
}
