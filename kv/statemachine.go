package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flotilla/flotilla/multiraft"
)

const (
	snapMagic = "FKV4" // header, descriptor, then records (snapshot.go)
	// snapHeaderLen: the magic, revision, leases granted, history floor.
	snapHeaderLen = len(snapMagic) + 24
)

// StateMachine is the KV state of one range's replica, kept in a Pebble
// database shared with the raft logs and the other ranges.
//
// Apply, Snapshot, Restore, Sync and AppliedIndex are called by the
// engine's worker that holds the range, one at a time. Query may run
// concurrently with them: it reads the held writes under their lock and
// Pebble, whose batches become visible to readers all at once.
type StateMachine struct {
	db *pebble.DB
	id uint64

	// desc is the range's descriptor as applied; nil until the replica
	// is initialized (bootstrapped, or restored from a snapshot). Written
	// by the owning worker, read by anyone.
	desc atomic.Pointer[Descriptor]

	// applied and revision are written by the owning worker and read by
	// anyone (status pages).
	applied  atomic.Uint64
	revision atomic.Uint64
	// leaseSeq counts the leases the range granted (lease IDs, lease.go).
	// Owned by the worker.
	leaseSeq uint64

	// mayAttach: the range may hold a key attached to a lease. While it
	// is false, a put or delete needs no lookup of the key's attachment
	// (the common case of a range never used with leases). Owned by the
	// worker (set by New, Apply and Restore); never wrongly false.
	mayAttach bool

	// dirty holds applied puts and deletes not yet in Pebble (dirty.go).
	dirty dirtySet
	// persisted is the applied index Pebble has. Owned by the worker.
	persisted uint64

	leases leaseTable // leases as applied, for the leader's expiry loop
	hub    watchHub   // election watchers

	// hist is the history's state (history.go), owned by the worker; floor
	// the history floor, written by the worker, read by anyone. feedp is
	// the live feed of writes for watches (feed.go), made by the first
	// watch of the range (an idle replica carries a pointer, not a feed).
	hist  history
	floor atomic.Uint64
	feedp atomic.Pointer[feed]

	// sessions are the client sessions of the range (session.go). Owned by
	// the worker.
	sessions sessionTable
	// auth is the size of the range's auth table as applied (auth.go;
	// empty but in the meta range). Owned by the worker.
	auth authSize

	// hooks are the calls to the owner (Hooks); nil: none. Shared by
	// every replica of a node (WithHooks) unless ownHooks: a With...Hook
	// option made a copy of its own.
	hooks    *Hooks
	ownHooks bool
	// active: the activity hook ran since Quiet (WithActivityHook).
	active atomic.Bool

	// ops counts applied commands and answered queries; written the bytes
	// applied puts wrote; sampler keeps keys of recent requests (stats.go).
	ops, written atomic.Uint64
	sampler      loadSampler

	// noSpanCheck: the planted bug WithoutSpanChecks; noMembership:
	// WithoutMembershipRecord.
	noSpanCheck, noMembership bool

	// frozen is the freeze record once the range is frozen for a merge
	// (merge.go); destroyed is set when the replica is being removed.
	// Written by the worker (destroyed by anyone), read by anyone.
	frozen    atomic.Pointer[frozenRec]
	destroyed atomic.Bool
	// restore: Restore holds it (write) while it replaces the state, in
	// several Pebble batches; queries hold it (read) while they read, and
	// fail with ErrUninitialized rather than wait for a restore, so that
	// none sees a mix of the old state and the new. restoreFailed: the
	// last Restore failed part way (the node stops); queries fail.
	restore       sync.RWMutex
	restoreFailed atomic.Bool
}

// WithoutSpanChecks makes the state machine serve keys outside its span:
// after a split both halves serve the keys the left one gave away. The
// planted bug the simulation proves its checks against; never use it in a
// real node.
func WithoutSpanChecks() Option { return func(s *StateMachine) { s.noSpanCheck = true } }

// WithoutMembershipRecord makes the state machine take every membership
// change without writing it into the descriptor: the range's replicas as
// the descriptor lists them part from its raft configuration. The planted
// bug the simulation proves its checks against (a removed replica never
// learns it is out); never use it in a real node.
func WithoutMembershipRecord() Option { return func(s *StateMachine) { s.noMembership = true } }

var _ multiraft.StateMachine = (*StateMachine)(nil)

// Option configures New.
type Option func(*StateMachine)

// WithHoldBudget makes the state machine hold applied writes against b,
// shared with others (default: a budget of DefaultHoldBytes of its own).
func WithHoldBudget(b *HoldBudget) Option {
	return func(s *StateMachine) { s.dirty.budget = b }
}

// Hooks are the state machine's calls to its owner, each described by the
// option that sets it alone (WithDescriptorHook, WithLeaseHook,
// WithActivityHook, WithSplitHook, WithSnapshotGate). A nil field is not
// called. One Hooks value may serve every state machine of a node
// (WithHooks): an idle replica then carries a pointer, where its own five
// closures were 0.1 KiB of it (BENCHMARKS.md, "Quiescence: the idle floor
// and memory, later"). The state machines never modify it, and nobody may
// once it is in use.
type Hooks struct {
	Descriptor   func(id uint64)
	Leases       func(id uint64)
	Active       func(id uint64)
	Split        func(left, right Descriptor, committed bool)
	SnapshotGate func(id uint64, d *Descriptor) bool
}

// WithHooks makes the state machine call h's hooks. h is shared, not
// copied; a With...Hook option after it changes a copy of this state
// machine's own, and one before it is kept where h has no such hook (in
// a copy of its own).
func WithHooks(h *Hooks) Option {
	return func(s *StateMachine) {
		if !s.ownHooks {
			s.hooks = h
			return
		}
		own, merged := s.hooks, *h
		if merged.Descriptor == nil {
			merged.Descriptor = own.Descriptor
		}
		if merged.Leases == nil {
			merged.Leases = own.Leases
		}
		if merged.Active == nil {
			merged.Active = own.Active
		}
		if merged.Split == nil {
			merged.Split = own.Split
		}
		if merged.SnapshotGate == nil {
			merged.SnapshotGate = own.SnapshotGate
		}
		*own = merged
	}
}

// own returns hooks of s's own to set one in (a copy of the shared ones).
func (s *StateMachine) own() *Hooks {
	if !s.ownHooks {
		h := &Hooks{}
		if s.hooks != nil {
			*h = *s.hooks
		}
		s.hooks, s.ownHooks = h, true
	}
	return s.hooks
}

// WithDescriptorHook makes the state machine call fn with its range ID
// whenever the descriptor it applied changes: a restore, a split, a merge.
// fn runs on the worker that applies the range, after the change is
// visible; it must not block and must not call the engine.
func WithDescriptorHook(fn func(id uint64)) Option {
	return func(s *StateMachine) { s.own().Descriptor = fn }
}

// WithActivityHook makes the state machine call fn with its range ID the
// first time it applies commands or answers a query after Quiet (or after
// it was made): its Ops and WrittenBytes may have moved since. fn runs on
// the applying or querying goroutine and must not block. Package ranges
// samples the load of only the replicas it names, not of every idle one.
func WithActivityHook(fn func(id uint64)) Option {
	return func(s *StateMachine) { s.own().Active = fn }
}

// Quiet rearms the activity hook: the next command or query calls it
// again. Call it before reading Ops and WrittenBytes, so that nothing after
// the read goes unreported.
func (s *StateMachine) Quiet() { s.active.Store(false) }

// touch runs the activity hook once per Quiet.
func (s *StateMachine) touch() {
	if s.hooks != nil && s.hooks.Active != nil && !s.active.Load() && s.active.CompareAndSwap(false, true) {
		s.hooks.Active(s.id)
	}
}

// descriptorChanged runs the descriptor hook, if any.
func (s *StateMachine) descriptorChanged() {
	if s.hooks != nil && s.hooks.Descriptor != nil {
		s.hooks.Descriptor(s.id)
	}
}

// WithLeaseHook makes the state machine call fn with its range ID after
// its lease table (Leases) changed: an applied grant, revocation, expiry,
// split or merge that changed it, or a restore. A caller that keeps a
// copy of the table (Leases' since argument) needs to read it again only
// for the ranges fn named; one call may stand for several changes. fn is
// not called for the table New loads. fn runs on the worker that applies
// the range, after the new table is visible to Leases and without the
// table's lock held; it must not block and must not call the engine.
func WithLeaseHook(fn func(id uint64)) Option {
	return func(s *StateMachine) { s.own().Leases = fn }
}

// leasesChanged runs the lease hook, if any.
func (s *StateMachine) leasesChanged() {
	if s.hooks != nil && s.hooks.Leases != nil {
		s.hooks.Leases(s.id)
	}
}

// New returns the state machine of range id's replica, loading its state
// from db: a replica that has none is uninitialized (Descriptor returns
// false) until a snapshot restores it. The caller keeps owning db and
// closes it after the engine stopped.
func New(db *pebble.DB, id uint64, opts ...Option) (*StateMachine, error) {
	s := &StateMachine{db: db, id: id}
	s.hist.retention = Retention{Revisions: DefaultHistoryRevisions}
	s.sampler.rng = id*0x9e3779b97f4a7c15 | 1
	s.sessions.init()
	for _, o := range opts {
		o(s)
	}
	if s.dirty.budget == nil {
		s.dirty.budget = NewHoldBudget(DefaultHoldBytes)
	}
	if err := s.load(db); err != nil {
		return nil, fmt.Errorf("kv: range %d: %w", id, err)
	}
	if err := s.backfillHistory(); err != nil {
		return nil, fmt.Errorf("kv: range %d: %w", id, err)
	}
	return s, nil
}

// load reads the replica's state from r (the database, or a restore's
// batch), except what the caller sets from elsewhere.
func (s *StateMachine) load(r pebble.Reader) error {
	d, ok, err := loadDescriptor(r, s.id)
	if err != nil {
		return fmt.Errorf("load descriptor: %w", err)
	}
	if ok {
		s.desc.Store(&d)
	}
	f, frozen, err := loadFrozen(r, s.id)
	if err != nil {
		return fmt.Errorf("load freeze record: %w", err)
	}
	if frozen {
		s.frozen.Store(&f)
	} else {
		s.frozen.Store(nil)
	}
	leases, err := s.loadLeases(r)
	if err != nil {
		return fmt.Errorf("load leases: %w", err)
	}
	s.setLeases(true, leases, nil)
	if s.mayAttach, err = s.anyAttached(r); err != nil {
		return fmt.Errorf("look for attached keys: %w", err)
	}
	if err := s.sessions.load(r, s.id); err != nil {
		return fmt.Errorf("load sessions: %w", err)
	}
	if s.auth, err = loadAuthSize(r, s.id); err != nil {
		return fmt.Errorf("load auth table: %w", err)
	}
	v, ok, err := getRaw(r, s.appliedKey())
	switch {
	case err != nil:
		return fmt.Errorf("load applied index: %w", err)
	case !ok:
		// Nothing applied yet (a range just bootstrapped): no value lacks
		// its history record.
		s.applied.Store(0)
		s.revision.Store(0)
		s.floor.Store(0)
		s.leaseSeq = 0
		s.hist.complete = true
	case len(v) != 24 && len(v) != 32:
		return fmt.Errorf("%w: applied record of %d bytes", ErrCorrupt, len(v))
	default:
		s.applied.Store(binary.BigEndian.Uint64(v))
		s.revision.Store(binary.BigEndian.Uint64(v[8:]))
		s.leaseSeq = binary.BigEndian.Uint64(v[16:])
		floor, kept := appliedFloor(v)
		s.floor.Store(floor)
		s.hist.complete = kept
	}
	s.persisted = s.applied.Load()
	return nil
}

// RangeID returns the range's ID.
func (s *StateMachine) RangeID() uint64 { return s.id }

// Descriptor returns the range's descriptor as this replica applied it;
// false if the replica is not initialized yet. The caller must not modify
// it.
func (s *StateMachine) Descriptor() (*Descriptor, bool) {
	d := s.desc.Load()
	return d, d != nil
}

// Revision returns the range's revision: the number of writes applied.
func (s *StateMachine) Revision() uint64 { return s.revision.Load() }

func (s *StateMachine) appliedKey() []byte { return localKey(kindApplied, s.id, 0) }

// appliedValue is the applied record: index, revision, leases granted,
// history floor (history.go).
func (s *StateMachine) appliedValue(applied, revision uint64) []byte {
	return encodeApplied(applied, revision, s.leaseSeq, s.floorWord())
}

func encodeApplied(applied, revision, leaseSeq, floor uint64) []byte {
	v := make([]byte, 32)
	binary.BigEndian.PutUint64(v, applied)
	binary.BigEndian.PutUint64(v[8:], revision)
	binary.BigEndian.PutUint64(v[16:], leaseSeq)
	binary.BigEndian.PutUint64(v[24:], floor)
	return v
}

// appliedFloor returns the history floor of applied record v, and whether
// the range kept history (every value then has its history record:
// history.go). A record written before history existed has neither: no
// revision before its own is kept.
func appliedFloor(v []byte) (floor uint64, kept bool) {
	if len(v) < 32 {
		return binary.BigEndian.Uint64(v[8:]), false
	}
	w := binary.BigEndian.Uint64(v[24:])
	return w &^ histKept, w&histKept != 0
}

var _ multiraft.Syncer = (*StateMachine)(nil)

// Sync implements multiraft.Syncer: Apply holds writes in memory or
// commits them without sync (the log can redo them); this writes what is
// held and syncs Pebble's WAL, which then holds every apply so far, before
// the engine truncates the log behind them.
func (s *StateMachine) Sync() error {
	if err := s.flush(); err != nil {
		return err
	}
	if err := s.db.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("kv: range %d: sync: %w", s.id, err)
	}
	return nil
}

// AppliedIndex implements multiraft.StateMachine.
func (s *StateMachine) AppliedIndex() uint64 { return s.applied.Load() }

// getFrom reads key through r (the database or an indexed batch); the
// value is a copy.
func getFrom(r pebble.Reader, k []byte) (found bool, m storedMeta, val []byte, err error) {
	return readStored(r, k, true)
}

// metaFrom reads the revisions of key through r, not its value.
func metaFrom(r pebble.Reader, k []byte) (found bool, m storedMeta, err error) {
	found, m, _, err = readStored(r, k, false)
	return found, m, err
}

// readStored reads key through r: its revisions, and a copy of its value
// if withValue.
func readStored(r pebble.Reader, k []byte, withValue bool) (found bool, m storedMeta, val []byte, err error) {
	v, closer, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, storedMeta{}, nil, nil
	}
	if err != nil {
		return false, storedMeta{}, nil, err
	}
	defer closer.Close()
	m, val, err = decodeStored(v)
	if err != nil {
		return false, storedMeta{}, nil, fmt.Errorf("%w (key %x)", err, k)
	}
	if withValue {
		val = bytes.Clone(val)
	} else {
		val = nil
	}
	return true, m, val, nil
}

// flush writes the held writes to Pebble with the applied index, in one
// batch, without sync. Called by the worker.
func (s *StateMachine) flush() error {
	applied := s.applied.Load()
	if (s.dirty.empty() && s.persisted == applied) || s.destroyed.Load() {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := s.dirty.writeTo(b, []byte{kindData}); err != nil {
		return err
	}
	if err := s.sessions.writeTo(b, s.id); err != nil {
		return err
	}
	if desc := s.desc.Load(); desc != nil {
		if err := s.sweep(b, desc); err != nil {
			return fmt.Errorf("kv: range %d: sweep history: %w", s.id, err)
		}
	}
	if err := b.Set(s.appliedKey(), s.appliedValue(applied, s.revision.Load()), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("kv: range %d: commit held writes: %w", s.id, err)
	}
	// Pebble and the held writes agree until reset: readers see the same
	// state through either.
	s.dirty.reset()
	s.persisted = applied
	return nil
}

// Apply implements multiraft.StateMachine. Plain puts and deletes are held
// in memory (dirtySet); any other command first writes what is held, then
// goes in one Pebble batch with its data and the applied index.
func (s *StateMachine) Apply(cmds []multiraft.Command) error {
	if len(cmds) == 0 {
		return nil
	}
	if s.destroyed.Load() {
		for i := range cmds {
			cmds[i].Result = Result{KeyMismatch: true}.encode()
		}
		return nil
	}
	desc := s.desc.Load()
	if desc == nil {
		return fmt.Errorf("%w: range %d: a command at index %d", ErrUninitialized, s.id, cmds[0].Index)
	}
	s.ops.Add(uint64(len(cmds)))
	s.touch()
	if sc := s.holdable(cmds); sc != nil {
		defer sc.release()
		return s.applyHeld(cmds, desc, sc)
	}
	if err := s.flush(); err != nil {
		return err
	}
	b := s.db.NewIndexedBatch()
	defer b.Close()
	rev := s.revision.Load()
	var last uint64
	var fx effects
	for i := range cmds {
		c := &cmds[i]
		last = c.Index
		cmd, err := decodeCommand(c.Data)
		if err != nil {
			c.Result = Result{Revision: rev, Err: err.Error()}.encode()
			continue
		}
		if fx.frozen != nil || s.frozen.Load() != nil {
			// Frozen for a merge (perhaps by a freeze earlier in this
			// batch): nothing applies, not even to the session table, so
			// that every replica's state stays as of the freeze, which
			// the merge takes in.
			c.Result = Result{Revision: rev, KeyMismatch: true}.encode()
			continue
		}
		if res, skip := s.sessions.check(&cmd); skip {
			c.Result = res
			continue
		}
		// After the session check: a retry of a write this range applied
		// before it split gets its first result, wherever the key is now.
		if !s.holds(desc, &cmd) {
			c.Result = Result{Revision: rev, KeyMismatch: true}.encode()
			continue
		}
		if cmd.Op.needsKey() {
			s.sampler.sample(cmd.Key)
		} else if cmd.Op == OpTxn {
			if k := cmd.Txn.firstKey(); k != nil {
				s.sampler.sample(k) // load splits see transactions too
			}
		}
		var res Result
		switch cmd.Op {
		case OpSplit:
			var left *Descriptor
			if res, left, err = s.applySplit(b, desc, &cmd, rev, &fx); err != nil {
				return err
			}
			if left != nil {
				desc = left // the commands after it see the new span
			}
		case OpFreeze:
			if res, err = s.applyFreeze(b, desc, &cmd, c.Index, &fx); err != nil {
				return err
			}
		case OpMerge:
			var merged *Descriptor
			if res, merged, err = s.applyMerge(b, desc, &cmd, &rev, &fx); err != nil {
				return err
			}
			if merged != nil {
				desc = merged // the commands after it see the new span
			}
		default:
			if res, err = s.applyOne(b, desc, &cmd, &rev, &fx); err != nil {
				return err
			}
		}
		res.Revision = rev
		c.Result = res.encode()
		s.sessions.record(&cmd, c.Result)
	}
	if err := s.sessions.writeTo(b, s.id); err != nil {
		return err
	}
	s.raiseFloor(rev)
	if err := s.sweep(b, desc); err != nil {
		return fmt.Errorf("kv: range %d: sweep history: %w", s.id, err)
	}
	if err := b.Set(s.appliedKey(), s.appliedValue(last, rev), nil); err != nil {
		return err
	}
	if s.hooks != nil && s.hooks.Split != nil {
		for _, sp := range fx.splits {
			s.hooks.Split(sp[0], sp[1], false)
		}
	}
	old := s.desc.Load()
	shrunk := desc != old && old.ContainsSpan(desc.Start, desc.End)
	if shrunk {
		// Before the commit: from now on queries for keys the range gave
		// away are refused here. After it, this replica of the other half
		// could apply writes a read here would then miss.
		s.desc.Store(desc)
	}
	// A split syncs: the new range's raft log will start at its initial
	// index (multiraft.StartGroup) on the promise that its state is
	// durable; a crash must not leave the raft state without it. A
	// freeze syncs: a merge reads the frozen state from disk on every
	// node once each replica applied it. A merge syncs: the merged
	// replica is then removed.
	sync := pebble.NoSync
	if len(fx.splits) > 0 || fx.frozen != nil || fx.merged != nil {
		sync = pebble.Sync
	}
	if err := b.Commit(sync); err != nil {
		return fmt.Errorf("kv: range %d: commit apply: %w", s.id, err)
	}
	s.persisted = last
	s.applied.Store(last)
	s.revision.Store(rev)
	s.publishHistory(rev)
	if fx.leases != nil {
		s.setLeases(false, nil, fx.leases)
		s.leasesChanged()
	}
	if fx.elections != nil {
		s.publish(fx.elections, false)
	}
	if fx.frozen != nil {
		s.frozen.Store(fx.frozen)
	}
	s.auth.records += fx.auth.records
	s.auth.bytes += fx.auth.bytes
	if fx.merged != nil {
		// The ring lacks the writes of the keys the merge brought in, made
		// in the other range: watchers read those from the history. Before
		// the span grows: a watch that plans on the merged span must not
		// find them missing from a ring that claims to have them.
		s.feedp.Load().reset(rev)
	}
	if desc != old && !shrunk {
		// After the commit: the span grows only once its data is in.
		s.desc.Store(desc)
	}
	if shrunk || fx.frozen != nil || fx.merged != nil {
		s.feedp.Load().wake()
		s.descriptorChanged()
		// Elections whose names left the span are watched elsewhere now:
		// every watcher reads its election again.
		s.publish(nil, true)
	}
	if s.hooks != nil && s.hooks.Split != nil {
		for _, sp := range fx.splits {
			s.hooks.Split(sp[0], sp[1], true)
		}
	}
	return nil
}

// holds reports whether the range holds what cmd names: its key, or its
// span. Commands of the meta range's own make sense in the meta range only.
func (s *StateMachine) holds(desc *Descriptor, cmd *Command) bool {
	if s.frozen.Load() != nil {
		return false // frozen for a merge: nothing applies any more
	}
	if s.noSpanCheck && cmd.Op.needsKey() {
		return true
	}
	switch {
	case cmd.Op.needsKey():
		return desc.Contains(cmd.Key)
	case cmd.Op == OpDeleteRange:
		return desc.ContainsSpan(cmd.Key, cmd.End)
	case cmd.Op == OpMetaUpdate, cmd.Op == OpAllocRangeID, cmd.Op == OpAuthPut, cmd.Op == OpAuthDelete:
		return s.id == MetaRangeID
	case cmd.Op == OpSplit:
		return desc.Contains(cmd.Key)
	case cmd.Op == OpTxn:
		return s.noSpanCheck || holdsTxn(desc, cmd.Txn)
	}
	return true
}

// applyOne applies one command, which the range holds, through b.
func (s *StateMachine) applyOne(b *pebble.Batch, desc *Descriptor, cmd *Command, rev *uint64, fx *effects) (Result, error) {
	k := dataKey(cmd.Key)
	switch cmd.Op {
	case OpPut:
		if missing, err := s.leaseMissing(b, cmd.Lease); err != nil || missing {
			return Result{LeaseMissing: missing}, err
		}
		s.written.Add(uint64(len(cmd.Key) + len(cmd.Value)))
		*rev++
		if err := s.putData(b, cmd.Key, cmd.Value, *rev); err != nil {
			return Result{}, err
		}
		if err := s.setAttachment(b, cmd.Key, cmd.Lease); err != nil {
			return Result{}, err
		}
		return Result{OK: true}, nil
	case OpDelete:
		found, _, err := metaFrom(b, k)
		if err != nil || !found {
			return Result{}, err
		}
		*rev++
		if err := b.Delete(k, nil); err != nil {
			return Result{}, err
		}
		if err := s.recordWrite(b, cmd.Key, *rev, nil); err != nil {
			return Result{}, err
		}
		if err := s.setAttachment(b, cmd.Key, 0); err != nil {
			return Result{}, err
		}
		return Result{OK: true}, nil
	case OpCAS:
		if missing, err := s.leaseMissing(b, cmd.Lease); err != nil || missing {
			return Result{LeaseMissing: missing}, err
		}
		found, cur, curVal, err := getFrom(b, k)
		if err != nil {
			return Result{}, err
		}
		if !((cmd.ExpectAbsent && !found) || (!cmd.ExpectAbsent && found && bytes.Equal(curVal, cmd.Expected))) {
			return Result{Found: found, Current: curVal, CurrentRevision: cur.Mod}, nil
		}
		*rev++
		if err := s.putData(b, cmd.Key, cmd.Value, *rev); err != nil {
			return Result{}, err
		}
		if err := s.setAttachment(b, cmd.Key, cmd.Lease); err != nil {
			return Result{}, err
		}
		return Result{OK: true, Found: true, Current: cmd.Value, CurrentRevision: *rev}, nil
	case OpDeleteRange:
		n, err := s.deleteRange(b, cmd.Key, cmd.End, *rev+1)
		if err != nil {
			return Result{}, err
		}
		if n > 0 {
			*rev++
		}
		return Result{OK: n > 0, Count: n}, nil
	case OpMetaUpdate:
		ds, err := DecodeDescriptors(cmd.Value)
		if err != nil {
			return Result{Err: err.Error()}, nil
		}
		n, err := s.applyMetaUpdate(b, ds)
		return Result{OK: n > 0, Count: n}, err
	case OpAllocRangeID:
		id, err := allocRangeID(b)
		return Result{OK: true, Count: id}, err
	case OpRevoked:
		return Result{OK: true}, b.Delete(s.revocationKey(cmd.Lease), nil)
	case OpAuthPut, OpAuthDelete:
		return s.applyAuth(b, cmd, rev, fx)
	case OpTxn:
		return applyTxn(batchView{s, b}, cmd.Txn, rev)
	}
	return s.applyLease(b, desc, *cmd, rev, fx)
}

// deleteRange deletes every key in [start, end) through b, with their
// attachments, and returns how many it deleted.
func (s *StateMachine) deleteRange(b *pebble.Batch, start, end []byte, rev uint64) (uint64, error) {
	lo, hi := globalBounds(kindData, start, end)
	it, err := b.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, err
	}
	var n uint64
	for it.First(); it.Valid() && err == nil; it.Next() {
		n++
		err = s.recordWrite(b, it.Key()[1:], rev, nil)
	}
	if err == nil {
		err = it.Error()
	}
	if cerr := it.Close(); err == nil {
		err = cerr
	}
	if err != nil || n == 0 {
		return 0, err
	}
	if s.mayAttach {
		if err := s.detachSpan(b, start, end); err != nil {
			return 0, err
		}
	}
	return n, b.DeleteRange(lo, hi, nil)
}

// applyScratch is the working memory of one held apply (holdable,
// applyHeld): from a pool, where each replica kept its own, 48 bytes of an
// idle one and the arrays of its largest apply (BENCHMARKS.md, "Quiescence:
// the idle floor and memory, later").
type applyScratch struct {
	// decoded are the commands (they point into the commands' data);
	// stage collects the apply's writes before they are made visible.
	decoded []Command
	stage   []dirtyWrite
}

var scratchPool = sync.Pool{New: func() any { return new(applyScratch) }}

// release empties sc and puts it back in the pool; an array a burst grew
// large goes, not kept for the next apply.
func (sc *applyScratch) release() {
	// Drop the references the arrays would keep, to their capacity: an
	// apply that failed part way did not hand its stage back.
	clear(sc.decoded[:cap(sc.decoded)])
	clear(sc.stage[:cap(sc.stage)])
	sc.decoded, sc.stage = sc.decoded[:0], sc.stage[:0]
	if cap(sc.decoded) > 1024 {
		sc.decoded = nil
	}
	if cap(sc.stage) > 1024 {
		sc.stage = nil
	}
	scratchPool.Put(sc)
}

// holdable returns, decoded in a scratch, the commands if every one is a
// well-formed put or delete that touches no lease, or a transaction of
// such puts and deletes and of gets (holdableTxn), in a group where no key
// is attached to one: such commands only write data keys, and may be held
// (applyHeld). Otherwise nil. The caller releases the scratch.
func (s *StateMachine) holdable(cmds []multiraft.Command) *applyScratch {
	if s.mayAttach || s.dirty.budget.limit == 0 || s.frozen.Load() != nil {
		return nil
	}
	sc := scratchPool.Get().(*applyScratch)
	for i := range cmds {
		cmd, err := decodeCommand(cmds[i].Data)
		if err != nil || cmd.Lease != 0 ||
			(cmd.Op != OpPut && cmd.Op != OpDelete && (cmd.Op != OpTxn || !holdableTxn(cmd.Txn))) {
			sc.release()
			return nil
		}
		sc.decoded = append(sc.decoded, cmd)
	}
	return sc
}

// applyHeld applies holdable commands, decoded in sc, into the dirty set,
// and writes it out once it is full.
func (s *StateMachine) applyHeld(cmds []multiraft.Command, desc *Descriptor, sc *applyScratch) error {
	rev := s.revision.Load()
	st := sc.stage[:0]
	// Every result of a put or delete has the same size: one allocation
	// holds them all (a transaction's may grow it).
	resSize := Result{}.size()
	results := make([]byte, 0, resSize*len(cmds))
	for i := range cmds {
		c, cmd := &cmds[i], &sc.decoded[i]
		if prev, skip := s.sessions.check(cmd); skip {
			c.Result = prev
			continue
		}
		if cmd.Op == OpTxn {
			if k := cmd.Txn.firstKey(); k != nil {
				s.sampler.sample(k)
			}
			res := Result{KeyMismatch: true}
			if s.noSpanCheck || holdsTxn(desc, cmd.Txn) {
				var err error
				if res, err = applyTxn(heldView{s, &st}, cmd.Txn, &rev); err != nil {
					return fmt.Errorf("kv: range %d: %w", s.id, err)
				}
			}
			res.Revision = rev
			n := len(results)
			results = res.appendTo(results)
			c.Result = results[n:len(results):len(results)]
			if !res.KeyMismatch {
				s.sessions.record(cmd, c.Result)
			}
			continue
		}
		s.sampler.sample(cmd.Key)
		res := Result{OK: true}
		if !desc.Contains(cmd.Key) && !s.noSpanCheck {
			res = Result{KeyMismatch: true, Revision: rev}
			n := len(results)
			results = res.appendTo(results)
			c.Result = results[n:len(results):len(results)]
			continue
		}
		found, prev, err := s.heldMeta(st, cmd.Key)
		if err != nil {
			return fmt.Errorf("kv: range %d: key %q: %w", s.id, cmd.Key, err)
		}
		switch cmd.Op {
		case OpPut:
			rev++
			sv := stored(rev, cmd.Value, found, prev)
			st = append(st, dirtyWrite{key: string(cmd.Key), stored: sv})
			_ = s.recordWrite(nil, cmd.Key, rev, sv) // without a batch: cannot fail
			s.written.Add(uint64(len(cmd.Key) + len(cmd.Value)))
		case OpDelete:
			if found {
				rev++
				st = append(st, dirtyWrite{key: string(cmd.Key)})
				_ = s.recordWrite(nil, cmd.Key, rev, nil)
			}
			res.OK = found
		}
		res.Revision = rev
		n := len(results)
		results = res.appendTo(results)
		c.Result = results[n:len(results):len(results)]
		s.sessions.record(cmd, c.Result)
	}
	s.dirty.apply(st, s.held())
	sc.stage = st // release clears it
	s.revision.Store(rev)
	s.applied.Store(cmds[len(cmds)-1].Index)
	s.raiseFloor(rev)
	s.publishHistory(rev)
	if s.dirty.full() {
		return s.flush()
	}
	return nil
}

// heldMeta returns whether key exists, and its revisions, as of the
// writes staged so far: the latest of staged, held, then Pebble.
func (s *StateMachine) heldMeta(staged []dirtyWrite, key []byte) (bool, storedMeta, error) {
	for i := len(staged) - 1; i >= 0; i-- {
		if staged[i].key == string(key) {
			return metaOfStored(staged[i].stored)
		}
	}
	if v, ok := s.dirty.lookupLocked(key); ok {
		return metaOfStored(v)
	}
	return metaFrom(s.db, dataKey(key))
}

// putData sets user key key to value at revision rev through b, keeping
// its create revision and counting its version (stored.go).
func (s *StateMachine) putData(b *pebble.Batch, key, value []byte, rev uint64) error {
	k := dataKey(key)
	found, prev, err := metaFrom(b, k)
	if err != nil {
		return fmt.Errorf("kv: range %d: key %q: %w", s.id, key, err)
	}
	sv := stored(rev, value, found, prev)
	if err := b.Set(k, sv, nil); err != nil {
		return err
	}
	return s.recordWrite(b, key, rev, sv)
}

// leaseMissing reports whether a put or CAS names a lease (not 0) that
// the group does not have.
func (s *StateMachine) leaseMissing(r pebble.Reader, lease uint64) (bool, error) {
	if lease == 0 {
		return false, nil
	}
	ok, err := s.leaseExists(r, lease)
	return !ok, err
}

// Query implements multiraft.StateMachine; see the Encode functions of
// query.go. A query for a key (or a span) the range does not hold fails
// with ErrKeyMismatch; any query of an uninitialized replica with
// ErrUninitialized.
func (s *StateMachine) Query(q []byte) ([]byte, error) {
	if len(q) < 1 {
		return nil, ErrBadCommand
	}
	if !s.restore.TryRLock() {
		return nil, fmt.Errorf("%w: range %d: restoring a snapshot", ErrUninitialized, s.id)
	}
	defer s.restore.RUnlock()
	desc := s.desc.Load()
	if desc == nil || s.restoreFailed.Load() {
		return nil, fmt.Errorf("%w: range %d", ErrUninitialized, s.id)
	}
	s.ops.Add(1)
	s.touch()
	mismatch := func(key []byte) error {
		return fmt.Errorf("%w: %q is not in %v", ErrKeyMismatch, key, desc)
	}
	// Frozen for a merge, or removed: the range serves no key.
	serving := s.frozen.Load() == nil && !s.destroyed.Load()
	holds := func(key []byte) bool { return serving && (desc.Contains(key) || s.noSpanCheck) }
	switch QueryKind(q[0]) {
	case QueryGet:
		key := q[1:]
		if !holds(key) {
			return nil, mismatch(key)
		}
		s.sampler.sample(key)
		found, m, val, err := s.get(key)
		if err != nil {
			return nil, err
		}
		return encodeGetAnswer(found, m, val), nil
	case QueryGetAt:
		if len(q) < 9 {
			return nil, fmt.Errorf("%w: get query", ErrBadCommand)
		}
		rev, key := binary.BigEndian.Uint64(q[1:]), q[9:]
		if !holds(key) {
			return nil, mismatch(key)
		}
		if cur := s.revision.Load(); rev > cur {
			return nil, s.checkRevision(rev, 0, cur)
		}
		s.sampler.sample(key)
		found, m, val, err := s.getAt(key, rev)
		if err != nil {
			return nil, err
		}
		return encodeGetAnswer(found, m, val), nil
	case QueryScan, QueryScanAt:
		r := reader{b: q[1:]}
		limit := r.uvarint()
		start, end := r.bytes(), r.bytes()
		var rev uint64
		if QueryKind(q[0]) == QueryScanAt {
			if rev = r.uint64(); rev == 0 {
				r.err = true
			}
		}
		if r.err || len(r.b) != 0 || limit == 0 || limit > MaxScanLimit {
			return nil, fmt.Errorf("%w: scan query", ErrBadCommand)
		}
		if !serving || !desc.Contains(start) {
			return nil, mismatch(start)
		}
		if rev > 0 {
			if cur := s.revision.Load(); rev > cur {
				return nil, s.checkRevision(rev, 0, cur)
			}
			return s.scanAt(desc, start, end, int(limit), rev)
		}
		return s.scan(desc, start, end, int(limit))
	case QueryLease:
		return s.queryLease(q[1:])
	case QueryElection:
		if !serving || !desc.Contains(q[1:]) {
			return nil, mismatch(q[1:])
		}
		return s.queryElection(q[1:])
	case QueryAttached:
		if !serving || !desc.Contains(q[1:]) {
			return nil, mismatch(q[1:])
		}
		return s.queryAttached(q[1:])
	case QueryDescriptor:
		return desc.Encode(), nil
	case QueryMeta:
		if s.id != MetaRangeID {
			return nil, fmt.Errorf("%w: range %d is not the meta range", ErrBadCommand, s.id)
		}
		r := reader{b: q[1:]}
		limit := r.uvarint()
		key := r.bytes()
		if r.err || len(r.b) != 0 || limit == 0 || limit > MaxMetaUpdate {
			return nil, fmt.Errorf("%w: meta query", ErrBadCommand)
		}
		ds, err := metaRecords(s.db, key, int(limit))
		if err != nil {
			return nil, err
		}
		return EncodeDescriptors(ds), nil
	case QueryAuth:
		if s.id != MetaRangeID {
			return nil, fmt.Errorf("%w: range %d is not the meta range", ErrBadCommand, s.id)
		}
		if len(q) != 1 {
			return nil, fmt.Errorf("%w: auth query", ErrBadCommand)
		}
		if !serving {
			// Removed: its table may be gone already, which must not
			// read as an empty one.
			return nil, fmt.Errorf("%w: range %d serves nothing here", ErrKeyMismatch, s.id)
		}
		return s.queryAuth()
	}
	return nil, fmt.Errorf("%w: query kind %q", ErrBadCommand, q[0])
}

// get reads a data key: the held write if there is one, else Pebble.
func (s *StateMachine) get(key []byte) (found bool, m storedMeta, val []byte, err error) {
	v, held := s.dirty.get(key)
	if !held {
		// Anything flushed since the lookup is in Pebble by now: a flush
		// commits before it forgets.
		return getFrom(s.db, dataKey(key))
	}
	if v == nil {
		return false, storedMeta{}, nil, nil
	}
	if m, val, err = decodeStored(v); err != nil {
		return false, storedMeta{}, nil, fmt.Errorf("%w (key %x)", err, key)
	}
	return true, m, bytes.Clone(val), nil
}

// scan lists up to limit keys of [start, end) ∩ the range's span, which
// holds start (see DecodeScan for the answer).
func (s *StateMachine) scan(desc *Descriptor, start, end []byte, limit int) ([]byte, error) {
	// Stop at the range's end if it comes first: the caller goes on from
	// there in the next range.
	stop, resume := end, []byte(nil)
	if len(desc.End) > 0 && (len(end) == 0 || bytes.Compare(desc.End, end) < 0) {
		stop, resume = desc.End, desc.End
	}
	lower, upper := globalBounds(kindData, start, stop)
	held, it, err := s.dirty.view(start, stop, func() (*pebble.Iterator, error) {
		return s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var body []byte
	n := 0
	var lastKey []byte
	more := false
	// Merge Pebble's keys with the held writes, which win on a tie.
	for valid := it.First(); ; {
		var key, v []byte
		fromPebble := false
		switch {
		case len(held) > 0 && (!valid || held[0].key <= string(it.Key()[1:])):
			if valid && held[0].key == string(it.Key()[1:]) {
				valid = it.Next()
			}
			key, v = []byte(held[0].key), held[0].stored
			held = held[1:]
			if v == nil {
				continue // deleted
			}
		case valid:
			key, v, fromPebble = it.Key()[1:], it.Value(), true
		default:
			key = nil
		}
		if key == nil {
			break
		}
		if n == limit {
			more = true
			break
		}
		m, val, err := decodeStored(v)
		if err != nil {
			return nil, fmt.Errorf("%w (key %x)", err, key)
		}
		body = appendScanEntry(body, key, m, val)
		lastKey = append(lastKey[:0], key...)
		n++
		if fromPebble {
			valid = it.Next() // key and v are Pebble's until then
		}
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	if more {
		resume = append(lastKey, 0) // the key right after the last one
	}
	return encodeScanAnswer(n, body, resume), nil
}
